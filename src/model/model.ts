// The MoE decoder: embedding → layers (x += attention(rmsnorm(x)); x += moe(rmsnorm(x))) →
// final rmsnorm → LM head, with each stage's forward and backward side by side and every
// activation in explicit heap buffers. Two modes:
//   full: every parameter trainable in fp32;
//   lora: the base frozen (its attention, expert and head matrices optionally stored q8/q4), and
//         LoRA A/B trainable on the chosen targets (A random, B zero: training starts from the
//         base model exactly).
// Gradient checkpointing keeps only each layer's input and recomputes the layer's forward in
// backward; all layers then share one set of activation buffers.
import { HeapGroup } from '../kernels/heap.ts';
import type { Kernels, QuantizedTensor } from '../kernels/index.ts';
import { QBLOCK } from '../kernels/quantized.ts';
import type { RopeTable } from '../kernels/ops.ts';
import { Attention, AttentionBuffers, type KvCacheLayer } from './attention.ts';
import { isLoraTarget, loraShapes, parameterShapes, type F32Tensor, type ModelConfig } from './config.ts';
import { ExpertCache, ExpertScratch, ExpertSlab, LocalExperts, SwigluExpert, type ActivationStorage, type ExpertCompute } from './expert.ts';
import { initTensors, uniform } from './init.ts';
import { DenseLinear, LAYER_SCRATCH, LORA_SCRATCH, LoraLinear, QuantLinear, ScratchBuffers, type BasePath, type Linear } from './linear.ts';
import { MoeBuffers, MoeLayer } from './moe.ts';
import { ParamStore, sizeOf, type Param } from './params.ts';

export type TrainMode = 'full' | 'lora';
export type BaseFormat = 'f32' | 'q8' | 'q4';

/** Short names of the matrices LoRA can adapt (attention projections; expert matrices). */
export const LORA_MODULES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LoraModule = (typeof LORA_MODULES)[number];

export interface LoraOptions {
  rank: number;
  alpha: number;
  /** Which matrices get an adapter, by short name (default: all of LORA_MODULES). */
  targets?: LoraModule[];
}

export interface ModelOptions {
  mode: TrainMode;
  /** Required in lora mode. */
  lora?: LoraOptions;
  /** lora mode: how the frozen attention and expert matrices are stored (default f32). */
  baseFormat?: BaseFormat;
  /** lora mode with q8/q4: the fp32 path (dequantize while packing) or the exact integer path. */
  basePath?: BasePath;
  checkpointing?: boolean;
  /** How the experts and attention keep their largest activations for the backward (default f32; bf16 halves that memory, see ActivationStorage). */
  activationStorage?: ActivationStorage;
  /** Seed of the random initialization (weights in full mode, LoRA A in lora mode). */
  seed?: number;
  /** Where the MoE layers send expert work; default: every expert in this process. */
  experts?: ExpertCompute;
  /**
   * Which experts this process holds (their parameters exist here); default all. A swarm node
   * holds the trunk and only its share of the experts.
   */
  hosts?: (layer: number, expert: number) => boolean;
}

const EXPERT_PARAM = /^layers\.(\d+)\.experts\.(\d+)\./;

/** The (layer, expert) a canonical parameter name belongs to, or undefined for the trunk. */
export function expertOf(name: string): { layer: number; expert: number } | undefined {
  const m = EXPERT_PARAM.exec(name);
  return m ? { layer: Number(m[1]), expert: Number(m[2]) } : undefined;
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
const HEAD_CHUNK = 256;

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
  readonly params: ParamStore;
  /** lora mode with q8/q4: the frozen matrices, by canonical name. */
  readonly quantized = new Map<string, QuantizedTensor>();
  /** The experts held in this process, [layer][expert]; undefined where another node holds it. */
  readonly localExperts: (SwigluExpert | undefined)[][] = [];
  private readonly blocks: Block[] = [];
  private readonly shapes: Map<string, number[]>;
  private loraShapes: Map<string, number[]>;
  private readonly format: BaseFormat;
  /** Where each layer's experts keep their activations (one slab for all layers under checkpointing). */
  private readonly expertSlabs: ExpertSlab[];
  private readonly expertScratch: ExpertScratch;
  /** Temporaries of one layer's or one linear's forward or backward, shared by all of them. */
  private readonly scratch: ScratchBuffers;
  private readonly transposed = new Map<string, QuantizedTensor>();
  private readonly serving = new Map<string, SwigluExpert>();
  private readonly head: Linear;
  private readonly rope: RopeTable;
  private workspace?: Workspace;
  /** Logits of every row, for logits() only (generation, tests). */
  private fullLogits?: Float32Array;
  private last?: { batch: number; seq: number; aux: number[] };

  constructor(
    private readonly kernels: Kernels,
    readonly config: ModelConfig,
    readonly options: ModelOptions,
    base?: Map<string, F32Tensor>,
  ) {
    if (options.mode === 'lora' && !options.lora) throw new Error('model: lora mode needs lora options (rank, alpha)');
    const format = options.mode === 'lora' ? (options.baseFormat ?? 'f32') : 'f32';
    if (options.mode === 'full' && options.baseFormat && options.baseFormat !== 'f32') {
      throw new Error('model: a quantized base needs lora mode (full mode trains every weight in fp32)');
    }
    const trainBase = options.mode === 'full';
    const seed = options.seed ?? 1;
    const hosts = options.hosts ?? (() => true);
    const held = (name: string) => {
      const owner = expertOf(name);
      return !owner || hosts(owner.layer, owner.expert);
    };
    this.params = new ParamStore(kernels);
    this.shapes = parameterShapes(config);
    this.format = format;
    for (const [name, shape] of this.shapes) {
      if (held(name) && !this.quantizes(name)) this.params.add(name, shape, trainBase);
    }
    this.loadBase(base ?? initTensors(config, seed, { reuseBuffer: true }), held);

    this.loraShapes = new Map();
    if (options.mode === 'lora') {
      const targets = new Set<string>(options.lora!.targets ?? LORA_MODULES);
      const module = (name: string) => name.replace(/\.lora_[ab]$/, '').split('.').pop()!;
      this.loraShapes = new Map([...loraShapes(config, options.lora!.rank)].filter(([name]) => targets.has(module(name))));
      const adapters = new Map([...this.loraShapes].filter(([name]) => held(name)));
      for (const [name, shape] of adapters) this.params.add(name, shape, true);
      this.params.load(initLora(adapters, seed));
    }

    this.rope = kernels.ops.ropeTable(config.headDim, config.maxSeqLen, config.ropeTheta);
    const scratch = (this.scratch = new ScratchBuffers(kernels));
    this.expertScratch = new ExpertScratch(kernels);
    const sharedSlab = options.checkpointing ? new ExpertSlab(kernels, config.expertHiddenSize, options.activationStorage) : undefined;
    this.expertSlabs = Array.from({ length: config.numLayers }, () => sharedSlab ?? new ExpertSlab(kernels, config.expertHiddenSize, options.activationStorage));
    for (let l = 0; l < config.numLayers; l++) {
      this.localExperts.push(Array.from({ length: config.numExperts }, (_, e) => (hosts(l, e) ? this.buildExpert(l, e) : undefined)));
    }
    const experts = options.experts ?? new LocalExperts(this.localExperts);
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
        moe: new MoeLayer(kernels, config, l, linear(`${p}.router`), experts, scratch, sharedMoe ?? new MoeBuffers(options.activationStorage), shared),
      });
    }
    this.head = config.tieEmbeddings ? new DenseLinear(kernels, this.params.get('embed')) : linear('lm_head');
  }

  /**
   * The frozen matrices stored quantized: LoRA's targets and the (untied) LM head. The head
   * needs a vocabulary of whole 32-blocks (the integer path's backward quantizes Wᵀ along it).
   */
  private quantizes(name: string): boolean {
    if (this.format === 'f32') return false;
    return isLoraTarget(name) || (name === 'lm_head' && this.config.vocabSize % QBLOCK === 0);
  }

  private linear(name: string): Linear {
    const bias = this.params.has(`${name}_bias`) ? this.params.get(`${name}_bias`) : undefined;
    const q = this.quantized.get(name);
    const path = this.options.basePath ?? 'fp32';
    const base: Linear = q
      ? new QuantLinear(this.kernels, q, path, bias, path === 'int' ? this.transposedOf(name, q) : undefined)
      : new DenseLinear(this.kernels, this.params.get(name), bias);
    if (!this.params.has(`${name}.lora_a`)) return base;
    return new LoraLinear(this.kernels, base, this.params.get(`${name}.lora_a`), this.params.get(`${name}.lora_b`), this.options.lora!.alpha, this.scratch);
  }

  /** Wᵀ of a frozen quantized matrix for the integer path's backward; always q8 (a q4 copy would double the error). */
  private transposedOf(name: string, w: QuantizedTensor): QuantizedTensor {
    let t = this.transposed.get(name);
    if (!t) this.transposed.set(name, (t = this.kernels.qint.transposeQuantized(w, { bits: 8 })));
    return t;
  }

  /**
   * A second instance of a held expert over the same parameters but with its own activation
   * caches, to serve other nodes' calls while this node's own forward keeps its activations.
   */
  servingExpert(layer: number, expert: number): SwigluExpert | undefined {
    if (!this.localExperts[layer][expert]) return undefined;
    const key = `${layer}.${expert}`;
    let serving = this.serving.get(key);
    if (!serving) this.serving.set(key, (serving = this.swiglu(`layers.${layer}.experts.${expert}`)));
    return serving;
  }

  /** An expert keeping its activations in `slab`, or in a slab of its own. */
  private swiglu(prefix: string, slab?: ExpertSlab): SwigluExpert {
    const gate = this.linear(`${prefix}.gate`);
    const cache = slab
      ? new ExpertCache(this.kernels, slab)
      : new ExpertCache(this.kernels, new ExpertSlab(this.kernels, gate.outDim, this.options.activationStorage), true);
    return new SwigluExpert(this.kernels, gate, this.linear(`${prefix}.up`), this.linear(`${prefix}.down`), this.expertScratch, cache);
  }

  private buildExpert(layer: number, expert: number): SwigluExpert {
    return this.swiglu(`layers.${layer}.experts.${expert}`, this.expertSlabs[layer]);
  }

  /** Canonical names of an expert's tensors (base matrices, and LoRA A/B in lora mode). */
  expertTensorNames(layer: number, expert: number): string[] {
    const prefix = `layers.${layer}.experts.${expert}.`;
    return [...this.shapes.keys(), ...this.loraShapes.keys()].filter((name) => name.startsWith(prefix));
  }

  /**
   * Takes on an expert (a new replica): its tensors come from `state` (a holder's current
   * values; base matrices in fp32) or, when absent, from the seeded initialization. Returns
   * its trainable parameters, for the optimizer.
   */
  addExpert(layer: number, expert: number, state?: Map<string, F32Tensor>): Param[] {
    if (this.localExperts[layer][expert]) throw new Error(`model: expert ${layer}.${expert} is already held here`);
    const names = new Set(this.expertTensorNames(layer, expert));
    const trainBase = this.options.mode === 'full';
    for (const name of names) {
      if (this.loraShapes.has(name)) this.params.add(name, this.loraShapes.get(name)!, true);
      else if (!this.quantizes(name)) this.params.add(name, this.shapes.get(name)!, trainBase);
    }
    const baseNames = (name: string) => names.has(name) && !this.loraShapes.has(name);
    this.loadBase(state ? [...state].filter(([name]) => baseNames(name)) : initTensors(this.config, this.options.seed ?? 1, { reuseBuffer: true }), baseNames);
    const lora = new Map([...this.loraShapes].filter(([name]) => names.has(name)));
    this.params.load(state ? new Map([...state].filter(([name]) => lora.has(name))) : initLora(lora, this.options.seed ?? 1));
    this.localExperts[layer][expert] = this.buildExpert(layer, expert);
    return [...names].filter((name) => this.params.has(name)).map((name) => this.params.get(name)).filter((p) => p.grad);
  }

  /** Gives up an expert held here; returns the names of the parameters released. */
  removeExpert(layer: number, expert: number): string[] {
    if (!this.localExperts[layer][expert]) throw new Error(`model: expert ${layer}.${expert} is not held here`);
    this.localExperts[layer][expert] = undefined;
    this.serving.delete(`${layer}.${expert}`);
    const names = this.expertTensorNames(layer, expert);
    for (const name of names) {
      for (const store of [this.quantized, this.transposed]) {
        const q = store.get(name);
        if (!q) continue;
        this.kernels.heap.release(q.q);
        this.kernels.heap.release(q.scales);
        store.delete(name);
      }
      if (this.params.has(name)) this.params.remove(name);
    }
    return names;
  }

  /** An expert's current tensors (base matrices dequantized to fp32), to seed a new replica. */
  expertState(layer: number, expert: number): Map<string, F32Tensor> {
    const out = new Map<string, F32Tensor>();
    for (const name of this.expertTensorNames(layer, expert)) {
      const q = this.quantized.get(name);
      if (q) {
        const data = this.kernels.quant.dequantize(q);
        out.set(name, { shape: [q.rows, q.cols], data: Float32Array.from(data) });
        this.kernels.heap.release(data);
      } else {
        const p = this.params.get(name);
        out.set(name, { shape: [...p.shape], data: Float32Array.from(p.value) });
      }
    }
    return out;
  }

  /** Token-to-expert assignments dropped so far because no holder of the expert answered. */
  droppedAssignments(): number {
    return this.blocks.reduce((sum, b) => sum + b.moe.droppedAssignments, 0);
  }

  /**
   * Forward over `batch` sequences of `seq` tokens ([batch·seq] ids), the loss against
   * `targets` (negative: ignored), and the backward, adding gradScale·∂loss/∂θ into the
   * trainable parameters' gradients. Returns the loss of this micro-batch.
   */
  async trainStep(tokens: ArrayLike<number>, targets: ArrayLike<number>, batch: number, seq: number, gradScale = 1): Promise<StepLoss> {
    const result = await this.forward(tokens, batch, seq, targets, gradScale);
    await this.backward(gradScale);
    return result;
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
    for (let r0 = 0; r0 < rows; r0 += HEAD_CHUNK) {
      const n = Math.min(HEAD_CHUNK, rows - r0);
      const h = ws.normed.subarray(r0 * H, (r0 + n) * H);
      this.head.forward(h, ws.logits, n);
      ops.crossEntropy({
        logits: ws.logits, targets: ws.targets.subarray(r0, r0 + n), losses: ws.losses.subarray(r0, r0 + n), rows: n, vocab: V,
        ...(scale === undefined ? {} : { dLogits: ws.logits, scale }),
      });
      // Training: the head's backward now, while this chunk's logit gradient exists.
      if (scale !== undefined) this.head.backward(h, ws.logits, ws.dh.subarray(r0 * H, (r0 + n) * H), n);
    }
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
    ops.rmsNormBackward({
      x: ws.residual[L], weight: finalNorm.value, rstd: ws.rstdFinal, dy: dh, dx, dWeight: this.gradOrScratch(finalNorm),
      rows, dim: H,
    });
    const auxScale = (gradScale * this.config.routerAuxLossCoef) / L;
    for (let l = L - 1; l >= 0; l--) {
      if (this.options.checkpointing) await this.blockForward(l, ws, rows, ws.dh, this.overSequences(ws, batch, seq));
      await this.blockBackward(l, ws, batch, seq, auxScale);
    }
    const embed = this.params.get('embed');
    if (embed.grad) ops.scatterAddRows({ src: dx, indices: ws.tokens, dst: embed.grad, rows, cols: H, dstRows: V });
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
    const inputGradient = l > 0 || this.params.get('embed').grad !== undefined || block.attnNorm.grad !== undefined;
    block.attention.backward(this.normalize(ws.residual[l], block.attnNorm, a.rstdAttn, ws, rows), dx, inputGradient ? dh : undefined, batch, seq, ws.positions);
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

  /**
   * Copies base weights in, one tensor at a time (a random init is generated tensor by tensor,
   * never held whole), quantizing the matrices the format says. Tensors not `wanted` here
   * (experts held elsewhere) are skipped; every wanted one must come exactly once, with its shape.
   */
  private loadBase(tensors: Iterable<[string, F32Tensor]>, wanted: (name: string) => boolean): void {
    const { heap, quant } = this.kernels;
    const seen = new Set<string>();
    for (const [name, tensor] of tensors) {
      const shape = this.shapes.get(name);
      if (!shape) throw new Error(`model: base tensor ${name} is not a parameter of this config`);
      if (!wanted(name)) continue;
      if (tensor.shape.join('x') !== shape.join('x')) throw new Error(`model: base tensor ${name} has shape [${tensor.shape}], expected [${shape}]`);
      seen.add(name);
      if (!this.quantizes(name)) {
        this.params.get(name).value.set(tensor.data);
        continue;
      }
      const staging = heap.f32(tensor.data.length);
      staging.set(tensor.data);
      // The head is always q8: its error lands on the logits directly (q4: ~13% of their range).
      const bits = this.format === 'q8' || name === 'lm_head' ? 8 : 4;
      this.quantized.set(name, quant.quantize(staging, shape[0], shape[1], bits));
      heap.release(staging);
    }
    const missing = [...this.shapes.keys()].filter((name) => wanted(name) && !seen.has(name));
    if (missing.length) throw new Error(`model: base lacks ${missing.length} tensor(s), e.g. ${missing.slice(0, 3).join(', ')}`);
  }
}

/** LoRA A ~ U(−1/√in, 1/√in) (PEFT's kaiming-uniform default), B = 0. */
function initLora(shapes: Map<string, number[]>, seed: number): Map<string, F32Tensor> {
  const out = new Map<string, F32Tensor>();
  const random = uniform(seed ^ 0x9e3779b9);
  for (const [name, shape] of shapes) {
    const data = new Float32Array(sizeOf(shape));
    if (name.endsWith('.lora_a')) {
      const bound = 1 / Math.sqrt(shape[1]);
      for (let i = 0; i < data.length; i++) data[i] = (random() * 2 - 1) * bound;
    }
    out.set(name, { shape, data });
  }
  return out;
}
