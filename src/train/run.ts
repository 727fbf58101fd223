// A run folder: run.json (RunSpec, the options that determine a run's results), tokenizer.json,
// metrics.jsonl, checkpoints/step-N/ and final/; and the model sources a run starts from or resumes.
import { appendFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { messageOf, UsageError } from '../cli/usage.ts';
import { checkParams, loadHfModel, type HfFamily } from '../io/hf.ts';
import { validateConfig, type F32Tensor, type ModelConfig } from '../model/config.ts';
import type { ActivationStorage } from '../model/expert.ts';
import type { BasePath } from '../model/linear.ts';
import type { ModelOptions } from '../model/model.ts';
import type { BaseFormat, TrainMode } from '../model/weights.ts';
import { loadCheckpoint } from './checkpoint.ts';
import { CORPUS_NAMES } from './corpus.ts';
import { BpeTokenizer } from './tokenizer.ts';
import { readTokenizerFile, type Tokenizer } from './tokenizers/index.ts';
import { DEFAULT_TRAIN } from './trainer.ts';

/** The options that determine a run's results, recorded in run.json and kept by a resumed run. */
export interface RunSpec {
  /** A bundled corpus's name, or the absolute path of the operator's text (src/train/text-corpus.ts). */
  corpus: string;
  vocab: number;
  seq: number;
  batch: number;
  heldOut: number;
  seed: number;
  /** --config overrides (of the demo config, or of the base's). */
  config: Partial<ModelConfig>;
  mode: TrainMode;
  /** Absolute path of the base checkpoint or Hugging Face folder. */
  base: string | null;
  rank: number;
  alpha: number;
  baseFormat: BaseFormat;
  basePath: BasePath;
  checkpointing: boolean;
  activations: ActivationStorage;
  steps: number;
  accumulation: number;
  lr: number;
  minLr: number;
  warmup: number;
}

const RUN_VERSION = 1;

/** Each RunSpec field's command-line flag (without --), in run.json's order. */
export const RUN_FLAGS: { readonly [K in keyof RunSpec]: string } = {
  corpus: 'corpus', vocab: 'vocab', seq: 'seq', batch: 'batch', heldOut: 'held-out', seed: 'seed',
  config: 'config', mode: 'mode', base: 'base', rank: 'rank', alpha: 'alpha', baseFormat: 'base-format',
  basePath: 'base-path', checkpointing: 'checkpointing', activations: 'activations',
  steps: 'steps', accumulation: 'accumulation', lr: 'lr', minLr: 'min-lr', warmup: 'warmup',
};

const RUN_FIELDS = Object.keys(RUN_FLAGS) as (keyof RunSpec)[];

const DEFAULT_SPEC: Omit<RunSpec, 'corpus' | 'minLr'> = {
  vocab: 2048, seq: 128, batch: 8, heldOut: 0.05, seed: 1, config: {}, mode: 'full', base: null,
  rank: 8, alpha: 16, baseFormat: 'f32', basePath: 'fp32', checkpointing: false, activations: 'f32',
  steps: 1000, accumulation: 1, lr: DEFAULT_TRAIN.lr, warmup: DEFAULT_TRAIN.warmupSteps,
};

/** The files of the run folder `out`. */
export function runPaths(out: string) {
  return {
    spec: join(out, 'run.json'),
    tokenizer: join(out, 'tokenizer.json'),
    metrics: join(out, 'metrics.jsonl'),
    checkpoint: (step: number) => join(out, 'checkpoints', `step-${step}`),
    final: join(out, 'final'),
    adapter: join(out, 'adapter'),
  };
}

/** The spec of a new run in `out`: the options given (`explicit`) over the defaults. */
export function newSpec(out: string, explicit: Partial<RunSpec>): RunSpec {
  if (existsSync(runPaths(out).spec)) {
    throw new UsageError(`${out} already holds a run (run.json): add --resume to continue it, or choose another --out`);
  }
  if (explicit.corpus === undefined) throw new UsageError(`--corpus is required (${CORPUS_NAMES.join(', ')}, or a path to your text)`);
  const merged: RunSpec = { ...DEFAULT_SPEC, corpus: explicit.corpus, minLr: (explicit.lr ?? DEFAULT_SPEC.lr) / 10, ...explicit };
  // In RUN_FLAGS order, for a readable run.json.
  const spec = Object.fromEntries(RUN_FIELDS.map((field) => [field, merged[field]])) as unknown as RunSpec;
  if (spec.mode === 'lora' && spec.base === null) {
    throw new UsageError('--mode lora needs --base <dir>: the model whose weights stay frozen');
  }
  if (spec.mode === 'full') {
    for (const field of ['rank', 'alpha', 'baseFormat', 'basePath'] as const) {
      if (explicit[field] !== undefined) throw new UsageError(`--${RUN_FLAGS[field]} applies to --mode lora only`);
    }
  }
  if (explicit.basePath !== undefined && spec.baseFormat === 'f32') {
    throw new UsageError('--base-path applies to a quantized base (--base-format q8 or q4)');
  }
  if (spec.minLr > spec.lr) throw new UsageError(`--min-lr ${spec.minLr} exceeds --lr ${spec.lr}`);
  return spec;
}

/** The recorded spec of the run in `out`; options given again (`explicit`) must not differ. */
export function resumedSpec(out: string, explicit: Partial<RunSpec>): RunSpec {
  const path = runPaths(out).spec;
  if (!existsSync(path)) throw new UsageError(`no run to resume in ${out} (no run.json)`);
  let recorded: Record<string, unknown>;
  try {
    recorded = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new UsageError(`${path}: cannot read (${messageOf(err)})`);
  }
  if (recorded?.version !== RUN_VERSION) throw new UsageError(`${path}: version ${String(recorded?.version)} is not ${RUN_VERSION}`);
  const { version: _version, ...spec } = recorded;
  spec.activations ??= 'f32'; // run.json written before --activations existed
  for (const field of RUN_FIELDS) {
    const expected = field === 'corpus' ? 'string' : field === 'minLr' ? 'number' : typeof DEFAULT_SPEC[field];
    const ok = field === 'base' ? spec.base === null || typeof spec.base === 'string' : typeof spec[field] === expected;
    if (!ok) throw new UsageError(`${path}: ${field} is missing or not a ${expected}`);
    const given = explicit[field];
    if (given !== undefined && JSON.stringify(given) !== JSON.stringify(spec[field])) {
      const recordedValue = JSON.stringify(spec[field]);
      throw new UsageError(`--${RUN_FLAGS[field]} ${JSON.stringify(given)} differs from the run's ${recordedValue} (${path}); ` +
        'a resumed run keeps its options');
    }
  }
  return spec as unknown as RunSpec;
}

export function writeRunSpec(out: string, spec: RunSpec): void {
  writeFileSync(runPaths(out).spec, `${JSON.stringify({ version: RUN_VERSION, ...spec }, null, 2)}\n`);
}

export function modelOptions(spec: RunSpec): ModelOptions {
  const common = { checkpointing: spec.checkpointing, activationStorage: spec.activations, seed: spec.seed };
  if (spec.mode === 'full') return { mode: 'full', ...common };
  return { mode: 'lora', lora: { rank: spec.rank, alpha: spec.alpha }, baseFormat: spec.baseFormat, basePath: spec.basePath, ...common };
}

/** Config fields a model may set differently from its base: they change no weight. */
const TRAINING_FIELDS: readonly string[] = ['maxSeqLen', 'routerAuxLossCoef'];

/** The base's config with `overrides`, which may only change TRAINING_FIELDS; `source` names the overrides in errors. */
export function onBase(baseConfig: ModelConfig, overrides: Partial<ModelConfig>, source: string): ModelConfig {
  for (const [field, value] of Object.entries(overrides)) {
    const baseValue = baseConfig[field as keyof ModelConfig];
    if (!TRAINING_FIELDS.includes(field) && baseValue !== value) {
      throw new UsageError(`${source} sets ${field} ${value}, but the base has ${baseValue}; ` +
        `only ${TRAINING_FIELDS.join(' and ')} may differ from the base`);
    }
  }
  return validateConfig({ ...baseConfig, ...overrides });
}

export function checkVocabulary(tokenizer: Tokenizer, config: ModelConfig): void {
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new UsageError(`the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary holds ${config.vocabSize}`);
  }
}

/** Where a model's weights come from: a checkpoint or a Hugging Face folder. */
export interface ModelSource {
  dir: string;
  config: ModelConfig;
  options: ModelOptions;
  /** Every base parameter. */
  weights: Map<string, F32Tensor>;
  /** Loaded on top of the base: a LoRA checkpoint's adapters (empty otherwise). */
  trained: Map<string, F32Tensor>;
  /** Module names for PEFT: the Hugging Face folder's family, else mixtral. */
  family: HfFamily;
}

/** A model folder: a checkpoint (state.json), a run folder (its newest checkpoint) or a Hugging Face folder (config.json). */
export function modelDir(path: string): string {
  if (existsSync(join(path, 'state.json'))) return path;
  if (existsSync(join(path, 'run.json'))) return runCheckpoint(path);
  if (existsSync(join(path, 'config.json'))) return path;
  throw new UsageError(`${path} is not a checkpoint (no state.json), a run folder (no run.json) ` +
    'or a Hugging Face model folder (no config.json)');
}

export async function loadModelSource(path: string): Promise<ModelSource> {
  const dir = modelDir(path);
  if (!existsSync(join(dir, 'state.json'))) {
    const hf = await loadHfModel(dir);
    return { dir, config: hf.config, options: { mode: 'full' }, weights: hf.params, trained: new Map(), family: hf.layout.family };
  }
  const { state, params } = await loadCheckpoint(dir);
  if (state.model.mode === 'full') {
    checkParams(state.config, params);
    return { dir, config: state.config, options: { mode: 'full' }, weights: params, trained: new Map(), family: 'mixtral' };
  }
  if (state.base === undefined) {
    throw new UsageError(`${dir}: a LoRA checkpoint that does not say where its base is (state.json has no "base")`);
  }
  const base = await loadBase(state.base);
  const config = onBase(base.config, state.config, `checkpoint ${dir}`);
  return { ...base, dir, config, options: state.model, trained: params };
}

export async function loadBase(path: string): Promise<ModelSource> {
  const source = await loadModelSource(path);
  if (source.options.mode !== 'full') {
    throw new UsageError(`base ${source.dir} is a LoRA checkpoint; a base holds every weight (a full checkpoint or a Hugging Face folder)`);
  }
  return source;
}

/** The newest checkpoint of a run folder: final/, else the highest checkpoints/step-N/. */
export function newestCheckpoint(run: string): string | undefined {
  if (existsSync(runPaths(run).final)) return runPaths(run).final;
  const dir = join(run, 'checkpoints');
  const steps = existsSync(dir) ? readdirSync(dir).flatMap((name) => /^step-(\d+)$/.exec(name)?.[1] ?? []).map(Number) : [];
  return steps.length === 0 ? undefined : runPaths(run).checkpoint(Math.max(...steps));
}

export function runCheckpoint(run: string): string {
  const dir = newestCheckpoint(run);
  if (dir === undefined) throw new UsageError(`run ${run} has no checkpoint yet (no final/ or checkpoints/step-N/)`);
  return dir;
}

/** tokenizer.json beside a checkpoint, or in the run folder holding it (<run>/final, <run>/checkpoints/step-N). */
export function findTokenizer(dir: string): string | undefined {
  const folders = [dir];
  if (basename(dir) === 'final') folders.push(dirname(dir));
  if (basename(dirname(dir)) === 'checkpoints') folders.push(dirname(dirname(dir)));
  return folders.map((folder) => join(folder, 'tokenizer.json')).find((path) => existsSync(path));
}

export function loadTokenizer(path: string): Tokenizer {
  try {
    return readTokenizerFile(path);
  } catch (err) {
    throw new UsageError(`${path}: ${messageOf(err)}`);
  }
}

/** The run's tokenizer: the run folder's, else the base's, else trained on the corpus (fresh: to be saved). */
export function runTokenizer(
  out: string, spec: RunSpec, base: ModelSource | undefined, vocabGiven: number | undefined, documents: string[],
): { tokenizer: Tokenizer; source: string; fresh: boolean } {
  const own = runPaths(out).tokenizer;
  const found = existsSync(own) ? own : base && findTokenizer(base.dir);
  if (found) {
    const tokenizer = loadTokenizer(found);
    if (vocabGiven !== undefined && vocabGiven !== tokenizer.vocabSize) {
      throw new UsageError(`--vocab ${vocabGiven}: the run uses ${found}, which has ${tokenizer.vocabSize} tokens; ` +
        'drop --vocab or choose another --out');
    }
    return { tokenizer, source: `${found} (${tokenizer.vocabSize} tokens)`, fresh: found !== own };
  }
  if (base) {
    throw new UsageError(`base ${base.dir} has no tokenizer.json beside it or in its run folder; ` +
      `copy the tokenizer it was trained with to ${own}`);
  }
  const tokenizer = BpeTokenizer.train(documents, { vocabSize: spec.vocab });
  return { tokenizer, source: `trained on ${spec.corpus} (${tokenizer.vocabSize} tokens)`, fresh: true };
}

export function appendMetrics(path: string, record: Record<string, unknown>): void {
  appendFileSync(path, `${JSON.stringify(record)}\n`);
}

/** Drops the metrics of steps after `step` (written after the checkpoint a run resumes from). */
export function keepMetricsUpTo(path: string, step: number): void {
  if (!existsSync(path)) return;
  const kept = readFileSync(path, 'utf8').split('\n').filter((line) => {
    try {
      return (JSON.parse(line) as { step: number }).step <= step;
    } catch {
      return false; // a line cut short by the interruption
    }
  });
  writeFileSync(path, kept.map((line) => `${line}\n`).join(''));
}
