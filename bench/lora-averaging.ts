// How LoRA adapters should be averaged across replicas. Averaging A and B apart is not averaging the
// update: mean(Bᵢ·Aᵢ) ≠ mean(Bᵢ)·mean(Aᵢ). Freezing A at its seeded init (LoRA-FA / FFA-LoRA; the same A on
// every node) and training only B makes the average exact: mean(Bᵢ·A) = mean(Bᵢ)·A. One process replays
// what the swarm does with N replicas (a base trained on SOTU, then LoRA on TypeScript's lib files; replica
// i takes batch s·N + i at step s): synchronous averaging (gradients averaged every step, the data-parallel
// reference) and periodic averaging (each replica steps alone with its own AdamW, parameters averaged every H
// steps, as the swarm's f32 periodic averaging with outer lr 1 does), each with A and B trained or A frozen.
// Prints held-out loss (nats/token) and, at each periodic round, the gap ‖mean(BᵢAᵢ) − mean(Bᵢ)·mean(Aᵢ)‖/‖mean(BᵢAᵢ)‖.
// --swarm runs the four schemes as real swarm jobs instead (the base saved as a Hugging Face folder, NODES node processes,
// replication NODES, batches leased as they come): the mean of the nodes' final held-out loss (their own 8 batches).
// Run: npx tsx bench/lora-averaging.ts [--nodes 3] [--every 4] [--steps 64] [--base-steps 200] [--seeds 1] [--swarm]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { JobSpec } from '../proto/index.ts';
import { startSwarm } from '../src/harness/local-swarm.ts';
import { saveHfModel } from '../src/io/hf.ts';
import { createKernels, type Kernels } from '../src/kernels/index.ts';
import { createConfig, type F32Tensor, type ModelConfig } from '../src/model/config.ts';
import { Model } from '../src/model/model.ts';
import { loadCorpus } from '../src/train/corpus.ts';
import { corpusLoaders, type BatchLoader } from '../src/train/data.ts';
import { AdamW, DEFAULT_ADAMW } from '../src/train/optimizer.ts';
import { learningRate } from '../src/train/schedule.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { DEFAULT_TRAIN, splitBatch, Trainer } from '../src/train/trainer.ts';
import { printTable } from './table.ts';

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '3' }, every: { type: 'string', default: '4' }, steps: { type: 'string', default: '64' },
    'base-steps': { type: 'string', default: '200' }, seeds: { type: 'string', default: '1' }, rank: { type: 'string', default: '8' },
    lr: { type: 'string', default: '1e-2' }, swarm: { type: 'boolean', default: false },
  },
});
const NODES = Number(values.nodes);
const EVERY = Number(values.every);
const STEPS = Number(values.steps);
const BASE_STEPS = Number(values['base-steps']);
const RANK = Number(values.rank);
const LR = Number(values.lr);
const HELD_OUT_BATCHES = 16;

const kernels = await createKernels({ threads: 2 });
const sotu = { documents: loadCorpus('sotu').documents.slice(-60) };
const typescript = loadCorpus('typescript-lib');
const tokenizer = BpeTokenizer.train([...sotu.documents, ...typescript.documents.slice(0, 20)], { vocabSize: 1024 });
const config = createConfig({
  vocabSize: tokenizer.vocabSize, hiddenSize: 96, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 24,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 192, maxSeqLen: 64,
});
const loader = (corpus: { documents: string[] }) => corpusLoaders(tokenizer, corpus, { batchSize: 8, seqLen: 64, seed: 5, heldOutFraction: 0.1 });
const sotuData = loader(sotu);
const tsData = loader(typescript);

const base = new Trainer(kernels, new Model(kernels, config, { mode: 'full' }), sotuData.train, sotuData.heldOut, tokenizer,
  { ...DEFAULT_TRAIN, totalSteps: BASE_STEPS, lr: 3e-3, minLr: 3e-4 });
for (let s = 0; s < BASE_STEPS; s++) await base.trainStep();
const weights = base.model.params.snapshot();
base.model.params.release();

type Scheme = { name: string; sync: boolean; freezeA: boolean };
const SCHEMES: Scheme[] = [
  { name: 'sync, A and B', sync: true, freezeA: false },
  { name: 'sync, A frozen', sync: true, freezeA: true },
  { name: 'periodic, A and B averaged apart', sync: false, freezeA: false },
  { name: 'periodic, A frozen (B averaged)', sync: false, freezeA: true },
];

interface Outcome { heldOut: number; gaps: number[] }

/** Trains NODES replicas on the same batches the swarm would hand out and averages them as `scheme` says. */
async function run(scheme: Scheme, seed: number): Promise<Outcome> {
  const lora = { rank: RANK, alpha: 2 * RANK, freezeA: scheme.freezeA };
  const replicas = Array.from({ length: NODES }, () => new Model(kernels, config, { mode: 'lora', lora, seed }, weights));
  const params = replicas.map((m) => m.params.trainable());
  const optimizers = params.map((p) => new AdamW(kernels, p, DEFAULT_ADAMW));
  const schedule = { lr: LR, minLr: LR / 10, warmupSteps: 4, totalSteps: STEPS };
  const gaps: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    for (const [i, model] of replicas.entries()) {
      const batch = tsData.train.batchAt(step * NODES + i);
      const { inputs, targets } = splitBatch(batch);
      model.params.zeroGrads();
      await model.trainStep(inputs, targets, batch.rows, batch.seqLen);
    }
    if (scheme.sync) averageInPlace(params.map((ps) => ps.map((p) => p.grad!)));
    for (const optimizer of optimizers) optimizer.update(learningRate(step, schedule));
    if (!scheme.sync && (step + 1) % EVERY === 0) {
      gaps.push(productGap(replicas.map((m) => m.params.snapshot((p) => /\.lora_[ab]$/.test(p.name)))));
      averageInPlace(params.map((ps) => ps.map((p) => p.value)));
    }
  }
  const heldOut = (await evaluator(replicas[0], tsData).evaluate(HELD_OUT_BATCHES)).loss;
  for (const model of replicas) model.params.release();
  return { heldOut, gaps };
}

function evaluator(model: Model, data: { train: BatchLoader; heldOut: BatchLoader }): Trainer {
  return new Trainer(kernels, model, data.train, data.heldOut, tokenizer, { ...DEFAULT_TRAIN, totalSteps: 1 });
}

/** Sets the k-th array of every replica to their elementwise mean. */
function averageInPlace(perReplica: Float32Array[][]): void {
  for (let k = 0; k < perReplica[0].length; k++) {
    const arrays = perReplica.map((arrays) => arrays[k]);
    const mean = new Float32Array(arrays[0].length);
    for (const a of arrays) for (let j = 0; j < a.length; j++) mean[j] += a[j] / arrays.length;
    for (const a of arrays) a.set(mean);
  }
}

/** ‖mean(BᵢAᵢ) − mean(Bᵢ)·mean(Aᵢ)‖ / ‖mean(BᵢAᵢ)‖ over every adapter of the model (Frobenius norms, summed squares). */
function productGap(adapters: Map<string, F32Tensor>[]): number {
  let diff = 0;
  let norm = 0;
  for (const name of adapters[0].keys()) {
    if (!name.endsWith('.lora_a')) continue;
    const target = name.slice(0, -'.lora_a'.length);
    const as = adapters.map((m) => m.get(name)!);
    const bs = adapters.map((m) => m.get(`${target}.lora_b`)!);
    const [r, inDim] = as[0].shape;
    const outDim = bs[0].shape[0];
    const meanA = meanOf(as.map((t) => t.data));
    const meanB = meanOf(bs.map((t) => t.data));
    const meanProduct = new Float64Array(outDim * inDim);
    for (let i = 0; i < as.length; i++) addProduct(meanProduct, bs[i].data, as[i].data, outDim, r, inDim, 1 / as.length);
    const productOfMeans = new Float64Array(outDim * inDim);
    addProduct(productOfMeans, meanB, meanA, outDim, r, inDim, 1);
    for (let j = 0; j < meanProduct.length; j++) {
      diff += (meanProduct[j] - productOfMeans[j]) ** 2;
      norm += meanProduct[j] ** 2;
    }
  }
  return Math.sqrt(diff / norm);
}

function meanOf(arrays: ArrayLike<number>[]): Float64Array {
  const mean = new Float64Array(arrays[0].length);
  for (const a of arrays) for (let j = 0; j < a.length; j++) mean[j] += a[j] / arrays.length;
  return mean;
}

/** out += scale · B·A, B [outDim, r], A [r, inDim], row-major. */
function addProduct(out: Float64Array, b: ArrayLike<number>, a: ArrayLike<number>, outDim: number, r: number, inDim: number, scale: number): void {
  for (let o = 0; o < outDim; o++) {
    for (let k = 0; k < r; k++) {
      const bk = b[o * r + k] * scale;
      if (bk === 0) continue;
      for (let j = 0; j < inDim; j++) out[o * inDim + j] += bk * a[k * inDim + j];
    }
  }
}

const baseLoss = await (async () => {
  const model = new Model(kernels, config, { mode: 'lora', lora: { rank: RANK, alpha: 2 * RANK }, seed: 1 }, weights);
  const loss = (await evaluator(model, tsData).evaluate(HELD_OUT_BATCHES)).loss;
  model.params.release();
  return loss;
})();
console.log(`${NODES} replicas, LoRA rank ${RANK} (alpha ${2 * RANK}), ${STEPS} steps each, periodic every ${EVERY}, lr ${LR}; ` +
  `base ${BASE_STEPS} steps on SOTU; held-out loss on TypeScript's lib files before LoRA: ${baseLoss.toFixed(4)}\n`);
/** The scheme as a swarm job on the base (saved in `baseDir`): the mean of the nodes' final held-out loss. */
async function runSwarm(scheme: Scheme, seed: number, baseDir: string, scratch: string): Promise<Outcome> {
  const spec: JobSpec = {
    jobId: `lora-averaging-${seed}-${scheme.sync ? 'sync' : 'periodic'}-${scheme.freezeA ? 'fa' : 'ab'}`, model: {}, mode: 'lora',
    lora: { rank: RANK, alpha: 2 * RANK, freezeA: scheme.freezeA }, baseFormat: 'f32', basePath: 'fp32', seed, corpus: 'typescript-lib',
    batchSize: 8, seqLen: 64, heldOutFraction: 0.1, totalBatches: STEPS * NODES, expectedNodes: NODES, lr: LR, minLr: LR / 10, warmupSteps: 4,
    averaging: scheme.sync ? { mode: 'sync', every: 1, deadlineMs: 60_000 } : { mode: 'periodic', every: EVERY, deadlineMs: 20_000 },
    expertTimeoutMs: 60_000,
  };
  const swarm = await startSwarm(spec, [
    '--base', baseDir, '--replication', String(NODES), '--heartbeat-ms', '500', '--node-timeout-ms', '30000', '--lease-ms', '300000',
  ]);
  try {
    const nodes = Array.from({ length: NODES }, (_, i) => swarm.startNode(['--data', join(scratch, `node${i}`)]));
    const finished = await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 1_800_000, 'finished')));
    return { heldOut: meanOfNumbers(finished.map((e) => e.heldOut.loss as number)), gaps: [] };
  } finally {
    await swarm.shutdown();
  }
}

const meanOfNumbers = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const seeds = Array.from({ length: Number(values.seeds) }, (_, i) => i + 1);
const rows: string[][] = [];
const outcomes = new Map<string, Outcome[]>();
const scratch = values.swarm ? await mkdtemp(join(tmpdir(), 'swarmtrain-lora-averaging-')) : '';
if (values.swarm) {
  await saveHfModel(join(scratch, 'base'), { config, layout: { family: 'mixtral', packedExperts: false }, params: weights });
  tokenizer.save(join(scratch, 'base', 'tokenizer.json'));
}
for (const scheme of SCHEMES) {
  const results: Outcome[] = [];
  for (const seed of seeds) results.push(values.swarm ? await runSwarm(scheme, seed, join(scratch, 'base'), scratch) : await run(scheme, seed));
  outcomes.set(scheme.name, results);
}
if (values.swarm) await rm(scratch, { recursive: true, force: true });
for (const scheme of SCHEMES) {
  const results = outcomes.get(scheme.name)!;
  const reference = outcomes.get(scheme.freezeA ? 'sync, A frozen' : 'sync, A and B')!;
  const syncAB = outcomes.get('sync, A and B')!;
  const heldOut = meanOfNumbers(results.map((r) => r.heldOut));
  const gaps = results.flatMap((r) => r.gaps);
  rows.push([
    scheme.name, heldOut.toFixed(4), (heldOut - meanOfNumbers(reference.map((r) => r.heldOut))).toFixed(4),
    (heldOut - meanOfNumbers(syncAB.map((r) => r.heldOut))).toFixed(4),
    gaps.length ? `${meanOfNumbers(gaps).toExponential(2)} / ${Math.max(...gaps).toExponential(2)} / ${gaps.at(-1)!.toExponential(2)}` : '-',
  ]);
}
printTable(['scheme', 'held-out loss', 'vs its sync run', 'vs sync A and B', 'product gap mean / max / last round'], rows);
await kernels.close();
