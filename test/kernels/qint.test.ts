import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import type { QuantBits, QuantizedTensor } from '../../src/kernels/quantized.ts';
import { gemm64 } from '../reference/linalg64.ts';
import { dequantize, integerProduct, QBLOCK, quantize, quantizeBlocks, type Quantized } from '../reference/quant64.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, rng } from '../helpers.ts';

const f = Math.fround;

/** Copies a reference-quantized rows×cols matrix into the kernel heap. */
function toHeap(kern: Kernels, ref: Quantized, rows: number, cols: number): QuantizedTensor {
  const q = ref.bits === 8 ? kern.heap.i8(ref.q.length) : kern.heap.u8(ref.q.length);
  q.set(ref.q);
  const scales = kern.heap.f32(ref.scales.length);
  scales.set(ref.scales);
  return { bits: ref.bits, rows, cols, q, scales };
}

function transpose(a: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

/**
 * Random values whose blocks of 32 span magnitudes 2^-8..2^7, with an all-zero block (scale 0)
 * and, when there is room, a block of half-integers with amax 127 (scale 1: q8 rounding ties).
 */
function testValues(rows: number, cols: number, seed: number): Float32Array {
  const random = rng(seed);
  const v = new Float32Array(rows * cols);
  for (let b = 0; b < v.length / QBLOCK; b++) {
    const scale = 2 ** Math.floor((random() + 1) * 8 - 8);
    for (let i = 0; i < QBLOCK; i++) v[b * QBLOCK + i] = random() * scale;
  }
  if (v.length >= 2 * QBLOCK) v.fill(0, 0, QBLOCK);
  if (v.length >= 3 * QBLOCK) {
    for (let i = 0; i < QBLOCK; i++) v[QBLOCK + i] = Math.floor(random() * 126) + 0.5;
    v[QBLOCK] = 127;
  }
  return v;
}

/** Float32 equality that also takes NaN as equal to NaN (payloads may differ). */
function sameValues(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i] || (Number.isNaN(v) && Number.isNaN(b[i])));
}

// m (odd, prime, multiple of 4 or not) × n × k (multiples of 32, and k = 0).
const shapes: [number, number, number][] = [
  [1, 1, 32], [3, 5, 0], [3, 5, 32], [4, 8, 64], [13, 17, 96], [37, 29, 320], [64, 71, 256], [5, 530, 64], [130, 9, 160],
];
const bitsList: QuantBits[] = [8, 4];

describe.each(['simd', 'relaxed'] as const)('integer-path quantized product (%s build)', (build) => {
  let one: Kernels;
  let two: Kernels;
  kernelsOnOneAndTwoThreads(build, (single, double) => ((one = single), (two = double)));

  it.each(shapes)('forward equals integerProduct bit for bit for m=%i n=%i k=%i (q8, q4, accumulate)', (m, n, k) => {
    for (const bits of bitsList) {
      const xs = testValues(m, k, m * 7 + n * 3 + k);
      const ref = quantize(testValues(n, k, n + k + bits), bits);
      const want = integerProduct(xs, ref, m, n, k);
      const w = toHeap(one, ref, n, k);
      const x = one.heap.f32(m * k);
      x.set(xs);
      const y = one.heap.f32(m * n);
      fillRandom(y, rng(5)); // overwritten
      one.qint.forward(x, w, y, m);
      expect(bitEqual(y, want)).toBe(true);

      const y0 = Float32Array.from(y, (_, i) => Math.sin(i));
      y.set(y0);
      one.qint.forward(x, w, y, m, { accumulate: true });
      expect(bitEqual(y, Float32Array.from(want, (v, i) => f(y0[i] + v)))).toBe(true);
    }
  });

  it('handles the largest k, and more rows than one packed chunk of x, on 1 and 2 threads', () => {
    // At maxK a single B panel fills the scratch. At k = 4096 the packed-x buffer (4 MiB) holds
    // 480 rows, so 481 rows take two chunks (the B panels are packed twice), the GEMM's
    // L2-sized row chunks hold 28 rows, and a thread's scratch holds the B panels of 480
    // columns, so 489 columns on one thread take two column chunks of several row chunks.
    for (const [m, n, k] of [[5, 3, one.qint.maxK], [481, 11, 4096], [33, 489, 4096]]) {
      const xs = testValues(m, k, m + n);
      const ref = quantize(testValues(n, k, n), 4);
      const want = integerProduct(xs, ref, m, n, k);
      for (const kern of [one, two]) {
        const x = kern.heap.f32(m * k);
        x.set(xs);
        const y = kern.heap.f32(m * n);
        kern.qint.forward(x, toHeap(kern, ref, n, k), y, m);
        expect(bitEqual(y, want)).toBe(true);
      }
    }
  });

  it('builds the transposed copy exactly as dequantize → transpose → quantize, and backward is the exact product with it', () => {
    for (const [m, n, k] of [[7, 64, 96], [37, 96, 32], [3, 160, 64]] as const) {
      for (const bits of bitsList) {
        for (const tbits of bitsList) {
          const ref = quantize(testValues(n, k, n * k + bits), bits); // W: n×k, n outputs
          const refT = quantize(transpose(dequantize(ref, n * k), n, k), tbits); // Wᵀ: k×n
          const wT = one.qint.transposeQuantized(toHeap(one, ref, n, k), { bits: tbits });
          expect([wT.bits, wT.rows, wT.cols]).toEqual([tbits, k, n]);
          expect(Array.from(wT.q)).toEqual(Array.from(refT.q));
          expect(bitEqual(wT.scales, refT.scales)).toBe(true);

          const dys = testValues(m, n, m + n + tbits);
          const dy = one.heap.f32(m * n);
          dy.set(dys);
          const dx = one.heap.f32(m * k);
          one.qint.backward(dy, wT, dx, m);
          expect(bitEqual(dx, integerProduct(dys, refT, m, k, n))).toBe(true);
        }
      }
    }
  });

  it('gives the same bits on 1 and 2 threads', () => {
    for (const [m, n, k] of [[96, 1000, 320], [33, 517, 128], [6, 64, 96], [41, 544, 224]] as const) {
      for (const bits of bitsList) {
        const xs = testValues(m, k, m + k);
        const ref = quantize(testValues(n, k, n + bits), bits);
        const run = (kern: Kernels) => {
          const w = toHeap(kern, ref, n, k);
          const x = kern.heap.f32(m * k);
          x.set(xs);
          const y = kern.heap.f32(m * n);
          y.fill(0.25);
          kern.qint.forward(x, w, y, m, { accumulate: true });
          if (n % QBLOCK) return [Float32Array.from(y)]; // no transposed copy: W's rows are not whole blocks
          const wT = kern.qint.transposeQuantized(w);
          const dx = kern.heap.f32(m * k);
          kern.qint.backward(y, wT, dx, m);
          return [Float32Array.from(y), Float32Array.from(dx), Float32Array.from(wT.scales)];
        };
        const [a, b] = [run(one), run(two)];
        for (let i = 0; i < a.length; i++) expect(bitEqual(a[i], b[i])).toBe(true);
      }
    }
  });

  it('stays within the quantization error bound of the fp32 product with the original weights', () => {
    // Round to nearest moves each value by at most half a step: |x̂ - x| ≤ sx/2 and
    // |ŵ - w| ≤ sw/2 per block (sx = amax/127; sw = amax/127 for q8, amax/7 for q4). So
    //   |x̂·ŵ - x·w| ≤ Σ_blocks Σ_p (sx/2)·|w_p| + |x_p|·(sw/2) + (sx/2)·(sw/2),
    // plus the f32 rounding of the kernel: each block term is rounded twice and the block sum
    // once per block, ≤ (blocks + 2)·2^-24·Σ|x̂·ŵ|. Every element must respect its own bound.
    const [m, n, k] = [23, 41, 256];
    const blocks = k / QBLOCK;
    const xs = testValues(m, k, 11);
    const ws = testValues(n, k, 12);
    const exact = gemm64(xs, ws, m, n, k, { transB: true });
    for (const bits of bitsList) {
      const ref = quantize(ws, bits);
      const w = toHeap(one, ref, n, k);
      const x = one.heap.f32(m * k);
      x.set(xs);
      const y = one.heap.f32(m * n);
      one.qint.forward(x, w, y, m);
      const wq = dequantize(ref, n * k);
      let worst = 0;
      for (let i = 0; i < m; i++) {
        const xq = quantizeBlocks(xs.subarray(i * k, (i + 1) * k), 8);
        for (let j = 0; j < n; j++) {
          let bound = 0;
          let magnitude = 0;
          for (let b = 0; b < blocks; b++) {
            const sx = xq.scales[b];
            const sw = ref.scales[j * blocks + b];
            for (let p = b * QBLOCK; p < (b + 1) * QBLOCK; p++) {
              bound += (sx / 2) * Math.abs(ws[j * k + p]) + Math.abs(xs[i * k + p]) * (sw / 2) + (sx / 2) * (sw / 2);
              magnitude += Math.abs(xq.values[p] * sx * wq[j * k + p]);
            }
          }
          bound += (blocks + 2) * 2 ** -24 * magnitude;
          const error = Math.abs(y[i * n + j] - exact[i * n + j]);
          expect(error).toBeLessThanOrEqual(bound);
          worst = Math.max(worst, error / bound);
        }
      }
      // The bound is not so loose that nothing could break it: some element reaches ~1/3 of it.
      expect(worst).toBeGreaterThan(0.1);
    }
  });

  it('propagates NaN and Inf in x to its output row, like the reference', () => {
    const [m, n, k] = [5, 9, 64];
    const xs = testValues(m, k, 3);
    xs[1 * k + 40] = NaN;
    xs[3 * k + 7] = Infinity;
    const ref = quantize(testValues(n, k, 4), 8);
    const x = one.heap.f32(m * k);
    x.set(xs);
    const y = one.heap.f32(m * n);
    one.qint.forward(x, toHeap(one, ref, n, k), y, m);
    const want = integerProduct(xs, ref, m, n, k);
    expect(sameValues(y, want)).toBe(true);
    expect(Array.from(y.subarray(n, 2 * n)).every(Number.isNaN)).toBe(true);
    expect(Number.isNaN(y[0])).toBe(false);
  });

  it('matches the reference on extreme magnitudes (denormal scales, infinite inverse scales, near-overflow)', () => {
    // Blocks of x (k = 5·32): denormals only; amax 1e-37 so the scale is denormal and 1/scale
    // overflows to +Inf (zeros then give 0·Inf = NaN, which must quantize to 0); values near
    // f32 max; ±0 only; ordinary values. W gets the same kinds of blocks.
    const [m, n, k] = [3, 6, 160];
    const kinds = [
      (u: number) => u * 1e-42,
      (u: number, i: number) => (i % 3 ? u * 1e-37 : 0),
      (u: number) => u * 3e38,
      (_: number, i: number) => (i % 2 ? 0 : -0),
      (u: number) => u,
    ];
    const fill = (rows: number, seed: number) => {
      const random = rng(seed);
      return Float32Array.from({ length: rows * k }, (_, i) => kinds[(Math.floor(i / QBLOCK) + seed) % kinds.length](random(), i));
    };
    const xs = fill(m, 1);
    for (const bits of bitsList) {
      const ref = quantize(fill(n, 2), bits);
      const x = one.heap.f32(m * k);
      x.set(xs);
      const y = one.heap.f32(m * n);
      one.qint.forward(x, toHeap(one, ref, n, k), y, m);
      expect(sameValues(y, integerProduct(xs, ref, m, n, k))).toBe(true);
    }
  });

  it('rejects bad arguments with a clear error', () => {
    const ref = quantize(testValues(8, 64, 1), 8);
    const w = toHeap(one, ref, 8, 64);
    const x = one.heap.f32(3 * 64);
    const y = one.heap.f32(3 * 8);
    const q = one.qint;
    expect(() => q.forward(x, w, y, 4)).toThrow(/qint.forward: x has 192 elements, needs 256/);
    expect(() => q.forward(x, w, y.subarray(1), 3)).toThrow(/y has 23 elements, needs 24/);
    expect(() => q.forward(x, w, y, -1)).toThrow(/m must be a non-negative integer/);
    expect(() => q.forward(new Float32Array(192), w, y, 3)).toThrow(/not in the kernel heap/);
    expect(() => q.forward(x, { ...w, cols: 48 }, y, 3)).toThrow(/cols \(48\) must be a multiple of 32/);
    expect(() => q.forward(x, { ...w, bits: 5 as QuantBits }, y, 3)).toThrow(/bits must be 8 or 4/);
    expect(() => q.forward(x, { ...w, bits: 4 }, y, 3)).toThrow(/w.q must be a Uint8Array for q4/);
    expect(() => q.forward(x, { ...w, scales: w.scales.subarray(1) }, y, 3)).toThrow(/w.scales has 15 elements, needs 16/);
    expect(() => q.forward(x, { ...w, cols: q.maxK + 32 }, y, 0)).toThrow(/exceeds the largest supported reduction length/);
    expect(() => q.backward(y, w, x, 3)).toThrow(/qint.backward: dy has 24 elements, needs 192/);
    expect(() => q.transposeQuantized({ ...w, rows: 4 })).toThrow(/w.rows \(4\) must be a multiple of 32/);
  });
});
