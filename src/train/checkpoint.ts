// Checkpoints that resume a run exactly: a folder holding
//   model.safetensors      the trainable parameters (in full mode: all of them)
//   optimizer.safetensors  AdamW moments m.<name> / v.<name>
//   state.json             step, next micro-batch, optimizer step, model config and options
// written into a temporary folder and renamed into place, so a crash never leaves a half
// checkpoint. In lora mode the frozen base is not copied: state.json names where it came from.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors, type Tensor } from '../io/safetensors.ts';
import { LORA_MODULES, validateConfig, type F32Tensor, type LoraModule, type ModelConfig } from '../model/config.ts';
import type { BaseFormat, TrainMode } from '../model/weights.ts';
import type { Trainer } from './trainer.ts';

export const CHECKPOINT_VERSION = 1;

/** The model options a checkpoint records (everything but the expert placement). */
export interface SavedModelOptions {
  mode: TrainMode;
  lora?: { rank: number; alpha: number; targets?: LoraModule[] };
  baseFormat?: BaseFormat;
  basePath?: 'fp32' | 'int';
  checkpointing?: boolean;
  seed?: number;
}

export interface CheckpointState {
  version: number;
  step: number;
  microIndex: number;
  optimizerStep: number;
  config: ModelConfig;
  model: SavedModelOptions;
  /** lora mode: where the frozen base was loaded from (a path), for resuming. */
  base?: string;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export interface Checkpoint {
  state: CheckpointState;
  params: Map<string, F32Tensor>;
  optimizer: Map<string, F32Tensor>;
}

const toTensors = (m: Map<string, F32Tensor>) => [...m].map(([name, t]) => [name, { dtype: 'F32', shape: t.shape, data: t.data }] as [string, Tensor]);

export async function saveCheckpoint(dir: string, trainer: Trainer, base?: string): Promise<void> {
  const { model } = trainer;
  const trainable = model.options.mode === 'full' ? () => true : (p: { grad?: Float32Array }) => p.grad !== undefined;
  const { remote: _transport, ...modelOptions } = model.options;
  const state: CheckpointState = {
    version: CHECKPOINT_VERSION,
    step: trainer.step,
    microIndex: trainer.microIndex,
    optimizerStep: trainer.optimizer.step,
    config: model.config,
    model: modelOptions,
    ...(base === undefined ? {} : { base }),
  };
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  await writeSafetensors(join(tmp, 'model.safetensors'), toTensors(model.params.snapshot(trainable)));
  await writeSafetensors(join(tmp, 'optimizer.safetensors'), toTensors(trainer.optimizer.state()));
  await writeFile(join(tmp, 'state.json'), `${JSON.stringify(state, null, 2)}\n`);
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
}

async function readF32(path: string): Promise<Map<string, F32Tensor>> {
  const { tensors } = await readSafetensors(path);
  const out = new Map<string, F32Tensor>();
  for (const [name, t] of tensors) {
    if (!(t.data instanceof Float32Array)) throw new CheckpointError(`${path}: tensor ${name} is ${t.dtype}, expected a float type`);
    out.set(name, { shape: t.shape, data: t.data });
  }
  return out;
}

function checkState(value: unknown, path: string): CheckpointState {
  const fail = (what: string): never => { throw new CheckpointError(`${path}: ${what}`); };
  if (typeof value !== 'object' || value === null) fail('not a JSON object');
  const s = value as Record<string, unknown>;
  if (s.version !== CHECKPOINT_VERSION) fail(`version ${String(s.version)} is not ${CHECKPOINT_VERSION}`);
  for (const key of ['step', 'microIndex', 'optimizerStep'] as const) {
    if (!Number.isSafeInteger(s[key]) || (s[key] as number) < 0) fail(`${key} must be a non-negative integer`);
  }
  const model = s.model as SavedModelOptions | undefined;
  if (!model || (model.mode !== 'full' && model.mode !== 'lora')) fail('model.mode must be "full" or "lora"');
  if (model!.mode === 'lora') {
    const lora = model!.lora;
    if (!lora || !(Number.isSafeInteger(lora.rank) && lora.rank > 0) || !(lora.alpha > 0)) fail('model.lora needs a positive rank and alpha');
    if (lora!.targets && !lora!.targets.every((t) => (LORA_MODULES as readonly string[]).includes(t))) fail('model.lora.targets has an unknown module');
  }
  try {
    validateConfig(s.config);
  } catch (err) {
    fail((err as Error).message);
  }
  return value as CheckpointState;
}

/** Reads and validates a checkpoint folder; a missing, truncated or corrupt file is a CheckpointError. */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  const statePath = join(dir, 'state.json');
  let json: unknown;
  try {
    json = JSON.parse(await readFile(statePath, 'utf8'));
  } catch (err) {
    throw new CheckpointError(`${statePath}: cannot read (${(err as Error).message})`);
  }
  const state = checkState(json, statePath);
  return {
    state,
    params: await readF32(join(dir, 'model.safetensors')),
    optimizer: await readF32(join(dir, 'optimizer.safetensors')),
  };
}

/** Restores the trainer's parameters, optimizer and position from a checkpoint of the same model. */
export function restoreTrainer(trainer: Trainer, checkpoint: Checkpoint): void {
  const { state } = checkpoint;
  if (JSON.stringify(state.config) !== JSON.stringify(trainer.model.config)) {
    throw new CheckpointError('checkpoint was made for a different model config');
  }
  trainer.model.params.load(checkpoint.params);
  trainer.optimizer.loadState(state.optimizerStep, checkpoint.optimizer);
  trainer.step = state.step;
  trainer.microIndex = state.microIndex;
}
