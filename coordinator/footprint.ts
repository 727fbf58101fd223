// Memory a node spends on the trunk and on each expert it hosts, from the canonical parameter
// shapes and the job's precision, so the shard planner can bound placements by memory budgets.
// Which tensors are stored quantized and which get LoRA adapters follows src/model/weights.ts:
// in lora mode with a q8/q4 base, LoRA's targets and the untied LM head (when the vocabulary is
// whole 32-blocks) are quantized.
import { QBLOCK } from '../src/kernels/quantized.ts';
import { expertOf, isLoraTarget, LORA_MODULES, loraShapes, parameterShapes, type ModelConfig } from '../src/model/config.ts';
import { sizeOf } from '../src/model/params.ts';
import type { WeightsOptions } from '../src/model/weights.ts';

export type Precision = Pick<WeightsOptions, 'mode' | 'lora' | 'baseFormat'>;

/**
 * f32 words per trainable value: the value, its gradient, AdamW's m and v, and for averaging
 * the parameters at the last round (pseudo-gradients are deltas from it) and the error feedback.
 */
const TRAINABLE_WORDS = 6;
const FROZEN_BYTES = { f32: 4, q8: 1 + 4 / QBLOCK, q4: 0.5 + 4 / QBLOCK } as const;

export interface Footprint {
  /** Everything but the routed experts: replicated on every node. */
  trunkBytes: number;
  /** One routed expert (all three matrices and their adapters); every expert is the same size. */
  expertBytes: number;
}

export function footprint(config: ModelConfig, precision: Precision): Footprint {
  const lora = precision.mode === 'lora' ? precision.lora : undefined;
  if (precision.mode === 'lora' && !lora) throw new Error('footprint: lora mode needs lora options (rank, alpha)');
  const format = precision.baseFormat ?? 'f32';
  if (precision.mode === 'full' && format !== 'f32') throw new Error('footprint: a quantized base needs lora mode');

  let trunk = 0;
  let experts = 0;
  const add = (name: string, bytes: number) => {
    if (expertOf(name)) experts += bytes;
    else trunk += bytes;
  };
  for (const [name, shape] of parameterShapes(config)) {
    const quantized = lora && format !== 'f32' && (isLoraTarget(name) || (name === 'lm_head' && config.vocabSize % QBLOCK === 0));
    const bytesPerValue = !lora ? 4 * TRAINABLE_WORDS : quantized ? FROZEN_BYTES[format] : FROZEN_BYTES.f32;
    add(name, sizeOf(shape) * bytesPerValue);
  }
  if (lora) {
    const targets = new Set<string>(lora.targets ?? LORA_MODULES);
    for (const [name, shape] of loraShapes(config, lora.rank)) {
      const module = name.replace(/\.lora_[ab]$/, '').split('.').pop()!;
      if (targets.has(module)) add(name, sizeOf(shape) * 4 * TRAINABLE_WORDS);
    }
  }
  return { trunkBytes: Math.ceil(trunk), expertBytes: Math.ceil(experts / (config.numLayers * config.numExperts)) };
}
