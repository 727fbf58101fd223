// Outlier refusal for a group's contributions: non-finite values, and norms far above the
// median of the group's recent norms. Pure bookkeeping over f32 tensors, no I/O.

/** A contribution whose norm exceeds this many times the group's median recent norm is refused. */
const DEFAULT_MAX_NORM_RATIO = 10;
/** Recent accepted norms kept per group. */
const NORM_HISTORY = 32;

/**
 * The L2 norm over all of a contribution's tensors (in f64). Four running sums (value i of a tensor
 * into sum i mod 4): one sum waits out the adder's latency at every value, which made this ~2.3×
 * slower. Holders need not agree on a norm's last bits: it is only compared, with slack, to others.
 */
export function l2Norm(values: readonly Float32Array[]): number {
  // Plain indexed loops: a reduce with a callback per value cost a round ~50 ms per million values, and for-of
  // over the tensors got this deoptimized again and again.
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  for (let t = 0; t < values.length; t++) {
    const v = values[t];
    const n = v.length;
    const whole = n - (n % 4);
    let i = 0;
    for (; i < whole; i += 4) {
      s0 += v[i] * v[i];
      s1 += v[i + 1] * v[i + 1];
      s2 += v[i + 2] * v[i + 2];
      s3 += v[i + 3] * v[i + 3];
    }
    for (; i < n; i++) s0 += v[i] * v[i];
  }
  return Math.sqrt(s0 + s1 + (s2 + s3));
}

/** Where the first NaN or ±Infinity is, if any. */
export function firstNonFinite(values: readonly Float32Array[]): { tensor: number; index: number } | undefined {
  for (const [tensor, v] of values.entries()) {
    for (let index = 0; index < v.length; index++) if (!Number.isFinite(v[index])) return { tensor, index };
  }
  return undefined;
}

export interface Refusal<T> {
  contribution: T;
  norm: number;
  /** The norm above which contributions were refused this round. */
  limit: number;
}

/**
 * One group's outlier test. Each round, the median is taken over the recent history, this
 * holder's own norm and every arrival's (while most holders are honest, the median is theirs);
 * an arrival with a non-finite value or a norm over maxRatio × median is refused. Accepted norms
 * and our own join the history.
 */
export class NormScreen {
  private history: number[] = [];

  constructor(private readonly maxRatio = DEFAULT_MAX_NORM_RATIO, private readonly historyLength = NORM_HISTORY) {}

  /** `mine`: this holder's contribution, or its norm (taken while its values were still in cache). */
  screen<T extends { values: readonly Float32Array[]; norm?: number }>(
    mine: readonly Float32Array[] | number, arrived: readonly T[],
  ): { accepted: T[]; refused: Refusal<T>[] } {
    const myNorm = typeof mine === 'number' ? mine : l2Norm(mine);
    return this.screenNorms(myNorm, arrived, arrived.map((c) => c.norm ?? l2Norm(c.values)));
  }

  /**
   * screen() with the norms given: under reduce-scatter an owner sees only a part of each delta
   * and screens it by the norm of the whole delta its sender states (see node/averaging).
   */
  screenNorms<T>(myNorm: number, arrived: readonly T[], norms: readonly number[]): { accepted: T[]; refused: Refusal<T>[] } {
    const limit = this.limit(myNorm, norms);
    const accepted: T[] = [];
    const refused: Refusal<T>[] = [];
    arrived.forEach((contribution, k) => {
      const norm = norms[k];
      // A NaN or Infinity anywhere makes the norm non-finite (f32 squares cannot overflow f64).
      if (!Number.isFinite(norm) || norm > limit) {
        refused.push({ contribution, norm, limit });
        return;
      }
      accepted.push(contribution);
      this.history.push(norm);
    });
    this.history.push(myNorm);
    this.history = this.history.slice(-this.historyLength);
    return { accepted, refused };
  }

  /**
   * maxRatio × the median of the recent history, our norm and the arrivals' norms. Of an even
   * count the lower median: with no history, our norm and one arrival judge that arrival by ours.
   */
  limit(myNorm: number, norms: readonly number[] = []): number {
    const sorted = [...this.history, myNorm, ...norms].sort((a, b) => a - b);
    return this.maxRatio * sorted[(sorted.length - 1) >> 1];
  }
}
