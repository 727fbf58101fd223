// Bytes per token of expert calls against held-out loss, for each precision of expert rows (a job's
// expertPrecision / expertGradientPrecision), on the demo job's model (coordinator/demo.ts). Three parts:
// 1. rows: the round-trip error of bf16 and of int8 with a scale per row or per 32 values, measured on
//    the rows (expert inputs x, outputs y, output gradients dy, input gradients dx) of a short training;
// 2. one process: the job trained with every expert behind a loopback that sends each call's rows
//    through the wire encoding (wireRows → rowsOf) to a second model holding the experts; deterministic,
//    so the held-out difference is the precision's alone; payload bytes counted per 1k tokens;
// 3. swarm: 2 local node processes, replication 1 (each expert on one node, so half the calls are
//    remote): all bytes each node sent per 1k tokens it trained on, and the held-out loss of its model.
// Run: npm run bench:bytes [-- --quick]
import { cpus, loadavg } from 'node:os';
import { HELD_OUT_BATCHES } from '../node/daemon.ts';
import { rowsOf, wireRows } from '../node/experts.ts';
import type { ExpertPrecision, JobSpec } from '../proto/index.ts';
import { demoJob } from '../src/harness/demo-job.ts';
import { blockCount, decodeBlocks, jsBlockCoder, quantizeBlocks } from '../src/compress/int8-block.ts';
import { startSwarm } from '../src/harness/local-swarm.ts';
import { createKernels, type Kernels, type Rows } from '../src/kernels/index.ts';
import type { HostedExperts, RemoteExperts } from '../src/model/hosted.ts';
import { GrowableBuffer } from '../src/model/linear.ts';
import { Model } from '../src/model/model.ts';
import { jobConfig, jobData, jobDocuments, jobModelOptions } from '../src/train/job.ts';
import { AdamW, DEFAULT_ADAMW } from '../src/train/optimizer.ts';
import { learningRate } from '../src/train/schedule.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { Trainer } from '../src/train/trainer.ts';
import { printTable } from './table.ts';

const quick = process.argv.includes('--quick');
const NODES = 2;
const STEPS_PER_NODE = quick ? 24 : 80;
/** One process trains as many micro-batches as the swarm does in all. */
const LOCAL_STEPS = STEPS_PER_NODE * NODES;
const VOCAB = 1024;

interface Setting {
  label: string;
  precision: ExpertPrecision;
  gradientPrecision: ExpertPrecision;
}
const SETTINGS: Setting[] = [
  { label: 'bf16 (the default before int8)', precision: 'bf16', gradientPrecision: 'bf16' },
  { label: 'f32', precision: 'f32', gradientPrecision: 'f32' },
  { label: 'int8 rows, bf16 gradients', precision: 'int8', gradientPrecision: 'bf16' },
  { label: 'int8 rows and gradients (the default)', precision: 'int8', gradientPrecision: 'int8' },
];
const BASELINE = SETTINGS[0];

/** The demo job (src/harness/demo-job.ts) with every expert call's precision set. */
function benchJob(setting: Setting, totalBatches: number): JobSpec {
  return {
    ...demoJob(totalBatches, NODES), jobId: 'bench-bytes',
    expertTimeoutMs: 30_000, expertPrecision: setting.precision, expertGradientPrecision: setting.gradientPrecision,
  };
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: number[]) => sum(xs) / xs.length;

// --- rows: round-trip error of each encoding on real rows ---------------------------------------

const ROW_KINDS = ['x', 'y', 'dy', 'dx'] as const;
type RowKind = (typeof ROW_KINDS)[number];
const ENCODINGS = ['bf16', 'int8 per row', 'int8 per 32'] as const;

/** Squared error and squared norm, summed in float64, per row kind and encoding. */
class RowErrors {
  private readonly sums = new Map<string, { error: number; norm: number }>();

  constructor(private readonly codec: Rows) {}

  add(kind: RowKind, values: Float32Array, rows: number, hidden: number): void {
    const back = {
      bf16: rowsOf(this.codec, wireRows(this.codec, rows, hidden, values, 'bf16'), rows, hidden) as Float32Array,
      'int8 per row': rowsOf(this.codec, wireRows(this.codec, rows, hidden, values, 'int8'), rows, hidden) as Float32Array,
      'int8 per 32': int8RoundTrip(values.subarray(0, rows * hidden), 32),
    };
    for (const encoding of ENCODINGS) {
      const entry = this.sums.get(`${kind} ${encoding}`) ?? { error: 0, norm: 0 };
      for (let i = 0; i < rows * hidden; i++) {
        entry.error += (back[encoding][i] - values[i]) ** 2;
        entry.norm += values[i] ** 2;
      }
      this.sums.set(`${kind} ${encoding}`, entry);
    }
  }

  /** ‖decoded − sent‖ / ‖sent‖ over every row of the kind. */
  relative(kind: RowKind, encoding: (typeof ENCODINGS)[number]): number {
    const { error, norm } = this.sums.get(`${kind} ${encoding}`)!;
    return Math.sqrt(error / norm);
  }
}

/** A scale per `block` values, with the quantizer int8 rows use. */
function int8RoundTrip(values: Float32Array, block: number): Float32Array {
  const codes = new Int8Array(values.length);
  const scales = new Float32Array(blockCount(values.length, block));
  quantizeBlocks(values, block, codes, scales);
  const back = new Float32Array(values.length);
  decodeBlocks('bench', jsBlockCoder, codes, scales, block, back);
  return back;
}

// --- one process: the job with every expert call through the wire encoding ----------------------

interface LocalRun {
  heldOutLoss: number;
  /** Bytes of row data (codes, halves or floats, and scales) that calls and replies carried, per 1k tokens. */
  payloadPer1kTokens: number;
}

/**
 * The experts of `holder`, reached as a remote holder would be: each call's rows encoded for the
 * wire and decoded again on both ways, their bytes counted (a backward's input is the forward's, which
 * the holder kept: not counted again); `errors` (when given) sees the exact rows.
 */
function loopback(
  kernels: Kernels, holder: Pick<HostedExperts, 'servingExpert'>, hidden: number, setting: Setting, count: (bytes: number) => void, errors?: RowErrors,
): RemoteExperts {
  // The holder computes on kernel-heap rows with its serving replicas, as serveExperts does.
  const serving = (layer: number, expert: number) => holder.servingExpert(layer, expert)!;
  const [input, grad, out] = Array.from({ length: 3 }, () => new GrowableBuffer(kernels, hidden));
  // kept: rows the holder kept from the forward, decoded as they were then but not sent again.
  const travel = (values: Float32Array, rows: number, precision: ExpertPrecision, kind: RowKind, into?: GrowableBuffer, kept = false) => {
    if (!kept) errors?.add(kind, values, rows, hidden);
    const wire = wireRows(kernels.rows, rows, hidden, values, precision);
    if (!kept) count(wire.tensor.data.byteLength + (wire.scales?.data.byteLength ?? 0));
    const back = rowsOf(kernels.rows, wire, rows, hidden);
    if (typeof back === 'string') throw new Error(back);
    const target = into ? into.rows(rows) : values;
    target.set(back);
    return target;
  };
  return {
    async forward(layer, expert, x, y, rows) {
      serving(layer, expert).forward(travel(x, rows, setting.precision, 'x', input), y, rows);
      travel(y, rows, setting.precision, 'y');
      return true;
    },
    async backward(layer, expert, x, dy, dx, rows) {
      const held = travel(x, rows, setting.precision, 'x', input, true);
      const gradient = travel(dy, rows, setting.gradientPrecision, 'dy', grad);
      const replica = serving(layer, expert);
      replica.forward(held, out.rows(rows), rows); // as a holder does: the backward reads the forward's activations
      replica.backward(held, gradient, dx, rows);
      travel(dx, rows, setting.gradientPrecision, 'dx');
      return true;
    },
  };
}

async function runLocal(kernels: Kernels, setting: Setting, errors?: RowErrors): Promise<LocalRun> {
  const spec = benchJob(setting, LOCAL_STEPS);
  const tokenizer = BpeTokenizer.train(jobDocuments(spec).documents, { vocabSize: VOCAB });
  const config = jobConfig(spec, tokenizer);
  // The holder: the same seeded model, whose experts (only) it trains with their own AdamW, as a holder does.
  const holder = new Model(kernels, config, jobModelOptions(spec));
  const expertParams = holder.params.trainable().filter((p) => p.name.includes('.experts.'));
  const expertOptimizer = new AdamW(kernels, expertParams, DEFAULT_ADAMW);
  let payload = 0;
  const model = new Model(kernels, config, {
    ...jobModelOptions(spec), hosts: () => false,
    remote: loopback(kernels, holder.experts, config.hiddenSize, setting, (bytes) => (payload += bytes), errors),
  });
  const { lr, minLr, warmupSteps } = spec;
  const schedule = { lr, minLr, warmupSteps, totalSteps: LOCAL_STEPS };
  const data = jobData(spec, tokenizer);
  const trainer = new Trainer(kernels, model, data.train, data.heldOut, tokenizer, { ...schedule, accumulation: 1, adamw: DEFAULT_ADAMW }, {
    afterBackward: async (step) => {
      expertOptimizer.update(learningRate(step, schedule));
      holder.params.zeroGrads();
    },
  });
  let tokens = 0;
  for (let step = 0; step < LOCAL_STEPS; step++) tokens += (await trainer.trainStep()).tokens;
  const trainedPayload = payload;
  const heldOut = await trainer.evaluate(HELD_OUT_BATCHES);
  return { heldOutLoss: heldOut.loss, payloadPer1kTokens: (1000 * trainedPayload) / tokens };
}

// --- swarm: 2 processes, every expert on one of them --------------------------------------------

interface SwarmRun {
  sentPer1kTokens: number;
  heldOutLoss: number;
  remoteCallsPerStep: number;
  nodeLosses: number[];
}

const COORDINATOR = ['--vocab', String(VOCAB), '--replication', '1', '--heartbeat-ms', '500', '--node-timeout-ms', '30000', '--lease-ms', '120000'];

async function runSwarm(setting: Setting): Promise<SwarmRun> {
  const swarm = await startSwarm(benchJob(setting, STEPS_PER_NODE * NODES), COORDINATOR);
  try {
    const nodes = Array.from({ length: NODES }, () => swarm.startNode(['--threads', '1']));
    await swarm.coordinator.waitFor((e) => e.event === 'done', 1_800_000, 'done');
    const finished = await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 180_000, 'finished')));
    const steps = nodes.map((n) => n.events.filter((e) => e.event === 'step'));
    return {
      sentPer1kTokens: mean(finished.map((e, i) => (1000 * e.bytesSent) / sum(steps[i].map((s) => s.tokens)))),
      heldOutLoss: mean(finished.map((e) => e.heldOut.loss)),
      remoteCallsPerStep: mean(steps.map((s) => s.at(-1)!.remoteCalls / s.length)),
      nodeLosses: finished.map((e) => e.heldOut.loss),
    };
  } finally {
    await swarm.stop();
  }
}

// --- the tables -------------------------------------------------------------------------------

const kb = (bytes: number) => `${(bytes / 1e3).toFixed(0)} kB`;
const percent = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;

console.log(`bytes bench${quick ? ' (--quick)' : ''}: the demo job's model (hidden 128, 4 layers, 8 experts top-2, batch 8 × 128, Moby-Dick, vocab ${VOCAB}); `
  + `${LOCAL_STEPS} micro-batches per run; held-out loss over ${HELD_OUT_BATCHES} micro-batches; ${cpus().length} cores shared with other work `
  + `(load average ${loadavg()[0].toFixed(1)}): bytes and losses are what count here, not time`);
const kernels = await createKernels({ threads: 1 });
const errors = new RowErrors(kernels.rows);
const local = new Map<Setting, LocalRun>();
for (const setting of SETTINGS) {
  const t0 = performance.now();
  // The f32 run sends its rows unchanged: those are the rows the encodings' error is measured on.
  local.set(setting, await runLocal(kernels, setting, setting.precision === 'f32' ? errors : undefined));
  console.log(`  one process, ${setting.label}: ${((performance.now() - t0) / 1e3).toFixed(0)} s`);
}

const HIDDEN = Number(demoJob(1, NODES).model.hiddenSize);
console.log(`\n1. round-trip error of expert rows, ‖decoded − sent‖ / ‖sent‖ over all rows of the f32 run; bytes per value at hidden ${HIDDEN}`);
const perValue = (block: number) => `${(1 + 4 / block).toFixed(3)} B`;
printTable(['rows', 'bf16 (2 B)', `int8 per row (${perValue(HIDDEN)})`, `int8 per 32 (${perValue(32)})`],
  ROW_KINDS.map((kind) => [kind, ...ENCODINGS.map((encoding) => `${(100 * errors.relative(kind, encoding)).toFixed(3)}%`)]));

const baseLocal = local.get(BASELINE)!;
console.log(`\n2. one process, every expert call through the wire encoding (deterministic: differences are the precision's)`);
printTable(['expert rows', 'payload/1k tokens', 'vs bf16', 'held-out loss', 'Δ vs bf16'], SETTINGS.map((setting) => {
  const run = local.get(setting)!;
  return [setting.label, kb(run.payloadPer1kTokens), (run.payloadPer1kTokens / baseLocal.payloadPer1kTokens).toFixed(3),
    run.heldOutLoss.toFixed(4), percent(run.heldOutLoss / baseLocal.heldOutLoss - 1)];
}));

const swarmRuns = new Map<Setting, SwarmRun>();
for (const setting of SETTINGS) {
  const t0 = performance.now();
  const run = await runSwarm(setting);
  swarmRuns.set(setting, run);
  console.log(`  swarm, ${setting.label}: ${((performance.now() - t0) / 1e3).toFixed(0)} s; held-out loss per node ${run.nodeLosses.map((l) => l.toFixed(3)).join(', ')}`);
}
const baseSwarm = swarmRuns.get(BASELINE)!;
console.log(`\n3. swarm of ${NODES} node processes, replication 1, ${STEPS_PER_NODE} micro-batches per node`);
printTable(['expert rows', 'sent/node/1k tokens', 'vs bf16', 'remote calls/step', 'held-out loss', 'Δ vs bf16'], SETTINGS.map((setting) => {
  const run = swarmRuns.get(setting)!;
  return [setting.label, kb(run.sentPer1kTokens), (run.sentPer1kTokens / baseSwarm.sentPer1kTokens).toFixed(3), run.remoteCallsPerStep.toFixed(1),
    run.heldOutLoss.toFixed(4), percent(run.heldOutLoss / baseSwarm.heldOutLoss - 1)];
}));
console.log(`sent: all bytes a node put on the wire (expert calls and replies, averaging of the trunk, coordinator requests) over the tokens it `
  + `trained, mean over nodes; held-out loss: nats per token, mean over the nodes' own models. Swarm runs differ with timing (which node trains `
  + `which batch): their loss differences include that noise, the one-process table's do not. Goal: half of bf16's bytes within 2% held-out loss`);
