// What a finished job leaves in <data>/jobs/<jobId>/result/: a Hugging Face checkpoint (config.json
// + model.safetensors, full jobs) or a PEFT adapter (LoRA jobs; with base/, the seeded base it adapts
// when the job named none), plus the job's tokenizer.json.
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { JobSpec } from '../proto/index.ts';
import { saveHfModel, type HfLayout } from '../src/io/hf.ts';
import { writePeftAdapter } from '../src/io/peft.ts';
import type { F32Tensor, ModelConfig } from '../src/model/config.ts';
import { initTensors } from '../src/model/init.ts';
import type { GroupStates } from './checkpoints.ts';

/** Jobs train the Mixtral layout; its HF names are what this project's loader and transformers read. */
const RESULT_LAYOUT: HfLayout = { family: 'mixtral', packedExperts: false };
const LORA_TENSOR = /\.lora_[ab]$/;

export interface ResultInput {
  job: JobSpec;
  config: ModelConfig;
  groups: GroupStates;
  tokenizerJson: string;
  /** The pretrained base a LoRA job adapts, written as base_model_name_or_path; without one, base/ holds the seeded base. */
  baseModel?: string;
}

/** Every group's tensors in one map. */
export function mergeGroups(groups: GroupStates): Map<string, F32Tensor> {
  return new Map([...groups.values()].flatMap((tensors) => [...tensors]));
}

/** Writes the result into a temporary folder, then renames it to `dir` (replacing an older one). */
export async function writeResult(dir: string, input: ResultInput): Promise<void> {
  const { job, config } = input;
  const temporary = `${dir}.${process.pid}.partial`;
  await rm(temporary, { recursive: true, force: true });
  const params = mergeGroups(input.groups);
  if (job.mode === 'full') {
    await saveHfModel(temporary, { config, layout: RESULT_LAYOUT, params });
  } else {
    const tensors = new Map([...params].filter(([name]) => LORA_TENSOR.test(name)));
    await writePeftAdapter(temporary, config, RESULT_LAYOUT.family, {
      rank: job.lora!.rank, alpha: job.lora!.alpha, baseModel: input.baseModel ?? job.jobId, tensors,
    });
    if (input.baseModel === undefined) {
      // The frozen base every node built from the job's seed (in fp32: a q8/q4 job trained against its quantization).
      await saveHfModel(join(temporary, 'base'), { config, layout: RESULT_LAYOUT, params: new Map(initTensors(config, job.seed)) });
      await writeFile(join(temporary, 'base', 'tokenizer.json'), input.tokenizerJson);
    }
  }
  await writeFile(join(temporary, 'tokenizer.json'), input.tokenizerJson);
  await rm(dir, { recursive: true, force: true });
  await rename(temporary, dir);
}
