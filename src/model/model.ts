// The MoE decoder: embedding → layers (x += attention(rmsnorm(x)); x += moe(rmsnorm(x))) →
// final rmsnorm → LM head, with each stage's forward and backward side by side and every
// activation in explicit heap buffers. Two modes:
//   full: every parameter trainable in fp32;
//   lora: the base frozen (its attention, expert and head matrices optionally stored q8/q4), and
//         LoRA A/B trainable on the chosen targets (A random, B zero: training starts from the
//         base model exactly).
// Gradient checkpointing keeps only each layer's input and recomputes the layer's forward in
// backward; all layers then share one set of activation buffers. The weights held here and their
// loading live in weights.ts; which experts run here and which go to a remote port, in hosted.ts.
import { HeapGroup } from '../kernels/heap.ts';
import type { Kernels } from '../kernels/index.ts';
import type { RopeTable } from '../kernels/ops.ts';
import { Attention, AttentionBuffers, type KvCacheLayer } from './attention.ts';
import { expertPrefix, type F32Tensor, type ModelConfig } from './config.ts';
import { ExpertCache, ExpertScratch, ExpertSlab, SwigluExpert, type ActivationStorage } from './expert.ts';
import { HostedExperts, type RemoteExperts } from './hosted.ts';
import { DenseLinear, LAYER_SCRATCH, LORA_SCRATCH, LoraLinear, QuantLinear, ScratchBuffers, type BasePath, type Linear } from './linear.ts';
import { MoeBuffers, MoeLayer } from './moe.ts';
import type { Param, ParamStore } from './params.ts';
import { ModelWeights, type WeightsOptions } from './weights.ts';

export interface ModelOptions extends WeightsOptions {
  /** lora mode with q8/q4: the fp32 path (dequantize while packing) or the exact integer path. */
  basePath?: BasePath;
  checkpointing?: boolean;
  /** How the experts and attention keep their largest activations for the backward (default f32; bf16 halves that memory, see ActivationStorage). */
  activationStorage?: ActivationStorage;
  /** Where the MoE layers send experts this process does not host; without it, their tokens drop them. */
  remote?: RemoteExperts;
  /**
   * trainStep runs a micro-batch of two or more sequences as two halves by sequence, at the same time: while one
   * half's experts compute on their remote holders, the other half's attention and routing compute here. The
   * load-balancing loss is then each half's, weighted by its share of the targets (see trainStep).
   */
  splitBatch?: boolean;
}

export interface StepLoss {
  /** Cross-entropy + routerAuxLossCoef · aux. */
  loss: number;
  /** Mean cross-entropy (nats per counted target). */
  crossEntropy: number;
  /** Mean over layers of the load-balancing loss (1 when perfectly balanced). */
  aux: number;
  /** Targets counted (≥ 0). */
  tokens: number;
}

/**
 * Rows of logits computed at a time in training and evaluation. The head's backward runs per
 * chunk right after its loss, so the full [rows, vocab] logits never exist (32 MiB at 2048
 * tokens × 4096 vocab).
 */
export const HEAD_CHUNK = 256;

/** Where the lanes of a split batch add into the gradients, in order: the head (in the forward), each layer's backward, the embedding. */
const HEAD_STAGE = 0;
const layerStage = (layer: number, layers: number) => layers - layer; // layer −1: the embedding

interface LaneTurns {
  enter(stage: number): Promise<void>;
  leave(stage: number): void;
}

/**
 * The order in which the two lanes of a split batch add into the gradients: the second enters each stage only
 * after the first has left it, so the sums (here and at remote holders) do not depend on which lane's experts
 * answer first.
 */
class LaneOrder {
  private readonly gates: { left: Promise<void>; open: () => void; fail: (error: unknown) => void }[];
  readonly first: LaneTurns = { enter: async () => {}, leave: (stage) => this.gates[stage].open() };
  readonly second: LaneTurns = { enter: (stage) => this.gates[stage].left, leave: () => {} };

  constructor(layers: number) {
    this.gates = Array.from({ length: layers + 2 }, () => {
      let open!: () => void;
      let fail!: (error: unknown) => void;
      const left = new Promise<void>((resolve, reject) => [open, fail] = [resolve, reject]);
      left.catch(() => {}); // a failure of the first lane is the step's error, reported once
      return { left, open, fail };
    });
  }

  /** The first lane failed: the second stops at the next stage it enters. */
  fail(error: unknown): void {
    for (const gate of this.gates) gate.fail(error);
  }
}

const slice = (values: ArrayLike<number>, from: number, to: number) => Int32Array.from({ length: to - from }, (_, i) => values[from + i]);

/** Targets counted in [from, to) (negative ones are ignored). */
function countTargets(targets: ArrayLike<number>, from: number, to: number): number {
  let counted = 0;
  for (let i = from; i < to; i++) if (targets[i] >= 0) counted++;
  return counted;
}

/** How a block's attention runs: over whole sequences (training, evaluation) or against a KV cache (generation). */
type Attend = (attention: Attention, x: Float32Array, y: Float32Array, layer: number) => void;

/** Rotated keys and values of every layer for up to maxSeqLen positions of one sequence: see Model.decode. */
export class KvCache {
  readonly layers: KvCacheLayer[];
  /** Positions cached so far. */
  length = 0;

  constructor(private readonly kernels: Kernels, config: ModelConfig) {
    const size = config.maxSeqLen * config.numKvHeads * config.headDim;
    this.layers = Array.from({ length: config.numLayers }, () => ({ k: kernels.heap.f32(size), v: kernels.heap.f32(size) }));
  }

  /** Forgets every position (a new sequence). */
  clear(): void {
    this.length = 0;
  }

  release(): void {
    for (const { k, v } of this.layers) {
      this.kernels.heap.release(k);
      this.kernels.heap.release(v);
    }
  }
}

/**
 * What one layer's backward needs of its forward, shared by all layers under gradient
 * checkpointing. The normalized inputs of attention and MoE are not kept: backward recomputes
 * them (the same kernel on the same inputs: the same bits) into the Workspace's one `normed`
 * buffer, which costs a pass over the rows and saves two activations per layer. (The attention
 * and MoE outputs are only added into the residual stream: those temporaries are the
 * Workspace's too, one buffer for all layers.)
 */
class BlockActivations {
  readonly rstdAttn: Float32Array;
  readonly xMid: Float32Array;
  readonly rstdFfn: Float32Array;

  constructor(heap: HeapGroup, rows: number, hidden: number) {
    this.rstdAttn = heap.f32(rows);
    this.xMid = heap.f32(rows * hidden);
    this.rstdFfn = heap.f32(rows);
  }
}

interface Block {
  attnNorm: Param;
  ffnNorm: Param;
  attention: Attention;
  moe: MoeLayer;
}

/** Row-sized buffers of a forward/backward over `rows` tokens. */
class Workspace {
  readonly residual: Float32Array[]; // L + 1 layer inputs; the last is the final residual
  readonly blocks: BlockActivations[];
  /** The normalized input of the attention, MoE or head being run (forward or backward). */
  readonly normed: Float32Array;
  /** A layer's attention output, then its MoE output, each before it joins the residual stream. */
  readonly branchOut: Float32Array;
  readonly rstdFinal: Float32Array;
  /** Logits of one chunk of HEAD_CHUNK rows: the head and the loss run chunk by chunk. */
  readonly logits: Float32Array;
  readonly losses: Float32Array;
  readonly tokens: Int32Array;
  readonly targets: Int32Array;
  readonly positions: Int32Array;
  readonly dx: Float32Array;
  readonly dh: Float32Array;
  private readonly heap: HeapGroup;

  constructor(kernels: Kernels, readonly rows: number, config: ModelConfig, checkpointing: boolean) {
    const heap = (this.heap = new HeapGroup(kernels.heap));
    const H = config.hiddenSize;
    this.residual = Array.from({ length: config.numLayers + 1 }, () => heap.f32(rows * H));
    const shared = checkpointing ? new BlockActivations(heap, rows, H) : undefined;
    this.blocks = Array.from({ length: config.numLayers }, () => shared ?? new BlockActivations(heap, rows, H));
    this.normed = heap.f32(rows * H);
    this.branchOut = heap.f32(rows * H);
    this.rstdFinal = heap.f32(rows);
    this.logits = heap.f32(Math.min(rows, HEAD_CHUNK) * config.vocabSize);
    this.losses = heap.f32(rows);
    this.tokens = heap.i32(rows);
    this.targets = heap.i32(rows);
    this.positions = heap.i32(rows);
    this.dx = heap.f32(rows * H);
    this.dh = heap.f32(rows * H);
  }

  release(): void {
    this.heap.release();
  }
}

export class Model {
  readonly weights: ModelWeights;
  /** The weights' parameters (the trunk's and the hosted experts'). */
  readonly params: ParamStore;
  /** The routed experts hosted here, and the routing of every expert call (local first, else remote). */
  readonly experts: HostedExperts;
  private readonly blocks: Block[] = [];
  /** Where each layer's experts keep their activations (one slab for all layers under checkpointing). */
  private readonly expertSlabs: ExpertSlab[];
  private readonly expertScratch: ExpertScratch;
  /** Temporaries of one layer's or one linear's forward or backward, shared by all of them. */
  private readonly scratch: ScratchBuffers;
  private readonly head: Linear;
  private readonly rope: RopeTable;
  private workspace?: Workspace;
  /** Logits of every row, for logits() only (generation, tests). */
  private fullLogits?: Float32Array;
  private last?: { batch: number; seq: number; aux: number[] };
  /** With splitBatch: the second half's lane, a model over the same weights and experts with activations of its own. */
  private secondLane?: Model;
  /** While a split batch trains: this lane's side of the order in which the lanes add into the gradients. */
  private turns?: LaneTurns;

  /** `laneOf`: the model whose weights and experts this one shares, as its second lane (trainStep's halves). */
  constructor(
    private readonly kernels: Kernels,
    readonly config: ModelConfig,
    readonly options: ModelOptions,
    base?: Iterable<[string, F32Tensor]>,
    laneOf?: Model,
  ) {
    this.weights = laneOf?.weights ?? new ModelWeights(kernels, config, options, base);
    this.params = this.weights.params;
    this.rope = kernels.ops.ropeTable(config.headDim, config.maxSeqLen, config.ropeTheta);
    const scratch = (this.scratch = new ScratchBuffers(kernels));
    this.expertScratch = new ExpertScratch(kernels);
    const sharedSlab = options.checkpointing ? new ExpertSlab(kernels, config.expertHiddenSize, options.activationStorage) : undefined;
    this.expertSlabs = Array.from({ length: config.numLayers }, () => sharedSlab ?? new ExpertSlab(kernels, config.expertHiddenSize, options.activationStorage));
    const local = (layer: number, expert: number) => this.swiglu(expertPrefix(layer, expert), this.expertSlabs[layer]);
    this.experts = laneOf?.experts ?? new HostedExperts(config, this.weights, {
      local, serving: (layer, expert) => this.swiglu(expertPrefix(layer, expert)),
    }, options.remote);
    const routing = laneOf ? this.experts.lane(local) : this.experts;
    const sharedAttention = options.checkpointing ? new AttentionBuffers(options.activationStorage) : undefined;
    const sharedMoe = options.checkpointing ? new MoeBuffers(options.activationStorage) : undefined;
    const linear = (name: string) => this.linear(name);
    for (let l = 0; l < config.numLayers; l++) {
      const p = `layers.${l}`;
      const shared = config.sharedExpertHiddenSize > 0
        ? { expert: this.swiglu(`${p}.shared_expert`), gate: linear(`${p}.shared_expert_gate`) }
        : undefined;
      this.blocks.push({
        attnNorm: this.params.get(`${p}.attn_norm`),
        ffnNorm: this.params.get(`${p}.ffn_norm`),
        attention: new Attention(kernels, config, linear(`${p}.attn.q`), linear(`${p}.attn.k`), linear(`${p}.attn.v`), linear(`${p}.attn.o`), this.rope, scratch,
          sharedAttention ?? new AttentionBuffers(options.activationStorage)),
        moe: new MoeLayer(kernels, config, l, linear(`${p}.router`), routing, scratch, sharedMoe ?? new MoeBuffers(options.activationStorage), shared),
      });
    }
    this.head = config.tieEmbeddings ? new DenseLinear(kernels, this.params.get('embed')) : linear('lm_head');
  }

  private linear(name: string): Linear {
    const bias = this.params.has(`${name}_bias`) ? this.params.get(`${name}_bias`) : undefined;
    const q = this.weights.quantized.get(name);
    const path = this.options.basePath ?? 'fp32';
    const base: Linear = q
      ? new QuantLinear(this.kernels, q, path, bias, path === 'int' ? this.weights.transposedOf(name, q) : undefined)
      : new DenseLinear(this.kernels, this.params.get(name), bias);
    if (!this.params.has(`${name}.lora_a`)) return base;
    return new LoraLinear(this.kernels, base, this.params.get(`${name}.lora_a`), this.params.get(`${name}.lora_b`), this.options.lora!.alpha, this.scratch);
  }

  /** An expert keeping its activations in `slab`, or in a slab of its own. */
  private swiglu(prefix: string, slab?: ExpertSlab): SwigluExpert {
    const gate = this.linear(`${prefix}.gate`);
    const cache = slab
      ? new ExpertCache(this.kernels, slab)
      : new ExpertCache(this.kernels, new ExpertSlab(this.kernels, gate.outDim, this.options.activationStorage), true);
    return new SwigluExpert(this.kernels, gate, this.linear(`${prefix}.up`), this.linear(`${prefix}.down`), this.expertScratch, cache);
  }

  /** Token-to-expert assignments dropped so far because no holder of the expert answered. */
  droppedAssignments(): number {
    return this.blocks.reduce((sum, b) => sum + b.moe.droppedAssignments, 0) + (this.secondLane?.droppedAssignments() ?? 0);
  }

  /** Rows routed to each expert by forwards so far (every lane), at index layer · numExperts + expert. */
  routedRows(): Float64Array {
    const rows = this.secondLane?.routedRows() ?? new Float64Array(this.blocks.length * this.config.numExperts);
    this.blocks.forEach((b, layer) => b.moe.routedRows.forEach((n, e) => (rows[layer * this.config.numExperts + e] += n)));
    return rows;
  }

  /**
   * Forward over `batch` sequences of `seq` tokens ([batch·seq] ids), the loss against
   * `targets` (negative: ignored), and the backward, adding gradScale·∂loss/∂θ into the
   * trainable parameters' gradients. Returns the loss of this micro-batch.
   */
  async trainStep(tokens: ArrayLike<number>, targets: ArrayLike<number>, batch: number, seq: number, gradScale = 1): Promise<StepLoss> {
    if (this.options.splitBatch && batch >= 2) return this.trainHalves(tokens, targets, batch, seq, gradScale);
    return this.trainWhole(tokens, targets, batch, seq, gradScale);
  }

  private async trainWhole(tokens: ArrayLike<number>, targets: ArrayLike<number>, batch: number, seq: number, gradScale: number): Promise<StepLoss> {
    const result = await this.forward(tokens, batch, seq, targets, gradScale);
    await this.backward(gradScale);
    return result;
  }

  /**
   * trainStep over two halves by sequence, each in its own lane, at the same time. Each half's gradScale is its
   * share of the counted targets, so the cross-entropy's gradient is the whole micro-batch's; the load-balancing
   * loss is the halves' weighted the same way. The lanes run at once, but each parameter gets the first half's
   * gradient before the second's (LaneOrder): the same sums as trainStep on the first half, then on the second,
   * with those gradScales.
   */
  private async trainHalves(tokens: ArrayLike<number>, targets: ArrayLike<number>, batch: number, seq: number, gradScale: number): Promise<StepLoss> {
    const cut = Math.floor(batch / 2) * seq;
    const halves = [[0, cut, Math.floor(batch / 2)], [cut, batch * seq, batch - Math.floor(batch / 2)]] as const;
    const counted = halves.map(([from, to]) => countTargets(targets, from, to));
    const total = Math.max(counted[0] + counted[1], 1);
    const lanes = [this, (this.secondLane ??= new Model(this.kernels, this.config, this.options, undefined, this))];
    const order = new LaneOrder(this.config.numLayers);
    [this.turns, lanes[1].turns] = [order.first, order.second];
    const settled = await Promise.allSettled(halves.map(([from, to, sequences], i) =>
      lanes[i].trainWhole(slice(tokens, from, to), slice(targets, from, to), sequences, seq, (gradScale * counted[i]) / total)
        .catch((error: unknown) => {
          if (i === 0) order.fail(error); // the second lane stops at its next stage
          throw error;
        })));
    this.turns = lanes[1].turns = undefined;
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const [first, second] = settled.map((r) => (r as PromiseFulfilledResult<StepLoss>).value);
    const share = (i: number) => counted[i] / total;
    const crossEntropy = share(0) * first.crossEntropy + share(1) * second.crossEntropy;
    const aux = share(0) * first.aux + share(1) * second.aux;
    return { loss: crossEntropy + this.config.routerAuxLossCoef * aux, crossEntropy, aux, tokens: first.tokens + second.tokens };
  }

  /** Loss without gradients (held-out evaluation). */
  async evaluate(tokens: ArrayLike<number>, targets: ArrayLike<number>, batch: number, seq: number): Promise<StepLoss> {
    return this.forward(tokens, batch, seq, targets);
  }

  /** Logits [batch·seq, vocab] (a view, valid until the next call). */
  async logits(tokens: ArrayLike<number>, batch: number, seq: number): Promise<Float32Array> {
    await this.forward(tokens, batch, seq);
    const rows = batch * seq;
    const logits = this.logitsBuffer(rows);
    this.head.forward(this.workspace!.normed, logits, rows);
    return logits;
  }

  /** A cache for decode(), for up to maxSeqLen positions; release() it when done. */
  kvCache(): KvCache {
    return new KvCache(this.kernels, this.config);
  }

  /**
   * Generation: runs `tokens` (the prompt, then one new token at a time) after the positions
   * already in `cache`, adds theirs, and returns the logits of the next token [vocab] (a view,
   * valid until the next call). The same logits as logits() over the whole sequence, without
   * recomputing it.
   */
  async decode(tokens: ArrayLike<number>, cache: KvCache): Promise<Float32Array> {
    const { ops } = this.kernels;
    const { hiddenSize: H, numLayers: L, maxSeqLen } = this.config;
    const rows = tokens.length;
    const start = cache.length;
    if (rows === 0) throw new RangeError('model: decode needs at least one token');
    if (start + rows > maxSeqLen) throw new RangeError(`model: ${start} cached and ${rows} new positions exceed maxSeqLen ${maxSeqLen}`);
    const ws = this.ensureWorkspace(rows);
    this.embed(ws, tokens, rows, (i) => start + i);
    const positions = ws.positions.subarray(0, rows);
    const attend: Attend = (attention, x, y, layer) => attention.decode(x, y, rows, cache.layers[layer], start, positions);
    for (let l = 0; l < L; l++) await this.blockForward(l, ws, rows, ws.residual[l + 1], attend);
    cache.length = start + rows;
    const last = ws.residual[L].subarray((rows - 1) * H, rows * H);
    ops.rmsNorm({ x: last, weight: this.params.get('final_norm').value, y: ws.normed, rstd: ws.rstdFinal, rows: 1, dim: H, eps: this.config.rmsNormEps });
    const logits = this.logitsBuffer(1);
    this.head.forward(ws.normed, logits, 1);
    return logits;
  }

  private logitsBuffer(rows: number): Float32Array {
    const V = this.config.vocabSize;
    if (!this.fullLogits || this.fullLogits.length < rows * V) {
      if (this.fullLogits) this.kernels.heap.release(this.fullLogits);
      this.fullLogits = this.kernels.heap.f32(rows * V);
    }
    return this.fullLogits.subarray(0, rows * V);
  }

  /** Checks the token ids, records them and their positions, and looks up their embeddings into residual[0]. */
  private embed(ws: Workspace, tokens: ArrayLike<number>, rows: number, position: (i: number) => number): void {
    const { hiddenSize: H, vocabSize: V } = this.config;
    for (let i = 0; i < rows; i++) {
      const id = tokens[i];
      if (!(id >= 0 && id < V)) throw new RangeError(`model: token id ${id} at ${i} is outside the vocabulary [0, ${V})`);
      ws.tokens[i] = id;
      ws.positions[i] = position(i);
    }
    this.kernels.ops.gatherRows({ src: this.params.get('embed').value, indices: ws.tokens, dst: ws.residual[0], rows, cols: H, srcRows: V });
  }

  private ensureWorkspace(rows: number): Workspace {
    if (!this.workspace || this.workspace.rows < rows) {
      const { expertsPerToken: k, numExperts: E, expertHiddenSize, maxSeqLen } = this.config;
      this.workspace?.release();
      this.workspace = new Workspace(this.kernels, rows, this.config, this.options.checkpointing ?? false);
      for (const slab of this.expertSlabs) slab.reserve(rows * k);
      // The scratch buffers too, all at once: grown call by call they would leave holes in the heap.
      const seq = Math.min(rows, maxSeqLen);
      this.scratch.reserve(LAYER_SCRATCH, Math.max(...this.blocks.map((b) => Math.max(b.attention.scratchLength(rows, seq), b.moe.scratchLength(rows)))));
      if (this.options.mode === 'lora') this.scratch.reserve(LORA_SCRATCH, rows * this.options.lora!.rank);
      // An expert's share of the rows varies with the routing: room for twice the even share, grown past that when needed.
      this.expertScratch.reserve(Math.ceil((2 * rows * k) / E) * expertHiddenSize, this.options.activationStorage ?? 'f32');
    }
    return this.workspace;
  }

  private async forward(
    tokens: ArrayLike<number>, batch: number, seq: number, targets?: ArrayLike<number>, gradScale?: number,
  ): Promise<StepLoss> {
    const { ops } = this.kernels;
    const { hiddenSize: H, vocabSize: V, numLayers: L } = this.config;
    const rows = batch * seq;
    if (tokens.length !== rows) throw new RangeError(`model: ${tokens.length} tokens for batch ${batch} × seq ${seq}`);
    if (seq > this.config.maxSeqLen) throw new RangeError(`model: sequence of ${seq} exceeds maxSeqLen ${this.config.maxSeqLen}`);
    const ws = this.ensureWorkspace(rows);
    this.embed(ws, tokens, rows, (i) => i % seq);
    const aux: number[] = [];
    const attend = this.overSequences(ws, batch, seq);
    for (let l = 0; l < L; l++) aux.push(await this.blockForward(l, ws, rows, ws.residual[l + 1], attend));
    const xL = ws.residual[L];
    ops.rmsNorm({ x: xL, weight: this.params.get('final_norm').value, y: ws.normed, rstd: ws.rstdFinal, rows, dim: H, eps: this.config.rmsNormEps });
    this.last = { batch, seq, aux };
    const meanAux = aux.reduce((a, b) => a + b, 0) / L;
    if (!targets) return { loss: NaN, crossEntropy: NaN, aux: meanAux, tokens: 0 };

    let counted = 0;
    for (let i = 0; i < rows; i++) {
      const target = targets[i];
      if (target >= V) throw new RangeError(`model: target id ${target} at ${i} is outside the vocabulary [0, ${V})`);
      ws.targets[i] = target;
      if (target >= 0) counted++;
    }
    const scale = gradScale === undefined ? undefined : gradScale / Math.max(counted, 1);
    await this.turns?.enter(HEAD_STAGE);
    for (let r0 = 0; r0 < rows; r0 += HEAD_CHUNK) {
      await this.experts.letPeersIn();
      const n = Math.min(HEAD_CHUNK, rows - r0);
      const h = ws.normed.subarray(r0 * H, (r0 + n) * H);
      this.head.forward(h, ws.logits, n);
      ops.crossEntropy({
        logits: ws.logits, targets: ws.targets.subarray(r0, r0 + n), losses: ws.losses.subarray(r0, r0 + n), rows: n, vocab: V,
        ...(scale === undefined ? {} : { dLogits: ws.logits, scale }),
      });
      // Training: the head's backward now, while this chunk's logit gradient exists (after a turn for peers' calls).
      if (scale === undefined) continue;
      await this.experts.letPeersIn();
      this.head.backward(h, ws.logits, ws.dh.subarray(r0 * H, (r0 + n) * H), n);
    }
    this.turns?.leave(HEAD_STAGE);
    let sum = 0;
    for (let i = 0; i < rows; i++) sum += ws.losses[i];
    const crossEntropy = sum / Math.max(counted, 1);
    return { loss: crossEntropy + this.config.routerAuxLossCoef * meanAux, crossEntropy, aux: meanAux, tokens: counted };
  }

  /** Attention over `batch` whole sequences of `seq` tokens at the workspace's positions. */
  private overSequences(ws: Workspace, batch: number, seq: number): Attend {
    return (attention, x, y) => attention.forward(x, y, batch, seq, ws.positions);
  }

  private async blockForward(l: number, ws: Workspace, rows: number, out: Float32Array, attend: Attend): Promise<number> {
    const { ops } = this.kernels;
    const H = this.config.hiddenSize;
    const block = this.blocks[l];
    const a = ws.blocks[l];
    const x = ws.residual[l];
    await this.experts.letPeersIn();
    attend(block.attention, this.normalize(x, block.attnNorm, a.rstdAttn, ws, rows), ws.branchOut, l);
    ops.add(x, ws.branchOut, a.xMid, rows * H);
    this.expertSlabs[l].beginForward();
    const aux = await block.moe.forward(this.normalize(a.xMid, block.ffnNorm, a.rstdFfn, ws, rows), ws.branchOut, rows);
    ops.add(a.xMid, ws.branchOut, out, rows * H);
    return aux;
  }

  /** RMSNorm of x into ws.normed (rstd kept for the norm's backward); returns ws.normed. */
  private normalize(x: Float32Array, norm: Param, rstd: Float32Array, ws: Workspace, rows: number): Float32Array {
    const { hiddenSize: H, rmsNormEps: eps } = this.config;
    this.kernels.ops.rmsNorm({ x, weight: norm.value, y: ws.normed, rstd, rows, dim: H, eps });
    return ws.normed;
  }

  /** Backward of the latest forward (which must have had targets and a gradScale). */
  private async backward(gradScale: number): Promise<void> {
    const { ops } = this.kernels;
    const { hiddenSize: H, vocabSize: V, numLayers: L } = this.config;
    const ws = this.workspace!;
    const { batch, seq } = this.last!;
    const rows = batch * seq;
    const dx = ws.dx;
    const dh = ws.dh; // ∂L/∂(final norm output), left by the forward's chunked head backward
    const finalNorm = this.params.get('final_norm');
    await this.turns?.enter(layerStage(L - 1, L)); // the final norm's gradient goes with the last layer's
    ops.rmsNormBackward({
      x: ws.residual[L], weight: finalNorm.value, rstd: ws.rstdFinal, dy: dh, dx, dWeight: this.gradOrScratch(finalNorm),
      rows, dim: H,
    });
    const auxScale = (gradScale * this.config.routerAuxLossCoef) / L;
    for (let l = L - 1; l >= 0; l--) {
      if (l < L - 1) await this.turns?.enter(layerStage(l, L));
      if (this.options.checkpointing) await this.blockForward(l, ws, rows, ws.dh, this.overSequences(ws, batch, seq));
      await this.blockBackward(l, ws, batch, seq, auxScale);
      this.turns?.leave(layerStage(l, L));
    }
    const embed = this.params.get('embed');
    await this.turns?.enter(layerStage(-1, L));
    if (embed.grad) ops.scatterAddRows({ src: dx, indices: ws.tokens, dst: embed.grad, rows, cols: H, dstRows: V });
    this.turns?.leave(layerStage(-1, L));
  }

  /**
   * ws.dx holds ∂L/∂(layer output); leaves ∂L/∂(layer input) there, except in the first layer
   * when nothing before it trains (lora mode: frozen embedding and norm), where nobody reads it
   * and its products (q, k and v backward through the frozen base) are skipped.
   */
  private async blockBackward(l: number, ws: Workspace, batch: number, seq: number, auxScale: number): Promise<void> {
    const { ops } = this.kernels;
    const H = this.config.hiddenSize;
    const rows = batch * seq;
    const block = this.blocks[l];
    const a = ws.blocks[l];
    const { dx, dh } = ws;
    await block.moe.backward(this.normalize(a.xMid, block.ffnNorm, a.rstdFfn, ws, rows), dx, dh, rows, auxScale);
    ops.rmsNormBackward({ x: a.xMid, weight: block.ffnNorm.value, rstd: a.rstdFfn, dy: dh, dx, dWeight: this.gradOrScratch(block.ffnNorm), rows, dim: H, accumulate: true });
    await this.experts.letPeersIn();
    const inputGradient = l > 0 || this.params.get('embed').grad !== undefined || block.attnNorm.grad !== undefined;
    const normed = this.normalize(ws.residual[l], block.attnNorm, a.rstdAttn, ws, rows);
    await block.attention.backward(normed, dx, inputGradient ? dh : undefined, batch, seq, ws.positions, () => this.experts.letPeersIn());
    if (!inputGradient) return;
    ops.rmsNormBackward({ x: ws.residual[l], weight: block.attnNorm.value, rstd: a.rstdAttn, dy: dh, dx, dWeight: this.gradOrScratch(block.attnNorm), rows, dim: H, accumulate: true });
  }

  private normScratch?: Float32Array;

  /** A frozen norm's weight gradient goes to a scratch buffer nobody reads. */
  private gradOrScratch(p: Param): Float32Array {
    if (p.grad) return p.grad;
    if (!this.normScratch || this.normScratch.length < p.value.length) this.normScratch = this.kernels.heap.f32(p.value.length);
    return this.normScratch;
  }
}
