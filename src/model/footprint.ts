// The memory a node spends on a job, from the model config and the job's training settings alone, so the
// planner (before any node exists) and a node (before it builds its model) count the same bytes. Each term
// follows what src/model, src/train and src/kernels allocate on the kernel heap (test/model/footprint.test.ts
// measures them), plus what averaging keeps outside it.
import { PACKED_X_MAX_BYTES } from '../kernels/qint.ts';
import { QBLOCK } from '../kernels/quantized.ts';
import { MAX_HEAP_BYTES, SCRATCH_BYTES } from '../kernels/runtime.ts';
import { expertOf, isLoraTarget, LORA_MODULES, loraShapes, parameterShapes, type ModelConfig } from './config.ts';
import type { ActivationStorage } from './expert.ts';
import type { BasePath } from './linear.ts';
import { HEAD_CHUNK } from './model.ts';
import { sizeOf } from './params.ts';
import type { WeightsOptions } from './weights.ts';

/** How a job trains: the precision of its weights and, for the activations, the shape of one micro-batch. */
export interface FootprintSettings extends Pick<WeightsOptions, 'mode' | 'lora' | 'baseFormat'> {
  basePath?: BasePath;
  activationStorage?: ActivationStorage;
  /** Sequences per micro-batch; without it (and seqLen) no activations are counted. */
  batchSize?: number;
  seqLen?: number;
  /** What averaging keeps per trainable value outside the heap (default periodic). */
  averaging?: 'sync' | 'periodic';
}

/** The settings that decide the weights' bytes (the shard planner's name for them). */
export type Precision = FootprintSettings;

export interface Footprint {
  /** Everything but the routed experts, replicated on every node, with the fixed overheads of one kernel thread. */
  trunkBytes: number;
  /** One routed expert held here: its weights, trainable state and the activations of serving peers' calls to it. */
  expertBytes: number;
  /** One micro-batch's activations and the scratch of its forward and backward, every layer's kept. */
  activationBytes: number;
  /** The same under gradient checkpointing: only each layer's input is kept, one layer's activations at a time. */
  checkpointedActivationBytes: number;
  /** Each kernel thread past the first (its scratch). */
  threadBytes: number;
  /** Of expertBytes, the activations its calls keep, local or a peer's (made at the first call). */
  expertCallBytes: number;
  /** Of trunkBytes and expertBytes, averaging's state outside the kernel heap (plain JS arrays). */
  offHeap: { trunkBytes: number; expertBytes: number };
}

/** Heap blocks are 64-byte aligned (src/kernels/heap.ts). */
const aligned = (bytes: number) => Math.max(64, Math.ceil(bytes / 64) * 64);
const F32 = 4;
/** The value, its gradient and AdamW's m and v, on the heap. */
const TRAINABLE_HEAP_WORDS = 4;
/**
 * Averaging's f32 words per trainable value outside the heap: periodic keeps the parameters at the
 * last round (deltas are taken from them), the outer momentum and an error-feedback residual; sync a
 * copy of the gradient while a round is under way.
 */
const AVERAGING_WORDS = { periodic: 3, sync: 1 } as const;
/** A q8/q4 matrix's bytes: the codes and an f32 scale per block of QBLOCK. */
const quantizedBytes = (values: number, bits: 4 | 8) => aligned((values * bits) / 8) + aligned((values / QBLOCK) * F32);
/** The integer path packs X once per product, in panels of 4 rows (int16 values, a scale per block), at most ~PACKED_X_MAX_BYTES. */
function packedXBytes(rows: number, k: number): number {
  const panel = 4 * (k * 2 + (k / QBLOCK) * 4);
  return Math.min(Math.ceil(rows / 4), Math.max(1, Math.floor(PACKED_X_MAX_BYTES / panel))) * panel;
}

export function footprint(config: ModelConfig, settings: FootprintSettings): Footprint {
  const lora = settings.mode === 'lora' ? settings.lora : undefined;
  if (settings.mode === 'lora' && !lora) throw new Error('footprint: lora mode needs lora options (rank, alpha)');
  const format = lora ? (settings.baseFormat ?? 'f32') : 'f32';
  if (settings.mode === 'full' && (settings.baseFormat ?? 'f32') !== 'f32') throw new Error('footprint: a quantized base needs lora mode');
  const intPath = format !== 'f32' && settings.basePath === 'int';
  const averagingWords = AVERAGING_WORDS[settings.averaging ?? 'periodic'];

  const heap = { trunk: 0, expert: 0 };
  const offHeap = { trunk: 0, expert: 0 };
  const add = (name: string, heapBytes: number, trainableValues: number) => {
    const part = expertOf(name) ? 'expert' : 'trunk';
    heap[part] += heapBytes;
    offHeap[part] += trainableValues * averagingWords * F32;
  };
  // The base (weights.ts): trainable in full mode; frozen in lora mode, LoRA's targets and the head quantized.
  for (const [name, shape] of parameterShapes(config)) {
    const values = sizeOf(shape);
    const quantized = format !== 'f32' && (isLoraTarget(name) || (name === 'lm_head' && config.vocabSize % QBLOCK === 0));
    if (!lora) add(name, TRAINABLE_HEAP_WORDS * aligned(values * F32), values);
    else if (!quantized) add(name, aligned(values * F32), 0);
    // The head is always q8; the integer path's backward keeps a q8 Wᵀ of every quantized matrix.
    else add(name, quantizedBytes(values, format === 'q8' || name === 'lm_head' ? 8 : 4) + (intPath ? quantizedBytes(values, 8) : 0), 0);
  }
  if (lora) {
    const targets = new Set<string>(lora.targets ?? LORA_MODULES);
    for (const [name, shape] of loraShapes(config, lora.rank)) {
      if (!targets.has(name.replace(/\.lora_[ab]$/, '').split('.').pop()!)) continue;
      const values = sizeOf(shape);
      const frozen = lora.freezeA === true && name.endsWith('.lora_a');
      add(name, (frozen ? 1 : TRAINABLE_HEAP_WORDS) * aligned(values * F32), frozen ? 0 : values);
    }
  }
  const experts = config.numLayers * config.numExperts;
  const activations = settings.batchSize !== undefined && settings.seqLen !== undefined
    ? activationBytes(config, settings, settings.batchSize * settings.seqLen, settings.seqLen, intPath)
    : { full: 0, checkpointed: 0, perExpert: 0 };
  return {
    trunkBytes: Math.ceil(heap.trunk + offHeap.trunk + fixedBytes(config, settings)),
    expertBytes: Math.ceil((heap.expert + offHeap.expert) / experts + activations.perExpert),
    activationBytes: Math.ceil(activations.full),
    checkpointedActivationBytes: Math.ceil(activations.checkpointed),
    threadBytes: SCRATCH_BYTES,
    expertCallBytes: Math.ceil(activations.perExpert),
    offHeap: { trunkBytes: Math.ceil(offHeap.trunk), expertBytes: Math.ceil(offHeap.expert / experts) },
  };
}

/** The bytes of a node holding the trunk and `experts` routed experts, running `threads` kernel threads. */
export function nodeBytes(fp: Footprint, experts: number, checkpointing: boolean, threads = 1): number {
  const activations = checkpointing ? fp.checkpointedActivationBytes : fp.activationBytes;
  return fp.trunkBytes + experts * fp.expertBytes + activations + (threads - 1) * fp.threadBytes;
}

/** Of nodeBytes, what lives on the kernel heap (all but averaging's copies), which wasm32 caps at MAX_HEAP_BYTES. */
export function heapBytes(fp: Footprint, experts: number, checkpointing: boolean, threads = 1): number {
  return nodeBytes(fp, experts, checkpointing, threads) - fp.offHeap.trunkBytes - experts * fp.offHeap.expertBytes;
}

/**
 * Whether a node with `budget` bytes runs `experts` experts with every layer's activations kept
 * (checkpointing false), only under gradient checkpointing (true), or not at all (undefined).
 * The planner and the node both decide with this, so they agree.
 */
export function checkpointingFor(fp: Footprint, budget: number, experts: number, threads = 1): boolean | undefined {
  const fits = (checkpointing: boolean) =>
    nodeBytes(fp, experts, checkpointing, threads) <= budget && heapBytes(fp, experts, checkpointing, threads) <= MAX_HEAP_BYTES;
  if (fits(false)) return false;
  if (fits(true)) return true;
  return undefined;
}

/** The most experts a node with `budget` bytes can hold, within the kernel heap too (negative: not even the trunk and activations). */
export function expertCapacity(fp: Footprint, budget: number, checkpointing: boolean, threads = 1): number {
  const inBudget = Math.floor((budget - nodeBytes(fp, 0, checkpointing, threads)) / fp.expertBytes);
  const inHeap = Math.floor((MAX_HEAP_BYTES - heapBytes(fp, 0, checkpointing, threads)) / (fp.expertBytes - fp.offHeap.expertBytes));
  return Math.min(inBudget, inHeap);
}

/** Overheads that depend on neither the experts nor the micro-batch: the rotary table and one thread's kernel scratch. */
function fixedBytes(config: ModelConfig, settings: FootprintSettings): number {
  const rope = aligned(config.maxSeqLen * config.headDim * F32);
  // A frozen norm's weight gradient goes to a scratch row (model.ts gradOrScratch).
  const normScratch = settings.mode === 'lora' ? aligned(config.hiddenSize * F32) : 0;
  return rope + SCRATCH_BYTES + normScratch;
}

/**
 * The heap buffers of a forward and backward over `rows` tokens in sequences of `seq` (model.ts Workspace,
 * attention.ts, moe.ts, expert.ts, linear.ts), with every layer's kept or, under checkpointing, one layer's;
 * and per hosted expert, what serving a peer's call to it keeps (a peer's micro-batch of the same shape).
 */
function activationBytes(config: ModelConfig, settings: FootprintSettings, rows: number, seq: number, intPath: boolean) {
  const { hiddenSize: H, numLayers: L, vocabSize: V, numExperts: E, expertsPerToken: k, expertHiddenSize: F } = config;
  const S = config.sharedExpertHiddenSize;
  const q = config.numHeads * config.headDim;
  const kv = config.numKvHeads * config.headDim;
  const kept = settings.activationStorage === 'bf16' ? 2 : 4;
  const rank = settings.mode === 'lora' ? settings.lora!.rank : 0;
  const loraOn = (module: string) => rank > 0 && (settings.lora!.targets ?? LORA_MODULES).includes(module as never);
  const f32 = (values: number) => aligned(values * F32);
  const slots = rows * k;
  /** An expert's share of a micro-batch's routed rows, and twice that (what the expert scratch reserves). */
  const evenShare = Math.ceil(slots / E);
  const expertRows = Math.ceil((2 * slots) / E);

  // Per layer: the block's kept inputs, attention's q, k, v, output and log-sum-exp, the router's choices
  // and the experts' outputs, the experts' gate·x and up·x (one slab), the LoRA attention adapters' x·Aᵀ.
  const block = 2 * f32(rows) + f32(rows * H);
  const attention = 2 * aligned(rows * q * kept) + 2 * aligned(rows * kv * kept) + f32(rows * config.numHeads);
  const moe = f32(rows * E) + 4 * f32(slots) + aligned(slots * H * kept) + (S > 0 ? f32(rows * H) + f32(rows) : 0);
  const slab = 2 * aligned(slots * F * kept);
  const perLayer = block + attention + moe + slab;
  // Kept by every layer even under checkpointing: each LoRA linear's x·Aᵀ, and the shared expert's own gate·x and up·x.
  const adapted = (modules: string[]) => modules.filter(loraOn).length;
  const xa = (adapted(['q', 'k', 'v', 'o']) + (S > 0 ? adapted(['gate', 'up', 'down']) : 0)) * f32(rows * rank);
  const ownSlabs = S > 0 ? 2 * aligned(rows * S * kept) : 0;

  // Shared by all layers: residual stream (L + 1 layer inputs), the row buffers of the workspace,
  // one chunk of logits, the layer scratch (the larger of attention's and the MoE's backward),
  // the shared expert's gradients, the LoRA backward's scratch, one expert call's temporaries.
  const headRows = Math.min(rows, HEAD_CHUNK);
  const workspace = (L + 5) * f32(rows * H) + 2 * f32(rows) + 3 * aligned(rows * 4) + f32(headRows * V);
  const attentionScratch = 2 * rows * q + 2 * rows * kv + (kept === 2 ? rows * q + seq * (q + 2 * kv) : 0);
  const moeScratch = 3 * slots * H + 2 * slots + rows * E;
  const layerScratch = f32(Math.max(attentionScratch, moeScratch));
  const sharedExpert = S > 0 ? f32(rows) + 2 * f32(rows * H) : 0;
  const expertCall = Math.max(expertRows * F, rows * S);
  const expertScratch = (kept === 2 ? 4 : 2) * f32(expertCall);
  const loraScratch = rank > 0 ? f32(rows * rank) : 0;
  // Grouped heads: attention's backward sums each group's dk, dv shares of one sequence (ops.ts kvShares).
  const kvShares = config.numHeads !== config.numKvHeads ? f32(2 * seq * q) : 0;
  // The integer path's largest packed X: a trunk projection's, the head's backward (k = V) or an expert's.
  const packed = intPath ? Math.max(packedXBytes(rows, Math.max(H, q)), packedXBytes(headRows, V), packedXBytes(expertRows, F)) : 0;
  const shared = workspace + layerScratch + sharedExpert + expertScratch + loraScratch + kvShares + packed;

  // Per hosted expert: its LoRA x·Aᵀ for local calls and a serving replica's for a peer's, and the serving
  // replica's own gate·x and up·x of a peer's call.
  const expertXa = ['gate', 'up', 'down'].filter(loraOn).length * (f32(expertRows * rank) + f32(evenShare * rank));
  const perExpert = expertXa + 2 * aligned(evenShare * F * kept);
  return {
    full: shared + L * (perLayer + xa + ownSlabs),
    checkpointed: shared + perLayer + L * (xa + ownSlabs),
    perExpert,
  };
}
