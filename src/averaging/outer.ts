// The outer optimizer of periodic (DiLoCo-style) averaging for one group: the pseudo-gradient
// since the last round, and the Nesterov outer step that applies the round's mean of them.
import { jsPasses, type RoundPasses } from './passes.ts';

export interface OuterStepOptions {
  /** Outer learning rate (default 1). */
  lr?: number;
  /** Nesterov momentum μ (default 0: with lr 1, plain averaging). */
  momentum?: number;
  /** Who runs the per-value passes (default jsPasses; a node's kernels.deltas). */
  passes?: RoundPasses;
}

export class OuterStep {
  /** The group's values at its last round: deltas are measured from here. */
  readonly anchor: Float32Array[];
  private readonly lr: number;
  private readonly mu: number;
  private readonly passes: RoundPasses;
  /** The arrays below are made at first use, from the passes (a node's kernel heap), and reused round after round. */
  private momentum?: Float32Array[];
  /** delta()'s arrays. */
  private deltas?: Float32Array[];
  /** With momentum: the update μ·m + Δ̄ of each tensor. */
  private updates?: Float32Array[];
  /** boundary()'s arrays. */
  private boundaries?: Float32Array[];
  /** Rounds under way over these arrays (during()); a retired step frees them when the last one settles. */
  private rounds = 0;
  private isRetired = false;

  constructor(values: readonly Float32Array[], options: OuterStepOptions = {}) {
    this.lr = options.lr ?? 1;
    this.mu = options.momentum ?? 0;
    this.passes = options.passes ?? jsPasses;
    this.anchor = this.arrays(values);
    this.anchor.forEach((a, i) => a.set(values[i]));
  }

  /**
   * values − anchor, per tensor (in f32), into arrays this step reuses from round to round (15 MB
   * fresh a round cost more than the pass that fills them): each call overwrites the last one's.
   */
  delta(values: readonly Float32Array[]): Float32Array[] {
    const deltas = (this.deltas ??= this.arrays(this.anchor));
    values.forEach((v, i) => this.passes.subtract(v, this.anchor[i], deltas[i]));
    return deltas;
  }

  /** A copy of the values at a round's boundary (overlapped averaging), in the arrays of the round before. */
  boundary(values: readonly Float32Array[]): Float32Array[] {
    const boundaries = (this.boundaries ??= this.arrays(this.anchor));
    boundaries.forEach((b, i) => b.set(values[i]));
    return boundaries;
  }

  /**
   * Runs a round that reads or writes this step's arrays (its deltas become the round's mean): retire() leaves
   * them to it, and they are freed when it settles.
   */
  async during<T>(round: Promise<T>): Promise<T> {
    if (this.isRetired) throw new Error('averaging: a round on an outer step already retired');
    this.rounds++;
    try {
      return await round;
    } finally {
      if (--this.rounds === 0 && this.isRetired) this.free();
    }
  }

  /** Whether retire() was called: a round still under way then leaves the node's state alone. */
  get retired(): boolean {
    return this.isRetired;
  }

  /** The group is forgotten: frees the arrays now, or when the rounds under way settle. Not for use afterwards. */
  retire(): void {
    if (this.isRetired) return;
    this.isRetired = true;
    if (this.rounds === 0) this.free();
  }

  /** m ← μ·m + Δ̄; values ← anchor + lr·(μ·m + Δ̄), in place; the anchor moves to the new values. */
  apply(values: Float32Array[], meanDelta: readonly Float32Array[]): void {
    values.forEach((v, i) => this.passes.applyStep(v, this.anchor[i], this.update(i, meanDelta[i]), this.lr));
  }

  /**
   * apply() for a round that lands after training went on from its `boundary` values (overlapped
   * averaging): the values move by what apply() would have moved the boundary, so the steps taken
   * since stay on top of the round's result; the anchor becomes that result.
   */
  applyLate(values: Float32Array[], meanDelta: readonly Float32Array[], boundary: readonly Float32Array[]): void {
    values.forEach((v, i) => this.passes.applyLate(v, this.anchor[i], this.update(i, meanDelta[i]), boundary[i], this.lr));
  }

  /** μ·m + Δ̄ (rounded to f32) after m ← μ·m + Δ̄; with no momentum, Δ̄ itself. */
  private update(i: number, mean: Float32Array): Float32Array {
    const { mu } = this;
    if (mu === 0) return mean;
    const m = (this.momentum ??= this.arrays(this.anchor))[i];
    const update = (this.updates ??= this.arrays(this.anchor))[i];
    for (let j = 0; j < mean.length; j++) {
      m[j] = mu * m[j] + mean[j];
      update[j] = mu * m[j] + mean[j];
    }
    return update;
  }

  /**
   * A round with no other holder: the mean is this holder's own delta. With lr 1 and no momentum the
   * values stay as they are (bit for bit: anchor + (v − anchor) can round away from v in f32).
   */
  applyOwn(values: Float32Array[]): void {
    if (this.lr === 1 && this.mu === 0) values.forEach((v, i) => this.anchor[i].set(v));
    else this.apply(values, this.delta(values));
  }

  /** Zeroed arrays of the tensors' lengths, from the passes. */
  private arrays(like: readonly Float32Array[]): Float32Array[] {
    if (this.isRetired) throw new Error('averaging: the outer step is retired');
    return like.map((v) => this.passes.allocate(v.length));
  }

  /** Frees the arrays and forgets them, so a use after this fails instead of touching memory now someone else's. */
  private free(): void {
    for (const arrays of [this.anchor, this.momentum, this.deltas, this.updates, this.boundaries]) arrays?.forEach((a) => this.passes.free(a));
    this.anchor.length = 0;
    this.momentum = this.deltas = this.updates = this.boundaries = undefined;
  }
}
