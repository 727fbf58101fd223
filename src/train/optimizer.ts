// AdamW over a model's trainable parameters, with global gradient-norm clipping. Weight decay
// applies to matrices only (norm gains and biases are not decayed), as is usual for transformers.
import type { Kernels } from '../kernels/index.ts';
import type { F32Tensor } from '../model/config.ts';
import type { Param } from '../model/params.ts';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this (0: no clipping). */
  clipNorm: number;
}

export const DEFAULT_ADAMW: Readonly<AdamWOptions> = Object.freeze({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clipNorm: 1 });

interface Moments {
  param: Param;
  m: Float32Array;
  v: Float32Array;
}

export class AdamW {
  /** Updates taken so far (bias correction uses step + 1 for the next one). */
  step = 0;
  private readonly moments: Moments[];

  constructor(private readonly kernels: Kernels, params: Param[], readonly options: AdamWOptions = DEFAULT_ADAMW) {
    this.moments = [];
    this.add(params);
  }

  /** Starts optimizing more parameters (fresh moments), e.g. an expert this node takes on. */
  add(params: Param[]): void {
    for (const param of params) {
      if (!param.grad) throw new Error(`AdamW: parameter ${param.name} is frozen`);
      this.moments.push({ param, m: this.kernels.heap.f32(param.value.length), v: this.kernels.heap.f32(param.value.length) });
    }
  }

  /** Stops optimizing the named parameters (call before releasing them). */
  remove(names: Iterable<string>): void {
    const gone = new Set(names);
    for (let i = this.moments.length - 1; i >= 0; i--) {
      const { param, m, v } = this.moments[i];
      if (!gone.has(param.name)) continue;
      this.kernels.heap.release(m);
      this.kernels.heap.release(v);
      this.moments.splice(i, 1);
    }
  }

  /** √(Σ grad²) over every parameter, in a fixed order (the same on every thread count). */
  gradNorm(): number {
    let total = 0;
    for (const { param } of this.moments) total += this.kernels.ops.sumSquares(param.grad!, param.grad!.length);
    return Math.sqrt(total);
  }

  /** One update at learning rate `lr`; returns the gradient norm before clipping. */
  update(lr: number): number {
    const norm = this.gradNorm();
    if (!Number.isFinite(norm)) {
      const culprit = this.moments.find(({ param }) => !Number.isFinite(this.kernels.ops.sumSquares(param.grad!, param.grad!.length)));
      throw new Error(`AdamW: gradient norm is ${norm}${culprit ? ` (first in ${culprit.param.name})` : ''}; refusing to update`);
    }
    const { clipNorm, beta1, beta2, eps, weightDecay } = this.options;
    const gradScale = clipNorm > 0 && norm > clipNorm ? clipNorm / norm : 1;
    this.step++;
    for (const { param, m, v } of this.moments) {
      this.kernels.ops.adamW({
        params: param.value, grads: param.grad!, m, v, n: param.value.length, lr, step: this.step,
        beta1, beta2, eps, weightDecay: param.shape.length === 2 ? weightDecay : 0, gradScale,
      });
    }
    return norm;
  }

  /** The moments as tensors `m.<name>` / `v.<name>`, for checkpoints. */
  state(): Map<string, F32Tensor> {
    const out = new Map<string, F32Tensor>();
    for (const { param, m, v } of this.moments) {
      out.set(`m.${param.name}`, { shape: [...param.shape], data: Float32Array.from(m) });
      out.set(`v.${param.name}`, { shape: [...param.shape], data: Float32Array.from(v) });
    }
    return out;
  }

  loadState(step: number, tensors: Map<string, { data: Float32Array }>): void {
    for (const { param, m, v } of this.moments) {
      for (const [key, target] of [[`m.${param.name}`, m], [`v.${param.name}`, v]] as const) {
        const t = tensors.get(key);
        if (!t || t.data.length !== target.length) throw new Error(`optimizer state: ${key} is missing or has the wrong size`);
        target.set(t.data);
      }
    }
    this.step = step;
  }
}
