// Outlier refusal (src/averaging/screen.ts): non-finite contributions, and norms far above the
// median of the group's recent norms, this holder's and this round's arrivals, computed here in float64.
import { describe, expect, it } from 'vitest';
import { firstNonFinite, l2Norm, NormScreen } from '../../src/averaging/index.ts';

/** A contribution of two tensors whose norm is `norm` (all values equal). */
function ofNorm(sender: string, norm: number): { sender: string; values: Float32Array[] } {
  const value = norm / Math.sqrt(8);
  return { sender, values: [new Float32Array(4).fill(value), new Float32Array(4).fill(value)] };
}

const senders = (list: { sender: string }[]) => list.map((c) => c.sender);

describe('outlier refusal', () => {
  it('the norm is the L2 norm over all tensors', () => {
    expect(l2Norm([Float32Array.from([3]), Float32Array.from([4, 12])])).toBe(13);
  });

  it('the norm of tensors of every length mod 4 is the float64 norm to rounding', () => {
    const values = [0, 1, 2, 3, 5, 10_003].map((n, k) => Float32Array.from({ length: n }, (_, j) => Math.sin(k + j) * 10 ** (j % 7 - 3)));
    const norm64 = Math.sqrt(values.reduce((s, v) => v.reduce((t, x) => t + x * x, s), 0));
    expect(Math.abs(l2Norm(values) - norm64) / norm64).toBeLessThan(1e-13);
    expect(l2Norm(values.slice(0, 4))).toBeCloseTo(Math.hypot(...values.slice(0, 4).flatMap((v) => Array.from(v))), 15);
  });

  it('finds the first NaN or Infinity and refuses a contribution that has one', () => {
    expect(firstNonFinite([Float32Array.from([1, 2]), Float32Array.from([3, NaN, Infinity])])).toEqual({ tensor: 1, index: 1 });
    expect(firstNonFinite([Float32Array.from([1, -Infinity])])).toEqual({ tensor: 0, index: 1 });
    expect(firstNonFinite([Float32Array.from([1, 2])])).toBeUndefined();
    const nan = ofNorm('nan', 1);
    nan.values[1][2] = NaN;
    const inf = ofNorm('inf', 1);
    inf.values[0][0] = -Infinity;
    const { accepted, refused } = new NormScreen().screen(ofNorm('me', 1).values, [nan, ofNorm('ok', 1.2), inf]);
    expect(senders(accepted)).toEqual(['ok']);
    expect(senders(refused.map((r) => r.contribution))).toEqual(['nan', 'inf']);
  });

  it('refuses a norm over maxRatio × the median of ours and the arrivals', () => {
    const arrived = [ofNorm('a', 1.5), ofNorm('b', 2), ofNorm('c', 25), ofNorm('d', 19)];
    const norms = [1, 1.5, 2, 25, 19].sort((x, y) => x - y);
    const limit = 10 * norms[Math.floor(norms.length / 2)]; // 10 × 2
    const { accepted, refused } = new NormScreen(10).screen(ofNorm('me', 1).values, arrived);
    expect(senders(accepted)).toEqual(['a', 'b', 'd']);
    expect(refused).toHaveLength(1);
    expect(refused[0].contribution.sender).toBe('c');
    expect(refused[0].limit).toBeCloseTo(limit, 5);
    expect(refused[0].norm).toBeCloseTo(25, 5);
  });

  it('remembers the group\'s recent norms: a round where big norms outnumber ours is still judged by the history', () => {
    const screen = new NormScreen(10);
    for (let round = 0; round < 5; round++) screen.screen(ofNorm('me', 1).values, [ofNorm('a', 1), ofNorm('b', 1)]);
    const poisoned = [ofNorm('x', 50), ofNorm('y', 60)];
    expect(senders(screen.screen(ofNorm('me', 1).values, poisoned).refused.map((r) => r.contribution))).toEqual(['x', 'y']);
    // Without the history the median is theirs and they pass.
    expect(senders(new NormScreen(10).screen(ofNorm('me', 1).values, poisoned).accepted)).toEqual(['x', 'y']);
  });

  it('keeps only the last historyLength norms: an old regime is forgotten', () => {
    const screen = new NormScreen(10, 4);
    for (let round = 0; round < 3; round++) screen.screen(ofNorm('me', 1).values, [ofNorm('a', 1)]);
    // Three rounds at norm 100 (the first two arrivals are refused: the lower median is still 1) leave a history of four 100s...
    for (let round = 0; round < 3; round++) screen.screen(ofNorm('me', 100).values, [ofNorm('a', 100)]);
    // ...so a norm of 500 is within 10 × the median now, though 500 × the old one.
    expect(senders(screen.screen(ofNorm('me', 100).values, [ofNorm('b', 500)]).accepted)).toEqual(['b']);
  });

  it('screenNorms judges by stated norms as screen does by computed ones, and limit() is maxRatio × the median', () => {
    const arrived = [ofNorm('a', 1), ofNorm('b', 1.5), ofNorm('c', 40), ofNorm('d', 0.8)];
    const computed = new NormScreen(10).screen(ofNorm('me', 1.1).values, arrived);
    const stated = new NormScreen(10).screenNorms(1.1, arrived, [1, 1.5, 40, 0.8]);
    expect(senders(stated.accepted)).toEqual(senders(computed.accepted));
    expect(senders(stated.refused.map((r) => r.contribution))).toEqual(['c']);
    // The median of [0.8, 1, 1.1, 1.5, 40] is 1.1: the limit is 11.
    expect(stated.refused[0].limit).toBeCloseTo(11, 12);
    const screen = new NormScreen(10);
    screen.screenNorms(2, [], []);
    screen.screenNorms(4, [], []);
    expect(screen.limit(3)).toBe(30); // median of [2, 4, 3]
  });

  it('with no history, our norm and one arrival 1000× larger: the arrival is refused (the lower median is ours)', () => {
    const { refused } = new NormScreen(10).screen(ofNorm('me', 1).values, [ofNorm('bad', 1000)]);
    expect(senders(refused.map((r) => r.contribution))).toEqual(['bad']);
    expect(refused[0].limit).toBeCloseTo(10, 5);
  });
});
