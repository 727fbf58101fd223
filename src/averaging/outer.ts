// The outer optimizer of periodic (DiLoCo-style) averaging for one group: the pseudo-gradient
// since the last round, and the Nesterov outer step that applies the round's mean of them.

export interface OuterStepOptions {
  /** Outer learning rate (default 1). */
  lr?: number;
  /** Nesterov momentum μ (default 0: with lr 1, plain averaging). */
  momentum?: number;
}

export class OuterStep {
  /** The group's values at its last round: deltas are measured from here. */
  readonly anchor: Float32Array[];
  readonly momentum: Float32Array[];
  private readonly lr: number;
  private readonly mu: number;
  /** delta()'s arrays, made at its first call. */
  private deltas?: Float32Array[];

  constructor(values: readonly Float32Array[], options: OuterStepOptions = {}) {
    this.anchor = values.map((v) => Float32Array.from(v));
    this.momentum = values.map((v) => new Float32Array(v.length));
    this.lr = options.lr ?? 1;
    this.mu = options.momentum ?? 0;
  }

  /**
   * values − anchor, per tensor (in f32), into arrays this step reuses from round to round (15 MB
   * fresh a round cost more than the pass that fills them): each call overwrites the last one's.
   */
  delta(values: readonly Float32Array[]): Float32Array[] {
    const deltas = (this.deltas ??= this.anchor.map((a) => new Float32Array(a.length)));
    values.forEach((v, i) => {
      const anchor = this.anchor[i];
      const out = deltas[i];
      for (let j = 0; j < v.length; j++) out[j] = v[j] - anchor[j];
    });
    return deltas;
  }

  /** m ← μ·m + Δ̄; values ← anchor + lr·(μ·m + Δ̄), in place; the anchor moves to the new values. */
  apply(values: Float32Array[], meanDelta: readonly Float32Array[]): void {
    const { lr } = this;
    values.forEach((v, i) => {
      const anchor = this.anchor[i];
      const update = this.update(i, meanDelta[i]);
      for (let j = 0; j < v.length; j++) v[j] = anchor[j] = Math.fround(anchor[j] + lr * update[j]);
    });
  }

  /**
   * apply() for a round that lands after training went on from its `boundary` values (overlapped
   * averaging): the values move by what apply() would have moved the boundary, so the steps taken
   * since stay on top of the round's result; the anchor becomes that result.
   */
  applyLate(values: Float32Array[], meanDelta: readonly Float32Array[], boundary: readonly Float32Array[]): void {
    const { lr } = this;
    values.forEach((v, i) => {
      const anchor = this.anchor[i];
      const update = this.update(i, meanDelta[i]);
      const start = boundary[i];
      for (let j = 0; j < v.length; j++) {
        const moved = Math.fround(anchor[j] + lr * update[j]); // the f32 the anchor holds, without reading it back
        anchor[j] = moved;
        v[j] = moved + (v[j] - start[j]);
      }
    });
  }

  /** μ·m + Δ̄ after m ← μ·m + Δ̄ (in f64 from f32 m, as one expression would be); with no momentum, Δ̄ itself. */
  private update(i: number, mean: Float32Array): Float32Array | Float64Array {
    const { mu } = this;
    if (mu === 0) return mean;
    const m = this.momentum[i];
    const update = new Float64Array(mean.length);
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
}
