import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import { quantizeBlocks } from '../reference/quant64.ts';
import { fillRandom, kernelsOnOneAndTwoThreads, rng } from '../helpers.ts';

/** Rows of mixed magnitudes with an all-zero row and, when there is room, exact rounding ties (amax 127/8: inv 8). */
function activations(rows: number, k: number, seed: number): Float32Array {
  const x = new Float32Array(rows * k);
  const random = rng(seed);
  for (let i = 0; i < x.length; i++) x[i] = random() * 10 ** Math.floor(4 * random() - 2);
  x.fill(0, 0, k);
  if (rows > 1) for (let i = 0; i < k; i++) x[k + i] = i === 0 ? 127 / 8 : (((i % 200) - 100) + 0.5) / 8;
  return x;
}

describe.each(['simd', 'relaxed'] as const)('wire rows (%s build)', (build) => {
  let kernels: Kernels;
  kernelsOnOneAndTwoThreads(build, (one) => (kernels = one));

  it('quantizes each row bit for bit like the reference q8 coding with the row as its block, in or out of the heap', () => {
    // k: the demo's hidden, one with a tail past the 16-wide vectors, one shorter than a vector.
    for (const [rows, k] of [[5, 128], [4, 40], [3, 7]]) {
      const x = activations(rows, k, rows * k);
      const expected = quantizeBlocks(x, 8, k);
      const inHeap = kernels.heap.f32(rows * k);
      inHeap.set(x);
      for (const values of [x, inHeap]) {
        const { codes, scales } = kernels.rows.quantizeI8(values, rows, k);
        expect(codes).toEqual(expected.values);
        expect(scales).toEqual(expected.scales);
        expect(codes.buffer).not.toBeInstanceOf(SharedArrayBuffer); // ready for the wire
      }
      kernels.heap.release(inHeap);
    }
  });

  it('codes a NaN as 0 and leaves the rest of its row coded by the other values, as a comparison-based amax does', () => {
    const x = Float32Array.of(1, Number.NaN, -0.5, 0.25, ...new Array(28).fill(0.125));
    const { codes, scales } = kernels.rows.quantizeI8(x, 1, 32);
    expect(scales[0]).toBe(Math.fround(1 / 127));
    expect([...codes.subarray(0, 4)]).toEqual([127, 0, -64, 32]);
  });

  it('decodes codes × their block scale for a scale per row and per block, into the heap or not', () => {
    const rows = 3;
    const k = 48;
    const codes = new Int8Array(rows * k);
    fillRandom(codes, rng(7), 127);
    for (const blocks of [1, 2, 3, 48]) {
      const scales = new Float32Array(rows * blocks);
      fillRandom(scales, rng(blocks), 0.01);
      scales.forEach((s, i) => (scales[i] = Math.abs(s)));
      const expected = Float32Array.from(codes, (c, i) => Math.fround(c * scales[Math.floor(i / (k / blocks))]));
      const plain = new Float32Array(rows * k);
      expect(kernels.rows.dequantizeI8(codes, scales, rows, k, blocks, plain)).toBe(-1);
      expect(plain).toEqual(expected);
      const inHeap = kernels.heap.f32(rows * k);
      expect(kernels.rows.dequantizeI8(codes, scales, rows, k, blocks, inHeap)).toBe(-1);
      expect(inHeap).toEqual(expected);
      kernels.heap.release(inHeap);
    }
  });

  it('finds a code −128 in the vector body and in the tail, and refuses mismatched sizes', () => {
    const codes = new Int8Array(2 * 40).fill(3);
    const scales = Float32Array.of(1, 1);
    for (const at of [0, 17, 39, 40 + 37]) {
      codes.fill(3);
      codes[at] = -128;
      expect(kernels.rows.dequantizeI8(codes, scales, 2, 40, 1, new Float32Array(80))).toBe(at);
    }
    expect(() => kernels.rows.dequantizeI8(codes, scales, 2, 40, 3, new Float32Array(80))).toThrow(/3 blocks/);
    expect(() => kernels.rows.quantizeI8(new Float32Array(10), 2, 8)).toThrow(/10 values/);
  });

  it('fingerprints equal rows alike, in or out of the heap, and any one changed bit differently', () => {
    const x = activations(2, 37, 3);
    const inHeap = kernels.heap.f32(x.length);
    inHeap.set(x);
    const print = kernels.rows.fingerprint(x);
    expect(kernels.rows.fingerprint(inHeap)).toBe(print);
    expect(Number.isSafeInteger(print)).toBe(true);
    const bits = new Uint32Array(x.buffer);
    const prints = new Set([print]);
    for (let i = 0; i < bits.length; i++) {
      for (const bit of [0, 13, 31]) {
        bits[i] ^= 1 << bit;
        prints.add(kernels.rows.fingerprint(x));
        bits[i] ^= 1 << bit;
      }
    }
    expect(prints.size).toBe(1 + 3 * bits.length);
    expect(kernels.rows.fingerprint(x.subarray(0, 73))).not.toBe(print);
    kernels.heap.release(inHeap);
  });
});
