// The MoE feed-forward of one layer: a softmax router picks the top-k experts per token, the
// token rows are grouped by expert and sent through the ExpertCompute interface, and the
// outputs are summed back weighted by the gates (renormalized over the chosen k when the
// config says so). An optional shared expert, scaled by sigmoid(shared_expert_gate·x), is
// added for every token (Qwen2-MoE). The load-balancing loss is E·Σ_e f_e·P_e, with f_e the
// share of the N·k assignments that went to expert e and P_e its mean router probability.
import { HeapGroup } from '../kernels/heap.ts';
import type { Kernels } from '../kernels/index.ts';
import type { ModelConfig } from './config.ts';
import type { ActivationStorage, ExpertCompute, SwigluExpert } from './expert.ts';
import { LAYER_SCRATCH, type Linear, type ScratchBuffers } from './linear.ts';

/** Per-call buffers, sized for `rows` tokens: everything backward needs from forward. */
class MoeActivations {
  readonly probs: Float32Array; // [N, E] router softmax
  readonly topIndex: Int32Array; // [N, k]
  readonly topProb: Float32Array; // [N, k]
  readonly gates: Float32Array; // [N·k] gate of each assignment, in slot order
  readonly slotToken: Int32Array; // [N·k] token row of each slot; slots grouped by expert
  readonly slotOfAssignment: Int32Array; // [N·k] slot of assignment t·k + j
  readonly expertStart: Int32Array; // [E + 1] first slot of each expert
  /** [N·k, H] expert outputs in slot order, kept for the gates' gradient: f32, or bf16 (ysBf16) with bf16 activation storage. */
  readonly ys?: Float32Array;
  readonly ysBf16?: Uint16Array;
  readonly sharedY?: Float32Array; // [N, H]
  readonly sharedGate?: Float32Array; // [N] sigmoid(shared_expert_gate·x)
  readonly share: Float64Array; // [E] f_e
  readonly tokenScale: Float32Array; // [N] gate = p · scale for a token's surviving assignments
  readonly dropped: Uint8Array; // [E] 1 when no holder of the expert answered this forward

  private readonly heap: HeapGroup;

  constructor(kernels: Kernels, readonly rows: number, config: ModelConfig, storage: ActivationStorage) {
    const heap = (this.heap = new HeapGroup(kernels.heap));
    const { numExperts: E, expertsPerToken: k, hiddenSize: H } = config;
    this.probs = heap.f32(rows * E);
    this.topIndex = heap.i32(rows * k);
    this.topProb = heap.f32(rows * k);
    this.gates = heap.f32(rows * k);
    this.slotToken = heap.i32(rows * k);
    this.slotOfAssignment = new Int32Array(rows * k);
    this.expertStart = new Int32Array(E + 1);
    if (storage === 'f32') this.ys = heap.f32(rows * k * H);
    else this.ysBf16 = heap.u16(rows * k * H);
    if (config.sharedExpertHiddenSize > 0) {
      this.sharedY = heap.f32(rows * H);
      this.sharedGate = heap.f32(rows);
    }
    this.share = new Float64Array(E);
    this.tokenScale = new Float32Array(rows);
    this.dropped = new Uint8Array(E);
  }

  release(): void {
    this.heap.release();
  }
}

/** One layer's MoE activations; shared by all layers under gradient checkpointing (see AttentionBuffers). */
export class MoeBuffers {
  private acts?: MoeActivations;

  constructor(private readonly storage: ActivationStorage = 'f32') {}

  get(kernels: Kernels, rows: number, config: ModelConfig): MoeActivations {
    if (!this.acts || this.acts.rows < rows) {
      this.acts?.release();
      this.acts = new MoeActivations(kernels, rows, config, this.storage);
    }
    return this.acts;
  }
}

export class MoeLayer {
  /** Token-to-expert assignments dropped because no holder of the expert answered. */
  droppedAssignments = 0;
  /** Rows routed to each expert by this layer's forwards so far: the experts' work, which a planner can balance. */
  readonly routedRows: Float64Array;

  constructor(
    private readonly kernels: Kernels,
    private readonly config: ModelConfig,
    readonly layer: number,
    readonly router: Linear,
    private readonly experts: ExpertCompute,
    private readonly scratch: ScratchBuffers,
    private readonly buffers: MoeBuffers,
    readonly shared?: { expert: SwigluExpert; gate: Linear },
  ) {
    this.routedRows = new Float64Array(config.numExperts);
  }

  private activations(rows: number): MoeActivations {
    return this.buffers.get(this.kernels, rows, this.config);
  }

  /** out[N, H] = MoE(x); returns this layer's load-balancing loss. */
  async forward(x: Float32Array, out: Float32Array, rows: number): Promise<number> {
    const { ops } = this.kernels;
    const { numExperts: E, expertsPerToken: k, hiddenSize: H } = this.config;
    const a = this.activations(rows);
    this.router.forward(x, a.probs, rows);
    ops.softmax({ x: a.probs, y: a.probs, rows, n: E });
    ops.topK({ x: a.probs, rows, n: E, k, indices: a.topIndex, values: a.topProb });

    // Group assignments by expert (counting sort keeps token order within an expert).
    a.expertStart.fill(0);
    for (let i = 0; i < rows * k; i++) a.expertStart[a.topIndex[i] + 1]++;
    for (let e = 0; e < E; e++) {
      this.routedRows[e] += a.expertStart[e + 1];
      a.expertStart[e + 1] += a.expertStart[e];
    }
    const next = a.expertStart.slice(0, E);
    for (let t = 0; t < rows; t++) {
      for (let j = 0; j < k; j++) {
        const slot = next[a.topIndex[t * k + j]]++;
        a.slotToken[slot] = t;
        a.slotOfAssignment[t * k + j] = slot;
      }
    }
    // With bf16 storage the outputs are produced in f32 in the layer scratch and kept rounded.
    const [xs, ysWork] = this.scratch.parts(LAYER_SCRATCH, [rows * k * H, a.ys ? 0 : rows * k * H]);
    const ys = a.ys ?? ysWork;
    this.gatherExpertInputs(x, a, rows, xs);
    const answered = await Promise.all(
      Array.from({ length: E }, (_, e) => {
        const [s0, s1] = [a.expertStart[e], a.expertStart[e + 1]];
        if (s1 === s0) return true;
        return this.experts.forward(this.layer, e, xs.subarray(s0 * H, s1 * H), ys.subarray(s0 * H, s1 * H), s1 - s0);
      }),
    );
    answered.forEach((ok, e) => {
      a.dropped[e] = ok ? 0 : 1;
      if (ok) return;
      this.droppedAssignments += a.expertStart[e + 1] - a.expertStart[e];
      // Whatever a failed call left there (stale rows, NaN) must not reach out (0·NaN is NaN) or the gate gradients.
      ys.fill(0, a.expertStart[e] * H, a.expertStart[e + 1] * H);
    });
    this.setGates(a, rows);
    out.fill(0, 0, rows * H);
    if (a.ysBf16) ops.toBf16(ys, a.ysBf16, rows * k * H);
    ops.scatterAddRows({ src: ys, indices: a.slotToken, weights: a.gates, dst: out, rows: rows * k, cols: H, dstRows: rows });

    if (this.shared && a.sharedY && a.sharedGate) {
      this.shared.expert.forward(x, a.sharedY, rows);
      this.shared.gate.forward(x, a.sharedGate, rows);
      for (let t = 0; t < rows; t++) a.sharedGate[t] = 1 / (1 + Math.exp(-a.sharedGate[t]));
      ops.scaleRows({ src: a.sharedY, weights: a.sharedGate, dst: out, rows, cols: H, accumulate: true });
    }

    let aux = 0;
    for (let e = 0; e < E; e++) {
      a.share[e] = (a.expertStart[e + 1] - a.expertStart[e]) / (rows * k);
      let meanProb = 0;
      for (let t = 0; t < rows; t++) meanProb += a.probs[t * E + e];
      aux += a.share[e] * (meanProb / rows);
    }
    return E * aux;
  }

  /** Each assignment's input row, grouped by expert, into xs: gathered again for the backward rather than kept per layer. */
  private gatherExpertInputs(x: Float32Array, a: MoeActivations, rows: number, xs: Float32Array): void {
    const { expertsPerToken: k, hiddenSize: H } = this.config;
    this.kernels.ops.gatherRows({ src: x, indices: a.slotToken, dst: xs, rows: rows * k, cols: H, srcRows: rows });
  }

  /**
   * Gates of the surviving assignments: g = p · scale[t], with scale = 1 / Σ_live p when the
   * config renormalizes the top-k, else Σ_chosen p / Σ_live p (1 when nothing was dropped), so
   * a token that lost an expert spreads the same total weight over the ones that answered.
   * A token that lost all its experts gets no MoE output.
   */
  private setGates(a: MoeActivations, rows: number): void {
    const k = this.config.expertsPerToken;
    for (let t = 0; t < rows; t++) {
      let chosen = 0;
      let live = 0;
      for (let j = 0; j < k; j++) {
        const p = a.topProb[t * k + j];
        chosen += p;
        if (!a.dropped[a.topIndex[t * k + j]]) live += p;
      }
      const scale = live === 0 ? 0 : this.config.normTopkProb ? 1 / live : chosen / live;
      a.tokenScale[t] = scale;
      for (let j = 0; j < k; j++) {
        const dropped = a.dropped[a.topIndex[t * k + j]];
        a.gates[a.slotOfAssignment[t * k + j]] = dropped ? 0 : a.topProb[t * k + j] * scale;
      }
    }
  }

  /** Floats of the layer scratch a call on `rows` tokens takes: the backward's, more than the forward's. */
  scratchLength(rows: number): number {
    return this.backwardScratch(rows).reduce((a, b) => a + b, 0);
  }

  /** The backward's parts of the layer scratch: gathered inputs, their output and input gradients, per-slot and router gradients. */
  private backwardScratch(rows: number): number[] {
    const { numExperts: E, expertsPerToken: k, hiddenSize: H } = this.config;
    const slots = rows * k;
    return [slots * H, slots * H, slots * H, slots, slots, rows * E];
  }

  /**
   * Given dOut = ∂L/∂out and the weight `auxScale` of this layer's load-balancing loss in L,
   * writes dx (= or += with accumulate) ∂L/∂x and adds the router's and experts' gradients.
   */
  async backward(x: Float32Array, dOut: Float32Array, dx: Float32Array, rows: number, auxScale: number, accumulate = false): Promise<void> {
    const { ops } = this.kernels;
    const { numExperts: E, expertsPerToken: k, hiddenSize: H } = this.config;
    const a = this.activations(rows);
    const slots = rows * k;
    const [xs, dys, dxs, dGates, dTop, dLogits] = this.scratch.parts(LAYER_SCRATCH, this.backwardScratch(rows));
    this.gatherExpertInputs(x, a, rows, xs);

    // out = Σ gate·y: ∂gate = dOut·y, ∂y = gate·dOut.
    ops.gatherRows({ src: dOut, indices: a.slotToken, dst: dys, rows: slots, cols: H, srcRows: rows });
    // dxs is free until the experts' backward: the kept bf16 outputs are widened there.
    if (a.ysBf16) ops.fromBf16(a.ysBf16, dxs, slots * H);
    ops.rowDots(dys, a.ys ?? dxs, dGates, slots, H);
    ops.scaleRows({ src: dys, weights: a.gates, dst: dys, rows: slots, cols: H });
    const answered = await Promise.all(
      Array.from({ length: E }, (_, e) => {
        const [s0, s1] = [a.expertStart[e], a.expertStart[e + 1]];
        if (s1 === s0 || a.dropped[e]) return false;
        const seg = (v: Float32Array) => v.subarray(s0 * H, s1 * H);
        return this.experts.backward(this.layer, e, seg(xs), seg(dys), seg(dxs), s1 - s0);
      }),
    );
    // An expert that gave no backward contributes no input gradient.
    answered.forEach((ok, e) => {
      if (!ok) dxs.fill(0, a.expertStart[e] * H, a.expertStart[e + 1] * H);
      if (!ok && !a.dropped[e]) this.droppedAssignments += a.expertStart[e + 1] - a.expertStart[e];
    });
    if (!accumulate) dx.fill(0, 0, rows * H);
    ops.scatterAddRows({ src: dxs, indices: a.slotToken, dst: dx, rows: slots, cols: H, dstRows: rows });

    // Gates → chosen probabilities (through the renormalization) → all probabilities.
    for (let t = 0; t < rows; t++) {
      let dot = 0;
      for (let j = 0; j < k; j++) {
        const slot = a.slotOfAssignment[t * k + j];
        dot += dGates[slot] * a.gates[slot];
      }
      for (let j = 0; j < k; j++) {
        const slot = a.slotOfAssignment[t * k + j];
        const live = !a.dropped[a.topIndex[t * k + j]];
        // normTopk: g_j = p_j / Σ_live p, so ∂p_j = (∂g_j − Σ_i ∂g_i·g_i) / Σ_live p. Otherwise
        // g_j = p_j · scale with the scale (1 unless experts were dropped) held constant.
        const d = this.config.normTopkProb ? dGates[slot] - dot : dGates[slot];
        dTop[t * k + j] = live ? d * a.tokenScale[t] : 0;
      }
    }
    // ∂(auxScale · E·Σ f_e·P_e)/∂p[t, e] = auxScale·E·f_e / N (f_e is a count: no gradient).
    for (let t = 0; t < rows; t++) {
      for (let e = 0; e < E; e++) dLogits[t * E + e] = (auxScale * E * a.share[e]) / rows;
    }
    ops.topKBackward({ indices: a.topIndex, dValues: dTop, dx: dLogits, rows, n: E, k });
    ops.softmaxBackward({ y: a.probs, dy: dLogits, dx: dLogits, rows, n: E });
    this.router.backward(x, dLogits, dx, rows, true);

    if (this.shared && a.sharedY && a.sharedGate) {
      // out += σ(z)·y_s: ∂y_s = σ·dOut, ∂z = (dOut·y_s)·σ·(1 − σ).
      const dz = this.scratch.f32('moe.dSharedGate', rows);
      const dSharedY = this.scratch.f32('moe.dSharedY', rows * H);
      ops.rowDots(dOut, a.sharedY, dz, rows, H);
      for (let t = 0; t < rows; t++) dz[t] *= a.sharedGate[t] * (1 - a.sharedGate[t]);
      ops.scaleRows({ src: dOut, weights: a.sharedGate, dst: dSharedY, rows, cols: H });
      this.shared.gate.backward(x, dz, dx, rows, true);
      const dxShared = this.scratch.f32('moe.dxShared', rows * H);
      this.shared.expert.backward(x, dSharedY, dxShared, rows);
      ops.add(dx, dxShared, dx, rows * H);
    }
  }
}

