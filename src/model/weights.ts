// The model's weights as held in this process: which canonical tensors exist here (the trunk and
// the hosted experts), the base loaded and quantized to q8/q4 where the format says, LoRA's init.
import { createHash, type Hash } from 'node:crypto';
import { groupId } from '../../proto/index.ts';
import type { Kernels, QuantizedTensor } from '../kernels/index.ts';
import { QBLOCK, releaseQuantized } from '../kernels/quantized.ts';
import {
  expertOf, isLoraTarget, LORA_MODULES, loraShapes, parameterShapes, type F32Tensor, type LoraModule, type ModelConfig,
} from './config.ts';
import { initTensors, uniform } from './init.ts';
import { ParamStore, sizeOf, type Param } from './params.ts';

export type TrainMode = 'full' | 'lora';
export type BaseFormat = 'f32' | 'q8' | 'q4';

export interface LoraOptions {
  rank: number;
  alpha: number;
  /** Which matrices get an adapter, by short name (default: all of LORA_MODULES). */
  targets?: LoraModule[];
  /** Keep every A at its seeded init and train only B (LoRA-FA): across replicas, the mean of B·A is then mean(B)·A. */
  freezeA?: boolean;
}

export interface WeightsOptions {
  mode: TrainMode;
  /** Required in lora mode. */
  lora?: LoraOptions;
  /** lora mode: how the frozen attention and expert matrices are stored (default f32). */
  baseFormat?: BaseFormat;
  /** Seed of the random initialization (weights in full mode, LoRA A in lora mode). */
  seed?: number;
  /**
   * Which experts this process holds (their parameters exist here); default all. A swarm node
   * holds the trunk and only its share of the experts.
   */
  hosts?: (layer: number, expert: number) => boolean;
}

export class ModelWeights {
  readonly params: ParamStore;
  /** lora mode with q8/q4: the frozen matrices, by canonical name. */
  readonly quantized = new Map<string, QuantizedTensor>();
  /** Every base tensor of the config, held here or not. */
  readonly shapes: Map<string, number[]>;
  /** lora mode: the adapters of the chosen targets, held here or not (empty in full mode). */
  readonly loraShapes: Map<string, number[]>;
  /** Wᵀ of frozen quantized matrices, made on first use by the integer path's backward. */
  private readonly transposed = new Map<string, QuantizedTensor>();
  private readonly format: BaseFormat;
  private readonly seed: number;

  /** Loads `base` (default: the seeded init) into the tensors held here, and initializes LoRA. */
  constructor(
    private readonly kernels: Kernels,
    private readonly config: ModelConfig,
    readonly options: WeightsOptions,
    base?: Iterable<[string, F32Tensor]>,
  ) {
    if (options.mode === 'lora' && !options.lora) throw new Error('model: lora mode needs lora options (rank, alpha)');
    if (options.mode === 'full' && options.baseFormat && options.baseFormat !== 'f32') {
      throw new Error('model: a quantized base needs lora mode (full mode trains every weight in fp32)');
    }
    this.format = options.mode === 'lora' ? (options.baseFormat ?? 'f32') : 'f32';
    this.seed = options.seed ?? 1;
    const hosts = options.hosts ?? (() => true);
    const held = (name: string) => {
      const owner = expertOf(name);
      return !owner || hosts(owner.layer, owner.expert);
    };
    this.params = new ParamStore(kernels);
    this.shapes = parameterShapes(config);
    this.loraShapes = options.mode === 'lora' ? adapterShapes(config, options.lora!) : new Map();
    this.allocate([...this.shapes.keys()].filter(held));
    this.loadBase(base ?? initTensors(config, this.seed, { reuseBuffer: true }), held);
    const adapters = [...this.loraShapes.keys()].filter(held);
    this.allocate(adapters);
    this.params.load(initLora(this.loraShapes, this.seed, held));
  }

  /**
   * The frozen matrices stored quantized: LoRA's targets and the (untied) LM head. The head
   * needs a vocabulary of whole 32-blocks (the integer path's backward quantizes Wᵀ along it).
   */
  quantizes(name: string): boolean {
    if (this.format === 'f32') return false;
    return isLoraTarget(name) || (name === 'lm_head' && this.config.vocabSize % QBLOCK === 0);
  }

  /** Wᵀ of a frozen quantized matrix for the integer path's backward; always q8 (a q4 copy would double the error). */
  transposedOf(name: string, w: QuantizedTensor): QuantizedTensor {
    let t = this.transposed.get(name);
    if (!t) this.transposed.set(name, (t = this.kernels.qint.transposeQuantized(w, { bits: 8 })));
    return t;
  }

  /**
   * Takes on tensors not held here yet (a new replica's): values from `state` (a holder's, base
   * matrices in fp32; or a checkpoint's base alone); base tensors and adapters `state` lacks (a LoRA
   * holder sends only its adapters) start from the seeded initialization. Returns the trainable ones.
   */
  add(names: ReadonlySet<string>, state?: Map<string, F32Tensor>): Param[] {
    this.allocate(names);
    const isBase = (name: string) => names.has(name) && !this.loraShapes.has(name);
    const given = new Map([...(state ?? [])].filter(([name]) => isBase(name)));
    const seeded = [...names].some((name) => isBase(name) && !given.has(name));
    this.loadBase(seeded ? withSeededRest(given, this.config, this.seed) : given, isBase);
    const isAdapter = (name: string) => names.has(name) && this.loraShapes.has(name);
    const adapters = new Map([...(state ?? [])].filter(([name]) => isAdapter(name)));
    this.params.load(adapters);
    this.params.load(initLora(this.loraShapes, this.seed, (name) => isAdapter(name) && !adapters.has(name)));
    return [...names].filter((name) => this.params.has(name)).map((name) => this.params.get(name)).filter((p) => p.grad);
  }

  /** Releases the named tensors held here (parameters, quantized matrices and their transposes). */
  remove(names: Iterable<string>): void {
    for (const name of names) {
      for (const store of [this.quantized, this.transposed]) {
        const q = store.get(name);
        if (!q) continue;
        releaseQuantized(this.kernels.heap, q);
        store.delete(name);
      }
      if (this.params.has(name)) this.params.remove(name);
    }
  }

  /** Copies of the named tensors' current values, quantized base matrices dequantized to fp32. */
  snapshot(names: Iterable<string>): Map<string, F32Tensor> {
    const out = new Map<string, F32Tensor>();
    for (const name of names) {
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

  /**
   * sha256 of the frozen base held here, by group ("trunk", "expert.L.E"): over the names in sorted
   * order, each followed by its bytes (a quantized matrix's values then scales; an fp32 tensor's values).
   * Two processes agree only when every bit of the base they hold agrees.
   */
  baseDigests(): Map<string, string> {
    const hashes = new Map<string, Hash>();
    const frozenParam = (name: string) => this.params.has(name) && !this.params.get(name).grad;
    const frozen = [...this.shapes.keys()].filter((name) => this.quantized.has(name) || frozenParam(name));
    for (const name of frozen.sort()) {
      const owner = expertOf(name);
      const group = groupId(owner ? { kind: 'expert', ...owner } : { kind: 'trunk' });
      let hash = hashes.get(group);
      if (!hash) hashes.set(group, (hash = createHash('sha256')));
      hash.update(`${name}\0`);
      const q = this.quantized.get(name);
      const arrays = q ? [q.q, q.scales] : [this.params.get(name).value];
      for (const a of arrays) hash.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
    return new Map([...hashes].map(([group, hash]) => [group, hash.digest('hex')]));
  }

  /** Parameters for the named tensors: LoRA trainable (A unless frozen), base ones in full mode (quantized ones live in `quantized`). */
  private allocate(names: Iterable<string>): void {
    const trainBase = this.options.mode === 'full';
    const frozenA = this.options.lora?.freezeA === true;
    for (const name of names) {
      const lora = this.loraShapes.get(name);
      if (lora) this.params.add(name, lora, !(frozenA && name.endsWith('.lora_a')));
      else if (!this.quantizes(name)) this.params.add(name, this.shapes.get(name)!, trainBase);
    }
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
      if (tensor.shape.join('x') !== shape.join('x')) {
        throw new Error(`model: base tensor ${name} has shape [${tensor.shape}], expected [${shape}]`);
      }
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

/** `given`, then the seeded init of every other tensor of the config (generated one at a time). */
function* withSeededRest(given: Map<string, F32Tensor>, config: ModelConfig, seed: number): Generator<[string, F32Tensor]> {
  yield* given;
  for (const entry of initTensors(config, seed, { reuseBuffer: true })) if (!given.has(entry[0])) yield entry;
}

/** The config's LoRA shapes restricted to the chosen target modules. */
function adapterShapes(config: ModelConfig, lora: LoraOptions): Map<string, number[]> {
  const targets = new Set<string>(lora.targets ?? LORA_MODULES);
  const module = (name: string) => name.replace(/\.lora_[ab]$/, '').split('.').pop()!;
  return new Map([...loraShapes(config, lora.rank)].filter(([name]) => targets.has(module(name))));
}

/**
 * LoRA A ~ U(−1/√in, 1/√in) (PEFT's kaiming-uniform default), B = 0, for the adapters `held` picks.
 * One random sequence runs over every adapter of the model, held or not, so a tensor's initial values
 * are the same on every node whatever else it holds (nodes average what they hold with each other).
 */
function initLora(shapes: Map<string, number[]>, seed: number, held: (name: string) => boolean): Map<string, F32Tensor> {
  const out = new Map<string, F32Tensor>();
  const random = uniform(seed ^ 0x9e3779b9);
  for (const [name, shape] of shapes) {
    const size = sizeOf(shape);
    const isA = name.endsWith('.lora_a');
    if (!held(name)) {
      if (isA) for (let i = 0; i < size; i++) random();
      continue;
    }
    const data = new Float32Array(size);
    if (isA) {
      const bound = 1 / Math.sqrt(shape[1]);
      for (let i = 0; i < size; i++) data[i] = (random() * 2 - 1) * bound;
    }
    out.set(name, { shape, data });
  }
  return out;
}
