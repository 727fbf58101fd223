// Parts and owners (src/averaging/partition.ts): parts cover every value once, cut at rows, fit
// the budget; aggregating part by part equals aggregating the whole, and both equal float64 answers.
import { describe, expect, it } from 'vitest';
import {
  aggregate, fallbackOf, holderOrder, isWholeGroup, ownerOf, partCount, partition, slicePart, writePart, type Contribution, type PartTensor,
} from '../../src/averaging/index.ts';
import { bitEqual, maxRelError, rng } from '../helpers.ts';

const GROUP: PartTensor[] = [
  { name: 'embed', shape: [37, 8] }, { name: 'norm', shape: [8] }, { name: 'scalar', shape: [] },
  { name: 'w', shape: [5, 3, 4] }, { name: 'head', shape: [8, 29] },
];
const sizeOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function randomValues(tensors: PartTensor[], seed: number): Float32Array[] {
  const random = rng(seed);
  return tensors.map((t) => Float32Array.from({ length: sizeOf(t.shape) }, () => random()));
}

describe('partition', () => {
  const covers = 'into %i parts: every value once, in order, at row boundaries, segment shapes that hold them';
  it.each([1, 2, 3, 5, 8, 40, 700])(covers, (count) => {
    const parts = partition(GROUP, count);
    expect(parts.map((p) => p.index)).toEqual([...Array(count).keys()]);
    // Walking the parts in order walks each tensor's rows in order, without gaps or overlaps.
    const next = GROUP.map(() => 0);
    let lastTensor = 0;
    for (const part of parts) {
      for (const s of part.segments) {
        const t = GROUP[s.tensor];
        expect(s.tensor).toBeGreaterThanOrEqual(lastTensor);
        lastTensor = s.tensor;
        expect(s.rowStart).toBe(next[s.tensor]);
        expect(s.rowEnd).toBeGreaterThan(s.rowStart);
        next[s.tensor] = s.rowEnd;
        const rowValues = sizeOf(t.shape.slice(1));
        expect(s.offset).toBe(s.rowStart * rowValues);
        expect(s.length).toBe((s.rowEnd - s.rowStart) * rowValues);
        expect(sizeOf(s.shape)).toBe(s.length);
        expect(s.name).toBe(t.name);
      }
    }
    expect(next).toEqual(GROUP.map((t) => (t.shape.length ? t.shape[0] : 1)));
  });

  it('a whole tensor keeps its shape; a cut one is [rows, ...row shape]', () => {
    const [whole] = partition(GROUP, 1);
    expect(whole.segments.map((s) => s.shape)).toEqual(GROUP.map((t) => t.shape));
    const cut = partition(GROUP, 4).flatMap((p) => p.segments).filter((s) => s.name === 'w' && s.rowEnd - s.rowStart < 5);
    for (const s of cut) expect(s.shape).toEqual([s.rowEnd - s.rowStart, 3, 4]);
  });

  it('partCount: owners × enough rounds of parts that each fits maxPartValues, rows included', () => {
    const total = GROUP.reduce((n, t) => n + sizeOf(t.shape), 0); // 296 + 8 + 1 + 60 + 232 = 597
    expect(total).toBe(597);
    expect(partCount(GROUP, 1, 1000)).toBe(1);
    expect(partCount(GROUP, 4, 1000)).toBe(4);
    for (const [owners, max] of [[1, 100], [3, 100], [2, 60], [6, 40]]) {
      const count = partCount(GROUP, owners, max);
      expect(count % owners).toBe(0);
      for (const part of partition(GROUP, count)) expect(part.segments.reduce((n, s) => n + s.length, 0)).toBeLessThanOrEqual(max);
    }
    // The longest row (head: 29 values) must leave room: 29 + 1 fits, 29 does not.
    expect(partCount(GROUP, 1, 30)).toBe(597);
    expect(() => partCount(GROUP, 1, 29)).toThrow(/row of 29 values/);
    expect(() => partCount(GROUP, 0, 100)).toThrow(RangeError);
    expect(() => partition(GROUP, 0)).toThrow(RangeError);
  });

  it('slicePart and writePart move a part\'s values and nothing else', () => {
    const values = randomValues(GROUP, 1);
    const copy = values.map((v) => new Float32Array(v.length));
    for (const part of partition(GROUP, 7)) writePart(copy, part, slicePart(values, part).map((v) => v.slice()));
    copy.forEach((v, i) => expect(bitEqual(v, values[i])).toBe(true));
  });
});

describe('whole group', () => {
  it('one part holds the group whole; a part of several, or other lengths, does not', () => {
    const lengths = GROUP.map((t) => sizeOf(t.shape));
    expect(isWholeGroup(partition(GROUP, 1)[0], lengths)).toBe(true);
    expect(partition(GROUP, 2).some((p) => isWholeGroup(p, lengths))).toBe(false);
    expect(isWholeGroup(partition(GROUP, 1)[0], [...lengths.slice(1), lengths[0]])).toBe(false);
  });
});

describe('owners', () => {
  it('holders in peer-id order own parts in turn; the fallback is the next holder', () => {
    const ordered = holderOrder(['c', 'a', 'd', 'b']);
    expect(ordered).toEqual(['a', 'b', 'c', 'd']);
    expect([0, 1, 2, 3, 4, 7].map((k) => ownerOf(k, ordered))).toEqual(['a', 'b', 'c', 'd', 'a', 'd']);
    expect([0, 3, 7].map((k) => fallbackOf(k, ordered))).toEqual(['b', 'a', 'a']);
    expect(fallbackOf(5, ['solo'])).toBe('solo');
  });
});

describe('aggregation part by part', () => {
  const rounds = { a: 4, b: 3, c: 4, d: 2, e: 4, f: 4 };
  const contributions: Contribution[] = Object.entries(rounds).map(([sender, round], k) => ({
    sender, round, values: randomValues(GROUP, 10 + k),
  }));
  const parts = partition(GROUP, 6);

  function byParts(options: Parameters<typeof aggregate>[2]): Float32Array[] {
    const out = GROUP.map((t) => new Float32Array(sizeOf(t.shape)));
    for (const part of parts) {
      writePart(out, part, aggregate(contributions.map((c) => ({ ...c, values: slicePart(c.values, part) })), 4, options));
    }
    return out;
  }

  it('the staleness-weighted mean of the parts is the whole one, bit for bit, and the float64 answer', () => {
    const whole = aggregate(contributions, 4);
    byParts({}).forEach((v, i) => expect(bitEqual(v, whole[i])).toBe(true));
    const weights = contributions.map((c) => 1 / (1 + 4 - c.round));
    const total = weights.reduce((a, b) => a + b, 0);
    GROUP.forEach((_, i) => {
      const expected = Array.from(whole[i], (_, j) => contributions.reduce((s, c, k) => s + weights[k] * c.values[i][j], 0) / total);
      expect(maxRelError(whole[i], expected)).toBeLessThan(1e-6);
    });
  });

  it('the trimmed mean of the parts is the whole one, bit for bit', () => {
    const options = { aggregator: 'trimmed-mean' as const, trim: 0.2 };
    const whole = aggregate(contributions, 4, options);
    byParts(options).forEach((v, i) => expect(bitEqual(v, whole[i])).toBe(true));
  });
});
