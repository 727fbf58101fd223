// The chart's downsampling against a brute-force reference: every bucket keeps its extremes, only
// input points come out, in order, and a 100,000-point series comes out a few hundred points.
import { describe, expect, it } from 'vitest';
import { alignSeries, downsampleMinMax, type Scale } from '../../../coordinator/ui/src/logic/downsample.ts';
import { lossChartData } from '../../../coordinator/ui/src/logic/job-metrics.ts';
import type { MetricPoint } from '../../../coordinator/api/service.ts';

/** A seeded generator, so a failure reproduces. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/** Ascending, irregular, non-integer xs (so none sits on a bucket edge) with noisy ys and a few gaps. */
function series(count: number, seed: number): { xs: number[]; ys: (number | undefined)[] } {
  const next = random(seed);
  const xs: number[] = [];
  const ys: (number | undefined)[] = [];
  let x = 0.37;
  for (let i = 0; i < count; i++) {
    x += 0.1 + next() * 3.3;
    xs.push(x);
    ys.push(next() < 0.05 ? undefined : 5 / Math.sqrt(1 + i) + next() - (next() < 0.01 ? 20 : 0));
  }
  return { xs, ys };
}

/** The reference: per bucket [lo, hi) in (log) x, scanned point by point, its lowest and highest y. */
function bucketExtremes(xs: number[], ys: (number | undefined)[], buckets: number, scale: Scale) {
  const f = scale === 'log' ? Math.log10 : (x: number) => x;
  const points = xs.map((x, i) => ({ x, y: ys[i] })).filter((p) => p.y !== undefined && (scale === 'linear' || p.x > 0));
  const lo = f(points[0].x);
  const span = f(points[points.length - 1].x) - lo;
  const extremes: { min: number; max: number }[] = [];
  for (let b = 0; b < buckets; b++) {
    const inside = points.filter((p) => {
      const t = (f(p.x) - lo) / span;
      return t >= b / buckets && (b === buckets - 1 ? t <= 1 : t < (b + 1) / buckets);
    });
    if (inside.length) extremes.push({ min: Math.min(...inside.map((p) => p.y!)), max: Math.max(...inside.map((p) => p.y!)) });
  }
  return { points, extremes, lo, span, f };
}

describe('downsampleMinMax', () => {
  for (const scale of ['linear', 'log'] as const) {
    it(`keeps each ${scale} bucket's lowest and highest point, only input points, in order`, () => {
      const { xs, ys } = series(5000, scale === 'log' ? 7 : 3);
      const buckets = 120;
      const out = downsampleMinMax(xs, ys, buckets, scale);
      const reference = bucketExtremes(xs, ys, buckets, scale);

      expect(out.xs.length).toBeLessThanOrEqual(2 * buckets + 2);
      const input = new Map(reference.points.map((p) => [p.x, p.y]));
      out.xs.forEach((x, i) => {
        expect(input.get(x)).toBe(out.ys[i]);
        if (i > 0) expect(x).toBeGreaterThan(out.xs[i - 1]);
      });
      expect(out.xs[0]).toBe(reference.points[0].x);
      expect(out.xs[out.xs.length - 1]).toBe(reference.points[reference.points.length - 1].x);
      // Every non-empty reference bucket shows its extremes among the kept points of that bucket.
      let bucket = 0;
      for (let b = 0; b < buckets; b++) {
        const kept = out.xs.map((x, i) => ({ x, y: out.ys[i] })).filter((p) => {
          const t = (reference.f(p.x) - reference.lo) / reference.span;
          return t >= b / buckets && (b === buckets - 1 ? t <= 1 : t < (b + 1) / buckets);
        });
        if (kept.length === 0) continue;
        const expected = reference.extremes[bucket++];
        expect(Math.min(...kept.map((p) => p.y))).toBe(expected.min);
        expect(Math.max(...kept.map((p) => p.y))).toBe(expected.max);
      }
      expect(bucket).toBe(reference.extremes.length);
    });
  }

  it('returns a short series whole, gaps and (on log x) non-positive xs left out', () => {
    expect(downsampleMinMax([0, 1, 2, 3], [4, undefined, 2, null], 10)).toEqual({ xs: [0, 2], ys: [4, 2] });
    expect(downsampleMinMax([0, 1, 2, 3], [4, 3, 2, 1], 10, 'log')).toEqual({ xs: [1, 2, 3], ys: [3, 2, 1] });
  });

  it('keeps a single spike of a 100,000-point series in a few hundred points', () => {
    const xs = Array.from({ length: 100_000 }, (_, i) => i + 1);
    const ys = xs.map((x) => (x === 61_234 ? 50 : 3 + Math.sin(x / 100)));
    const out = downsampleMinMax(xs, ys, 400);
    expect(out.xs.length).toBeLessThanOrEqual(802);
    expect(out.xs).toContain(61_234);
    expect(Math.max(...out.ys)).toBe(50);
  });

  it('refuses a bucket count below 1', () => {
    expect(() => downsampleMinMax([1], [1], 0)).toThrow(/buckets must be >= 1/);
  });
});

describe('alignSeries', () => {
  it('puts series of different xs on one sorted x axis with nulls where a series has no point', () => {
    expect(alignSeries([{ xs: [1, 2, 4], ys: [10, 20, 40] }, { xs: [2, 3], ys: [0.2, 0.3] }])).toEqual([
      [1, 2, 3, 4], [10, 20, null, 40], [null, 0.2, 0.3, null],
    ]);
  });
});

describe('lossChartData', () => {
  it('turns 100,000 samples into an aligned table of a few hundred rows with sparse held-out losses', () => {
    const points: MetricPoint[] = Array.from({ length: 100_000 }, (_, i) => ({
      at: i * 1000, completed: i + 1, loss: 5 - i / 50_000, ...(i % 100 === 0 ? { heldOut: 6 - i / 50_000 } : {}),
      tokensPerSecond: 1, nodes: 1, bytesSent: 0, bytesReceived: 0, refusedUpdates: 0, droppedExpertCalls: 0, staleness: 0,
    }));
    const [xs, loss, heldOut] = lossChartData(points, 300, 'log');
    expect(xs.length).toBeLessThanOrEqual(2 * (2 * 300 + 2));
    expect(loss.length).toBe(xs.length);
    expect(heldOut.length).toBe(xs.length);
    expect(xs[0]).toBe(1);
    expect(xs[xs.length - 1]).toBe(100_000);
    // The first and last held-out samples (batches 1 and 99,901) survive, with their values.
    expect(heldOut[xs.indexOf(1)]).toBe(6);
    expect(heldOut[xs.indexOf(99_901)]).toBeCloseTo(6 - 99_900 / 50_000, 12);
  });
});
