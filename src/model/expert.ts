// A SwiGLU expert, y = down(silu(gate·x) ⊙ up·x), and the narrow interface through which the
// MoE layer reaches experts. The layer never touches an expert's weights: it hands an expert
// the rows routed to it and gets outputs back (and, in backward, input gradients while the
// expert accumulates its own weight gradients). The model routes those calls to the experts it
// hosts, or to a swarm node's remote replicas through the same interface (hosted.ts).
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
 * How the layers keep their largest activations for the backward: each expert's gate·x and
 * up·x (2 · expert hidden floats per routed token and layer), the experts' outputs (hidden
 * floats per routed token, read only for the gates' gradient), and attention's q, k, v and
 * output (src/model/attention.ts). f32 is exact; bf16 takes half the memory, the backward then
 * working from values rounded to 8 significant bits (the forward is unchanged).
 */
export type ActivationStorage = 'f32' | 'bf16';

/** The region of a slab an expert's forward kept its activations in. */
interface SlabClaim {
  forward: number;
  start: number;
  rows: number;
}

/**
 * Where the experts of a layer keep gate·x and up·x for the backward: one pair of buffers for
 * all of them, each forward handing out consecutive regions in call order. The memory is the
 * layer's routed rows exactly (reserve()) and does not creep as routing shifts from step to
 * step, as per-expert buffers grown to each one's largest share would. The model starts each
 * forward of the layer (beginForward), whose regions reuse the slab. Under gradient
 * checkpointing one slab serves every layer (a layer's forward is recomputed just before its
 * backward).
 */
export class ExpertSlab {
  private g?: Float32Array | Uint16Array;
  private u?: Float32Array | Uint16Array;
  private capacity = 0;
  private used = 0;
  private forward = 0;

  constructor(private readonly kernels: Kernels, readonly hidden: number, readonly storage: ActivationStorage = 'f32') {}

  /** Room for `rows` routed rows per forward (call between forwards). */
  reserve(rows: number): void {
    if (rows <= this.capacity) return;
    this.release();
    const { heap } = this.kernels;
    const length = rows * this.hidden;
    // Unzeroed: a forward writes its whole claimed region before anything reads it.
    [this.g, this.u] = this.storage === 'f32'
      ? [heap.f32(length, false), heap.f32(length, false)]
      : [heap.u16(length, false), heap.u16(length, false)];
    this.capacity = rows;
  }

  /**
   * Gives away the buffers holding `claim`, the only claim of the slab's forward: the caller owns them now (frees them
   * with the heap), and the next claim allocates afresh. A serving replica keeps each forward's activations this way.
   */
  handOver(claim: SlabClaim): { g: Float32Array | Uint16Array; u: Float32Array | Uint16Array } {
    if (claim.start !== 0 || this.used !== claim.rows || this.capacity !== claim.rows) {
      throw new Error('model: only a forward\'s one claim filling the slab can be handed over');
    }
    const views = this.views(claim);
    this.g = this.u = undefined;
    this.capacity = 0;
    return views;
  }

  /** Takes buffers of exactly `rows` rows handed over earlier back as this slab's own, holding a new forward's one claim. */
  adopt(views: { g: Float32Array | Uint16Array; u: Float32Array | Uint16Array }, rows: number): SlabClaim {
    this.release();
    [this.g, this.u] = [views.g, views.u];
    this.capacity = rows;
    this.beginForward();
    return this.claim(rows);
  }

  /** Frees the buffers; a later reserve() or claim() allocates again. */
  release(): void {
    for (const view of [this.g, this.u]) if (view) this.kernels.heap.release(view);
    this.g = this.u = undefined;
    this.capacity = 0;
  }

  /** A new forward: the regions of the previous one are given out again. */
  beginForward(): void {
    this.forward++;
    this.used = 0;
  }

  /**
   * A new forward of the expert owning this slab, its one claim of `rows` rows: the buffers hold exactly that many
   * (allocated again when they hold another count), so a handOver gives away whole blocks, counted by their length.
   */
  beginOwnForward(rows: number): void {
    if (this.capacity !== rows) this.release();
    this.beginForward();
  }

  claim(rows: number): SlabClaim {
    if (this.used + rows > this.capacity) {
      // Growing would move the regions already handed out in this forward.
      if (this.used > 0) throw new Error(`model: experts kept ${this.used + rows} routed rows in one forward, more than the ${this.capacity} reserved`);
      this.reserve(rows);
    }
    const claim = { forward: this.forward, start: this.used, rows };
    this.used += rows;
    return claim;
  }

  /** The claimed region of gate·x and up·x (f32 or bf16 bit patterns, per the storage). */
  views(claim: SlabClaim): { g: Float32Array | Uint16Array; u: Float32Array | Uint16Array } {
    if (claim.forward !== this.forward) throw new Error('model: expert activations were overwritten by a later forward before their backward');
    const [from, to] = [claim.start * this.hidden, (claim.start + claim.rows) * this.hidden];
    return { g: this.g!.subarray(from, to), u: this.u!.subarray(from, to) };
  }
}

/**
 * An expert's forward activations, gate·x and up·x, kept in a region of a slab for its
 * backward. An expert with a slab of its own (a serving replica, a shared expert) starts the
 * slab's forward itself.
 */
export class ExpertCache {
  private claim?: SlabClaim;

  constructor(private readonly kernels: Kernels, private readonly slab: ExpertSlab, private readonly ownsSlab = false) {}

  /** Where the forward writes gate·x and up·x: this expert's region (f32), or scratch that keep() stores (bf16). */
  forwardOutputs(rows: number, scratch: ExpertScratch): { g: Float32Array; u: Float32Array } {
    if (this.ownsSlab) this.slab.beginOwnForward(rows);
    this.claim = this.slab.claim(rows);
    if (this.slab.storage === 'bf16') return scratch.gu(rows * this.slab.hidden);
    return this.slab.views(this.claim) as { g: Float32Array; u: Float32Array };
  }

  /** Frees the slab when it is this expert's own (a layer's slab outlives its experts). */
  release(): void {
    if (this.ownsSlab) this.slab.release();
  }

  /** Keeps the forward's gate·x and up·x (nothing to do for f32: they were written in place). */
  keep(g: Float32Array, u: Float32Array, rows: number): void {
    if (this.slab.storage === 'f32') return;
    const kept = this.slab.views(this.claim!) as { g: Uint16Array; u: Uint16Array };
    const n = rows * this.slab.hidden;
    this.kernels.ops.toBf16(g, kept.g, n);
    this.kernels.ops.toBf16(u, kept.u, n);
  }

  /**
   * The forward's kept gate·x and up·x (f32, or bf16 bit patterns), taken out of a slab of the expert's own without a
   * copy: heap views the caller owns until restore() takes them back or it frees them. Kept a while (a served
   * forward's), they churn no garbage-collected memory, whose collections cost a holder serving a peer's calls a
   * mark-compact every few hundred milliseconds.
   */
  save(rows: number): { g: Float32Array | Uint16Array; u: Float32Array | Uint16Array } {
    if (!this.ownsSlab) throw new Error('model: only an expert with a slab of its own can save its forward');
    if (this.claim?.rows !== rows) throw new Error(`model: an expert has no forward over ${rows} rows to save`);
    const saved = this.slab.handOver(this.claim);
    this.claim = undefined;
    return saved;
  }

  /** Takes back a saved gate·x and up·x as if a forward over `rows` rows had just kept them (the caller owns them no more). */
  restore(saved: { g: Float32Array | Uint16Array; u: Float32Array | Uint16Array }, rows: number): void {
    if (!this.ownsSlab) throw new Error('model: only an expert with a slab of its own can restore a forward');
    this.claim = this.slab.adopt(saved, rows);
  }

  /** The kept gate·x and up·x as f32 for the backward, which may overwrite them. */
  kept(rows: number, scratch: ExpertScratch): { g: Float32Array; u: Float32Array } {
    if (this.claim?.rows !== rows) throw new Error(`model: an expert's backward over ${rows} rows has no forward over as many kept`);
    if (this.slab.storage === 'f32') return this.slab.views(this.claim) as { g: Float32Array; u: Float32Array };
    const kept = this.slab.views(this.claim) as { g: Uint16Array; u: Uint16Array };
    const n = rows * this.slab.hidden;
    const { g, u } = scratch.gu(n);
    this.kernels.ops.fromBf16(kept.g, g, n);
    this.kernels.ops.fromBf16(kept.u, u, n);
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

  /** Allocates room for `length` floats in each buffer now (gate·x and up·x only if used, with bf16 storage). */
  reserve(length: number, storage: ActivationStorage): void {
    this.h(length);
    this.dh(length);
    if (storage === 'bf16') this.gu(length);
  }
}

/** What an expert's forward kept for its backward, taken out of the expert into the kernel heap (SwigluExpert.saveForward). */
export interface KeptForward {
  rows: number;
  /** gate·x and up·x as the activation storage keeps them. */
  g: Float32Array | Uint16Array;
  u: Float32Array | Uint16Array;
  /** gate's, up's and down's own kept values (LoRA x·Aᵀ), where they keep any. */
  linears: (Float32Array | undefined)[];
  bytes: number;
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
    const { g, u } = this.keepGateAndUp(x, rows);
    const h = this.scratch.h(rows * this.hidden);
    this.kernels.ops.swiglu({ gate: g, up: u, h, rows, cols: this.hidden });
    this.down.forward(h, y, rows);
  }

  /**
   * The forward up to what the backward reads, gate·x and up·x, kept as forward() keeps them: a holder
   * answering a peer's backward that carries its input refills them with two products of three. A down
   * projection that keeps values of its own (LoRA x·Aᵀ) holds those of the latest forward served: it runs
   * too, its output discarded.
   */
  keepInputsOf(x: Float32Array, rows: number): void {
    const { g, u } = this.keepGateAndUp(x, rows);
    if (!this.down.saveKept) return;
    const h = this.scratch.h(rows * this.hidden);
    this.kernels.ops.swiglu({ gate: g, up: u, h, rows, cols: this.hidden });
    this.down.forward(h, this.scratch.dh(rows * this.down.outDim), rows);
  }

  /**
   * Everything the latest forward over `rows` rows kept for its backward (gate·x and up·x taken out of the serving
   * replica's own slab, copies of the LoRA linears' x·Aᵀ), so a holder can answer that forward's backward after
   * serving other calls (restoreForward). It lives in the kernel heap until restoreForward or releaseForward.
   */
  saveForward(rows: number): KeptForward {
    const { g, u } = this.cache.save(rows);
    const linears = [this.gate, this.up, this.down].map((linear) => linear.saveKept?.(rows));
    const bytes = g.byteLength + u.byteLength + linears.reduce((sum, kept) => sum + (kept?.byteLength ?? 0), 0);
    return { rows, g, u, linears, bytes };
  }

  /** Frees what saveForward kept, when its backward will not come (restoreForward takes it over instead). */
  releaseForward(kept: KeptForward): void {
    for (const view of [kept.g, kept.u, ...kept.linears]) if (view) this.kernels.heap.release(view);
  }

  /** Puts back what saveForward kept, taking it over (not to be released after): the backward that follows is that forward's. */
  restoreForward(kept: KeptForward): void {
    this.cache.restore(kept, kept.rows);
    [this.gate, this.up, this.down].forEach((linear, i) => {
      const saved = kept.linears[i];
      if (!saved) return;
      linear.restoreKept!(saved);
      this.kernels.heap.release(saved);
    });
  }

  /** gate·x and up·x in f32, kept for the backward (keeping reads them: they stay valid). */
  private keepGateAndUp(x: Float32Array, rows: number): { g: Float32Array; u: Float32Array } {
    const { g, u } = this.cache.forwardOutputs(rows, this.scratch);
    this.gate.forward(x, g, rows);
    this.up.forward(x, u, rows);
    this.cache.keep(g, u, rows);
    return { g, u };
  }

  /** Frees what the expert keeps between calls (its own activations, its LoRA linears' x·Aᵀ); not for use afterwards. */
  release(): void {
    this.cache.release();
    for (const linear of [this.gate, this.up, this.down]) linear.release?.();
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
