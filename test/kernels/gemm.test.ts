import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import { gemm64 } from '../reference/linalg64.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, maxRelError, rng } from '../helpers.ts';

const shapes: [number, number, number][] = [
  [1, 1, 1], [3, 5, 7], [4, 8, 32], [13, 17, 19], [37, 29, 300], [64, 71, 513], [130, 9, 257], [5, 530, 41],
  [300, 8, 40], // one column panel: split over rows
];
const orientations = [
  { transA: false, transB: false },
  { transA: false, transB: true },
  { transA: true, transB: false },
  { transA: true, transB: true },
];

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
    for (const [m, n, k] of [[96, 1000, 300], [33, 517, 129], [256, 256, 256], [2048, 8, 256], [999, 5, 300], [517, 12, 64]] as const) {
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
