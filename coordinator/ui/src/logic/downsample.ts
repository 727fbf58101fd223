// Fewer points for a chart than a job's metrics hold: per x bucket (equal widths in linear or log x)
// the lowest and the highest point, so spikes survive and a 100,000-point series draws as a few
// hundred. Also lines series of different x up on one x axis, the table uPlot draws.

export type Scale = 'linear' | 'log';

export interface Series {
  xs: number[];
  ys: number[];
}

/** A y worth drawing: finite (a missing held-out loss is null or undefined). */
function usable(y: number | null | undefined): y is number {
  return typeof y === 'number' && Number.isFinite(y);
}

/**
 * Keeps, in each of `buckets` x buckets, the point of lowest y and the point of highest y (the
 * first one on ties), plus the first and last points; points with no y, and x <= 0 on a log scale,
 * are left out. `xs` must be ascending. Returns at most 2·buckets + 2 points, in x order; a
 * series that already fits comes back whole.
 */
export function downsampleMinMax(
  xs: ArrayLike<number>, ys: ArrayLike<number | null | undefined>, buckets: number, scale: Scale = 'linear',
): Series {
  if (!(buckets >= 1)) throw new RangeError(`downsampleMinMax: buckets must be >= 1, got ${buckets}`);
  const kept: number[] = [];
  for (let i = 0; i < xs.length; i++) if (usable(ys[i]) && (scale === 'linear' || xs[i] > 0)) kept.push(i);
  if (kept.length <= 2 * buckets + 2) return { xs: kept.map((i) => xs[i]), ys: kept.map((i) => ys[i] as number) };

  const position = scale === 'log' ? Math.log : (x: number) => x;
  const start = position(xs[kept[0]]);
  const width = position(xs[kept[kept.length - 1]]) - start;
  const lowest = new Int32Array(buckets).fill(-1);
  const highest = new Int32Array(buckets).fill(-1);
  for (const i of kept) {
    const bucket = width > 0 ? Math.min(buckets - 1, Math.floor(((position(xs[i]) - start) / width) * buckets)) : 0;
    const y = ys[i] as number;
    if (lowest[bucket] < 0 || y < (ys[lowest[bucket]] as number)) lowest[bucket] = i;
    if (highest[bucket] < 0 || y > (ys[highest[bucket]] as number)) highest[bucket] = i;
  }
  const chosen = [kept[0]];
  for (let bucket = 0; bucket < buckets; bucket++) {
    if (lowest[bucket] < 0) continue;
    const pair = lowest[bucket] < highest[bucket] ? [lowest[bucket], highest[bucket]] : [highest[bucket], lowest[bucket]];
    for (const i of pair) if (i > chosen[chosen.length - 1]) chosen.push(i);
  }
  const last = kept[kept.length - 1];
  if (chosen[chosen.length - 1] !== last) chosen.push(last);
  return { xs: chosen.map((i) => xs[i]), ys: chosen.map((i) => ys[i] as number) };
}

/**
 * Series on one shared, ascending x axis (the union of their xs), each with null where it has
 * no point: uPlot's data table, drawn with spanGaps so a sparse series stays one line.
 */
export function alignSeries(series: Series[]): [number[], ...(number | null)[][]] {
  const xs = [...new Set(series.flatMap((s) => s.xs))].sort((a, b) => a - b);
  const column = new Map(xs.map((x, i) => [x, i]));
  const columns = series.map((s) => {
    const ys: (number | null)[] = new Array(xs.length).fill(null);
    s.xs.forEach((x, i) => { ys[column.get(x)!] = s.ys[i]; });
    return ys;
  });
  return [xs, ...columns];
}
