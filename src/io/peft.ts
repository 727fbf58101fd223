// LoRA adapters in the PEFT layout: a folder with adapter_model.safetensors and
// adapter_config.json, loadable with `PeftModel.from_pretrained(base, dir)`.
//
// Canonical LoRA names (src/model/config.ts loraShapes): `<target>.lora_a` [r, in] and
// `<target>.lora_b` [out, r] for targets layers.{l}.attn.q|k|v|o, layers.{l}.experts.{e}.
// gate|up|down and layers.{l}.shared_expert.gate|up|down. PEFT stores the same matrices as
// `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, where <module> is the
// per-expert HF module (Mixtral `model.layers.{l}.block_sparse_moe.experts.{e}.w1`, Qwen2-MoE
// `model.layers.{l}.mlp.experts.{e}.gate_proj`, Llama `model.layers.{l}.mlp.gate_proj`). The
// per-expert names are used even for a base checkpoint in the packed transformers-v5 layout:
// PEFT can only address fused expert tensors through `target_parameters`, a different format.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isLoraTarget, parameterShapes, type F32Tensor, type ModelConfig } from '../model/config.ts';
import { hfTensorName, type HfFamily } from './hf.ts';
import { readSafetensors, writeSafetensors, type Tensor } from './safetensors.ts';

export interface LoraAdapter {
  rank: number;
  alpha: number;
  /** Written as base_model_name_or_path: the HF id or path of the base model. */
  baseModel: string;
  /** Canonical LoRA name -> tensor. */
  tensors: Map<string, F32Tensor>;
}

export class PeftFormatError extends Error {
  override name = 'PeftFormatError';
}

const LORA_NAME = /^(.+)\.lora_(a|b)$/;
const showShape = (s: readonly number[]) => `[${s.join(', ')}]`;

/** The HF module path of a LoRA target (a canonical weight name). */
function modulePath(family: HfFamily, target: string): string {
  return hfTensorName({ family, packedExperts: false }, target)!.replace(/\.weight$/, '');
}

/** PEFT tensor key of a canonical LoRA name, e.g. layers.0.attn.q.lora_a -> ...self_attn.q_proj.lora_A.weight. */
export function peftKey(family: HfFamily, loraName: string): string {
  const m = LORA_NAME.exec(loraName);
  if (!m || !isLoraTarget(m[1])) throw new PeftFormatError(`not a canonical LoRA name: "${loraName}"`);
  return `base_model.model.${modulePath(family, m[1])}.lora_${m[2].toUpperCase()}.weight`;
}

/**
 * Checks canonical LoRA tensors against `config` and returns the rank and the adapted targets:
 * every name must be `<target>.lora_a|b` of a LoRA target of the config, A and B come in pairs,
 * A is [r, in] and B [out, r] for the target's [out, in], and all targets share one rank.
 */
export function checkLora(config: ModelConfig, tensors: Map<string, F32Tensor>): { rank: number; targets: string[] } {
  const shapes = parameterShapes(config);
  const targets = new Set<string>();
  for (const name of tensors.keys()) {
    const m = LORA_NAME.exec(name);
    if (!m || !isLoraTarget(m[1]) || !shapes.has(m[1])) throw new PeftFormatError(`"${name}" is not a LoRA name of this model (want <target>.lora_a or .lora_b)`);
    targets.add(m[1]);
  }
  if (targets.size === 0) throw new PeftFormatError('no LoRA tensors to export');
  let rank: number | undefined;
  for (const target of targets) {
    const a = tensors.get(`${target}.lora_a`);
    const b = tensors.get(`${target}.lora_b`);
    if (!a || !b) throw new PeftFormatError(`${target}: needs both lora_a and lora_b`);
    const [out, inDim] = shapes.get(target)!;
    rank ??= a.shape[0];
    const wantA = [rank, inDim];
    const wantB = [out, rank];
    for (const [which, t, want] of [['lora_a', a, wantA], ['lora_b', b, wantB]] as const) {
      if (t.shape.length !== 2 || t.shape[0] !== want[0] || t.shape[1] !== want[1] || t.data.length !== want[0] * want[1]) {
        throw new PeftFormatError(`${target}.${which} has shape ${showShape(t.shape)}, expected ${showShape(want)} (rank ${rank}, all targets share one rank)`);
      }
    }
  }
  if (!rank) throw new PeftFormatError('LoRA rank must be positive');
  return { rank, targets: [...targets] };
}

/** adapter_config.json contents for `adapter` adapting `targets` (canonical names). */
export function peftAdapterConfig(family: HfFamily, adapter: Omit<LoraAdapter, 'tensors'>, targets: string[]): Record<string, unknown> {
  // PEFT matches target_modules by the module's last name component.
  const targetModules = [...new Set(targets.map((t) => modulePath(family, t).split('.').at(-1)!))].sort();
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: adapter.baseModel,
    r: adapter.rank,
    lora_alpha: adapter.alpha,
    target_modules: targetModules,
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: false,
    modules_to_save: null,
    init_lora_weights: true,
    inference_mode: true,
  };
}

/** Writes `dir`/adapter_model.safetensors and `dir`/adapter_config.json. */
export async function writePeftAdapter(dir: string, config: ModelConfig, family: HfFamily, adapter: LoraAdapter): Promise<void> {
  const { rank, targets } = checkLora(config, adapter.tensors);
  if (rank !== adapter.rank) throw new PeftFormatError(`adapter.rank is ${adapter.rank} but the tensors have rank ${rank}`);
  if (!Number.isFinite(adapter.alpha) || adapter.alpha <= 0) throw new PeftFormatError(`LoRA alpha must be a positive number, got ${adapter.alpha}`);
  const tensors = new Map<string, Tensor>();
  for (const [name, { shape, data }] of adapter.tensors) tensors.set(peftKey(family, name), { dtype: 'F32', shape, data });
  await mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  await writeFile(join(dir, 'adapter_config.json'), `${JSON.stringify(peftAdapterConfig(family, adapter, targets), null, 2)}\n`);
}

/** Reads a PEFT LoRA adapter for a base model with `config` in `family` back to canonical names. */
export async function readPeftAdapter(dir: string, config: ModelConfig, family: HfFamily): Promise<LoraAdapter> {
  const configPath = join(dir, 'adapter_config.json');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new PeftFormatError(`${configPath}: cannot read (${(err as Error).message})`);
  }
  if (json.peft_type !== 'LORA') throw new PeftFormatError(`${configPath}: peft_type ${JSON.stringify(json.peft_type)} is not LORA`);
  for (const variant of ['use_rslora', 'use_dora'] as const) {
    if (json[variant] === true) throw new PeftFormatError(`${configPath}: ${variant} adapters are not supported`);
  }
  for (const pattern of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = json[pattern];
    if (v && typeof v === 'object' && Object.keys(v).length > 0) throw new PeftFormatError(`${configPath}: per-module ${pattern} is not supported`);
  }
  const { r, lora_alpha: alpha, base_model_name_or_path: baseModel } = json;
  if (typeof r !== 'number' || typeof alpha !== 'number') throw new PeftFormatError(`${configPath}: r and lora_alpha must be numbers`);

  const canonical = new Map<string, string>();
  for (const name of parameterShapes(config).keys()) {
    if (!isLoraTarget(name)) continue;
    for (const half of ['lora_a', 'lora_b']) canonical.set(peftKey(family, `${name}.${half}`), `${name}.${half}`);
  }
  const weightsPath = join(dir, 'adapter_model.safetensors');
  const tensors = new Map<string, F32Tensor>();
  for (const [key, t] of (await readSafetensors(weightsPath)).tensors) {
    const name = canonical.get(key);
    if (!name) throw new PeftFormatError(`${weightsPath}: tensor ${key} is not a LoRA matrix of this ${family} model`);
    if (t.dtype === 'I8' || t.dtype === 'U8') throw new PeftFormatError(`${weightsPath}: tensor ${key} is ${t.dtype}, expected a float type`);
    tensors.set(name, { shape: t.shape, data: t.data });
  }
  const { rank } = checkLora(config, tensors);
  if (rank !== r) throw new PeftFormatError(`${configPath}: r is ${r} but the tensors have rank ${rank}`);
  return { rank, alpha, baseModel: typeof baseModel === 'string' ? baseModel : '', tensors };
}
