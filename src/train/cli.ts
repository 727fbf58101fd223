// The command-line interface of the single-process engine:
//   swarmtrain train --local   trains a model (every weight, or LoRA adapters on a frozen base)
//                              on a bundled corpus or your own text into a run folder (src/train/run.ts), with a
//                              progress line, metrics, checkpoints and samples;
//   swarmtrain generate        continues a prompt with a checkpoint (plus a PEFT adapter).
// --resume reads run.json and the newest checkpoint and retraces the uninterrupted run bit for bit.
// Bad input (options, files, checkpoints, bases) ends with one line on stderr and exit code 2.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { choice, custom, flag, integer, real, text, type OptionValues } from '../cli/args.ts';
import { command, runCommand, type CommandIO, type CommandOutput } from '../cli/command.ts';
import { asInput, EXIT, messageOf, UsageError } from '../cli/usage.ts';
import { readPeftAdapter, writePeftAdapter } from '../io/peft.ts';
import { createKernels, type Kernels } from '../kernels/index.ts';
import { createConfig, parameterShapes, type ModelConfig } from '../model/config.ts';
import { Model } from '../model/model.ts';
import { sizeOf } from '../model/params.ts';
import type { BaseFormat, TrainMode } from '../model/weights.ts';
import { loadCheckpoint, restoreTrainer, saveCheckpoint } from './checkpoint.ts';
import { CORPUS_NAMES } from './corpus.ts';
import { corpusLoaders } from './data.ts';
import { isBundledCorpus, loadNamedCorpus } from './text-corpus.ts';
import { generate } from './generate.ts';
import {
  appendMetrics, checkVocabulary, findTokenizer, keepMetricsUpTo, loadBase, loadModelSource, loadTokenizer, modelDir, modelOptions,
  newestCheckpoint, newSpec, onBase, resumedSpec, RUN_FLAGS, runCheckpoint, runPaths, runTokenizer, writeRunSpec, type RunSpec,
} from './run.ts';
import type { Tokenizer } from './tokenizers/index.ts';
import { DEFAULT_TRAIN, Trainer, type EvalMetrics } from './trainer.ts';

const SAMPLING = { temperature: 0.8, topP: 0.95 };

/** Kernel threads: every core by default; the kernels take at most 64. */
const MAX_THREADS = 64;
const threads = integer('<n>', `kernel threads (default: every core, ${availableParallelism()} here)`, { min: 1, max: MAX_THREADS });
const threadsOf = (given: number | undefined) => given ?? Math.min(availableParallelism(), MAX_THREADS);

const positive = (x: number) => x > 0;
const nonNegative = (x: number) => x >= 0;

const TRAIN_OPTIONS = {
  corpus: custom('<name|path>', `${CORPUS_NAMES.join(' | ')}, or your text: a .txt file (paragraphs separated by blank lines `
    + 'are documents), a folder of .txt files (one document each) or a .jsonl file (a "text" field per line) (required)',
  parseCorpus, { section: 'Data' }),
  vocab: integer('<n>', 'tokenizer size, trained on the corpus (default 2048); ' +
    'a tokenizer.json already in --out or beside --base is used instead', { min: 257 }), // 256 byte tokens and end-of-text
  seq: integer('<n>', 'tokens per sequence (default 128)', { min: 1 }),
  batch: integer('<n>', 'sequences per micro-batch (default 8)', { min: 1 }),
  'held-out': real('<fraction>', 'documents held out for evaluation (default 0.05)', (x) => x > 0 && x < 1, 'a fraction between 0 and 1'),
  seed: integer('<n>', 'seed of the initialization and the data order (default 1)', { min: 0 }),
  config: custom('<file>', 'JSON object of ModelConfig overrides of the demo config (256 hidden, 4 layers, 8 experts top-2); ' +
    'with --base only maxSeqLen and routerAuxLossCoef may differ from the base', readConfigOverrides, { section: 'Model' }),
  mode: choice(['full', 'lora'], 'train every weight, or LoRA adapters on a frozen base (default full)'),
  base: custom('<dir>', 'initial weights: a full checkpoint, a run folder (its newest checkpoint) ' +
    'or a Hugging Face model folder; required with lora', (value) => modelDir(resolve(value))),
  rank: integer('<n>', 'LoRA rank (default 8)', { min: 1 }),
  alpha: real('<x>', 'LoRA scale numerator (default 16)', positive, 'a positive number'),
  'base-format': choice(['f32', 'q8', 'q4'], 'lora: storage of the frozen attention and expert matrices (default f32)'),
  'base-path': choice(['fp32', 'int'], 'q8/q4: dequantizing fp32 product or exact integer product (default fp32)'),
  checkpointing: flag('recompute activations in backward: less memory, more compute'),
  activations: choice(['f32', 'bf16'], 'how the experts and attention keep their largest activations for backward: ' +
    'bf16 halves that memory, gradients move by ~0.5% (default f32)'),
  steps: integer('<n>', 'updates (default 1000)', { min: 1 }, { section: 'Optimization' }),
  accumulation: integer('<n>', 'micro-batches per update (default 1)', { min: 1 }),
  lr: real('<x>', `peak learning rate (default ${DEFAULT_TRAIN.lr})`, positive, 'a positive number'),
  'min-lr': real('<x>', 'learning rate at the end of the cosine decay (default lr/10)', nonNegative, 'a non-negative number'),
  warmup: integer('<n>', `steps of linear warmup (default ${DEFAULT_TRAIN.warmupSteps})`, { min: 0 }),
  local: flag('train in this process (required: the only training there is so far)', { section: 'Run' }),
  out: text('<dir>', 'the run folder', { required: true }),
  resume: flag('continue the run in --out from its newest checkpoint, exactly'),
  threads,
  'eval-every': integer('<n>', 'held-out evaluation every n steps; 0: only at the end (default 100)', { min: 0 }),
  'eval-batches': integer('<n>', 'held-out micro-batches per evaluation (default 20)', { min: 1 }),
  'checkpoint-every': integer('<n>', 'save checkpoints/step-N every n steps; 0: only final/ (default 500)', { min: 0 }),
  'sample-every': integer('<n>', 'print a sample every n steps; 0: only at the end (default 500)', { min: 0 }),
  'sample-tokens': integer('<n>', 'tokens per sample (default 64)', { min: 1 }),
  'sample-prompt': text('<text>', 'start of each sample (default: the start of a new document)'),
  'sample-temperature': real('<x>', `0 picks the likeliest token (default ${SAMPLING.temperature}; top-p ${SAMPLING.topP})`, nonNegative,
    'a non-negative number'),
  'log-every': integer('<n>', 'progress lines when stdout is not a terminal (default 10)', { min: 0 }),
  'export-adapter': flag('lora: write <out>/adapter (adapter_model.safetensors, adapter_config.json)'),
};

type TrainValues = OptionValues<typeof TRAIN_OPTIONS>;

/** A bundled corpus's name, or the absolute path of an existing file or folder. */
function parseCorpus(value: string, name: string): string {
  if (isBundledCorpus(value)) return value;
  if (!existsSync(value)) {
    throw new UsageError(`${name} must be one of ${CORPUS_NAMES.join(', ')} or a file or folder of your text, got ${JSON.stringify(value)}`);
  }
  return resolve(value);
}

export const TRAIN_COMMAND = command({
  program: 'swarmtrain train',
  usage: '--local --corpus <name|path> --out <dir> [options]',
  about: `Trains a model in this process on a bundled corpus or your text. The run folder (--out) gets
  run.json              the options below that determine the results (--resume reads them)
  tokenizer.json        the byte-level BPE tokenizer (Hugging Face format)
  metrics.jsonl         one JSON object per step ("train") and per evaluation ("eval")
  checkpoints/step-N/   periodic checkpoints; final/ holds the last one
  adapter/              with --export-adapter: the PEFT LoRA adapter`,
  options: TRAIN_OPTIONS,
  async run(values, io) {
    if (!values.local) throw new UsageError('only local training exists so far: pass --local to train in this process');
    const out = resolve(values.out);
    const explicit = explicitSpec(values);
    const spec = values.resume ? resumedSpec(out, explicit) : newSpec(out, explicit);
    const session = sessionOptions(values, spec);
    return train(out, spec, session, values.resume ? undefined : explicit.vocab, values.resume, io);
  },
});

export const GENERATE_COMMAND = command({
  program: 'swarmtrain generate',
  usage: '(--run <dir> | --checkpoint <dir> | --base <hf dir>) [options]',
  about: 'Continues a prompt with a trained model and prints the continuation.',
  options: {
    run: text('<dir>', 'a train run folder: its newest checkpoint and its tokenizer.json'),
    checkpoint: text('<dir>', 'a checkpoint folder, or a Hugging Face model folder'),
    base: text('<hf dir>', "the base an --adapter applies to: a Hugging Face model folder (a swarm job's result/, or any)"),
    tokenizer: text('<file>', 'tokenizer.json (default: beside the checkpoint or in its run folder)'),
    adapter: text('<dir>', 'a PEFT LoRA adapter to apply to a full checkpoint (e.g. <run>/adapter)'),
    prompt: text('<text>', 'text to continue (default: the start of a new document)'),
    tokens: integer('<n>', 'tokens to generate at most; stops at end-of-text (default 100)', { min: 1 }),
    temperature: real('<x>', `0 picks the likeliest token (default ${SAMPLING.temperature})`, nonNegative, 'a non-negative number'),
    'top-p': real('<p>', `sample from the smallest set of tokens with this probability (default ${SAMPLING.topP})`,
      (x) => x > 0 && x <= 1, 'a number in (0, 1]'),
    seed: integer('<n>', 'sampling seed (default 1)', { min: 0 }),
    threads,
  },
  async run(values, io) {
    const given = [values.run, values.checkpoint, values.base].filter((value) => value !== undefined);
    if (given.length !== 1) throw new UsageError('give one of --run <dir>, --checkpoint <dir> or --base <hf dir>');
    const sampling = {
      maxNewTokens: values.tokens ?? 100,
      temperature: values.temperature ?? SAMPLING.temperature,
      topP: values['top-p'] ?? SAMPLING.topP,
      seed: values.seed ?? 1,
    };
    let kernels: Kernels | undefined;
    try {
      const { model, tokenizer } = await asInput(async () => {
        const dir = values.run === undefined ? resolve((values.checkpoint ?? values.base)!) : runCheckpoint(resolve(values.run));
        const tokenizerPath = values.tokenizer === undefined ? findTokenizer(dir) : resolve(values.tokenizer);
        if (tokenizerPath === undefined) {
          throw new UsageError(`no tokenizer.json beside ${dir} or in its run folder; pass --tokenizer <file>`);
        }
        const loaded = await loadGenerator(dir, tokenizerPath, values.adapter === undefined ? undefined : resolve(values.adapter), threadsOf(values.threads));
        kernels = loaded.kernels;
        return loaded;
      });
      io.stdout.write(`${await continuation(model, tokenizer, values.prompt ?? '', sampling)}\n`);
      return EXIT.ok;
    } finally {
      await kernels?.close();
    }
  },
});

export const trainCommand = (argv: string[], io?: CommandIO): Promise<number> => runCommand(TRAIN_COMMAND, argv, io);
export const generateCommand = (argv: string[], io?: CommandIO): Promise<number> => runCommand(GENERATE_COMMAND, argv, io);

/** The run options given on the command line, by RunSpec field (a flag left off is not given). */
function explicitSpec(values: TrainValues): Partial<RunSpec> {
  const given = values as Record<string, unknown>;
  return Object.fromEntries(Object.entries(RUN_FLAGS).flatMap(([field, name]) =>
    given[name] === undefined || given[name] === false ? [] : [[field, given[name]]]));
}

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

function sessionOptions(values: TrainValues, spec: RunSpec): SessionOptions {
  if (values['export-adapter'] && spec.mode !== 'lora') throw new UsageError('--export-adapter needs --mode lora');
  return {
    threads: threadsOf(values.threads),
    evalEvery: values['eval-every'] ?? 100,
    evalBatches: values['eval-batches'] ?? 20,
    checkpointEvery: values['checkpoint-every'] ?? 500,
    sampleEvery: values['sample-every'] ?? 500,
    sampleTokens: values['sample-tokens'] ?? 64,
    samplePrompt: values['sample-prompt'] ?? '',
    sampleTemperature: values['sample-temperature'] ?? SAMPLING.temperature,
    logEvery: values['log-every'] ?? 10,
    exportAdapter: values['export-adapter'],
  };
}

function readConfigOverrides(path: string): Partial<ModelConfig> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config ${path}: cannot read (${messageOf(err)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new UsageError(`--config ${path}: expected a JSON object of ModelConfig fields`);
  }
  try {
    createConfig(json as Partial<ModelConfig>);
  } catch (err) {
    throw new UsageError(`--config ${path}: ${messageOf(err)}`);
  }
  return json as Partial<ModelConfig>;
}

async function train(
  out: string, spec: RunSpec, session: SessionOptions, vocabGiven: number | undefined, resume: boolean, io: CommandIO,
): Promise<number> {
  const progress = new ProgressLine(io.stdout);
  const paths = runPaths(out);
  let kernels: Kernels | undefined;
  try {
    // Setup only reads; whatever fails here is bad input. The run folder is written after.
    const setup = await asInput(async () => {
      const base = spec.base === null ? undefined : await loadBase(spec.base);
      const corpus = loadNamedCorpus(spec.corpus);
      const tokenizer = runTokenizer(out, spec, base, vocabGiven, corpus.documents);
      const config = base ? onBase(base.config, spec.config, '--config')
        : createConfig({ vocabSize: tokenizer.tokenizer.vocabSize, ...spec.config });
      checkVocabulary(tokenizer.tokenizer, config);
      if (spec.seq > config.maxSeqLen) {
        throw new UsageError(`--seq ${spec.seq} exceeds the model's maxSeqLen ${config.maxSeqLen} (set maxSeqLen in --config)`);
      }
      const data = corpusLoaders(tokenizer.tokenizer, corpus, {
        batchSize: spec.batch, seqLen: spec.seq, heldOutFraction: spec.heldOut, seed: spec.seed,
      });
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
    if (!resume) writeRunSpec(out, spec);
    if (tokenizer.fresh) tokenizer.tokenizer.save(paths.tokenizer);
    if (resumeFrom) keepMetricsUpTo(paths.metrics, trainer.step);
    else writeFileSync(paths.metrics, '');

    const trainable = model.params.trainable().reduce((n, p) => n + p.value.length, 0);
    const total = [...parameterShapes(config).values()].reduce((n, shape) => n + sizeOf(shape), 0);
    const what = spec.mode === 'lora' ? `LoRA rank ${spec.rank} on the ${spec.baseFormat} base ${base!.dir}`
      : `every weight, from ${base ? base.dir : 'scratch'}`;
    progress.print(`${resumeFrom ? `resuming from ${resumeFrom}` : `training into ${out}`}: ${what}`);
    progress.print(`model: ${config.numLayers} layers × ${config.hiddenSize}, ${config.numExperts} experts top-${config.expertsPerToken}, ` +
      `vocab ${config.vocabSize}; ${count(total)} parameters, ${count(trainable)} trainable`);
    progress.print(`data: ${spec.corpus}, ${count(data.train.windowCount)} training windows of ${spec.seq} tokens; ` +
      `tokenizer ${tokenizer.source}; kernels ${setup.kernels.info.build} × ${setup.kernels.info.threads} threads`);

    let lastEval: EvalMetrics | undefined;
    const evaluate = async () => {
      lastEval = await trainer.evaluate(session.evalBatches);
      appendMetrics(paths.metrics, { type: 'eval', step: trainer.step, ...lastEval });
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
        appendMetrics(paths.metrics, { type: 'train', ...metrics, seconds });
        throughput.add(seconds, metrics.tokens);
        const { step } = metrics;
        const last = step === spec.steps;
        const evaluated = last || due(step, session.evalEvery);
        if (evaluated) await evaluate();
        progress.update(progressText(step, spec.steps, metrics.loss, lastEval, throughput), evaluated || due(step, session.logEvery));
        if (last || due(step, session.sampleEvery)) await sample();
        if (!last && due(step, session.checkpointEvery)) await saveCheckpoint(paths.checkpoint(step), trainer, base?.dir);
      }
      progress.end();
      await saveCheckpoint(paths.final, trainer, base?.dir);
      progress.print(`saved ${paths.final}`);
    }
    if (session.exportAdapter) {
      const dir = paths.adapter;
      const tensors = model.params.snapshot((p) => p.grad !== undefined);
      await writePeftAdapter(dir, config, base!.family, { rank: spec.rank, alpha: spec.alpha, baseModel: base!.dir, tensors });
      progress.print(`wrote the PEFT adapter ${dir} (${base!.family} module names)`);
    }
    return EXIT.ok;
  } finally {
    progress.end();
    await kernels?.close();
  }
}

/**
 * A model to sample from: a checkpoint or Hugging Face folder, with a PEFT adapter applied when given, and
 * its tokenizer. The caller closes the kernels.
 */
export async function loadGenerator(dir: string, tokenizerPath: string, adapterDir: string | undefined, threads: number) {
  const tokenizer = loadTokenizer(tokenizerPath);
  const source = await loadModelSource(dir);
  if (adapterDir !== undefined) {
    if (source.options.mode !== 'full') {
      throw new UsageError(`--adapter: ${dir} is a LoRA checkpoint already; apply an adapter to a full checkpoint or a Hugging Face folder`);
    }
    const adapter = await readPeftAdapter(adapterDir, source.config, source.family);
    source.options = { mode: 'lora', lora: { rank: adapter.rank, alpha: adapter.alpha } };
    source.trained = adapter.tensors;
  }
  checkVocabulary(tokenizer, source.config);
  const kernels = await createKernels({ threads });
  const model = new Model(kernels, source.config, source.options, source.weights);
  model.params.load(source.trained);
  return { model, tokenizer, kernels };
}

/** Samples a continuation of `prompt` (empty: the start of a new document); stops at end-of-text. */
export async function continuation(
  model: Model, tokenizer: Tokenizer, prompt: string, options: { maxNewTokens: number; temperature: number; topP: number; seed: number },
): Promise<string> {
  const eot = tokenizer.endOfText;
  const ids = prompt === '' ? (eot === undefined ? [] : [eot]) : tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError('the tokenizer has no end-of-text token to start a document from: give a prompt');
  const generated = await generate(model, ids, { ...options, eosId: eot });
  return tokenizer.decode(generated.at(-1) === eot ? generated.slice(0, -1) : generated);
}

/** Control characters but newline and tab shown as U+FFFD: a barely trained model emits any byte, escapes included. */
const printable = (text: string) => text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '\uFFFD');

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

export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

/** One progress line, rewritten in place on a terminal; elsewhere printed as plain lines when asked. */
export class ProgressLine {
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
