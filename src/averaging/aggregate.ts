// Combining the holders' contributions to a round into one update: the staleness-weighted mean
// and the coordinate-wise trimmed mean. Pure arithmetic over lists of f32 tensors, no I/O.
import { jsPasses, type RoundPasses } from './passes.ts';

/** One holder's tensors for a round (gradients or parameter deltas, in the group's fixed order). */
export interface Contribution {
  sender: string;
  round: number;
  values: Float32Array[];
  /** The L2 norm of `values`, when the receiver already computed it (the outlier screen reads it). */
  norm?: number;
}

export interface AggregatorOptions {
  /** mean (staleness-weighted), or the coordinate-wise trimmed mean against poisoned updates. */
  aggregator?: 'mean' | 'trimmed-mean';
  /** Fraction of the values dropped at each end by the trimmed mean (default 0.2). */
  trim?: number;
}

const DEFAULT_TRIM = 0.2;

/** A contribution `late` rounds behind the current one counts 1 / (1 + late); one from a later round counts fully. */
export function stalenessWeight(late: number): number {
  return 1 / (1 + Math.max(0, late));
}

/**
 * Σ wₖ·xₖ / Σ wₖ per coordinate, accumulated in f32 in the order given: the same inputs in the
 * same order give the same bits on every holder. Into `out` when given, which may be one of the
 * parts' own arrays (each coordinate is read from every part before it is written). Two parts (the common
 * round) take `passes`' meanOfTwo.
 */
export function weightedMean(
  parts: readonly (readonly Float32Array[])[], weights: readonly number[], out?: Float32Array[], passes: RoundPasses = jsPasses,
): Float32Array[] {
  if (parts.length === 0 || parts.length !== weights.length) {
    throw new RangeError(`weightedMean: ${parts.length} parts, ${weights.length} weights`);
  }
  const result = out ?? zerosLike(parts[0]);
  const total = weights.reduce((a, b) => a + b, 0);
  result.forEach((mean, i) => {
    const xs = parts.map((p) => p[i]);
    if (xs.length === 2) passes.meanOfTwo(mean, xs[0], xs[1], weights[0], weights[1], total);
    else meanOfAny(mean, xs, weights, total);
  });
  return result;
}

const zerosLike = (values: readonly Float32Array[]) => values.map((v) => new Float32Array(v.length));

/** One coordinate at a time: the running sum starts at +0 and is rounded to f32 after every part, as an f32 array's would be. */
function meanOfAny(out: Float32Array, xs: readonly Float32Array[], weights: readonly number[], total: number): void {
  const last = xs.length - 1;
  const x = xs[last];
  const weight = weights[last];
  for (let j = 0; j < out.length; j++) {
    let sum = 0;
    for (let k = 0; k < last; k++) sum = Math.fround(sum + weights[k] * xs[k][j]);
    out[j] = Math.fround(sum + weight * x[j]) / total;
  }
}

/**
 * Per coordinate: sorts the n values, drops floor(trim·n) at each end and averages the rest in
 * f64. With trim < 0.5 at least one value always remains; when floor(trim·n) is 0 (e.g. n < 5 at
 * the default 0.2) nothing is dropped and this is the plain unweighted mean. Into `out` as
 * weightedMean.
 */
export function trimmedMean(parts: readonly (readonly Float32Array[])[], trim: number, out?: Float32Array[]): Float32Array[] {
  if (parts.length === 0) throw new RangeError('trimmedMean: no parts');
  if (!(trim >= 0 && trim < 0.5)) throw new RangeError(`trimmedMean: trim must be in [0, 0.5), got ${trim}`);
  const cut = Math.floor(trim * parts.length);
  const column = new Float64Array(parts.length);
  const result = out ?? zerosLike(parts[0]);
  result.forEach((mean, i) => {
    for (let j = 0; j < mean.length; j++) {
      parts.forEach((values, k) => (column[k] = values[i][j]));
      column.sort();
      let sum = 0;
      for (let k = cut; k < column.length - cut; k++) sum += column[k];
      mean[j] = sum / (column.length - 2 * cut);
    }
  });
  return result;
}

/**
 * The update of round `round` from its contributions, taken in (round, sender) order so every
 * holder sums the same way: the staleness-weighted mean, or the trimmed mean (unweighted). The
 * trimmed mean needs three contributions to tell an outlier from the rest: with two or fewer it
 * falls back to the weighted mean. Into `out` when given, which may be a contribution's own arrays.
 */
export function aggregate(
  contributions: readonly Contribution[], round: number, options: AggregatorOptions = {}, out?: Float32Array[],
  passes: RoundPasses = jsPasses,
): Float32Array[] {
  const ordered = [...contributions].sort((a, b) => a.round - b.round || (a.sender < b.sender ? -1 : a.sender > b.sender ? 1 : 0));
  const parts = ordered.map((c) => c.values);
  if (options.aggregator === 'trimmed-mean' && ordered.length > 2) return trimmedMean(parts, options.trim ?? DEFAULT_TRIM, out);
  return weightedMean(parts, ordered.map((c) => stalenessWeight(round - c.round)), out, passes);
}
