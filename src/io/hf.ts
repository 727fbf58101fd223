// Hugging Face checkpoints <-> the canonical model (src/model/config.ts): config.json mapping
// and tensor-name mapping for Mixtral, Qwen2-MoE and dense Llama, in both directions.
//
// Expert weight layouts:
// - per-expert ("classic"): Mixtral `block_sparse_moe.experts.{e}.w1|w3|w2.weight` (w1 = gate,
//   w3 = up, w2 = down) with the router at `block_sparse_moe.gate.weight`; Qwen2-MoE
//   `mlp.experts.{e}.gate_proj|up_proj|down_proj.weight` with the router at `mlp.gate.weight`.
// - packed (transformers v5): `mlp.experts.gate_up_proj` [E, 2F, H] and `mlp.experts.down_proj`
//   [E, H, F], router `mlp.gate.weight`. Rows [0, F) of each expert's gate_up slice are the gate
//   projection and rows [F, 2F) the up projection: transformers splits the product with
//   `.chunk(2, dim=-1)` as `gate, up` (not interleaved). The fixtures agree: the packed Mixtral's
//   first halves equal the classic file's w1 (tested), and a one-off NumPy forward reading them
//   this way matched the reference logits to 2e-8 (the swapped reading is off by 3e-3).
// A dense Llama becomes 1 expert, top-1: `mlp.gate_proj|up_proj|down_proj` is expert 0 and the
// router is a zero [1, H] matrix (a softmax over one expert is 1 whatever the weights).
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ConfigError, parameterShapes, validateConfig, type F32Tensor, type ModelConfig } from '../model/config.ts';
import { readSafetensors, writeSafetensors, type FloatDType, type Tensor } from './safetensors.ts';

export type HfFamily = 'mixtral' | 'qwen2_moe' | 'llama';

export interface HfLayout {
  family: HfFamily;
  /** transformers-v5 fused expert tensors instead of one module per expert. */
  packedExperts: boolean;
}

export class HfFormatError extends Error {
  override name = 'HfFormatError';
}

const ARCHITECTURES: Record<HfFamily, string> = {
  mixtral: 'MixtralForCausalLM',
  qwen2_moe: 'Qwen2MoeForCausalLM',
  llama: 'LlamaForCausalLM',
};

/** transformers' defaults for keys a config.json may leave out. */
const FAMILY_DEFAULTS: Record<HfFamily, { rope_theta: number; rms_norm_eps: number; max_position_embeddings: number }> = {
  mixtral: { rope_theta: 1e6, rms_norm_eps: 1e-5, max_position_embeddings: 4096 * 32 },
  qwen2_moe: { rope_theta: 10000, rms_norm_eps: 1e-6, max_position_embeddings: 32768 },
  llama: { rope_theta: 10000, rms_norm_eps: 1e-6, max_position_embeddings: 2048 },
};

const TORCH_DTYPES: Record<FloatDType, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * Maps a Hugging Face config.json to a ModelConfig. Sizes must be present; behavioural keys
 * default as transformers does. Features the model lacks (other activations, RoPE scaling,
 * dense layers inside a MoE model, Llama's output/MLP biases) are rejected, not ignored.
 */
export function configFromHf(json: unknown): { config: ModelConfig; family: HfFamily } {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new HfFormatError('config.json must be a JSON object');
  const hf = json as Record<string, unknown>;
  const family = hf.model_type;
  if (family !== 'mixtral' && family !== 'qwen2_moe' && family !== 'llama') {
    throw new HfFormatError(`config.json: unsupported model_type ${JSON.stringify(family)} (supported: mixtral, qwen2_moe, llama)`);
  }
  const given = (key: string) => hf[key] !== undefined && hf[key] !== null;
  const number = (key: string, fallback?: number): number => {
    const v = given(key) ? hf[key] : fallback;
    if (typeof v !== 'number') throw new HfFormatError(`config.json (${family}): ${key} must be a number, got ${JSON.stringify(hf[key])}`);
    return v;
  };
  const flag = (key: string, fallback: boolean): boolean => {
    const v = given(key) ? hf[key] : fallback;
    if (typeof v !== 'boolean') throw new HfFormatError(`config.json (${family}): ${key} must be a boolean, got ${JSON.stringify(hf[key])}`);
    return v;
  };
  const unsupported = (what: string) => new HfFormatError(`config.json (${family}): ${what} is not supported`);

  if ((given('hidden_act') ? hf.hidden_act : 'silu') !== 'silu') throw unsupported(`hidden_act ${JSON.stringify(hf.hidden_act)} (only silu)`);
  const defaults = FAMILY_DEFAULTS[family];
  // transformers v5 moves rope_theta into rope_parameters; older files use rope_scaling for variants.
  const rope = (given('rope_parameters') ? hf.rope_parameters : given('rope_scaling') ? hf.rope_scaling : {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default') throw unsupported(`RoPE type ${JSON.stringify(ropeType)}`);
  const ropeTheta = typeof rope.rope_theta === 'number' ? rope.rope_theta : number('rope_theta', defaults.rope_theta);

  const hiddenSize = number('hidden_size');
  const numHeads = number('num_attention_heads');
  if (!given('head_dim') && hiddenSize % numHeads !== 0) {
    throw new HfFormatError(`config.json (${family}): hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
  }
  // Attention within a sliding window equals full attention for sequences no longer than it.
  const windowed = family === 'qwen2_moe' ? flag('use_sliding_window', false) : given('sliding_window');
  const maxPositions = number('max_position_embeddings', defaults.max_position_embeddings);
  const common = {
    vocabSize: number('vocab_size'),
    hiddenSize,
    numLayers: number('num_hidden_layers'),
    numHeads,
    numKvHeads: number('num_key_value_heads', family === 'mixtral' ? 8 : family === 'qwen2_moe' ? 16 : numHeads),
    headDim: number('head_dim', hiddenSize / numHeads),
    ropeTheta,
    rmsNormEps: number('rms_norm_eps', defaults.rms_norm_eps),
    tieEmbeddings: flag('tie_word_embeddings', false),
    maxSeqLen: windowed ? Math.min(maxPositions, number('sliding_window')) : maxPositions,
  };

  let moe: Omit<ModelConfig, keyof typeof common>;
  if (family === 'mixtral') {
    moe = {
      numExperts: number('num_local_experts', 8),
      expertsPerToken: number('num_experts_per_tok', 2),
      expertHiddenSize: number('intermediate_size'),
      sharedExpertHiddenSize: 0,
      normTopkProb: true,
      attentionBias: false,
      routerAuxLossCoef: number('router_aux_loss_coef', 0.001),
    };
  } else if (family === 'qwen2_moe') {
    if (number('decoder_sparse_step', 1) !== 1 || (Array.isArray(hf.mlp_only_layers) && hf.mlp_only_layers.length > 0)) {
      throw unsupported('a dense MLP in some layers (decoder_sparse_step != 1 or mlp_only_layers)');
    }
    moe = {
      numExperts: number('num_experts'),
      expertsPerToken: number('num_experts_per_tok', 4),
      expertHiddenSize: number('moe_intermediate_size'),
      sharedExpertHiddenSize: number('shared_expert_intermediate_size'),
      normTopkProb: flag('norm_topk_prob', false),
      attentionBias: flag('qkv_bias', true),
      routerAuxLossCoef: number('router_aux_loss_coef', 0.001),
    };
    if (moe.sharedExpertHiddenSize <= 0) throw unsupported('shared_expert_intermediate_size <= 0');
  } else {
    if (flag('attention_bias', false)) throw unsupported('attention_bias (it includes an o_proj bias)');
    if (flag('mlp_bias', false)) throw unsupported('mlp_bias');
    moe = {
      numExperts: 1,
      expertsPerToken: 1,
      expertHiddenSize: number('intermediate_size'),
      sharedExpertHiddenSize: 0,
      normTopkProb: true,
      attentionBias: false,
      routerAuxLossCoef: 0,
    };
  }
  try {
    return { config: validateConfig({ ...common, ...moe }), family };
  } catch (err) {
    if (err instanceof ConfigError) throw new HfFormatError(`config.json (${family}): ${err.message}`);
    throw err;
  }
}

/** Throws unless `family` can express every feature of `config`. */
function checkFamily(config: ModelConfig, family: HfFamily): void {
  const fail = (why: string) => {
    throw new HfFormatError(`cannot express this model as ${family}: ${why}`);
  };
  if (family === 'llama' && (config.numExperts !== 1 || config.expertsPerToken !== 1)) fail('a dense Llama has exactly 1 expert, top-1');
  if (family === 'qwen2_moe' && config.sharedExpertHiddenSize === 0) fail('Qwen2-MoE always has a shared expert');
  if (family !== 'qwen2_moe' && config.sharedExpertHiddenSize > 0) fail('it has a shared expert');
  if (family !== 'qwen2_moe' && config.attentionBias) fail('it has q/k/v biases');
  if (family === 'mixtral' && !config.normTopkProb) fail('Mixtral always renormalizes the top-k gates');
}

/** A config.json for `config` in `family`, every key written out (no reliance on defaults). */
export function hfConfigFromConfig(config: ModelConfig, family: HfFamily, dtype: FloatDType = 'F32'): Record<string, unknown> {
  checkFamily(config, family);
  const common = {
    model_type: family,
    architectures: [ARCHITECTURES[family]],
    vocab_size: config.vocabSize,
    hidden_size: config.hiddenSize,
    num_hidden_layers: config.numLayers,
    num_attention_heads: config.numHeads,
    num_key_value_heads: config.numKvHeads,
    head_dim: config.headDim,
    hidden_act: 'silu',
    max_position_embeddings: config.maxSeqLen,
    rope_theta: config.ropeTheta,
    rms_norm_eps: config.rmsNormEps,
    tie_word_embeddings: config.tieEmbeddings,
    torch_dtype: TORCH_DTYPES[dtype],
  };
  if (family === 'llama') return { ...common, intermediate_size: config.expertHiddenSize, attention_bias: false, mlp_bias: false };
  if (family === 'mixtral') {
    return {
      ...common,
      intermediate_size: config.expertHiddenSize,
      num_local_experts: config.numExperts,
      num_experts_per_tok: config.expertsPerToken,
      router_aux_loss_coef: config.routerAuxLossCoef,
      sliding_window: null,
    };
  }
  return {
    ...common,
    // Only used by dense layers, which this model never has; Qwen's own configs set it to the shared size.
    intermediate_size: config.sharedExpertHiddenSize,
    moe_intermediate_size: config.expertHiddenSize,
    shared_expert_intermediate_size: config.sharedExpertHiddenSize,
    num_experts: config.numExperts,
    num_experts_per_tok: config.expertsPerToken,
    norm_topk_prob: config.normTopkProb,
    qkv_bias: config.attentionBias,
    router_aux_loss_coef: config.routerAuxLossCoef,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    use_sliding_window: false,
  };
}

const EXPERT_PARAM = /^layers\.(\d+)\.experts\.(\d+)\.(gate|up|down)$/;
const MIXTRAL_EXPERT_NAMES = { gate: 'w1', up: 'w3', down: 'w2' } as const;

/**
 * The HF tensor name of canonical parameter `name`, or undefined where the layout has no tensor
 * of its own (a packed expert's slice; a dense Llama's router).
 */
export function hfTensorName(layout: HfLayout, name: string): string | undefined {
  if (name === 'embed') return 'model.embed_tokens.weight';
  if (name === 'final_norm') return 'model.norm.weight';
  if (name === 'lm_head') return 'lm_head.weight';
  const m = /^layers\.(\d+)\.(.+)$/.exec(name);
  if (!m) throw new HfFormatError(`not a canonical parameter name: "${name}"`);
  const [, l, rest] = m;
  const p = `model.layers.${l}`;
  const { family, packedExperts } = layout;
  const moe = family === 'mixtral' && !packedExperts ? `${p}.block_sparse_moe` : `${p}.mlp`;
  const attn = /^attn\.([qkvo])(_bias)?$/.exec(rest);
  if (attn) return `${p}.self_attn.${attn[1]}_proj.${attn[2] ? 'bias' : 'weight'}`;
  const expert = EXPERT_PARAM.exec(name);
  if (expert) {
    const [, , e, kind] = expert;
    if (family === 'llama') return `${p}.mlp.${kind}_proj.weight`;
    if (packedExperts) return undefined;
    return family === 'mixtral' ? `${moe}.experts.${e}.${MIXTRAL_EXPERT_NAMES[kind as 'gate']}.weight` : `${moe}.experts.${e}.${kind}_proj.weight`;
  }
  const shared = /^shared_expert\.(gate|up|down)$/.exec(rest);
  if (shared) return `${p}.mlp.shared_expert.${shared[1]}_proj.weight`;
  switch (rest) {
    case 'attn_norm':
      return `${p}.input_layernorm.weight`;
    case 'ffn_norm':
      return `${p}.post_attention_layernorm.weight`;
    case 'router':
      return family === 'llama' ? undefined : `${moe}.gate.weight`;
    case 'shared_expert_gate':
      return `${p}.mlp.shared_expert_gate.weight`;
  }
  throw new HfFormatError(`not a canonical parameter name: "${name}"`);
}

/** Packed expert tensor names of layer `l`. */
function packedNames(l: number): { gateUp: string; down: string } {
  return { gateUp: `model.layers.${l}.mlp.experts.gate_up_proj`, down: `model.layers.${l}.mlp.experts.down_proj` };
}

/** Where a canonical parameter lies among the HF tensors: elements [from, to) of tensor `key`. */
export interface HfSource {
  key: string;
  keyShape: number[];
  from: number;
  to: number;
}

/**
 * The HF tensor elements holding canonical parameter `name` of `shape` (a whole tensor, or one expert's
 * slice of a packed one), or undefined where the layout stores nothing (a dense Llama's router: zeros).
 */
export function hfSource(config: ModelConfig, layout: HfLayout, name: string, shape: number[]): HfSource | undefined {
  const key = hfTensorName(layout, name);
  if (key !== undefined) return { key, keyShape: shape, from: 0, to: shape.reduce((a, b) => a * b, 1) };
  if (name.endsWith('.router')) return undefined;
  const { numExperts: E, expertHiddenSize: F, hiddenSize: H } = config;
  const [, l, e, kind] = EXPERT_PARAM.exec(name)!;
  const { gateUp, down } = packedNames(Number(l));
  const expert = Number(e);
  if (kind === 'down') return { key: down, keyShape: [E, H, F], from: expert * H * F, to: (expert + 1) * H * F };
  const from = (2 * expert + (kind === 'up' ? 1 : 0)) * F * H;
  return { key: gateUp, keyShape: [E, 2 * F, H], from, to: from + F * H };
}

export function detectLayout(family: HfFamily, tensorNames: Iterable<string>): HfLayout {
  for (const name of tensorNames) if (name.endsWith('.mlp.experts.gate_up_proj')) return { family, packedExperts: true };
  return { family, packedExperts: false };
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
const showShape = (s: readonly number[]) => `[${s.join(', ')}]`;

/**
 * Canonical parameters from HF tensors. Every tensor must be used, with exactly the shape the
 * config implies; leftovers are an error (they mean a wrong config or layout), except rotary
 * caches and a tied model's lm_head. Result arrays may share memory with `tensors`.
 */
export function fromHfTensors(config: ModelConfig, layout: HfLayout, tensors: Map<string, Tensor>, source = 'checkpoint'): Map<string, F32Tensor> {
  checkFamily(config, layout.family);
  const used = new Set<string>();
  const take = (key: string, shape: number[]): Float32Array => {
    const t = tensors.get(key);
    if (!t) throw new HfFormatError(`${source}: missing tensor ${key}`);
    if (t.dtype === 'I8' || t.dtype === 'U8') throw new HfFormatError(`${source}: tensor ${key} is ${t.dtype}; quantized checkpoints are not supported`);
    if (!sameShape(t.shape, shape)) throw new HfFormatError(`${source}: tensor ${key} has shape ${showShape(t.shape)}, the config implies ${showShape(shape)}`);
    used.add(key);
    return t.data;
  };
  const params = new Map<string, F32Tensor>();
  for (const [name, shape] of parameterShapes(config)) {
    const source = hfSource(config, layout, name, shape);
    if (source === undefined) {
      params.set(name, { shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
      continue;
    }
    const whole = take(source.key, source.keyShape);
    params.set(name, { shape, data: source.from === 0 && source.to === whole.length ? whole : whole.slice(source.from, source.to) });
  }
  const ignorable = (key: string) => key.endsWith('.rotary_emb.inv_freq') || (config.tieEmbeddings && key === 'lm_head.weight');
  const left = [...tensors.keys()].filter((key) => !used.has(key) && !ignorable(key));
  if (left.length > 0) {
    throw new HfFormatError(`${source}: ${left.length} unexpected tensor(s) for this config and layout, e.g. ${left.slice(0, 4).join(', ')}`);
  }
  return params;
}

/** Checks `params` holds exactly the canonical parameters of `config`, with their shapes. */
export function checkParams(config: ModelConfig, params: Map<string, F32Tensor>): void {
  const shapes = parameterShapes(config);
  for (const [name, shape] of shapes) {
    const p = params.get(name);
    if (!p) throw new HfFormatError(`missing parameter ${name}`);
    if (!sameShape(p.shape, shape) || p.data.length !== shape.reduce((a, b) => a * b, 1)) {
      throw new HfFormatError(`parameter ${name} has shape ${showShape(p.shape)} (${p.data.length} values), expected ${showShape(shape)}`);
    }
  }
  for (const name of params.keys()) if (!shapes.has(name)) throw new HfFormatError(`unknown parameter ${name} for this config`);
}

/** HF tensors for canonical `params` in `layout` (the inverse of fromHfTensors), stored as `dtype`. */
export function toHfTensors(config: ModelConfig, layout: HfLayout, params: Map<string, F32Tensor>, dtype: FloatDType = 'F32'): Map<string, Tensor> {
  checkFamily(config, layout.family);
  checkParams(config, params);
  const { numExperts: E, expertHiddenSize: F, hiddenSize: H } = config;
  const out = new Map<string, Tensor>();
  for (const [name, { shape, data }] of params) {
    const key = hfTensorName(layout, name);
    if (key !== undefined) {
      out.set(key, { dtype, shape, data });
    } else if (!name.endsWith('.router')) {
      const [, l, e, kind] = EXPERT_PARAM.exec(name)!;
      const { gateUp, down } = packedNames(Number(l));
      const packedKey = kind === 'down' ? down : gateUp;
      let packed = out.get(packedKey);
      if (!packed) {
        const shape = kind === 'down' ? [E, H, F] : [E, 2 * F, H];
        packed = { dtype, shape, data: new Float32Array(shape[0] * shape[1] * shape[2]) };
        out.set(packedKey, packed);
      }
      const expert = Number(e);
      (packed.data as Float32Array).set(data, kind === 'down' ? expert * H * F : (2 * expert + (kind === 'up' ? 1 : 0)) * F * H);
    }
  }
  return out;
}

/**
 * The safetensors files of `dir` and the tensors to take from each: model.safetensors (every
 * tensor: undefined), or the shards listed in model.safetensors.index.json.
 */
export async function hfWeightFiles(dir: string): Promise<Map<string, string[] | undefined>> {
  const single = join(dir, 'model.safetensors');
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (existsSync(single)) return new Map([[single, undefined]]);
  if (!existsSync(indexPath)) {
    throw new HfFormatError(`${dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)`);
  }
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(await readFile(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
  } catch (err) {
    throw new HfFormatError(`${indexPath}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof weightMap !== 'object' || weightMap === null) throw new HfFormatError(`${indexPath}: weight_map must be an object`);
  const byShard = new Map<string, string[]>();
  for (const [key, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || basename(shard) !== shard || shard.startsWith('.')) {
      throw new HfFormatError(`${indexPath}: shard for ${key} must be a file name in the same folder, got ${JSON.stringify(shard)}`);
    }
    const path = join(dir, shard);
    byShard.set(path, [...(byShard.get(path) ?? []), key]);
  }
  return byShard;
}

/** Reads the tensors of `dir` (see hfWeightFiles). */
async function readHfWeights(dir: string): Promise<Map<string, Tensor>> {
  const tensors = new Map<string, Tensor>();
  for (const [path, keys] of await hfWeightFiles(dir)) {
    const contents = (await readSafetensors(path)).tensors;
    if (keys === undefined) return contents;
    for (const key of keys) {
      const t = contents.get(key);
      if (!t) throw new HfFormatError(`${dir}/model.safetensors.index.json: ${key} is mapped to ${basename(path)}, which does not contain it`);
      tensors.set(key, t);
    }
  }
  return tensors;
}

/** Reads and maps config.json of a Hugging Face model folder. */
export async function readHfConfig(dir: string): Promise<{ config: ModelConfig; family: HfFamily }> {
  const configPath = join(dir, 'config.json');
  let json: unknown;
  try {
    json = JSON.parse(await readFile(configPath, 'utf8'));
  } catch (err) {
    throw new HfFormatError(`${configPath}: cannot read config (${(err as Error).message})`);
  }
  return configFromHf(json);
}

export interface HfModel {
  config: ModelConfig;
  layout: HfLayout;
  params: Map<string, F32Tensor>;
}

/** Loads a Hugging Face model folder (config.json + safetensors) into canonical f32 parameters. */
export async function loadHfModel(dir: string): Promise<HfModel> {
  const { config, family } = await readHfConfig(dir);
  const tensors = await readHfWeights(dir);
  const layout = detectLayout(family, tensors.keys());
  return { config, layout, params: fromHfTensors(config, layout, tensors, dir) };
}

/** Writes config.json and model.safetensors for `params` in `layout`, loadable by transformers. */
export async function saveHfModel(dir: string, model: HfModel, dtype: FloatDType = 'F32'): Promise<void> {
  const tensors = toHfTensors(model.config, model.layout, model.params, dtype);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(hfConfigFromConfig(model.config, model.layout.family, dtype), null, 2)}\n`);
  // transformers refuses safetensors metadata without a known "format".
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}
