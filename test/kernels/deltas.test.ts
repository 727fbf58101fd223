// The averaging passes on the kernels (kernels.deltas) against the JavaScript ones (jsPasses), bit for bit: holders
// running either must agree, and the JavaScript expressions are the definition (f64 arithmetic, f32 stores).
import { describe, expect, it } from 'vitest';
import { jsPasses } from '../../src/averaging/index.ts';
import type { Kernels } from '../../src/kernels/index.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, rng } from '../helpers.ts';

/** Lengths: under a vector, with a tail, and over two of the passes' 16384-value chunks with a tail. */
const LENGTHS = [3, 41, 2 * 16384 + 1003];

/** Values of mixed magnitudes and signs, with zeros and negative zeros. */
function values(n: number, seed: number): Float32Array {
  const random = rng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (random() - 0.5) * 10 ** Math.floor(6 * random() - 4);
  for (let i = 0; i < n; i += 17) x[i] = i % 34 === 0 ? 0 : -0;
  return x;
}

/** An array of the values on the kernel heap or not, so both ways through the passes are taken. */
function place(kernels: Kernels, x: Float32Array, inHeap: boolean): Float32Array {
  if (!inHeap) return Float32Array.from(x);
  const y = kernels.heap.f32(x.length);
  y.set(x);
  return y;
}

const bitsEqual = (a: Float32Array, b: Float32Array) => a.length === b.length && bitEqual(a, b);

describe.each(['simd', 'relaxed'] as const)('averaging passes on the kernels (%s build)', (build) => {
  let kernels: Kernels;
  kernelsOnOneAndTwoThreads(build, (one) => (kernels = one));

  it('subtract, meanOfTwo, applyStep and applyLate give the JavaScript passes\' bits, in or out of the heap, in place or not', () => {
    for (const n of LENGTHS) {
      for (const inHeap of [false, true]) {
        const [a, b, c, d] = [1, 2, 3, 4].map((seed) => values(n, seed + n));
        const on = (x: Float32Array) => place(kernels, x, inHeap);

        const [want, got] = [new Float32Array(n), on(new Float32Array(n))];
        jsPasses.subtract(a, b, want);
        kernels.deltas.subtract(on(a), on(b), got);
        expect(bitsEqual(got, want), `subtract n ${n} heap ${inHeap}`).toBe(true);

        // Weights of a stale contribution (1/2, 1/3) and plain ones; into a new array and into the first part.
        for (const [w0, w1] of [[1, 1], [1, 1 / 3], [0.5, 1]]) {
          const meanWant = Float32Array.from(a);
          jsPasses.meanOfTwo(meanWant, meanWant, b, w0, w1, w0 + w1);
          const into = on(a);
          kernels.deltas.meanOfTwo(into, into, on(b), w0, w1, w0 + w1);
          expect(bitsEqual(into, meanWant), `meanOfTwo ${w0} ${w1} n ${n} heap ${inHeap}`).toBe(true);
        }
        // Weights 1 and 1 (the f32 kernel at a total of 2) at the ends of the range, every pair of these: overflow to
        // Infinity, x + (−x), subnormal halves rounding to even (2^-149 / 2 to 0), −0 with −0.
        const edges = [3e38, -3e38, 2 ** -149, 3 * 2 ** -149, 2 ** -126, 1, -0, Number.POSITIVE_INFINITY];
        const E = edges.length;
        const e0 = Float32Array.from({ length: n }, (_, i) => edges[i % E]);
        const e1 = Float32Array.from({ length: n }, (_, i) => edges[Math.floor(i / E) % E]);
        for (const total of [2, 4, 0.5]) {
          const edgeWant = Float32Array.from(e0);
          jsPasses.meanOfTwo(edgeWant, edgeWant, e1, 1, 1, total);
          const edgeGot = on(e0);
          kernels.deltas.meanOfTwo(edgeGot, edgeGot, on(e1), 1, 1, total);
          expect(bitsEqual(edgeGot, edgeWant), `meanOfTwo of edge values over ${total}, n ${n} heap ${inHeap}`).toBe(true);
        }
        const negativeZeros = new Float32Array(n).fill(-0);
        const sum = on(new Float32Array(n).fill(7));
        kernels.deltas.meanOfTwo(sum, on(negativeZeros), on(negativeZeros), 1, 1, 2);
        expect(Object.is(sum[n - 1], 0) && Object.is(sum[0], 0), 'a sum of −0 products starts at +0').toBe(true);

        for (const lr of [1, 0.7]) {
          const [values1, anchor1] = [Float32Array.from(a), Float32Array.from(b)];
          jsPasses.applyStep(values1, anchor1, c, lr);
          const [values2, anchor2] = [on(a), on(b)];
          kernels.deltas.applyStep(values2, anchor2, on(c), lr);
          expect(bitsEqual(values2, values1) && bitsEqual(anchor2, anchor1), `applyStep lr ${lr} n ${n} heap ${inHeap}`).toBe(true);

          const [values3, anchor3] = [Float32Array.from(a), Float32Array.from(b)];
          jsPasses.applyLate(values3, anchor3, c, d, lr);
          const [values4, anchor4] = [on(a), on(b)];
          kernels.deltas.applyLate(values4, anchor4, on(c), on(d), lr);
          expect(bitsEqual(values4, values3) && bitsEqual(anchor4, anchor3), `applyLate lr ${lr} n ${n} heap ${inHeap}`).toBe(true);
        }
      }
    }
  });

  it('quantizeBlocks gives the JavaScript codes, scales and decoded values, with ties, subnormal scales and a tail', () => {
    // Blocks whose scale s makes s/2 · (1/s) the one input Math.round and floor(y + 0.5) disagree on.
    const scales = Array.from({ length: 4000 }, (_, i) => Math.fround(1 + i / 4000));
    const hair = scales.filter((s) => Math.fround(s / 2) * (1 / s) === 0.49999999999999994).slice(0, 4);
    expect(hair.length).toBe(4);
    const random = rng(5);
    const special = hair.flatMap((s) => [127 * s, s / 2, -s / 2, 1.5 * s, -2.5 * s, ...Array.from({ length: 11 }, () => 127 * s * random())],
    );
    special.push(190 * 2 ** -149, 2 ** -149, -(190 * 2 ** -149), ...new Array<number>(13).fill(0)); // scale 2^-149: codes clamp
    special.push(...new Array<number>(16).fill(0)); // a block of zeros: scale 0
    // Blocks of 7 with the ties in the last three values, which the kernel codes one at a time.
    const tailTies = hair.flatMap((s) => [127 * s, 3 * s, -5 * s, 7 * s, s / 2, -s / 2, -1.5 * s]);
    for (const [x, block] of [
      [Float32Array.from(special), 16], [Float32Array.from(tailTies), 7], [values(2 * 16384 + 1003, 9), 32], [values(1000, 10), 7],
      [values(5, 11), 32],
    ] as [Float32Array, number][]) {
      for (const inHeap of [false, true]) {
        const blocks = Math.ceil(x.length / block);
        const [q1, s1, d1] = [new Int8Array(x.length), new Float32Array(blocks), new Float32Array(x.length)];
        expect(jsPasses.quantizeBlocks(x, block, q1, s1, d1)).toBeUndefined();
        const [q2, s2] = [new Int8Array(x.length), new Float32Array(blocks)];
        const d2 = place(kernels, new Float32Array(x.length), inHeap);
        expect(kernels.deltas.quantizeBlocks(place(kernels, x, inHeap), block, q2, s2, d2)).toBeUndefined();
        const where = `n ${x.length} block ${block} heap ${inHeap}`;
        expect(q2, `codes ${where}`).toEqual(q1);
        expect(bitsEqual(s2, s1), `scales ${where}`).toBe(true);
        expect(bitsEqual(d2, d1), `decoded ${where}`).toBe(true);
        // Decoded over the input itself, as the codec encodes a delta it no longer needs.
        const inPlace = place(kernels, x, inHeap);
        kernels.deltas.quantizeBlocks(inPlace, block, new Int8Array(x.length), new Float32Array(blocks), inPlace);
        expect(bitsEqual(inPlace, d1), `in place ${where}`).toBe(true);
        // And back: dequantizeBlocks gives the decoded values.
        const back = place(kernels, new Float32Array(x.length), inHeap);
        expect(kernels.deltas.dequantizeBlocks(q1, s1, block, back)).toBe(-1);
        expect(bitsEqual(back, d1), `dequantized ${where}`).toBe(true);
      }
    }
  });

  it('quantizeBlocks reports the first NaN or Infinity and codes a block with one as the JavaScript loop does', () => {
    const x = values(2 * 16384 + 40, 12);
    const cases: [number, number][] = [[20000, NaN], [19990, -Infinity], [40, Infinity], [41, NaN]];
    for (const [at, bad] of cases) {
      x[at] = bad;
      const [q1, s1] = [new Int8Array(x.length), new Float32Array(Math.ceil(x.length / 8))];
      const [q2, s2] = [new Int8Array(x.length), new Float32Array(Math.ceil(x.length / 8))];
      const want = jsPasses.quantizeBlocks(x, 8, q1, s1);
      expect(kernels.deltas.quantizeBlocks(x, 8, q2, s2)).toEqual(want);
      // Decoded over the input, as a node encodes: the value reported is the input's, not its decoding.
      const inPlace = Float32Array.from(x);
      expect(kernels.deltas.quantizeBlocks(inPlace, 8, new Int8Array(x.length), new Float32Array(s1.length), inPlace)).toEqual(want);
      expect(want!.index).toBe(Math.min(...cases.slice(0, cases.findIndex(([i]) => i === at) + 1).map(([i]) => i)));
      expect(q2).toEqual(q1);
      expect(bitsEqual(s2, s1)).toBe(true);
    }
    // NaNs with payload bits (a NaN's bits are not all alike) code 0 too, in the vector lanes and the tail.
    const y = values(70, 13);
    const bits = new Uint32Array(y.buffer);
    [bits[5], bits[6], bits[69]] = [0x7fc12345, 0xffc0abcd, 0x7f800001];
    const [qa, sa, qb, sb] = [new Int8Array(70), new Float32Array(9), new Int8Array(70), new Float32Array(9)];
    expect(kernels.deltas.quantizeBlocks(y, 8, qb, sb)).toEqual(jsPasses.quantizeBlocks(y, 8, qa, sa));
    expect(qb).toEqual(qa);
    expect([qb[5], qb[6], qb[69]]).toEqual([0, 0, 0]);
  });

  it('dequantizeBlocks finds the first code −128 wherever it falls, as the JavaScript loop does', () => {
    const n = 2 * 16384 + 77;
    const random = rng(13);
    const q = Int8Array.from({ length: n }, (_, i) => ((i * 37) % 255) - 127); // every code but −128
    const scales = new Float32Array(Math.ceil(n / 32));
    fillRandom(scales, random);
    for (const at of [n - 3, 16384 + 5, 3]) { // each before the last: the first now
      q[at] = -128;
      const want = jsPasses.dequantizeBlocks(q, scales, 32, new Float32Array(n));
      expect(want).toBe(at);
      expect(kernels.deltas.dequantizeBlocks(q, scales, 32, new Float32Array(n))).toBe(at);
    }
  });

  it('l2Norm sums the squares in f64 as the JavaScript one does, to its last bits but for the order, in or out of the heap', () => {
    for (const n of LENGTHS) {
      const tensors = [values(n, 5 + n), values(n + 3, 6 + n), new Float32Array(0)];
      // Each square of an f32 is exact in f64: the two differ only in the order of the sums.
      const want = jsPasses.l2Norm(tensors);
      for (const inHeap of [false, true]) {
        const got = kernels.deltas.l2Norm(tensors.map((t) => place(kernels, t, inHeap)));
        expect(Math.abs(got - want) / want, `n ${n} heap ${inHeap}`).toBeLessThan(1e-13);
      }
    }
    expect(kernels.deltas.l2Norm([Float32Array.from([3, -4])])).toBe(5);
    const withNaN = place(kernels, Float32Array.from([1, Number.NaN, 2, 3, 4]), true);
    expect(kernels.deltas.l2Norm([withNaN]), 'a NaN makes the norm NaN: a check on it refuses the contribution').toBeNaN();
  });

  it('allocate gives zeroed heap arrays the passes use in place, and free gives their memory back', () => {
    const before = kernels.heap.allocatedBytes;
    const arrays = LENGTHS.map((n) => kernels.deltas.allocate(n));
    for (const a of arrays) {
      expect(kernels.heap.contains(a) && a.every((x) => x === 0)).toBe(true);
      a.fill(1.5);
    }
    expect(kernels.heap.allocatedBytes).toBeGreaterThan(before);
    for (const a of arrays) kernels.deltas.free(a);
    expect(kernels.heap.allocatedBytes).toBe(before);
    const again = kernels.deltas.allocate(LENGTHS[2]);
    expect(again.every((x) => x === 0), 'memory given back comes back zeroed').toBe(true);
    kernels.deltas.free(again);
  });

  it('refuses arrays of different lengths', () => {
    expect(() => kernels.deltas.subtract(new Float32Array(4), new Float32Array(5), new Float32Array(4))).toThrow(/4, 5, 4/);
    expect(() => kernels.deltas.quantizeBlocks(new Float32Array(8), 4, new Int8Array(8), new Float32Array(3))).toThrow(RangeError);
  });
});
