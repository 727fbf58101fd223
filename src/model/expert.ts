// A SwiGLU expert, y = down(silu(gate·x) ⊙ up·x), and the narrow interface through which the
// MoE layer reaches experts. The layer never touches an expert's weights: it hands an expert
// the rows routed to it and gets outputs back (and, in backward, input gradients while the
// expert accumulates its own weight gradients). A swarm node implements the same interface
// with remote replicas, without touching the model code.
import type { Kernels } from '../kernels/index.ts';
import { GrowableBuffer, type Linear } from './linear.ts';

export interface ExpertCompute {
  /**
   * y[rows, hidden] = expert(layer, expert)(x[rows, hidden]). Resolves false when the expert
   * could not be reached (no holder answered): the MoE layer then drops it for these tokens.
   */
  forward(layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean>;
  /**
   * dx[rows, hidden] = ∂L/∂x given dy = ∂L/∂y at the forward input x (passed again, so a holder
   * needs no state between the two calls); adds the expert's weight gradients where it runs.
   * Resolves false when no holder answered.
   */
  backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean>;
}

/**
 * How the MoE layers keep their largest activations for the backward: each expert's gate·x
 * and up·x (2 · expert hidden floats per routed token and layer) and the experts' outputs
 * (hidden floats per routed token, read only for the gates' gradient). f32 is exact; bf16
 * takes half the memory, the backward then working from values rounded to 8 significant bits
 * (the forward is unchanged).
 */
export type ActivationStorage = 'f32' | 'bf16';

/**
 * An expert's forward activations, kept for its backward: gate·x and up·x. Under gradient
 * checkpointing the experts of different layers share caches (a layer's forward is recomputed
 * just before its backward).
 */
export class ExpertCache {
  private readonly f32?: { g: GrowableBuffer; u: GrowableBuffer };
  private readonly bf16?: { g: GrowableBuffer<Uint16Array>; u: GrowableBuffer<Uint16Array> };

  constructor(private readonly kernels: Kernels, private readonly hidden: number, storage: ActivationStorage = 'f32') {
    if (storage === 'f32') {
      this.f32 = { g: new GrowableBuffer(kernels, hidden), u: new GrowableBuffer(kernels, hidden) };
    } else {
      const u16 = (length: number) => kernels.heap.u16(length);
      this.bf16 = { g: new GrowableBuffer(kernels, hidden, u16), u: new GrowableBuffer(kernels, hidden, u16) };
    }
  }

  /** Where the forward writes gate·x and up·x: the cache itself (f32) or scratch that keep() stores. */
  forwardOutputs(rows: number, scratch: ExpertScratch): { g: Float32Array; u: Float32Array } {
    if (this.f32) return { g: this.f32.g.rows(rows), u: this.f32.u.rows(rows) };
    return scratch.gu(rows * this.hidden);
  }

  /** Keeps the forward's gate·x and up·x (nothing to do for f32: they were written in place). */
  keep(g: Float32Array, u: Float32Array, rows: number): void {
    if (!this.bf16) return;
    const n = rows * this.hidden;
    this.kernels.ops.toBf16(g, this.bf16.g.rows(rows), n);
    this.kernels.ops.toBf16(u, this.bf16.u.rows(rows), n);
  }

  /** The kept gate·x and up·x as f32 for the backward, which may overwrite them. */
  kept(rows: number, scratch: ExpertScratch): { g: Float32Array; u: Float32Array } {
    if (this.f32) return { g: this.f32.g.rows(rows), u: this.f32.u.rows(rows) };
    const n = rows * this.hidden;
    const { g, u } = scratch.gu(n);
    this.kernels.ops.fromBf16(this.bf16!.g.rows(rows), g, n);
    this.kernels.ops.fromBf16(this.bf16!.u.rows(rows), u, n);
    return { g, u };
  }
}

/**
 * Temporaries of one expert call, shared by all the experts of a model (calls run one at a
 * time, whatever their hidden size): h = silu(gate·x) ⊙ up·x and its gradient, and, with
 * bf16 storage, gate·x and up·x in f32. Each call overwrites what it reads.
 */
export class ExpertScratch {
  private readonly hBuffer: GrowableBuffer;
  private readonly dhBuffer: GrowableBuffer;
  private readonly gBuffer: GrowableBuffer;
  private readonly uBuffer: GrowableBuffer;

  constructor(kernels: Kernels) {
    this.hBuffer = new GrowableBuffer(kernels, 1);
    this.dhBuffer = new GrowableBuffer(kernels, 1);
    this.gBuffer = new GrowableBuffer(kernels, 1);
    this.uBuffer = new GrowableBuffer(kernels, 1);
  }

  h(length: number): Float32Array {
    return this.hBuffer.rows(length);
  }

  dh(length: number): Float32Array {
    return this.dhBuffer.rows(length);
  }

  gu(length: number): { g: Float32Array; u: Float32Array } {
    return { g: this.gBuffer.rows(length), u: this.uBuffer.rows(length) };
  }
}

export class SwigluExpert {
  readonly hidden: number;

  constructor(
    private readonly kernels: Kernels,
    readonly gate: Linear,
    readonly up: Linear,
    readonly down: Linear,
    private readonly scratch: ExpertScratch,
    private readonly cache: ExpertCache,
  ) {
    this.hidden = gate.outDim;
  }

  forward(x: Float32Array, y: Float32Array, rows: number): void {
    const { g, u } = this.cache.forwardOutputs(rows, this.scratch);
    const h = this.scratch.h(rows * this.hidden);
    this.gate.forward(x, g, rows);
    this.up.forward(x, u, rows);
    this.kernels.ops.swiglu({ gate: g, up: u, h, rows, cols: this.hidden });
    this.cache.keep(g, u, rows);
    this.down.forward(h, y, rows);
  }

  backward(x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): void {
    const { g, u } = this.cache.kept(rows, this.scratch);
    const h = this.scratch.h(rows * this.hidden);
    const dh = this.scratch.dh(rows * this.hidden);
    // h again from the kept gate·x and up·x: one elementwise pass instead of keeping rows × hidden floats per expert.
    this.kernels.ops.swiglu({ gate: g, up: u, h, rows, cols: this.hidden });
    this.down.backward(h, dy, dh, rows);
    // The gradients of gate·x and up·x overwrite those activations: nothing reads them after.
    this.kernels.ops.swigluBackward({ gate: g, up: u, dh, dGate: g, dUp: u, rows, cols: this.hidden });
    this.gate.backward(x, g, dx, rows);
    this.up.backward(x, u, dx, rows, true);
  }
}

/** Experts held in this process, indexed [layer][expert] (undefined: not held, unreachable). */
export class LocalExperts implements ExpertCompute {
  constructor(readonly experts: readonly (readonly (SwigluExpert | undefined)[])[]) {}

  async forward(layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean> {
    const held = this.experts[layer][expert];
    held?.forward(x, y, rows);
    return held !== undefined;
  }

  async backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean> {
    const held = this.experts[layer][expert];
    held?.backward(x, dy, dx, rows);
    return held !== undefined;
  }
}
