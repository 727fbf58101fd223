// The command-line interface of the single-process engine:
//   swarmtrain train --local   trains a model (every weight, or LoRA adapters on a frozen base)
//                              on a bundled corpus into a run folder, with a progress line,
//                              metrics, checkpoints and samples;
//   swarmtrain generate        continues a prompt with a checkpoint (plus a PEFT adapter).
// A run folder holds run.json (the options that determine the run's results), tokenizer.json,
// metrics.jsonl, checkpoints/step-N/, final/ and, with --export-adapter, adapter/. --resume
// reads run.json and the newest checkpoint and retraces the uninterrupted run bit for bit.
// Bad input (options, files, checkpoints, bases) ends with one line on stderr and exit code 2.
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { checkParams, loadHfModel, type HfFamily } from '../io/hf.ts';
import { readPeftAdapter, writePeftAdapter } from '../io/peft.ts';
import { createKernels, type Kernels } from '../kernels/index.ts';
import { createConfig, parameterShapes, validateConfig, type F32Tensor, type ModelConfig } from '../model/config.ts';
import type { ActivationStorage } from '../model/expert.ts';
import type { BasePath } from '../model/linear.ts';
import { Model, type ModelOptions } from '../model/model.ts';
import { sizeOf } from '../model/params.ts';
import type { BaseFormat, TrainMode } from '../model/weights.ts';
import { loadCheckpoint, restoreTrainer, saveCheckpoint } from './checkpoint.ts';
import { CORPUS_NAMES, loadCorpus, type CorpusName } from './corpus.ts';
import { corpusLoaders } from './data.ts';
import { generate } from './generate.ts';
import { BpeTokenizer, END_OF_TEXT } from './tokenizer.ts';
import { DEFAULT_TRAIN, Trainer, type EvalMetrics } from './trainer.ts';

export interface CommandOutput {
  write(text: string): unknown;
  isTTY?: boolean;
}

export interface CommandIO {
  stdout: CommandOutput;
  stderr: CommandOutput;
}

const processIO: CommandIO = { stdout: process.stdout, stderr: process.stderr };

/** Bad input: reported as one line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

const SAMPLING = { temperature: 0.8, topP: 0.95 };

export const TRAIN_HELP = `Usage: swarmtrain train --local --corpus <name> --out <dir> [options]

Trains a model in this process on a bundled corpus. The run folder (--out) gets
  run.json              the options below that determine the results (--resume reads them)
  tokenizer.json        the byte-level BPE tokenizer (Hugging Face format)
  metrics.jsonl         one JSON object per step ("train") and per evaluation ("eval")
  checkpoints/step-N/   periodic checkpoints; final/ holds the last one
  adapter/              with --export-adapter: the PEFT LoRA adapter

Data
  --corpus <name>            sotu | moby-dick | typescript-lib (required)
  --vocab <n>                tokenizer size, trained on the corpus (default 2048); a
                             tokenizer.json already in --out or beside --base is used instead
  --seq <n>                  tokens per sequence (default 128)
  --batch <n>                sequences per micro-batch (default 8)
  --held-out <fraction>      documents held out for evaluation (default 0.05)
  --seed <n>                 seed of the initialization and the data order (default 1)
Model
  --config <file>            JSON object of ModelConfig overrides of the demo config (256 hidden,
                             4 layers, 8 experts top-2); with --base only maxSeqLen and
                             routerAuxLossCoef may differ from the base
  --mode full|lora           train every weight, or LoRA adapters on a frozen base (default full)
  --base <dir>               initial weights: a full checkpoint, a run folder (its newest
                             checkpoint) or a Hugging Face model folder; required with lora
  --rank <n>, --alpha <x>    LoRA rank and scale numerator (default 8, 16)
  --base-format f32|q8|q4    lora: storage of the frozen attention and expert matrices (default f32)
  --base-path fp32|int       q8/q4: dequantizing fp32 product or exact integer product (default fp32)
  --checkpointing            recompute activations in backward: less memory, more compute
  --activations f32|bf16     how the experts and attention keep their largest activations for
                             backward: bf16 halves that memory, gradients move by ~0.5% (default f32)
Optimization
  --steps <n>                updates (default 1000)
  --accumulation <n>         micro-batches per update (default 1)
  --lr <x>                   peak learning rate (default ${DEFAULT_TRAIN.lr})
  --min-lr <x>               learning rate at the end of the cosine decay (default lr/10)
  --warmup <n>               steps of linear warmup (default ${DEFAULT_TRAIN.warmupSteps})
Run
  --out <dir>                the run folder (required)
  --resume                   continue the run in --out from its newest checkpoint, exactly
  --threads <n>              kernel threads (default: every core, ${availableParallelism()} here)
  --eval-every <n>           held-out evaluation every n steps; 0: only at the end (default 100)
  --eval-batches <n>         held-out micro-batches per evaluation (default 20)
  --checkpoint-every <n>     save checkpoints/step-N every n steps; 0: only final/ (default 500)
  --sample-every <n>         print a sample every n steps; 0: only at the end (default 500)
  --sample-tokens <n>        tokens per sample (default 64)
  --sample-prompt <text>     start of each sample (default: the start of a new document)
  --sample-temperature <x>   0 picks the likeliest token (default ${SAMPLING.temperature}; top-p ${SAMPLING.topP})
  --log-every <n>            progress lines when stdout is not a terminal (default 10)
  --export-adapter           lora: write <out>/adapter (adapter_model.safetensors, adapter_config.json)
  -h, --help                 this text
`;

export const GENERATE_HELP = `Usage: swarmtrain generate (--run <dir> | --checkpoint <dir>) [options]

Continues a prompt with a trained model and prints the continuation.
  --run <dir>            a train run folder: its newest checkpoint and its tokenizer.json
  --checkpoint <dir>     a checkpoint folder, or a Hugging Face model folder
  --tokenizer <file>     tokenizer.json (default: beside the checkpoint or in its run folder)
  --adapter <dir>        a PEFT LoRA adapter to apply to a full checkpoint (e.g. <run>/adapter)
  --prompt <text>        text to continue (default: the start of a new document)
  --tokens <n>           tokens to generate at most; stops at end-of-text (default 100)
  --temperature <x>      0 picks the likeliest token (default ${SAMPLING.temperature})
  --top-p <p>            sample from the smallest set of tokens with this probability (default ${SAMPLING.topP})
  --seed <n>             sampling seed (default 1)
  --threads <n>          kernel threads (default: every core)
  -h, --help             this text
`;

const TRAIN_OPTIONS = {
  local: { type: 'boolean' }, out: { type: 'string' }, resume: { type: 'boolean' },
  corpus: { type: 'string' }, vocab: { type: 'string' }, seq: { type: 'string' }, batch: { type: 'string' },
  'held-out': { type: 'string' }, seed: { type: 'string' },
  config: { type: 'string' }, mode: { type: 'string' }, base: { type: 'string' }, rank: { type: 'string' },
  alpha: { type: 'string' }, 'base-format': { type: 'string' }, 'base-path': { type: 'string' }, checkpointing: { type: 'boolean' },
  activations: { type: 'string' },
  steps: { type: 'string' }, accumulation: { type: 'string' }, lr: { type: 'string' }, 'min-lr': { type: 'string' },
  warmup: { type: 'string' },
  threads: { type: 'string' }, 'eval-every': { type: 'string' }, 'eval-batches': { type: 'string' },
  'checkpoint-every': { type: 'string' }, 'sample-every': { type: 'string' }, 'sample-tokens': { type: 'string' },
  'sample-prompt': { type: 'string' }, 'sample-temperature': { type: 'string' }, 'log-every': { type: 'string' },
  'export-adapter': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const GENERATE_OPTIONS = {
  run: { type: 'string' }, checkpoint: { type: 'string' }, tokenizer: { type: 'string' }, adapter: { type: 'string' },
  prompt: { type: 'string' }, tokens: { type: 'string' }, temperature: { type: 'string' }, 'top-p': { type: 'string' },
  seed: { type: 'string' }, threads: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The options that determine a run's results, recorded in run.json and kept by --resume. */
interface RunSpec {
  corpus: CorpusName;
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

type TrainValues = ReturnType<typeof parse<typeof TRAIN_OPTIONS>>;

/** Parses each run option given on the command line, by RunSpec field: [flag, parse]. */
const RUN_OPTIONS: { [K in keyof RunSpec]: [flag: keyof TrainValues, parse: (text: string) => RunSpec[K]] } = {
  corpus: ['corpus', (t) => choice('corpus', t, CORPUS_NAMES)],
  vocab: ['vocab', (t) => integer('vocab', t, 257)], // 256 byte tokens and end-of-text
  seq: ['seq', (t) => integer('seq', t, 1)],
  batch: ['batch', (t) => integer('batch', t, 1)],
  heldOut: ['held-out', (t) => real('held-out', t, (x) => x > 0 && x < 1, 'a fraction between 0 and 1')],
  seed: ['seed', (t) => integer('seed', t, 0)],
  config: ['config', readConfigOverrides],
  mode: ['mode', (t) => choice('mode', t, ['full', 'lora'] as const)],
  base: ['base', (t) => modelDir(resolve(t))],
  rank: ['rank', (t) => integer('rank', t, 1)],
  alpha: ['alpha', (t) => real('alpha', t, (x) => x > 0, 'a positive number')],
  baseFormat: ['base-format', (t) => choice('base-format', t, ['f32', 'q8', 'q4'] as const)],
  basePath: ['base-path', (t) => choice('base-path', t, ['fp32', 'int'] as const)],
  checkpointing: ['checkpointing', () => true],
  activations: ['activations', (t) => choice('activations', t, ['f32', 'bf16'] as const)],
  steps: ['steps', (t) => integer('steps', t, 1)],
  accumulation: ['accumulation', (t) => integer('accumulation', t, 1)],
  lr: ['lr', (t) => real('lr', t, (x) => x > 0, 'a positive number')],
  minLr: ['min-lr', (t) => real('min-lr', t, (x) => x >= 0, 'a non-negative number')],
  warmup: ['warmup', (t) => integer('warmup', t, 0)],
};

const DEFAULT_SPEC: Omit<RunSpec, 'corpus' | 'minLr'> = {
  vocab: 2048, seq: 128, batch: 8, heldOut: 0.05, seed: 1, config: {}, mode: 'full', base: null,
  rank: 8, alpha: 16, baseFormat: 'f32', basePath: 'fp32', checkpointing: false, activations: 'f32',
  steps: 1000, accumulation: 1, lr: DEFAULT_TRAIN.lr, warmup: DEFAULT_TRAIN.warmupSteps,
};

/** Options of this invocation that leave the run's results alone: what it prints and saves, and how fast. */
interface SessionOptions {
  threads: number;
  evalEvery: number;
  evalBatches: number;
  checkpointEvery: number;
  sampleEvery: number;
  sampleTokens: number;
  samplePrompt: string;
  sampleTemperature: number;
  logEvery: number;
  exportAdapter: boolean;
}

export async function trainCommand(argv: string[], io: CommandIO = processIO): Promise<number> {
  return runCommand('train', io, async () => {
    const values = parse('train', argv, TRAIN_OPTIONS);
    if (values.help) {
      io.stdout.write(TRAIN_HELP);
      return 0;
    }
    if (!values.local) throw new UsageError('only local training exists so far: pass --local to train in this process');
    if (values.out === undefined) throw new UsageError('--out <dir> is required (the run folder)');
    const out = resolve(values.out);
    const explicit = explicitSpec(values);
    const resume = values.resume === true;
    const spec = resume ? resumedSpec(out, explicit) : newSpec(out, explicit);
    const session = sessionOptions(values, spec);
    return train(out, spec, session, resume ? undefined : explicit.vocab, resume, io);
  });
}

export async function generateCommand(argv: string[], io: CommandIO = processIO): Promise<number> {
  return runCommand('generate', io, async () => {
    const values = parse('generate', argv, GENERATE_OPTIONS);
    if (values.help) {
      io.stdout.write(GENERATE_HELP);
      return 0;
    }
    if ((values.run === undefined) === (values.checkpoint === undefined)) throw new UsageError('give either --run <dir> or --checkpoint <dir>');
    const sampling = {
      maxNewTokens: values.tokens === undefined ? 100 : integer('tokens', values.tokens, 1),
      temperature: values.temperature === undefined ? SAMPLING.temperature : real('temperature', values.temperature, (x) => x >= 0, 'a non-negative number'),
      topP: values['top-p'] === undefined ? SAMPLING.topP : real('top-p', values['top-p'], (x) => x > 0 && x <= 1, 'a number in (0, 1]'),
      seed: values.seed === undefined ? 1 : integer('seed', values.seed, 0),
    };
    const threads = threadsOf(values.threads);
    let kernels: Kernels | undefined;
    try {
      const { model, tokenizer } = await asInput(async () => {
        const dir = values.run === undefined ? resolve(values.checkpoint!) : runCheckpoint(resolve(values.run));
        const tokenizerPath = values.tokenizer === undefined ? findTokenizer(dir) : resolve(values.tokenizer);
        if (tokenizerPath === undefined) throw new UsageError(`no tokenizer.json beside ${dir} or in its run folder; pass --tokenizer <file>`);
        const tokenizer = loadTokenizer(tokenizerPath);
        const source = await loadModelSource(dir);
        if (values.adapter !== undefined) {
          if (source.options.mode !== 'full') throw new UsageError(`--adapter: ${dir} is a LoRA checkpoint already; apply an adapter to a full checkpoint or a Hugging Face folder`);
          const adapter = await readPeftAdapter(resolve(values.adapter), source.config, source.family);
          source.options = { mode: 'lora', lora: { rank: adapter.rank, alpha: adapter.alpha } };
          source.trained = adapter.tensors;
        }
        checkVocabulary(tokenizer, source.config);
        kernels = await createKernels({ threads });
        const model = new Model(kernels, source.config, source.options, source.weights);
        model.params.load(source.trained);
        return { model, tokenizer };
      });
      io.stdout.write(`${await continuation(model, tokenizer, values.prompt ?? '', sampling)}\n`);
      return 0;
    } finally {
      await kernels?.close();
    }
  });
}

async function train(out: string, spec: RunSpec, session: SessionOptions, vocabGiven: number | undefined, resume: boolean, io: CommandIO): Promise<number> {
  const progress = new ProgressLine(io.stdout);
  const metricsPath = join(out, 'metrics.jsonl');
  let kernels: Kernels | undefined;
  try {
    // Setup only reads; whatever fails here is bad input. The run folder is written after.
    const setup = await asInput(async () => {
      const base = spec.base === null ? undefined : await loadBase(spec.base);
      const corpus = loadCorpus(spec.corpus);
      const tokenizer = runTokenizer(out, spec, base, vocabGiven, corpus.documents);
      const config = base ? onBase(base.config, spec.config, '--config') : createConfig({ vocabSize: tokenizer.tokenizer.vocabSize, ...spec.config });
      checkVocabulary(tokenizer.tokenizer, config);
      if (spec.seq > config.maxSeqLen) throw new UsageError(`--seq ${spec.seq} exceeds the model's maxSeqLen ${config.maxSeqLen} (set maxSeqLen in --config)`);
      const data = corpusLoaders(tokenizer.tokenizer, corpus, { batchSize: spec.batch, seqLen: spec.seq, heldOutFraction: spec.heldOut, seed: spec.seed });
      const resumeFrom = resume ? newestCheckpoint(out) : undefined;
      const checkpoint = resumeFrom === undefined ? undefined : await loadCheckpoint(resumeFrom);
      kernels = await createKernels({ threads: session.threads });
      const model = new Model(kernels, config, modelOptions(spec), base?.weights);
      const trainer = new Trainer(kernels, model, data.train, data.heldOut, tokenizer.tokenizer, {
        ...DEFAULT_TRAIN, lr: spec.lr, minLr: spec.minLr, warmupSteps: spec.warmup, totalSteps: spec.steps, accumulation: spec.accumulation,
      });
      if (checkpoint) restoreTrainer(trainer, checkpoint);
      return { base, tokenizer, config, data, trainer, resumeFrom, kernels };
    });
    const { base, tokenizer, config, data, trainer, resumeFrom } = setup;
    const { model } = trainer;

    mkdirSync(out, { recursive: true });
    if (!resume) writeFileSync(join(out, 'run.json'), `${JSON.stringify({ version: RUN_VERSION, ...spec }, null, 2)}\n`);
    if (tokenizer.fresh) tokenizer.tokenizer.save(join(out, 'tokenizer.json'));
    if (resumeFrom) keepMetricsUpTo(metricsPath, trainer.step);
    else writeFileSync(metricsPath, '');

    const trainable = model.params.trainable().reduce((n, p) => n + p.value.length, 0);
    const total = [...parameterShapes(config).values()].reduce((n, shape) => n + sizeOf(shape), 0);
    const what = spec.mode === 'lora' ? `LoRA rank ${spec.rank} on the ${spec.baseFormat} base ${base!.dir}` : `every weight, from ${base ? base.dir : 'scratch'}`;
    progress.print(`${resumeFrom ? `resuming from ${resumeFrom}` : `training into ${out}`}: ${what}`);
    progress.print(`model: ${config.numLayers} layers × ${config.hiddenSize}, ${config.numExperts} experts top-${config.expertsPerToken}, vocab ${config.vocabSize}; ${count(total)} parameters, ${count(trainable)} trainable`);
    progress.print(`data: ${spec.corpus}, ${count(data.train.windowCount)} training windows of ${spec.seq} tokens; tokenizer ${tokenizer.source}; kernels ${setup.kernels.info.build} × ${setup.kernels.info.threads} threads`);

    let lastEval: EvalMetrics | undefined;
    const evaluate = async () => {
      lastEval = await trainer.evaluate(session.evalBatches);
      appendMetrics(metricsPath, { type: 'eval', step: trainer.step, ...lastEval });
    };
    const sample = async () => {
      const text = await continuation(model, tokenizer.tokenizer, session.samplePrompt, {
        maxNewTokens: session.sampleTokens, temperature: session.sampleTemperature, topP: SAMPLING.topP, seed: spec.seed,
      });
      progress.print(`--- sample at step ${trainer.step} ---\n${printable(session.samplePrompt + text)}\n---`);
    };
    const due = (step: number, every: number) => every > 0 && step % every === 0;

    if (trainer.step >= spec.steps) {
      progress.print(`the run already finished its ${spec.steps} steps`);
    } else {
      if (trainer.step === 0 && session.evalEvery > 0) await evaluate();
      const throughput = new Throughput();
      while (trainer.step < spec.steps) {
        const started = performance.now();
        const metrics = await trainer.trainStep();
        const seconds = (performance.now() - started) / 1000;
        appendMetrics(metricsPath, { type: 'train', ...metrics, seconds });
        throughput.add(seconds, metrics.tokens);
        const { step } = metrics;
        const last = step === spec.steps;
        const evaluated = last || due(step, session.evalEvery);
        if (evaluated) await evaluate();
        progress.update(progressText(step, spec.steps, metrics.loss, lastEval, throughput), evaluated || due(step, session.logEvery));
        if (last || due(step, session.sampleEvery)) await sample();
        if (!last && due(step, session.checkpointEvery)) await saveCheckpoint(join(out, 'checkpoints', `step-${step}`), trainer, base?.dir);
      }
      progress.end();
      await saveCheckpoint(join(out, 'final'), trainer, base?.dir);
      progress.print(`saved ${join(out, 'final')}`);
    }
    if (session.exportAdapter) {
      const dir = join(out, 'adapter');
      const tensors = model.params.snapshot((p) => p.grad !== undefined);
      await writePeftAdapter(dir, config, base!.family, { rank: spec.rank, alpha: spec.alpha, baseModel: base!.dir, tensors });
      progress.print(`wrote the PEFT adapter ${dir} (${base!.family} module names)`);
    }
    return 0;
  } finally {
    progress.end();
    await kernels?.close();
  }
}

/** Runs a command body: a UsageError is exit code 2, anything else 1; either way one line on stderr. */
async function runCommand(name: string, io: CommandIO, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    io.stderr.write(`swarmtrain ${name}: ${messageOf(err).replace(/\s*\n\s*/g, ' ')}\n`);
    if (!(err instanceof UsageError) && process.env.SWARMTRAIN_DEBUG) io.stderr.write(`${(err as Error).stack}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

/** Loading and checking inputs: any failure is bad input. */
async function asInput<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    throw err instanceof UsageError ? err : new UsageError(messageOf(err));
  }
}

const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

function parse<const O extends NonNullable<ParseArgsConfig['options']>>(command: string, argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    const { code, message } = err as { code?: string; message: string };
    const quoted = /'([^']*)'/.exec(message)?.[1];
    const what =
      code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? `unknown option ${quoted}`
        : code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' ? `unexpected argument ${JSON.stringify(quoted)}`
          : code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && /argument missing/.test(message) ? `${quoted?.split(' ')[0]} needs a value`
            : message;
    throw new UsageError(`${what} (see swarmtrain ${command} --help)`);
  }
}

function integer(flag: string, text: string, min: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`--${flag} must be an integer ≥ ${min}, got ${JSON.stringify(text)}`);
  }
  return value;
}

function real(flag: string, text: string, ok: (x: number) => boolean, want: string): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || !ok(value)) throw new UsageError(`--${flag} must be ${want}, got ${JSON.stringify(text)}`);
  return value;
}

function choice<const C extends string>(flag: string, text: string, choices: readonly C[]): C {
  if (!(choices as readonly string[]).includes(text)) throw new UsageError(`--${flag} must be one of ${choices.join(', ')}, got ${JSON.stringify(text)}`);
  return text as C;
}

/** Kernel threads: every core by default; the kernels take at most 64. */
function threadsOf(text: string | undefined): number {
  if (text === undefined) return Math.min(availableParallelism(), 64);
  const threads = integer('threads', text, 1);
  if (threads > 64) throw new UsageError(`--threads must be at most 64, got ${threads}`);
  return threads;
}

function readConfigOverrides(path: string): Partial<ModelConfig> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config ${path}: cannot read (${messageOf(err)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new UsageError(`--config ${path}: expected a JSON object of ModelConfig fields`);
  try {
    createConfig(json as Partial<ModelConfig>);
  } catch (err) {
    throw new UsageError(`--config ${path}: ${messageOf(err)}`);
  }
  return json as Partial<ModelConfig>;
}

function explicitSpec(values: TrainValues): Partial<RunSpec> {
  const spec: Record<string, unknown> = {};
  for (const [field, [flag, parseValue]] of Object.entries(RUN_OPTIONS)) {
    const text = values[flag];
    if (text !== undefined) spec[field] = (parseValue as (t: string) => unknown)(String(text));
  }
  return spec as Partial<RunSpec>;
}

function newSpec(out: string, explicit: Partial<RunSpec>): RunSpec {
  if (existsSync(join(out, 'run.json'))) throw new UsageError(`${out} already holds a run (run.json): add --resume to continue it, or choose another --out`);
  if (explicit.corpus === undefined) throw new UsageError(`--corpus is required (${CORPUS_NAMES.join(', ')})`);
  const merged: RunSpec = { ...DEFAULT_SPEC, corpus: explicit.corpus, minLr: (explicit.lr ?? DEFAULT_SPEC.lr) / 10, ...explicit };
  // In RUN_OPTIONS order, for a readable run.json.
  const spec = Object.fromEntries(Object.keys(RUN_OPTIONS).map((field) => [field, merged[field as keyof RunSpec]])) as unknown as RunSpec;
  if (spec.mode === 'lora' && spec.base === null) throw new UsageError('--mode lora needs --base <dir>: the model whose weights stay frozen');
  if (spec.mode === 'full') {
    for (const field of ['rank', 'alpha', 'baseFormat', 'basePath'] as const) {
      if (explicit[field] !== undefined) throw new UsageError(`--${RUN_OPTIONS[field][0]} applies to --mode lora only`);
    }
  }
  if (explicit.basePath !== undefined && spec.baseFormat === 'f32') throw new UsageError('--base-path applies to a quantized base (--base-format q8 or q4)');
  if (spec.minLr > spec.lr) throw new UsageError(`--min-lr ${spec.minLr} exceeds --lr ${spec.lr}`);
  return spec;
}

/** The recorded options of the run in `out`; options given again must not differ. */
function resumedSpec(out: string, explicit: Partial<RunSpec>): RunSpec {
  const path = join(out, 'run.json');
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
  for (const field of Object.keys(RUN_OPTIONS) as (keyof RunSpec)[]) {
    const expected = field === 'corpus' ? 'string' : field === 'minLr' ? 'number' : typeof DEFAULT_SPEC[field];
    const ok = field === 'base' ? spec.base === null || typeof spec.base === 'string' : typeof spec[field] === expected;
    if (!ok) throw new UsageError(`${path}: ${field} is missing or not a ${expected}`);
    const given = explicit[field];
    if (given !== undefined && JSON.stringify(given) !== JSON.stringify(spec[field])) {
      throw new UsageError(`--${RUN_OPTIONS[field][0]} ${JSON.stringify(given)} differs from the run's ${JSON.stringify(spec[field])} (${path}); a resumed run keeps its options`);
    }
  }
  return spec as unknown as RunSpec;
}

function sessionOptions(values: TrainValues, spec: RunSpec): SessionOptions {
  const every = (flag: 'eval-every' | 'checkpoint-every' | 'sample-every' | 'log-every', fallback: number) =>
    values[flag] === undefined ? fallback : integer(flag, values[flag], 0);
  const exportAdapter = values['export-adapter'] === true;
  if (exportAdapter && spec.mode !== 'lora') throw new UsageError('--export-adapter needs --mode lora');
  return {
    threads: threadsOf(values.threads),
    evalEvery: every('eval-every', 100),
    evalBatches: values['eval-batches'] === undefined ? 20 : integer('eval-batches', values['eval-batches'], 1),
    checkpointEvery: every('checkpoint-every', 500),
    sampleEvery: every('sample-every', 500),
    sampleTokens: values['sample-tokens'] === undefined ? 64 : integer('sample-tokens', values['sample-tokens'], 1),
    samplePrompt: values['sample-prompt'] ?? '',
    sampleTemperature: values['sample-temperature'] === undefined ? SAMPLING.temperature
      : real('sample-temperature', values['sample-temperature'], (x) => x >= 0, 'a non-negative number'),
    logEvery: every('log-every', 10),
    exportAdapter,
  };
}

function modelOptions(spec: RunSpec): ModelOptions {
  const common = { checkpointing: spec.checkpointing, activationStorage: spec.activations, seed: spec.seed };
  if (spec.mode === 'full') return { mode: 'full', ...common };
  return { mode: 'lora', lora: { rank: spec.rank, alpha: spec.alpha }, baseFormat: spec.baseFormat, basePath: spec.basePath, ...common };
}

/** Config fields a model may set differently from its base: they change no weight. */
const TRAINING_FIELDS: readonly string[] = ['maxSeqLen', 'routerAuxLossCoef'];

/** The base's config with `overrides`, which may only change TRAINING_FIELDS. */
function onBase(baseConfig: ModelConfig, overrides: Partial<ModelConfig>, source: string): ModelConfig {
  for (const [field, value] of Object.entries(overrides)) {
    const baseValue = baseConfig[field as keyof ModelConfig];
    if (!TRAINING_FIELDS.includes(field) && baseValue !== value) {
      throw new UsageError(`${source} sets ${field} ${value}, but the base has ${baseValue}; only ${TRAINING_FIELDS.join(' and ')} may differ from the base`);
    }
  }
  return validateConfig({ ...baseConfig, ...overrides });
}

function checkVocabulary(tokenizer: BpeTokenizer, config: ModelConfig): void {
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new UsageError(`the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary holds ${config.vocabSize}`);
  }
}

/** Where a model's weights come from: a checkpoint or a Hugging Face folder. */
interface ModelSource {
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
function modelDir(path: string): string {
  if (existsSync(join(path, 'state.json'))) return path;
  if (existsSync(join(path, 'run.json'))) return runCheckpoint(path);
  if (existsSync(join(path, 'config.json'))) return path;
  throw new UsageError(`${path} is not a checkpoint (no state.json), a run folder (no run.json) or a Hugging Face model folder (no config.json)`);
}

async function loadModelSource(path: string): Promise<ModelSource> {
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
  if (state.base === undefined) throw new UsageError(`${dir}: a LoRA checkpoint that does not say where its base is (state.json has no "base")`);
  const base = await loadBase(state.base);
  const config = onBase(base.config, state.config, `checkpoint ${dir}`);
  return { ...base, dir, config, options: state.model, trained: params };
}

async function loadBase(path: string): Promise<ModelSource> {
  const source = await loadModelSource(path);
  if (source.options.mode !== 'full') throw new UsageError(`base ${source.dir} is a LoRA checkpoint; a base holds every weight (a full checkpoint or a Hugging Face folder)`);
  return source;
}

/** The newest checkpoint of a run folder: final/, else the highest checkpoints/step-N/. */
function newestCheckpoint(run: string): string | undefined {
  if (existsSync(join(run, 'final'))) return join(run, 'final');
  const dir = join(run, 'checkpoints');
  const steps = existsSync(dir) ? readdirSync(dir).flatMap((name) => /^step-(\d+)$/.exec(name)?.[1] ?? []).map(Number) : [];
  return steps.length === 0 ? undefined : join(dir, `step-${Math.max(...steps)}`);
}

function runCheckpoint(run: string): string {
  const dir = newestCheckpoint(run);
  if (dir === undefined) throw new UsageError(`run ${run} has no checkpoint yet (no final/ or checkpoints/step-N/)`);
  return dir;
}

/** tokenizer.json beside a checkpoint, or in the run folder holding it (<run>/final, <run>/checkpoints/step-N). */
function findTokenizer(dir: string): string | undefined {
  const folders = [dir];
  if (basename(dir) === 'final') folders.push(dirname(dir));
  if (basename(dirname(dir)) === 'checkpoints') folders.push(dirname(dirname(dir)));
  return folders.map((folder) => join(folder, 'tokenizer.json')).find((path) => existsSync(path));
}

function loadTokenizer(path: string): BpeTokenizer {
  try {
    return BpeTokenizer.load(path);
  } catch (err) {
    throw new UsageError(`${path}: ${messageOf(err)}`);
  }
}

/** The run's tokenizer: the run folder's, else the base's, else trained on the corpus (fresh: to be saved). */
function runTokenizer(
  out: string, spec: RunSpec, base: ModelSource | undefined, vocabGiven: number | undefined, documents: string[],
): { tokenizer: BpeTokenizer; source: string; fresh: boolean } {
  const own = join(out, 'tokenizer.json');
  const found = existsSync(own) ? own : base && findTokenizer(base.dir);
  if (found) {
    const tokenizer = loadTokenizer(found);
    if (vocabGiven !== undefined && vocabGiven !== tokenizer.vocabSize) {
      throw new UsageError(`--vocab ${vocabGiven}: the run uses ${found}, which has ${tokenizer.vocabSize} tokens; drop --vocab or choose another --out`);
    }
    return { tokenizer, source: `${found} (${tokenizer.vocabSize} tokens)`, fresh: found !== own };
  }
  if (base) throw new UsageError(`base ${base.dir} has no tokenizer.json beside it or in its run folder; copy the tokenizer it was trained with to ${own}`);
  const tokenizer = BpeTokenizer.train(documents, { vocabSize: spec.vocab });
  return { tokenizer, source: `trained on ${spec.corpus} (${tokenizer.vocabSize} tokens)`, fresh: true };
}

/** Samples a continuation of `prompt` (empty: the start of a new document); stops at end-of-text. */
async function continuation(
  model: Model, tokenizer: BpeTokenizer, prompt: string, options: { maxNewTokens: number; temperature: number; topP: number; seed: number },
): Promise<string> {
  const eot = tokenizer.specialId(END_OF_TEXT);
  const ids = prompt === '' ? (eot === undefined ? [] : [eot]) : tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError(`the tokenizer has no ${END_OF_TEXT} token to start a document from: give a prompt`);
  const generated = await generate(model, ids, { ...options, eosId: eot });
  return tokenizer.decode(generated.at(-1) === eot ? generated.slice(0, -1) : generated);
}

/** Control characters but newline and tab shown as U+FFFD: a barely trained model emits any byte, escapes included. */
const printable = (text: string) => text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '\uFFFD');

function appendMetrics(path: string, record: Record<string, unknown>): void {
  appendFileSync(path, `${JSON.stringify(record)}\n`);
}

/** Drops the metrics of steps after `step` (written after the checkpoint a run resumes from). */
function keepMetricsUpTo(path: string, step: number): void {
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

/** Time and tokens of the latest steps, for tokens/s and the ETA. */
class Throughput {
  private readonly recent: { seconds: number; tokens: number }[] = [];

  add(seconds: number, tokens: number): void {
    this.recent.push({ seconds, tokens });
    if (this.recent.length > 20) this.recent.shift();
  }

  get tokensPerSecond(): number {
    return this.recent.reduce((n, r) => n + r.tokens, 0) / this.recent.reduce((s, r) => s + r.seconds, 0);
  }

  get secondsPerStep(): number {
    return this.recent.reduce((s, r) => s + r.seconds, 0) / this.recent.length;
  }
}

function progressText(step: number, total: number, loss: number, lastEval: EvalMetrics | undefined, throughput: Throughput): string {
  const parts = [`step ${step}/${total}`, `loss ${loss.toFixed(4)}`];
  if (lastEval) parts.push(`held-out ${lastEval.loss.toFixed(4)} (${lastEval.bitsPerByte.toFixed(3)} bits/byte)`);
  parts.push(`${count(Math.round(throughput.tokensPerSecond))} tok/s`, `ETA ${duration((total - step) * throughput.secondsPerStep)}`);
  return parts.join(' | ');
}

const count = (n: number) => n.toLocaleString('en-US');

function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

/** One progress line, rewritten in place on a terminal; elsewhere printed as plain lines when asked. */
class ProgressLine {
  private shown = '';

  constructor(private readonly out: CommandOutput) {}

  update(text: string, printPlain: boolean): void {
    if (this.out.isTTY) {
      this.out.write(`\r${text}\x1b[K`);
      this.shown = text;
    } else if (printPlain) {
      this.out.write(`${text}\n`);
    }
  }

  /** Prints text above the progress line. */
  print(text: string): void {
    if (this.shown) this.out.write('\r\x1b[K');
    this.out.write(`${text}\n`);
    if (this.shown) this.out.write(this.shown);
  }

  end(): void {
    if (this.shown) this.out.write('\n');
    this.shown = '';
  }
}
