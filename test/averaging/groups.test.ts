// Small groups per round (src/averaging/groups.ts): the split is deterministic, disjoint, covers every
// member, respects the size bound and changes from round to round; averaging within each round's groups
// (simulated here in float64) reaches the exact global mean after one epoch on a full grid, and
// approaches it on any grid.
import { describe, expect, it } from 'vitest';
import { gridSides, groupOf, roundGroups } from '../../src/averaging/index.ts';
import { rng } from '../helpers.ts';

const members = (n: number) => Array.from({ length: n }, (_, i) => `peer-${String(i).padStart(3, '0')}`);
const key = (groups: string[][]) => JSON.stringify(groups);

/** One round of plain group means over `values` (member → value), in float64. */
function averageRound(values: Map<string, number>, round: number, size: number): void {
  for (const group of roundGroups([...values.keys()], round, size)) {
    const mean = group.reduce((s, m) => s + values.get(m)!, 0) / group.length;
    for (const m of group) values.set(m, mean);
  }
}

describe('roundGroups', () => {
  const bounds = 'N = 1..40, G = 2..6: disjoint, covering, at most G, alone only when every other group is full';
  it(bounds, () => {
    for (let n = 1; n <= 40; n++) {
      for (let size = 2; size <= 6; size++) {
        for (let round = 0; round < 6; round++) {
          const groups = roundGroups(members(n), round, size);
          const flat = groups.flat();
          expect(new Set(flat).size, `N=${n} G=${size} r=${round}`).toBe(flat.length);
          expect([...flat].sort()).toEqual(members(n));
          for (const g of groups) expect(g.length).toBeLessThanOrEqual(size);
          if (n > 1 && groups.some((g) => g.length === 1)) {
            for (const g of groups.filter((g) => g.length > 1)) expect(g.length, `N=${n} G=${size} r=${round}`).toBe(size);
          }
        }
      }
    }
  });

  it('is the same on every holder: it depends on the member set and the round, not on the list\'s order', () => {
    const list = members(13);
    const shuffled = [...list].reverse();
    for (let round = 0; round < 8; round++) {
      expect(key(roundGroups(shuffled, round, 4))).toBe(key(roundGroups(list, round, 4)));
      for (const m of list) expect(groupOf(m, shuffled, round, 4)).toContain(m);
    }
  });

  it('changes from one round to the next when there are more members than one group holds', () => {
    for (const [n, size] of [[5, 4], [8, 4], [8, 2], [16, 4], [30, 3]]) {
      const rounds = Array.from({ length: 12 }, (_, r) => key(roundGroups(members(n), r, size)));
      for (let r = 1; r < rounds.length; r++) expect(rounds[r], `N=${n} G=${size} r=${r}`).not.toBe(rounds[r - 1]);
    }
  });

  it('N ≤ G is one group of everyone, every round', () => {
    for (let round = 0; round < 4; round++) expect(roundGroups(members(4), round, 4)).toEqual([members(4)]);
  });

  it('refuses a size below 2, a negative round and no member', () => {
    expect(() => roundGroups(members(4), 0, 1)).toThrow(/group size must be an integer ≥ 2/);
    expect(() => roundGroups(members(4), -1, 4)).toThrow(/round must be an integer ≥ 0/);
    expect(() => groupOf('nobody', members(4), 0, 2)).toThrow(/not a member/);
  });
});

describe('gridSides', () => {
  it.each([[8, 4, [2, 4]], [16, 4, [4, 4]], [6, 4, [2, 3]], [8, 2, [2, 2, 2]], [5, 4, [2, 3]], [3, 4, [3]], [1, 4, [1]]])(
    'N=%i, G=%i: %j', (n, size, sides) => expect(gridSides(n, size)).toEqual(sides),
  );
});

describe('averaging in round groups (float64)', () => {
  const exact = 'full grid N=%i, G=%i: one epoch (d rounds) leaves everyone at the exact global mean';
  it.each([[8, 4], [16, 4], [8, 2], [6, 3], [27, 3]])(exact, (n, size) => {
    const random = rng(n * 10 + size);
    const values = new Map(members(n).map((m) => [m, random()]));
    const global = [...values.values()].reduce((a, b) => a + b, 0) / n;
    const dims = gridSides(n, size).length;
    for (let epoch = 0; epoch < 2; epoch++) {
      for (let round = epoch * dims; round < (epoch + 1) * dims; round++) averageRound(values, round, size);
      for (const v of values.values()) expect(v).toBeCloseTo(global, 12);
    }
  });

  const mixes = 'N=%i, G=%i: the global mean is kept and the spread shrinks to nothing';
  it.each([[5, 4], [7, 4], [13, 4], [30, 4], [11, 2]])(mixes, (n, size) => {
    const random = rng(n + 100 * size);
    const values = new Map(members(n).map((m) => [m, random()]));
    const global = [...values.values()].reduce((a, b) => a + b, 0) / n;
    const spread = () => Math.max(...[...values.values()].map((v) => Math.abs(v - global)));
    const before = spread();
    for (let round = 0; round < 40; round++) averageRound(values, round, size);
    // A group mean keeps its group's sum, so the global mean never moves; unequal groups only slow the mixing.
    expect([...values.values()].reduce((a, b) => a + b, 0) / n).toBeCloseTo(global, 12);
    expect(spread()).toBeLessThan(1e-4 * before);
  });
});
