// The LoRA-q4 swarm job of bench/swarm-lora.ts at real width: a random-weight checkpoint with Mixtral-8x7B's layer shapes
// and 2 layers (bench/real-width-base.ts, ~6 GB bf16), 4 node processes (one kernel thread each) whose memory budgets
// let none hold every expert (by the planner's own footprint: the trunk and half of the experts), LoRA rank 8 on the q4
// base (int path, bf16 activations), batch 1 × 64 tokens, a few steps each. Per node the table of swarm-lora.ts: experts
// held, time to the first step (weight transfer included), bytes fetched against the whole checkpoint, tokens/s, peak RSS.
// Run: npm run bench:real-width -- [--base <dir>] [--scaled] [--steps N] [--replication R]
//   --base: a checkpoint written before by bench/real-width-base.ts (else one is written to a temporary folder and removed);
//   --scaled: the quarter-width shape (bench/real-width-base.ts), for trying the bench out in minutes.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JobSpec } from '../proto/index.ts';
import { readHfConfig } from '../src/io/hf.ts';
import type { ModelConfig } from '../src/model/config.ts';
import { footprint, nodeBytes } from '../src/model/footprint.ts';
import { jobFootprintSettings } from '../src/train/job.ts';
import { REAL_WIDTH_CONFIG, SCALED_DOWN_CONFIG, writeRealWidthBase } from './real-width-base.ts';
import { LORA } from './reference.ts';
import { runLoraSwarm } from './swarm-lora.ts';

const NODES = 4;
const BATCH = 1;
const SEQ = 64;
const MiB = 2 ** 20;

const option = (name: string): string | undefined => {
  const at = process.argv.indexOf(name);
  return at < 0 ? undefined : process.argv[at + 1];
};
const steps = Number(option('--steps') ?? 4);
// Replication 1 by default: a node holding 8 experts of this width needs ~3.4 GB of wasm heap (q4 matrices and the q8
// transposes of the integer path's backward), near the 4 GiB of wasm32; 12 (replication 2 with 3/4 budgets) would not fit.
const replication = Number(option('--replication') ?? 1);

function realWidthJob(): JobSpec {
  return {
    jobId: 'bench-swarm-real-width', model: {}, mode: 'lora', lora: LORA, baseFormat: 'q4', basePath: 'int', activations: 'bf16',
    // A held-out share of ~2 micro-batches: each evaluation is a forward pass at real width.
    seed: 1, corpus: 'moby-dick', documents: { from: 0, to: 8 }, batchSize: BATCH, seqLen: SEQ, heldOutFraction: 0.004,
    totalBatches: steps * NODES, expectedNodes: NODES, lr: 2e-3, minLr: 2e-4, warmupSteps: 1,
    // A step takes minutes on a shared 2-core machine: deadlines to match.
    averaging: { mode: 'periodic', every: 2, deadlineMs: 600_000 }, expertTimeoutMs: 900_000,
  };
}

/** A budget holding the trunk, half of the experts and a micro-batch's activations, by the planner's footprint of this job. */
function memoryBudget(config: ModelConfig, job: JobSpec): { bytes: number; trunkBytes: number; expertBytes: number } {
  const fp = footprint(config, jobFootprintSettings(job));
  const experts = Math.floor((config.numLayers * config.numExperts) / 2);
  return { bytes: nodeBytes(fp, experts, false), trunkBytes: fp.trunkBytes, expertBytes: fp.expertBytes };
}

const scratch = await mkdtemp(join(tmpdir(), 'swarmtrain-bench-real-width-'));
try {
  let base = option('--base');
  if (base === undefined) {
    base = join(scratch, 'base');
    const t0 = performance.now();
    await writeRealWidthBase(base, process.argv.includes('--scaled') ? SCALED_DOWN_CONFIG : REAL_WIDTH_CONFIG);
    console.log(`checkpoint written in ${((performance.now() - t0) / 1e3).toFixed(0)} s`);
  }
  const { config } = await readHfConfig(base);
  const index = JSON.parse(await readFile(join(base, 'model.safetensors.index.json'), 'utf8'));
  const checkpointBytes: number = index.metadata.total_size;
  const job = realWidthJob();
  const budget = memoryBudget(config, job);
  const { hiddenSize, numHeads, numKvHeads } = config;
  console.log(`\nLoRA rank ${LORA.rank} on a q4 base (int path, bf16 activations): hidden ${hiddenSize}, ${numHeads}/${numKvHeads} `
    + `heads, ${config.numExperts} experts top-${config.expertsPerToken} of width ${config.expertHiddenSize}, vocab ${config.vocabSize}, `
    + `${config.numLayers} layers; checkpoint ${(checkpointBytes / MiB).toFixed(0)} MiB bf16; ${NODES} nodes, replication ${replication}, `
    + `budget ${(budget.bytes / MiB).toFixed(0)} MiB each (footprint: trunk ${(budget.trunkBytes / MiB).toFixed(0)} MiB, expert `
    + `${(budget.expertBytes / MiB).toFixed(1)} MiB); ${steps} steps of ${BATCH} × ${SEQ} per node, the first left out of the steady `
    + 'state');
  await runLoraSwarm({
    base, checkpointBytes, job, scratch, warmupSteps: 1, timeoutMs: 3_600_000,
    // Nodes block their event loop for long kernel calls at this width: patient heartbeats and leases.
    coordinatorArgs: [
      '--replication', String(replication), '--heartbeat-ms', '2000', '--node-timeout-ms', '900000', '--lease-ms', '3600000',
    ],
    nodeArgs: () => ['--threads', '1', '--memory-budget', String(budget.bytes)],
  });
} finally {
  await rm(scratch, { recursive: true, force: true });
}
