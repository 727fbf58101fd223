// Training throughput of the issue's reference config (vocab 4096, hidden 256, 4 layers, 8 heads,
// 8 experts top-2 of width 512; batch 8 × seq 256): tokens/s, peak RSS and model FLOP
// utilization of full training and LoRA over fp32/q8/q4 frozen bases, with and without gradient
// checkpointing, on 1 and 2 threads, next to PyTorch CPU numbers for the same config on this
// machine. Each setting runs in its own child process so its peak RSS is its own. MFU divides
// the step's model FLOPs per second by fp32 GEMM GFLOPS measured in the same run.
// `--demo-minutes N` then trains the demo config on SOTU for N minutes and tracks held-out
// bits per byte. Run: npm run bench:train [-- --quick] [-- --passes 2] [-- --demo-minutes 10]
// [-- --tsx] (children load the TypeScript through tsx instead of running the compiled bundle)
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { bundle } from '../src/bundle.ts';
import { createKernels } from '../src/kernels/index.ts';
import { createConfig, isLoraTarget, loraShapes, parameterShapes, type ModelConfig } from '../src/model/config.ts';
import { uniform } from '../src/model/init.ts';
import type { ActivationStorage } from '../src/model/expert.ts';
import type { BasePath } from '../src/model/linear.ts';
import { Model, type ModelOptions } from '../src/model/model.ts';
import { sizeOf } from '../src/model/params.ts';
import type { BaseFormat } from '../src/model/weights.ts';
import { loadCorpus } from '../src/train/corpus.ts';
import { bitsPerByte, corpusLoaders, unigramEntropy } from '../src/train/data.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { DEFAULT_TRAIN, splitBatch, Trainer } from '../src/train/trainer.ts';
import { BATCH, LORA, REFERENCE_CONFIG, SEQ } from './reference.ts';
import { median, printTable } from './table.ts';

const LEARNING_RATE = 1e-3;

/** PyTorch CPU on this machine and config (from the issue): tokens/s by threads, peak RSS in GB. */
const PYTORCH = {
  full: { 1: 2100, 2: 3300 },
  lora: { 1: 2700, 2: 3900 }, // rank 8 on q, k, v, o and the expert matrices, frozen fp32 base
  rssGB: { plain: [0.8, 1.0], checkpointing: [0.57, 0.57] },
} as const;

interface Setting {
  mode: 'full' | 'lora';
  baseFormat: BaseFormat;
  basePath: BasePath;
  checkpointing: boolean;
  /** How the experts and attention keep their largest activations for backward (ActivationStorage in src/model/expert.ts). */
  activations: ActivationStorage;
  threads: number;
  /** Timed steps after one warm-up step. */
  steps: number;
}

/** What a `--one` child prints, as one JSON line. */
interface Measurement {
  stepSeconds: number[];
  maxRssBytes: number;
  /** Size of the kernels' WebAssembly memory (tensors, activations, optimizer state). */
  heapBytes: number;
  loss: number;
  build: string;
}

const argv = process.argv.slice(2);
const option = (name: string) => {
  const at = argv.indexOf(name);
  return at < 0 ? undefined : argv[at + 1];
};

/** Seconds of each of `reps` calls of `run`, after one warm-up call. */
async function timeCalls(run: () => unknown, reps: number): Promise<number[]> {
  await run();
  const seconds: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await run();
    seconds.push((performance.now() - t0) / 1e3);
  }
  return seconds;
}

/**
 * Model FLOPs per trained token (2 per multiply-add; recomputation under checkpointing not
 * counted). Every matmul costs its forward, its input gradient and, when trained, its weight
 * gradient; a frozen base (lora) skips the last, and each LoRA pair adds 3·r·(in + out)
 * multiply-adds (x·Aᵀ, ·Bᵀ; ∂B, ∂(xA), ∂A, ∂x). Attention scores and values count 3× their
 * forward over all `seq` positions (not halved for the causal mask, as in PaLM's MFU).
 */
function flopsPerToken(config: ModelConfig, mode: 'full' | 'lora', seq: number, rank: number): number {
  const { hiddenSize: H, numHeads, headDim, numLayers: L, expertsPerToken: k } = config;
  let macs = 0;
  for (const [name, shape] of parameterShapes(config)) {
    if (shape.length !== 2 || name === 'embed') continue; // the embedding is a lookup
    const [out, inDim] = shape;
    const expert = /\.experts\.\d+\./.test(name);
    const perToken = expert ? k / config.numExperts : 1; // each token visits k of the experts
    macs += perToken * out * inDim * (mode === 'full' ? 3 : 2);
    if (mode === 'lora' && isLoraTarget(name)) macs += perToken * 3 * rank * (inDim + out);
  }
  if (config.tieEmbeddings) macs += H * config.vocabSize * (mode === 'full' ? 3 : 2); // the head
  macs += L * 3 * 2 * seq * numHeads * headDim;
  return 2 * macs;
}

function label(s: Setting): string {
  const base = s.mode === 'full' ? 'full' : `lora ${s.baseFormat}${s.baseFormat === 'f32' ? '' : ` ${s.basePath}`}`;
  return s.activations === 'f32' ? base : `${base}, ${s.activations} act.`;
}

/** The child side: one setting, printed as a JSON line. */
async function measureOne(s: Setting): Promise<void> {
  const kernels = await createKernels({ threads: s.threads });
  const options: ModelOptions = s.mode === 'full'
    ? { mode: 'full', checkpointing: s.checkpointing, activationStorage: s.activations }
    : {
      mode: 'lora', lora: LORA, baseFormat: s.baseFormat, basePath: s.basePath,
      checkpointing: s.checkpointing, activationStorage: s.activations,
    };
  const model = new Model(kernels, REFERENCE_CONFIG, options);
  const optimizer = new AdamW(kernels, model.params.trainable());
  const random = uniform(7);
  const stream = Int32Array.from({ length: BATCH * SEQ + 1 }, () => Math.floor(random() * REFERENCE_CONFIG.vocabSize));
  const inputs = stream.subarray(0, BATCH * SEQ);
  const targets = stream.subarray(1);
  let loss = NaN;
  const stepSeconds = await timeCalls(async () => {
    model.params.zeroGrads();
    loss = (await model.trainStep(inputs, targets, BATCH, SEQ)).loss;
    optimizer.update(LEARNING_RATE);
  }, s.steps);
  const build = kernels.info.build;
  const heapBytes = kernels.heap.memory.buffer.byteLength;
  await kernels.close();
  const result: Measurement = { stepSeconds, maxRssBytes: process.resourceUsage().maxRSS * 1024, heapBytes, loss, build };
  console.log(JSON.stringify(result));
}

/**
 * The command line of a measuring child: this script compiled by `npm run build`'s bundler, as
 * the Docker image runs swarmtrain (tsx's loader would add ~60 MB to every peak RSS), or, with
 * --tsx, this script through tsx.
 */
async function childCommand(): Promise<string[]> {
  const script = fileURLToPath(import.meta.url);
  if (argv.includes('--tsx')) return ['--import', 'tsx', script];
  const [bundled] = await bundle({ 'bench-train.mjs': `import './bench/train.ts';\n` });
  return [bundled];
}

function runChild(command: string[], s: Setting): Measurement {
  const child = spawnSync(process.execPath, [...command, '--one', JSON.stringify(s)], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24,
  });
  const line = child.stdout.trim().split('\n').pop() ?? '';
  if (child.status !== 0 || !line.startsWith('{')) {
    throw new Error(`bench child for ${JSON.stringify(s)} failed (exit ${child.status}): ${child.stdout}`);
  }
  return JSON.parse(line) as Measurement;
}

/**
 * fp32 GEMM GFLOPS on a training step's shapes (M = batch·seq rows, K = N in {256, 512}), by
 * product: the forward x·Wᵀ, the input gradient dy·W and the weight gradient dyᵀ·x.
 */
async function gemmRates(threads: number, reps: number): Promise<Map<string, number>> {
  const kernels = await createKernels({ threads });
  const { heap, gemm } = kernels;
  const m = BATCH * SEQ;
  const rates = new Map<string, number>();
  for (const size of [256, 512]) {
    const x = heap.f32(m * size);
    const w = heap.f32(size * size);
    const y = heap.f32(m * size);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i);
    for (let i = 0; i < w.length; i++) w[i] = Math.cos(i);
    const products: [string, () => void][] = [
      ['x·Wᵀ', () => gemm.gemm({ a: x, b: w, c: y, m, n: size, k: size, transB: true })],
      ['dy·W', () => gemm.gemm({ a: y, b: w, c: x, m, n: size, k: size })],
      ['dyᵀ·x', () => gemm.gemm({ a: y, b: x, c: w, m: size, n: size, k: m, transA: true })],
    ];
    for (const [name, run] of products) {
      const seconds = Math.min(...(await timeCalls(run, reps)));
      rates.set(`${name} M=${m} K=N=${size}`, (2 * m * size * size) / seconds / 1e9);
    }
  }
  await kernels.close();
  return rates;
}

async function throughput(quick: boolean, passes: number): Promise<void> {
  const threadCounts = [1, 2];
  const steps = quick ? 2 : 5;
  const params = [...parameterShapes(REFERENCE_CONFIG).values()].reduce((n, s) => n + sizeOf(s), 0);
  const loraParams = [...loraShapes(REFERENCE_CONFIG, LORA.rank).values()].reduce((n, s) => n + sizeOf(s), 0);
  const flops = {
    full: flopsPerToken(REFERENCE_CONFIG, 'full', SEQ, LORA.rank), lora: flopsPerToken(REFERENCE_CONFIG, 'lora', SEQ, LORA.rank),
  };
  console.log(`Reference config: ${(params / 1e6).toFixed(2)}M parameters ` +
    `(LoRA r=${LORA.rank}: ${(loraParams / 1e6).toFixed(2)}M trainable), batch ${BATCH} × seq ${SEQ}`);
  console.log(`Model FLOPs per trained token: full ${(flops.full / 1e6).toFixed(1)} M, lora ${(flops.lora / 1e6).toFixed(1)} M`);
  console.log(`Load average at start: ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);

  // Measured before and after the settings; the better of the two counts (other load on the
  // machine only ever slows a measurement down).
  const gemmReps = quick ? 3 : 7;
  const gemmBefore = new Map<number, Map<string, number>>();
  for (const threads of threadCounts) gemmBefore.set(threads, await gemmRates(threads, gemmReps));

  // Activations are kept in f32 unless a base says otherwise.
  type Base = Pick<Setting, 'mode' | 'baseFormat' | 'basePath'> & Partial<Pick<Setting, 'activations'>>;
  const loraQ4: Base = { mode: 'lora', baseFormat: 'q4', basePath: 'int' };
  const bases: Base[] = quick
    ? [{ mode: 'full', baseFormat: 'f32', basePath: 'fp32' }, loraQ4, { ...loraQ4, activations: 'bf16' }]
    : [
      { mode: 'full', baseFormat: 'f32', basePath: 'fp32' },
      { mode: 'lora', baseFormat: 'f32', basePath: 'fp32' },
      ...(['q8', 'q4'] as const).flatMap((baseFormat) =>
        (['fp32', 'int'] as const).map((basePath) => ({ mode: 'lora' as const, baseFormat, basePath }))),
      { ...loraQ4, activations: 'bf16' },
    ];
  const settings: Setting[] = bases.flatMap((base) => (quick ? [false] : [false, true]).flatMap((checkpointing) =>
    threadCounts.map((threads) => ({ activations: 'f32' as const, ...base, checkpointing, threads, steps }))));

  // With several passes over all settings, each keeps its fastest pass: other load on a
  // shared machine only slows a run down.
  const results: { setting: Setting; m: Measurement }[] = [];
  const command = await childCommand();
  for (let pass = 0; pass < passes; pass++) {
    settings.forEach((setting, i) => {
      const m = runChild(command, setting);
      if (!results[i] || Math.min(...m.stepSeconds) < Math.min(...results[i].m.stepSeconds)) results[i] = { setting, m };
      const tokens = BATCH * SEQ / Math.min(...m.stepSeconds);
      const ckpt = setting.checkpointing ? ' ckpt' : '';
      process.stderr.write(`pass ${pass + 1}: ${label(setting)}${ckpt} ×${setting.threads}: ${tokens.toFixed(0)} tok/s\n`);
    });
  }

  const gemmRows: string[][] = [];
  const gemmPeak: Record<number, number> = {};
  for (const threads of threadCounts) {
    const after = await gemmRates(threads, gemmReps);
    const best = [...gemmBefore.get(threads)!].map(([shape, before]) => {
      const better = Math.max(before, after.get(shape)!);
      gemmRows.push([shape, String(threads), before.toFixed(1), after.get(shape)!.toFixed(1), better.toFixed(1)]);
      return better;
    });
    gemmPeak[threads] = best.reduce((a, b) => a + b, 0) / best.length;
    gemmRows.push(['mean (MFU denominator)', String(threads), '', '', gemmPeak[threads].toFixed(1)]);
  }
  printTable(['fp32 GEMM', 'threads', 'GFLOPS before', 'GFLOPS after', 'better'], gemmRows);
  console.log();

  const gb = (bytes: number) => (bytes / 1e9).toFixed(2);
  const span = (a: number, b: number) => (a === b ? a.toFixed(2) : `${a.toFixed(2)}-${b.toFixed(2)}`);
  printTable(
    ['setting', 'ckpt', 'threads', 'tok/s (best)', 'tok/s (median)', 'GFLOPS', 'MFU', '× 1 thread', 'peak RSS GB', 'WASM heap GB',
      'PyTorch tok/s', '× PyTorch', 'PyTorch RSS GB', 'RSS × PyTorch', 'loss'],
    results.map(({ setting: s, m }) => {
      const best = BATCH * SEQ / Math.min(...m.stepSeconds);
      const gflops = (best * flops[s.mode]) / 1e9;
      const oneThread = s.threads > 1
        ? results.find((r) => label(r.setting) === label(s) && r.setting.checkpointing === s.checkpointing && r.setting.threads === 1)
        : undefined;
      const torch = PYTORCH[s.mode][s.threads as 1 | 2];
      const [lo, hi] = PYTORCH.rssGB[s.checkpointing ? 'checkpointing' : 'plain'];
      return [
        label(s), s.checkpointing ? 'yes' : 'no', String(s.threads), best.toFixed(0),
        (BATCH * SEQ / median(m.stepSeconds)).toFixed(0), gflops.toFixed(1), `${((100 * gflops) / gemmPeak[s.threads]).toFixed(0)}%`,
        oneThread ? (best / (BATCH * SEQ / Math.min(...oneThread.m.stepSeconds))).toFixed(2) : '',
        gb(m.maxRssBytes), gb(m.heapBytes), String(torch), (best / torch).toFixed(2), span(lo, hi),
        span(m.maxRssBytes / 1e9 / hi, m.maxRssBytes / 1e9 / lo), m.loss.toFixed(3),
      ];
    }),
  );
  const ranAs = argv.includes('--tsx') ? 'through tsx' : 'as compiled JavaScript (src/bundle.ts)';
  console.log(`\nBuild: ${results[0].m.build}, run ${ranAs}. Best of ${passes} pass(es); ` +
    `tok/s over ${steps} timed steps after a warm-up (zero grads, forward, backward, AdamW). ` +
    `PyTorch LoRA numbers are for a frozen fp32 base. MFU counts the same model FLOPs on every path, against fp32 GEMM: ` +
    `the int path's base products are int8 dot products, so its MFU can pass 100%. ` +
    `Load average at end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
}

/** Trains the demo config on SOTU for `minutes` (training time), reporting held-out bits per byte about every minute. */
async function demo(minutes: number): Promise<void> {
  const HELD_OUT_BATCHES = 16;
  const corpus = loadCorpus('sotu');
  const tokenizer = BpeTokenizer.train(corpus.documents, { vocabSize: 4096 });
  const data = corpusLoaders(tokenizer, corpus, { batchSize: BATCH, seqLen: SEQ, seed: 1 });
  const trainTokens = new Int32Array(data.trainTokens.reduce((n, t) => n + t.length, 0));
  data.trainTokens.reduce((at, t) => (trainTokens.set(t, at), at + t.length), 0);
  const unigram = bitsPerByte(unigramEntropy(trainTokens), trainTokens.length, tokenizer.textBytes(trainTokens));
  const kernels = await createKernels({ threads: 2 });
  const model = new Model(kernels, createConfig({ vocabSize: tokenizer.vocabSize }), { mode: 'full' });

  // The cosine schedule needs its length: estimate it from one timed step after a warm-up.
  const probe = splitBatch(data.train.batch(0, 0));
  const [probeSeconds] = await timeCalls(() => model.trainStep(probe.inputs, probe.targets, BATCH, SEQ), 1);
  const totalSteps = Math.max(1, Math.round((minutes * 60) / probeSeconds));
  const trainer = new Trainer(kernels, model, data.train, data.heldOut, tokenizer, { ...DEFAULT_TRAIN, totalSteps });
  console.log(`\nDemo: DEMO_CONFIG on SOTU (${(corpus.bytes / 1e6).toFixed(1)} MB, ${trainTokens.length} train tokens, ` +
    `BPE vocab ${tokenizer.vocabSize}), batch ${BATCH} × seq ${SEQ}, 2 threads, ${minutes} min ≈ ${totalSteps} steps; ` +
    `held-out: first ${Math.min(HELD_OUT_BATCHES, data.heldOut.batchesPerEpoch)} of ${data.heldOut.batchesPerEpoch} batches. ` +
    `Unigram entropy of the train text: ${unigram.toFixed(3)} bits/byte.`);

  const rows: string[][] = [];
  let seconds = 0;
  let lossSum = 0;
  let lossSteps = 0;
  const report = async () => {
    const held = await trainer.evaluate(HELD_OUT_BATCHES);
    const trainLoss = lossSteps ? (lossSum / lossSteps).toFixed(3) : '';
    const row = [(seconds / 60).toFixed(1), String(trainer.step), trainLoss, held.loss.toFixed(3), held.bitsPerByte.toFixed(3)];
    rows.push(row);
    process.stderr.write(`demo: ${row.join(' ')}\n`);
    lossSum = 0;
    lossSteps = 0;
  };
  await report();
  let nextReport = 60;
  while (seconds < minutes * 60 && trainer.step < totalSteps) {
    const t0 = performance.now();
    lossSum += (await trainer.trainStep()).crossEntropy;
    lossSteps++;
    seconds += (performance.now() - t0) / 1e3;
    if (seconds >= nextReport) {
      await report();
      nextReport += 60;
    }
  }
  if (lossSteps > 0) await report();
  await kernels.close();
  printTable(['minutes (training)', 'step', 'train loss (mean since last row)', 'held-out loss', 'held-out bits/byte'], rows);
  console.log(`\n${((trainer.step * BATCH * SEQ) / seconds).toFixed(0)} tokens/s over the run (evaluation time excluded).`);
}

const one = option('--one');
if (one !== undefined) {
  await measureOne(JSON.parse(one) as Setting);
} else {
  const passes = Number(option('--passes') ?? 1);
  if (!(Number.isInteger(passes) && passes >= 1)) throw new Error(`--passes must be a positive integer, got ${option('--passes')}`);
  await throughput(argv.includes('--quick'), passes);
  const minutes = option('--demo-minutes');
  if (minutes !== undefined) {
    if (!(Number(minutes) > 0)) throw new Error(`--demo-minutes must be a positive number, got ${minutes}`);
    await demo(Number(minutes));
  }
}
