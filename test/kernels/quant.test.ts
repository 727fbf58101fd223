import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import { allocQuantized, type QuantBits } from '../../src/kernels/quantized.ts';
import { gemm64 } from '../reference/linalg64.ts';
import { QBLOCK, dequantize as dequantize64, quantize as quantize64 } from '../reference/quant64.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, maxRelError, rng } from '../helpers.ts';

const formats: QuantBits[] = [8, 4];

/** fp32 accumulation of k products of size ≤ 1 (plus an accumulated term): error ~k·eps. */
const productTolerance = (k: number) => Math.max(k, 8) * 1.2e-7;

/** Values spanning several magnitudes, with an all-zero block and exact rounding ties. */
function weights(view: Float32Array, seed: number): void {
  const random = rng(seed);
  for (let i = 0; i < view.length; i++) view[i] = random() * 10 ** Math.floor(3 * random());
  view.fill(0, 0, QBLOCK);
  if (view.length >= 3 * QBLOCK) {
    // amax 127/8 gives q8 scale 1/8 and inv 8, amax 7 gives q4 scale 1 and inv 1: x·inv = n + 0.5 exactly.
    for (let i = 0; i < QBLOCK; i++) view[QBLOCK + i] = i === 0 ? 127 / 8 : (i - 16 + 0.5) / 8;
    for (let i = 0; i < QBLOCK; i++) view[2 * QBLOCK + i] = i === 0 ? 7 : (i % 14) - 7 + 0.5;
  }
}

function sameBytes(a: Int8Array | Uint8Array, b: Int8Array | Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe.each(['simd', 'relaxed'] as const)('quantized weights, fp32 path (%s build)', (build) => {
  let one: Kernels;
  let two: Kernels;
  kernelsOnOneAndTwoThreads(build, (single, double) => ((one = single), (two = double)));

  describe.each(formats)('q%i', (bits) => {
    it('quantizes bit for bit like the reference, rounding ties to even', () => {
      // The last shape is large enough to run on both threads of `two`.
      for (const [kern, rows, cols] of [[one, 1, 32], [one, 7, 96], [one, 13, 320], [two, 521, 512]] as const) {
        const w = kern.heap.f32(rows * cols);
        weights(w, rows + cols);
        const t = kern.quant.quantize(w, rows, cols, bits);
        const want = quantize64(w, bits);
        expect(t.bits).toBe(bits);
        expect(sameBytes(t.q, want.q)).toBe(true);
        expect(bitEqual(t.scales, want.scales)).toBe(true);
        expect(t.scales[0]).toBe(0); // the all-zero block
      }
    });

    it('dequantizes exactly to q·scale, within half a scale of the original', () => {
      const rows = 9, cols = 160;
      const w = one.heap.f32(rows * cols);
      weights(w, 3);
      const t = one.quant.quantize(w, rows, cols, bits);
      const out = one.quant.dequantize(t);
      expect(bitEqual(out, dequantize64(t, rows * cols))).toBe(true);
      const qmax = bits === 8 ? 127 : 7;
      for (let b = 0; b < t.scales.length; b++) {
        let amax = 0;
        let err = 0;
        for (let i = b * QBLOCK; i < (b + 1) * QBLOCK; i++) {
          amax = Math.max(amax, Math.abs(w[i]));
          err = Math.max(err, Math.abs(w[i] - out[i]));
        }
        // |x - x'| ≤ scale/2 = amax/(2·qmax), up to f32 rounding of x·inv and q·scale.
        expect(err).toBeLessThanOrEqual((amax / (2 * qmax)) * (1 + 2 ** -14));
      }
    });

    it('dequantizes and multiplies any stored values (all nibbles, int8 -128) like the reference', () => {
      const [m, n, k] = [11, 21, 64];
      const t = allocQuantized(one.heap, bits, n, k);
      const random = rng(bits);
      for (let i = 0; i < t.q.length; i++) t.q[i] = Math.floor((random() + 1) * 128);
      fillRandom(t.scales, random, 0.01);
      const wd = dequantize64(t, n * k);
      expect(bitEqual(one.quant.dequantize(t), wd)).toBe(true);
      const x = one.heap.f32(m * k);
      const y = one.heap.f32(m * n);
      fillRandom(x, random);
      one.quant.matmulT(x, t, y, m);
      expect(maxRelError(y, gemm64(x, wd, m, n, k, { transB: true }))).toBeLessThan(productTolerance(k));
    });

    // (m, n, k): odd and prime sizes; k past the 256-deep packing block; n or k past 512 columns.
    it.each([[9, 17, 32], [13, 29, 96], [37, 71, 288], [130, 9, 64], [11, 530, 64], [23, 263, 544]])(
      'forward y = x·Wᵀ and backward dx = dy·W match float64 with the dequantized W (m=%i n=%i k=%i)',
      (m, n, k) => {
        const random = rng(m * 1000 + n + k + bits);
        const w = one.heap.f32(n * k);
        weights(w, n);
        const t = one.quant.quantize(w, n, k, bits);
        const wd = dequantize64(t, n * k);
        for (const accumulate of [false, true]) {
          const x = one.heap.f32(m * k);
          const y = one.heap.f32(m * n);
          fillRandom(x, random);
          fillRandom(y, random);
          const wantY = gemm64(x, wd, m, n, k, { transB: true, c0: accumulate ? Float64Array.from(y) : undefined });
          one.quant.matmulT(x, t, y, m, { accumulate });
          expect(maxRelError(y, wantY)).toBeLessThan(productTolerance(k));

          const dy = one.heap.f32(m * n);
          const dx = one.heap.f32(m * k);
          fillRandom(dy, random);
          fillRandom(dx, random);
          const wantDx = gemm64(dy, wd, m, k, n, { c0: accumulate ? Float64Array.from(dx) : undefined });
          one.quant.matmulBackward(dy, t, dx, m, { accumulate });
          expect(maxRelError(dx, wantDx)).toBeLessThan(productTolerance(n));
          for (const v of [x, y, dy, dx]) one.heap.release(v);
        }
      },
    );

    it('takes the dot-product path for m = 1..8 and matches float64', () => {
      const [n, k] = [13, 96]; // n not a multiple of the kernel's 8 rows of W
      const w = one.heap.f32(n * k);
      weights(w, 5);
      const t = one.quant.quantize(w, n, k, bits);
      const wd = dequantize64(t, n * k);
      const random = rng(11);
      for (let m = 1; m <= 8; m++) {
        for (const accumulate of [false, true]) {
          const x = one.heap.f32(m * k);
          const y = one.heap.f32(m * n);
          fillRandom(x, random);
          fillRandom(y, random);
          const want = gemm64(x, wd, m, n, k, { transB: true, c0: accumulate ? Float64Array.from(y) : undefined });
          one.quant.matmulT(x, t, y, m, { accumulate });
          expect(maxRelError(y, want)).toBeLessThan(productTolerance(k));
        }
      }
    });

    it('is bit-identical on 1 and 2 threads', () => {
      // GEMM forward/backward and the dot path, each large enough to run on both threads.
      for (const [m, n, k] of [[96, 1000, 320], [33, 517, 288], [3, 1001, 512], [8, 600, 224]] as const) {
        const run = (kern: Kernels) => {
          const r = rng(m + n + k);
          const w = kern.heap.f32(n * k);
          const x = kern.heap.f32(m * k);
          const dy = kern.heap.f32(m * n);
          fillRandom(w, r);
          fillRandom(x, r);
          fillRandom(dy, r);
          const t = kern.quant.quantize(w, n, k, bits);
          const y = kern.heap.f32(m * n).fill(0.5);
          const dx = kern.heap.f32(m * k).fill(0.5);
          kern.quant.matmulT(x, t, y, m, { accumulate: true });
          kern.quant.matmulBackward(dy, t, dx, m, { accumulate: true });
          return [Float32Array.from(y), Float32Array.from(dx)];
        };
        const [y1, dx1] = run(one);
        const [y2, dx2] = run(two);
        expect(bitEqual(y1, y2)).toBe(true);
        expect(bitEqual(dx1, dx2)).toBe(true);
      }
    });
  });

  it('runs fp32 A·Bᵀ with m = 1..8 as dot products, matching float64 (odd k: vector and scalar tails)', () => {
    const random = rng(23);
    for (const [n, k] of [[13, 45], [6, 8], [9, 3], [21, 300]]) {
      for (let m = 1; m <= 8; m++) {
        const a = one.heap.f32(m * k);
        const b = one.heap.f32(n * k);
        const c = one.heap.f32(m * n);
        fillRandom(a, random);
        fillRandom(b, random);
        fillRandom(c, random);
        const c0 = Float64Array.from(c);
        one.gemm.gemm({ a, b, c, m, n, k, transB: true, accumulate: true });
        expect(maxRelError(c, gemm64(a, b, m, n, k, { transB: true, c0 }))).toBeLessThan(productTolerance(k));
        one.gemm.gemm({ a, b, c, m, n, k, transB: true });
        expect(maxRelError(c, gemm64(a, b, m, n, k, { transB: true }))).toBeLessThan(productTolerance(k));
        for (const v of [a, b, c]) one.heap.release(v);
      }
    }
  });

  it('gives every dot-path output the same bits whichever tile computes it', () => {
    // m=4, n=16: all outputs in 2×4 tiles; m=3, n=13 over the same memory: row 2 in a 1×8
    // tile, columns 8-12 one at a time. Thread splits only change which tile computes what.
    const k = 100;
    const random = rng(5);
    const x = one.heap.f32(4 * k);
    const w = one.heap.f32(16 * k);
    fillRandom(x, random);
    fillRandom(w, random);
    // y = x·Wᵀ for the first m rows of x and n rows of W: fp32 (k = 100), q8 and q4 (k = 96).
    const products = [
      (m: number, n: number, y: Float32Array) => one.gemm.gemm({ a: x, b: w, c: y, m, n, k, transB: true }),
      ...formats.map((bits) => {
        const t = one.quant.quantize(w, 16, 96, bits);
        const bytesPerRow = bits === 8 ? 96 : 48;
        return (m: number, n: number, y: Float32Array) => {
          const rows = { ...t, rows: n, q: t.q.subarray(0, n * bytesPerRow), scales: t.scales.subarray(0, n * 3) };
          one.quant.matmulT(x, rows, y, m);
        };
      }),
    ];
    for (const product of products) {
      const all = one.heap.f32(4 * 16);
      const part = one.heap.f32(3 * 13);
      product(4, 16, all);
      product(3, 13, part);
      for (let i = 0; i < 3; i++) {
        expect(bitEqual(part.subarray(i * 13, (i + 1) * 13), all.subarray(i * 16, i * 16 + 13))).toBe(true);
      }
    }
  });

  it('runs the fp32 dot path bit-identically on 1 and 2 threads', () => {
    const [m, n, k] = [5, 1003, 517];
    const run = (kern: Kernels) => {
      const r = rng(1);
      const a = kern.heap.f32(m * k);
      const b = kern.heap.f32(n * k);
      fillRandom(a, r);
      fillRandom(b, r);
      const c = kern.heap.f32(m * n);
      kern.gemm.gemm({ a, b, c, m, n, k, transB: true });
      return Float32Array.from(c);
    };
    expect(bitEqual(run(one), run(two))).toBe(true);
  });

  it('rejects bad arguments with a clear error', () => {
    const w = one.heap.f32(4 * 64);
    const q = one.quant;
    expect(() => q.quantize(w, 4, 48, 8)).toThrow(/cols \(48\) must be a multiple of 32/);
    expect(() => q.quantize(w, 4, 64, 5 as QuantBits)).toThrow(/bits must be 8 or 4/);
    expect(() => q.quantize(w, 5, 64, 8)).toThrow(/w has 256 elements, needs 320/);
    expect(() => q.quantize(new Float32Array(256), 4, 64, 8)).toThrow(/not in the kernel heap/);
    expect(() => q.quantize(w, -1, 64, 8)).toThrow(/rows must be a non-negative integer/);

    const t = q.quantize(w, 4, 64, 4);
    const x = one.heap.f32(2 * 64);
    const y = one.heap.f32(2 * 4);
    expect(() => q.matmulT(x, t, y, 3)).toThrow(/x has 128 elements, needs 192/);
    expect(() => q.matmulT(x, t, y.subarray(1), 2)).toThrow(/y has 7 elements, needs 8/);
    expect(() => q.matmulT(x, t, y, 1.5)).toThrow(/m must be a non-negative integer/);
    expect(() => q.matmulBackward(y, t, x, 3)).toThrow(/dy has 8 elements, needs 12/);
    expect(() => q.matmulBackward(y, t, new Float32Array(128), 2)).toThrow(/not in the kernel heap/);
    expect(() => q.matmulT(x, { ...t, cols: 40 }, y, 2)).toThrow(/must be a multiple of 32/);
    expect(() => q.matmulT(x, { ...t, q: t.q.subarray(1) }, y, 2)).toThrow(/q has 127 elements, needs 128/);
    expect(() => q.matmulT(x, { ...t, bits: 8 }, y, 2)).toThrow(/must be an Int8Array/);
    expect(() => q.dequantize(t, one.heap.f32(10))).toThrow(/out has 10 elements, needs 256/);
  });
});

// The reference must be what the quantized tensors are checked against: make sure ties occur.
it('the test weights contain exact rounding ties for both formats', () => {
  const w = new Float32Array(3 * QBLOCK);
  weights(w, 0);
  for (const bits of formats) {
    const { scales } = quantize64(w, bits);
    const inv = 1 / scales[bits === 8 ? 1 : 2];
    const block = w.subarray((bits === 8 ? 1 : 2) * QBLOCK, (bits === 8 ? 2 : 3) * QBLOCK);
    expect(block.some((v) => Math.abs((v * inv) % 1) === 0.5)).toBe(true);
  }
});
