// The aggregation of a round's contributions (src/averaging/aggregate.ts) against float64 answers
// computed here: the staleness-weighted mean, and the trimmed mean with outliers, ties and too few
// contributions to trim.
import { describe, expect, it } from 'vitest';
import { aggregate, stalenessWeight, trimmedMean, weightedMean, type Contribution } from '../../src/averaging/index.ts';
import { bitEqual, maxRelError, rng } from '../helpers.ts';

/** Contributions of two tensors (5 and 3 values) with random values, one per (sender, round). */
function contributions(rounds: Record<string, number>, seed: number): Contribution[] {
  const random = rng(seed);
  return Object.entries(rounds).map(([sender, round]) => ({
    sender, round, values: [5, 3].map((n) => Float32Array.from({ length: n }, () => random())),
  }));
}

/** Σ wₖ·xₖ / Σ wₖ per coordinate, in float64. */
function weightedMean64(parts: Float32Array[][], weights: number[]): number[][] {
  const total = weights.reduce((a, b) => a + b, 0);
  return parts[0].map((t, i) => Array.from(t, (_, j) => parts.reduce((s, p, k) => s + weights[k] * p[i][j], 0) / total));
}

/** Per coordinate: sort, drop `cut` at each end, average the rest, in float64. */
function trimmedMean64(column: number[], cut: number): number {
  const kept = [...column].sort((a, b) => a - b).slice(cut, column.length - cut);
  return kept.reduce((a, b) => a + b, 0) / kept.length;
}

const single = (values: number[]) => [Float32Array.from(values)];
const column = (result: Float32Array[]) => Array.from(result[0]);

describe('staleness-weighted mean', () => {
  it('weighs a contribution k rounds late by 1 / (1 + k), and one from a later round fully', () => {
    expect([0, 1, 3, -2].map(stalenessWeight)).toEqual([1, 1 / 2, 1 / 4, 1]);
    const round = 7;
    const list = contributions({ a: 7, b: 6, c: 4, d: 8 }, 1);
    const expected = weightedMean64(list.map((c) => c.values), [1, 1 / 2, 1 / 4, 1]);
    const mean = aggregate(list, round);
    expected.forEach((tensor, i) => expect(maxRelError(mean[i], tensor)).toBeLessThan(1e-6));
  });

  it('sums in (round, sender) order, so the arrival order does not change a bit', () => {
    const list = contributions({ c: 3, a: 3, b: 2, d: 3 }, 2);
    const reversed = aggregate([...list].reverse(), 3);
    const shuffled = aggregate([list[2], list[0], list[3], list[1]], 3);
    reversed.forEach((t, i) => expect(bitEqual(t, shuffled[i])).toBe(true));
  });

  it('with equal weights is the plain mean (what synchronous averaging of gradients uses)', () => {
    const list = contributions({ a: 0, b: 0, c: 0 }, 3);
    const expected = weightedMean64(list.map((c) => c.values), [1, 1, 1]);
    weightedMean(list.map((c) => c.values), [1, 1, 1]).forEach((t, i) => expect(maxRelError(t, expected[i])).toBeLessThan(1e-6));
  });

  it.each([1, 2, 3])('%i contributions into `out`, even one\'s own arrays, give the bits of an f32 sum part by part', (count) => {
    const random = rng(7 + count);
    const list = ['a', 'b', 'c'].slice(0, count).map((sender, k) => ({
      sender, round: 4 - k, values: [1000, 5].map((n) => Float32Array.from({ length: n }, (_, j) => (j % 9 === 0 ? -0 : random()))),
    }));
    const weights = list.map((c) => stalenessWeight(4 - c.round));
    const total = weights.reduce((a, b) => a + b, 0);
    // The documented order: f32 running sums (from +0) over the contributions in (round, sender) order, then one division.
    const expected = list[0].values.map((t, i) => {
      const sums = new Float32Array(t.length);
      for (let k = count - 1; k >= 0; k--) list[k].values[i].forEach((x, j) => (sums[j] += weights[k] * x));
      return sums.map((s) => s / total);
    });
    const fresh = aggregate(list, 4);
    const into = list[count >> 1].values; // for 3, the middle part of the sum: read before it is written over
    expect(aggregate(list, 4, {}, into)).toBe(into);
    expected.forEach((t, i) => {
      expect(bitEqual(fresh[i], t)).toBe(true);
      expect(bitEqual(into[i], t)).toBe(true);
    });
  });

  it('the trimmed mean into a contribution\'s own arrays gives the bits of a fresh one', () => {
    const list = contributions({ a: 4, b: 4, c: 3, d: 4, e: 2 }, 8);
    const trimmed = aggregate(list, 4, { aggregator: 'trimmed-mean', trim: 0.2 });
    const into = aggregate(list, 4, { aggregator: 'trimmed-mean', trim: 0.2 }, list[0].values);
    trimmed.forEach((t, i) => expect(bitEqual(into[i], t)).toBe(true));
  });

  it('refuses no parts, or parts and weights of different counts', () => {
    expect(() => weightedMean([], [])).toThrow(RangeError);
    expect(() => weightedMean([single([1])], [1, 1])).toThrow(RangeError);
  });
});

describe('trimmed mean', () => {
  it('drops floor(trim·n) values at each end: outliers on both sides do not move it', () => {
    const columns = [[1, 1.1, 0.9, 1e6, -1e6, 1.05, 0.95], [0.5, -3e5, 0.4, 0.6, 2e5, 0.45, 0.55]];
    const parts = columns[0].map((_, k) => [Float32Array.from(columns.map((c) => c[k]))]);
    const result = trimmedMean(parts, 0.2); // 7 values: one dropped at each end
    columns.forEach((c, j) => expect(result[0][j]).toBeCloseTo(trimmedMean64(c.map(Math.fround), 1), 6));
    expect(result[0][0]).toBeCloseTo(1, 6);
  });

  it('ties at the cut count once each: one copy goes, the others stay', () => {
    const ties = [2, 2, 2, 2, 9];
    expect(column(trimmedMean(ties.map((v) => single([v])), 0.2))).toEqual([trimmedMean64(ties, 1)]);
    expect(trimmedMean64(ties, 1)).toBe(2);
    const split = [7, 3, 7, 3, 7];
    expect(column(trimmedMean(split.map((v) => single([v])), 0.2))[0]).toBeCloseTo(17 / 3, 6);
  });

  it('trims per coordinate: each coordinate drops its own extremes', () => {
    const random = rng(4);
    const parts = Array.from({ length: 10 }, () => [Float32Array.from({ length: 6 }, () => random() * 10)]);
    const result = trimmedMean(parts, 0.3); // 10 values: three dropped at each end
    for (let j = 0; j < 6; j++) expect(result[0][j]).toBeCloseTo(trimmedMean64(parts.map((p) => p[0][j]), 3), 5);
  });

  it('when floor(trim·n) is 0 nothing is trimmed: the unweighted mean, staleness ignored', () => {
    const list = contributions({ a: 5, b: 2, c: 5, d: 5 }, 5); // 4 × 0.2 rounds down to 0
    const unweighted = weightedMean64(list.map((c) => c.values), [1, 1, 1, 1]);
    const result = aggregate(list, 5, { aggregator: 'trimmed-mean', trim: 0.2 });
    unweighted.forEach((t, i) => expect(maxRelError(result[i], t)).toBeLessThan(1e-6));
  });

  it('with two contributions or fewer there is no majority to trim to: the staleness-weighted mean', () => {
    const list = contributions({ a: 3, b: 2 }, 6);
    const weighted = weightedMean64(list.map((c) => c.values), [1, 1 / 2]);
    const result = aggregate(list, 3, { aggregator: 'trimmed-mean', trim: 0.4 });
    weighted.forEach((t, i) => expect(maxRelError(result[i], t)).toBeLessThan(1e-6));
    const alone = aggregate(list.slice(0, 1), 3, { aggregator: 'trimmed-mean' });
    alone.forEach((t, i) => expect(bitEqual(t, list[0].values[i])).toBe(true));
  });

  it('at the largest trim below one half, at least the median remains', () => {
    expect(column(trimmedMean([5, -100, 4, 100, 3].map((v) => single([v])), 0.49))).toEqual([4]);
    expect(() => trimmedMean([single([1])], 0.5)).toThrow(RangeError);
    expect(() => trimmedMean([], 0.2)).toThrow(RangeError);
  });
});
