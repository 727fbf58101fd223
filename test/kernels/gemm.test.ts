import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import { gemm64 } from '../reference/linalg64.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, maxRelError, rng } from '../helpers.ts';

/** KC in src/kernels/assembly/gemm.ts: each output sums k from zero in blocks of this many, each block then added to C. */
const DEPTH_BLOCK = 256;

type Orientation = { transA: boolean; transB: boolean };

/** The stored form of a logical rows×cols matrix: as is, or transposed (cols×rows). */
function stored(logical: Float32Array, rows: number, cols: number, trans: boolean): Float32Array {
  if (!trans) return logical;
  const t = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = logical[i * cols + j];
  return t;
}

/** The top-left rows×cols block of a logical matrix with `width` columns. */
function block(logical: Float32Array, width: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) out.set(logical.subarray(i * width, i * width + cols), i * cols);
  return out;
}

/**
 * C (=|+=) op(A)·op(B) with the simd build's exact f32 operations, from the logical op(A) (m×k)
 * and op(B) (k×n): per DEPTH_BLOCK of k, a sum from zero of rounded products in k order,
 * then added to C.
 */
function gemmF32Sequence(
  opA: Float32Array, opB: Float32Array, c: Float32Array, m: number, n: number, k: number, accumulate: boolean,
): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let cij = accumulate ? c[i * n + j] : 0;
      for (let p0 = 0; p0 < k; p0 += DEPTH_BLOCK) {
        let sum = 0;
        for (let p = p0; p < Math.min(k, p0 + DEPTH_BLOCK); p++) sum = f(f(opA[i * k + p] * opB[p * n + j]) + sum);
        cij = accumulate || p0 > 0 ? f(cij + sum) : sum;
      }
      out[i * n + j] = cij;
    }
  }
  return out;
}

const shapes: [number, number, number][] = [
  [1, 1, 1], [3, 5, 7], [4, 8, 32], [13, 17, 19], [37, 29, 300], [64, 71, 513], [130, 9, 257], [5, 530, 41],
  [300, 8, 40], // one column panel: split over rows
  // Skinny paths: A read in place (few columns, or k = 8), B read in place (few rows), rows not a multiple of 4.
  [517, 8, 300], [257, 520, 8], [13, 264, 300], [9, 1024, 20],
];
const orientations = [
  { transA: false, transB: false },
  { transA: false, transB: true },
  { transA: true, transB: false },
  { transA: true, transB: true },
];

/** op(A) m×k, op(B) k×n and a starting C m×n, random from `seed`. */
function randomOperands(m: number, n: number, k: number, seed: number): { opA: Float32Array; opB: Float32Array; c0: Float32Array } {
  const random = rng(seed);
  const opA = new Float32Array(m * k);
  const opB = new Float32Array(k * n);
  const c0 = new Float32Array(m * n);
  for (const v of [opA, opB, c0]) fillRandom(v, random);
  return { opA, opB, c0 };
}

describe.each(['simd', 'relaxed'] as const)('fp32 gemm (%s build)', (build) => {
  let one: Kernels;
  let two: Kernels;
  kernelsOnOneAndTwoThreads(build, (single, double) => ((one = single), (two = double)));

  it.each(shapes)('matches float64 for m=%i n=%i k=%i in every orientation, with and without accumulate', (m, n, k) => {
    const random = rng(m * 1000 + n * 10 + k);
    for (const o of orientations) {
      for (const accumulate of [false, true]) {
        const a = one.heap.f32(m * k);
        const b = one.heap.f32(k * n);
        const c = one.heap.f32(m * n);
        fillRandom(a, random);
        fillRandom(b, random);
        fillRandom(c, random);
        const want = gemm64(a, b, m, n, k, { ...o, c0: accumulate ? Float64Array.from(c) : undefined });
        one.gemm.gemm({ a, b, c, m, n, k, ...o, accumulate });
        // fp32 accumulation of k products of size ≤ 1: error grows at most ~k·eps.
        expect(maxRelError(c, want)).toBeLessThan(Math.max(k, 8) * 1.2e-7);
        for (const v of [a, b, c]) one.heap.release(v);
      }
    }
  });

  it('is bit-identical on 1 and 2 threads, split over columns or (few columns) over rows', () => {
    const splitShapes = [
      [96, 1000, 300], [33, 517, 129], [256, 256, 256], [2048, 8, 256], [999, 5, 300], [517, 12, 64], [517, 520, 8], [12, 700, 300],
    ] as const;
    for (const [m, n, k] of splitShapes) {
      for (const o of orientations) {
        const run = (kern: Kernels) => {
          const a = kern.heap.f32(m * k);
          const b = kern.heap.f32(k * n);
          const c = kern.heap.f32(m * n);
          const r = rng(m + n + k);
          fillRandom(a, r);
          fillRandom(b, r);
          c.fill(0.5);
          kern.gemm.gemm({ a, b, c, m, n, k, ...o, accumulate: true });
          return Float32Array.from(c);
        };
        expect(bitEqual(run(one), run(two)), `m=${m} n=${n} k=${k} ${JSON.stringify(o)}`).toBe(true);
      }
    }
  });

  /** op(A)·op(B) on the kernels from logical op(A) (m×k), op(B) (k×n) and initial C. */
  const product = (
    opA: Float32Array, opB: Float32Array, c0: Float32Array, m: number, n: number, k: number, o: Orientation, accumulate: boolean,
  ) => {
    const a = one.heap.f32(m * k);
    const b = one.heap.f32(k * n);
    const c = one.heap.f32(m * n);
    a.set(stored(opA, m, k, o.transA));
    b.set(stored(opB, k, n, o.transB));
    c.set(c0);
    one.gemm.gemm({ a, b, c, m, n, k, ...o, accumulate });
    const out = Float32Array.from(c);
    for (const v of [a, b, c]) one.heap.release(v);
    return out;
  };

  it('gives the packed path\'s bits when it reads A (few columns) or B (few rows) in place', () => {
    // 67×419 with k = 40 or 300 packs both operands (every B block is over 64 KB); its first
    // 8, 13 or 40 columns (A read in place, or Aᵀ over more than two panels packed a strip at
    // a time) and its first 13 rows (B read in place unless transposed) must come out bit for
    // bit the same.
    const [M, N] = [67, 419];
    for (const k of [40, 300]) {
      const { opA, opB, c0 } = randomOperands(M, N, k, k);
      for (const o of orientations) {
        for (const accumulate of [false, true]) {
          const whole = product(opA, opB, c0, M, N, k, o, accumulate);
          const label = `k=${k} ${JSON.stringify(o)} accumulate=${accumulate}`;
          for (const n of [8, 13, 40]) {
            const part = product(opA, block(opB, N, k, n), block(c0, N, M, n), M, n, k, o, accumulate);
            expect(bitEqual(part, block(whole, N, M, n)), `n=${n} ${label}`).toBe(true);
          }
          const m = 13;
          const part = product(block(opA, k, m, k), opB, block(c0, N, m, N), m, N, k, o, accumulate);
          expect(bitEqual(part, block(whole, N, m, N)), `m=${m} ${label}`).toBe(true);
        }
      }
    }
  });

  // Only the plain SIMD build: without fused multiply-add the sequence is reproducible in JS.
  if (build === 'simd') it('computes every output as the specified f32 sequence, on every path', () => {
    // Products rounded, summed from zero in k order per block of 256, each block added to C.
    // (m > 8 avoids the A·Bᵀ dot-product path, which sums in another order.)
    const pathShapes = [[67, 8, 300], [67, 13, 8], [67, 40, 300], [13, 419, 300], [9, 1024, 20], [67, 419, 300], [21, 520, 8]] as const;
    for (const [m, n, k] of pathShapes) {
      const { opA, opB, c0 } = randomOperands(m, n, k, m + n + k);
      for (const o of orientations) {
        for (const accumulate of [false, true]) {
          const want = gemmF32Sequence(opA, opB, c0, m, n, k, accumulate);
          const got = product(opA, opB, c0, m, n, k, o, accumulate);
          expect(bitEqual(got, want), `m=${m} n=${n} k=${k} ${JSON.stringify(o)} accumulate=${accumulate}`).toBe(true);
        }
      }
    }
  });

  it('rejects bad arguments with a clear error', () => {
    const a = one.heap.f32(6);
    const b = one.heap.f32(6);
    const c = one.heap.f32(4);
    expect(() => one.gemm.gemm({ a, b, c, m: 2, n: 2, k: 4 })).toThrow(/a has 6 elements, needs 8/);
    expect(() => one.gemm.gemm({ a, b, c, m: -1, n: 2, k: 3 })).toThrow(/m must be a non-negative integer/);
    expect(() => one.gemm.gemm({ a, b, c, m: 2, n: 2.5, k: 3 })).toThrow(/n must be a non-negative integer/);
    expect(() => one.gemm.gemm({ a: new Float32Array(6), b, c, m: 2, n: 2, k: 3 })).toThrow(/not in the kernel heap/);
  });
});
