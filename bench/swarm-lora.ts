// A LoRA job on a pretrained base over the swarm: a random-weight Hugging Face checkpoint of the reference config
// (bench/reference.ts; written to a temporary folder with a BPE tokenizer trained on Moby-Dick), LoRA rank 8 on its
// q4 quantization (integer path, bf16 activations), 3 node processes (one kernel thread each, replication 2, periodic
// averaging every 4 steps) that fetch the base from the coordinator and each other. Per node: time from process start
// to its first step (weight transfer and the wait for the other nodes included), the base bytes it fetched against the
// whole checkpoint, steady-state tokens/s, peak RSS (VmHWM, polled from /proc), training bytes sent + received per 1k tokens.
// Run: npx tsx bench/swarm-lora.ts [--quick] (also the last part of npm run bench:swarm); bench/swarm-real-width.ts runs the
// same measurement on a checkpoint of Mixtral-8x7B's width.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { JobSpec } from '../proto/index.ts';
import { saveHfModel } from '../src/io/hf.ts';
import { initTensors } from '../src/model/init.ts';
import { loadCorpus } from '../src/train/corpus.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { startSwarm, type Proc, type SwarmEvent } from '../src/harness/local-swarm.ts';
import { BATCH, LORA, REFERENCE_CONFIG, SEQ } from './reference.ts';
import { printTable } from './table.ts';

const NODES = 3;
const WARMUP_STEPS = 2;
const MiB = 2 ** 20;

/** The checkpoint folder: random weights of the reference config (bf16, as checkpoints are shipped) and a tokenizer of its vocabulary. */
async function writeBase(dir: string): Promise<number> {
  const tokenizer = BpeTokenizer.train(loadCorpus('moby-dick').documents, { vocabSize: REFERENCE_CONFIG.vocabSize });
  if (tokenizer.vocabSize > REFERENCE_CONFIG.vocabSize) throw new Error(`tokenizer of ${tokenizer.vocabSize} tokens`);
  const params = new Map(initTensors(REFERENCE_CONFIG, 1));
  await saveHfModel(dir, { config: REFERENCE_CONFIG, layout: { family: 'mixtral', packedExperts: false }, params }, 'BF16');
  tokenizer.save(join(dir, 'tokenizer.json'));
  return (await stat(join(dir, 'model.safetensors'))).size;
}

function loraJob(steps: number): JobSpec {
  return {
    jobId: 'bench-swarm-lora-q4', model: {}, mode: 'lora', lora: LORA, baseFormat: 'q4', basePath: 'int', activations: 'bf16',
    seed: 1, corpus: 'moby-dick', documents: { from: 0, to: 60 }, batchSize: BATCH, seqLen: SEQ, heldOutFraction: 0.05,
    totalBatches: steps * NODES, expectedNodes: NODES, lr: 5e-3, minLr: 5e-4, warmupSteps: 2,
    averaging: { mode: 'periodic', every: 4, deadlineMs: 20_000 }, expertTimeoutMs: 60_000,
  };
}

/** The process's peak resident set so far, in bytes (Linux: VmHWM of /proc/<pid>/status), or NaN elsewhere. */
export function peakRss(pid: number | undefined): number {
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb === undefined ? NaN : Number(kb) * 1024;
  } catch {
    return NaN;
  }
}

interface NodeRun { node: Proc; firstStepSeconds: number; peakRss: number }

/** A LoRA job on a base checkpoint, run by a local swarm of node processes started together. */
export interface LoraSwarmRun {
  base: string;
  /** Bytes of the checkpoint's tensors, what a node fetching all of it would download. */
  checkpointBytes: number;
  job: JobSpec;
  coordinatorArgs: string[];
  /** Arguments of node i besides --data. */
  nodeArgs: (i: number) => string[];
  /** Where the nodes' stores and the logs go. */
  scratch: string;
  /** Steps of each node left out of the steady state. */
  warmupSteps: number;
  /** How long a node may take to its first step, and then to finish. */
  timeoutMs: number;
}

/** Runs the job and prints its table: one row per node. */
export async function runLoraSwarm(run: LoraSwarmRun): Promise<void> {
  const { job, warmupSteps } = run;
  const swarm = await startSwarm(job, ['--base', run.base, ...run.coordinatorArgs], { dir: join(run.scratch, 'swarm') });
  let runs: NodeRun[];
  try {
    runs = await Promise.all(Array.from({ length: job.expectedNodes }, async (_, i) => {
      const t0 = performance.now();
      const node = swarm.startNode([...run.nodeArgs(i), '--data', join(run.scratch, `node${i}`)]);
      let peak = 0;
      const poll = setInterval(() => { peak = Math.max(peak, peakRss(node.child.pid) || 0); }, 200);
      try {
        await node.waitFor((e) => e.event === 'step', run.timeoutMs, 'a first step');
        const firstStepSeconds = (performance.now() - t0) / 1e3;
        await node.waitFor((e) => e.event === 'finished', run.timeoutMs, 'finished');
        return { node, firstStepSeconds, peakRss: peak };
      } finally {
        clearInterval(poll);
      }
    }));
  } finally {
    await swarm.shutdown();
  }
  const rows = runs.map(({ node, firstStepSeconds, peakRss: peak }, i) => {
    const stepEvents = node.events.filter((e) => e.event === 'step');
    const weights = node.events.find((e) => e.event === 'weights')!;
    const joined = node.events.find((e) => e.event === 'joined')!;
    const kept = stepEvents.slice(warmupSteps);
    const before: SwarmEvent = stepEvents[warmupSteps - 1];
    const last = kept.at(-1)!;
    const tokens = kept.reduce((n, e) => n + e.tokens, 0);
    const seconds = kept.reduce((n, e) => n + e.seconds, 0);
    const trainingBytes = last.bytesSent - before.bytesSent + last.bytesReceived - before.bytesReceived;
    const heldOut = (event: string) => (node.events.find((e) => e.event === event)!.heldOut.loss as number).toFixed(3);
    return [
      `node ${i}`, String(joined.experts.length), firstStepSeconds.toFixed(1), (weights.seconds as number).toFixed(1),
      `${(weights.fetchedBytes / MiB).toFixed(1)} of ${(run.checkpointBytes / MiB).toFixed(1)}`,
      (weights.fetchedBytes / MiB / weights.seconds).toFixed(1), String(stepEvents.length),
      (tokens / seconds).toFixed(tokens / seconds < 10 ? 2 : 0), (peak / MiB).toFixed(0),
      (trainingBytes / (tokens / 1000) / 1024).toFixed(1), `${heldOut('evaluated')} → ${heldOut('finished')}`,
    ];
  });
  printTable([
    'node', 'experts at join', 'first step (s)', 'weight fetch (s)', 'base MiB fetched', 'fetch MiB/s', 'steps', 'tokens/s', 'peak RSS MiB',
    'KiB per 1k tokens', 'held-out before → after',
  ], rows);
  console.log(`first step: from spawning the node to its first step event (join, weight fetch, quantization, the held-out loss of `
    + `the base, waiting for all ${job.expectedNodes} nodes); KiB per 1k tokens: training traffic (expert calls, averaging) sent + `
    + 'received over the steady-state steps');
}

export async function benchLoraSwarm(quick: boolean): Promise<void> {
  const steps = quick ? 8 : 20;
  const scratch = await mkdtemp(join(tmpdir(), 'swarmtrain-bench-lora-'));
  try {
    const base = join(scratch, 'base');
    const checkpointBytes = await writeBase(base);
    console.log(`\nLoRA rank ${LORA.rank} on a q4 base (int path, bf16 activations) of the reference config, from a random-weight bf16 checkpoint; `
      + `${NODES} nodes, replication 2, ${steps} steps of ${BATCH} × ${SEQ} per node, first ${WARMUP_STEPS} left out of the steady state`);
    await runLoraSwarm({
      base, checkpointBytes, job: loraJob(steps), scratch, warmupSteps: WARMUP_STEPS, timeoutMs: 1_200_000,
      coordinatorArgs: ['--replication', '2', '--heartbeat-ms', '500', '--node-timeout-ms', '30000', '--lease-ms', '120000'],
      nodeArgs: () => ['--threads', '1'],
    });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await benchLoraSwarm(process.argv.includes('--quick'));
