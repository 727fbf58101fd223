// Swarm throughput on this machine: 1, 2 and 3 local node processes (one kernel thread each)
// train the same small MoE job (hidden 128, 2 layers, 8 experts top-2 of width 256, batch 8 ×
// seq 64 on a Moby-Dick slice, every expert on 2 nodes, periodic averaging every 4 steps) with
// the same number of steps per node. From the nodes' step events, after the warm-up steps:
// aggregate and per-node tokens/s (tokens over the steps' own seconds), bytes sent and received
// per node per step, the share of step time spent waiting on remote experts, remote expert calls
// per step; the job's tokens/s over wall time from start to done (warm-up included); the loss
// at the end. The 3-node run is repeated with expert rows in f32 instead of bf16 (the job's
// expertPrecision), to show what the expert calls' precision does to the bytes and the loss. Last, a
// LoRA-q4 job on a base checkpoint fetched over the swarm (bench/swarm-lora.ts).
// Run: npm run bench:swarm [-- --quick]
import { cpus, loadavg } from 'node:os';
import { startSwarm, type Proc, type SwarmEvent } from '../src/harness/local-swarm.ts';
import type { ExpertPrecision } from '../node/experts.ts';
import type { JobSpec } from '../proto/index.ts';
import { printTable } from './table.ts';
import { benchLoraSwarm } from './swarm-lora.ts';

const quick = process.argv.includes('--quick');
const RUNS: { nodes: number; precision: ExpertPrecision }[] = [
  { nodes: 1, precision: 'bf16' }, { nodes: 2, precision: 'bf16' }, { nodes: 3, precision: 'bf16' }, { nodes: 3, precision: 'f32' },
];
const STEPS_PER_NODE = quick ? 12 : 40;
/** Steps left out of the steady-state numbers: JIT warm-up and the first averaging round. */
const WARMUP_STEPS = 4;
const AVERAGE_EVERY = 4;
const VOCAB = 1024;

function benchJob(nodes: number, expertPrecision: ExpertPrecision): JobSpec {
  return {
    jobId: `bench-swarm-${nodes}-${expertPrecision}`,
    model: {
      hiddenSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32, numExperts: 8, expertsPerToken: 2,
      expertHiddenSize: 256, maxSeqLen: 64,
    },
    mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 1, corpus: 'moby-dick', documents: { from: 0, to: 40 },
    batchSize: 8, seqLen: 64, heldOutFraction: 0.05, totalBatches: STEPS_PER_NODE * nodes, expectedNodes: nodes,
    lr: 5e-3, minLr: 5e-4, warmupSteps: 5, averaging: { mode: 'periodic', every: AVERAGE_EVERY, deadlineMs: 5000 }, expertTimeoutMs: 10_000, expertPrecision,
  };
}

const COORDINATOR = ['--vocab', String(VOCAB), '--replication', '2', '--heartbeat-ms', '500', '--node-timeout-ms', '15000', '--lease-ms', '60000'];

interface Run {
  nodes: number;
  precision: ExpertPrecision;
  /** Each node's step events, in order. */
  steps: SwarmEvent[][];
  expertsPerNode: number;
  wallSeconds: number;
}

async function runSwarm(nodes: number, precision: ExpertPrecision): Promise<Run> {
  const swarm = await startSwarm(benchJob(nodes, precision), COORDINATOR);
  try {
    const procs = Array.from({ length: nodes }, () => swarm.startNode(['--threads', '1']));
    const started = await swarm.coordinator.waitFor((e) => e.event === 'started', 120_000, 'started');
    const done = await swarm.coordinator.waitFor((e) => e.event === 'done', 600_000, 'done');
    await Promise.all(procs.map((p) => p.waitFor((e) => e.event === 'finished', 60_000, 'finished')));
    // The plan in force when the job finished (nodes leave, and re-plans follow, after that).
    const plan = swarm.coordinator.events.slice(0, swarm.coordinator.events.indexOf(done)).findLast((e) => e.event === 'plan')!;
    const held = (plan.holders as { holders: string[] }[]).reduce((sum, expert) => sum + expert.holders.length, 0);
    return { nodes, precision, steps: procs.map(stepsOf), expertsPerNode: held / nodes, wallSeconds: (done.at - started.at) / 1e3 };
  } finally {
    await swarm.shutdown();
  }
}

const stepsOf = (p: Proc) => p.events.filter((e) => e.event === 'step');
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: number[]) => sum(xs) / xs.length;

/** One node's steady state: its steps after the warm-up, and its counters' growth over them. */
function steady(steps: SwarmEvent[]) {
  const base = steps[WARMUP_STEPS - 1];
  const kept = steps.slice(WARMUP_STEPS);
  const last = kept.at(-1)!;
  const grew = (counter: string) => last[counter] - base[counter];
  const seconds = sum(kept.map((e) => e.seconds));
  const averaging = { received: last.averaging.received - base.averaging.received, missing: last.averaging.missing - base.averaging.missing };
  return {
    steps: kept.length, seconds, tokensPerSecond: sum(kept.map((e) => e.tokens)) / seconds,
    sentPerStep: grew('bytesSent') / kept.length, receivedPerStep: grew('bytesReceived') / kept.length,
    remoteWaitShare: sum(kept.map((e) => e.stepRemoteWaitMs)) / 1e3 / seconds, remoteCallsPerStep: grew('remoteCalls') / kept.length,
    missedDeltas: averaging.received + averaging.missing === 0 ? 0 : averaging.missing / (averaging.received + averaging.missing),
  };
}

function row(run: Run): string[] {
  const perNode = run.steps.map(steady);
  const aggregate = sum(perNode.map((n) => n.tokensPerSecond));
  const allTokens = sum(run.steps.flat().map((e) => e.tokens));
  // The loss at the end: the mean over every node's last averaging period.
  const finalLoss = mean(run.steps.flatMap((s) => s.slice(-AVERAGE_EVERY).map((e) => e.loss)));
  const kb = (bytes: number) => (bytes / 1024).toFixed(0);
  return [
    String(run.nodes), run.precision, aggregate.toFixed(0), (aggregate / run.nodes).toFixed(0), (allTokens / run.wallSeconds).toFixed(0),
    kb(mean(perNode.map((n) => n.sentPerStep))), kb(mean(perNode.map((n) => n.receivedPerStep))),
    `${(100 * mean(perNode.map((n) => n.remoteWaitShare))).toFixed(1)}%`, mean(perNode.map((n) => n.remoteCallsPerStep)).toFixed(1),
    run.expertsPerNode.toFixed(1), `${(100 * mean(perNode.map((n) => n.missedDeltas))).toFixed(0)}%`, finalLoss.toFixed(3),
  ];
}

const cores = cpus().length;
console.log(`swarm bench${quick ? ' (--quick)' : ''}: ${STEPS_PER_NODE} steps per node of 8 × 64 tokens, first ${WARMUP_STEPS} left out; vocab ${VOCAB}; `
  + `replication 2; periodic averaging every ${AVERAGE_EVERY} steps (f32 deltas); each node --threads 1`);
console.log(`this machine has ${cores} cores: ${[...new Set(RUNS.map((r) => r.nodes))].filter((n) => n > cores).map((n) => `${n} node processes`).join(', ') || 'no run'} `
  + `share them (plus the coordinator), so per-node speed there is bounded by the cores, not by the swarm; load average before: ${loadavg()[0].toFixed(2)}`);
const rows: string[][] = [];
for (const { nodes, precision } of RUNS) {
  const t0 = performance.now();
  const run = await runSwarm(nodes, precision);
  rows.push(row(run));
  console.log(`  ${nodes} node${nodes > 1 ? 's' : ''}, ${precision} expert rows: ${((performance.now() - t0) / 1e3).toFixed(0)} s (job ${run.wallSeconds.toFixed(0)} s from start to done)`);
}
printTable([
  'nodes', 'expert rows', 'tokens/s', 'tokens/s per node', 'job tokens/s (wall)', 'sent KB/step/node', 'recv KB/step/node', 'remote-expert wait',
  'remote calls/step', 'experts/node', 'deltas missed', 'final loss',
], rows);
console.log(`tokens/s: steady-state steps' tokens over their own seconds (averaging included), summed over nodes; job tokens/s: all tokens over the `
  + `coordinator's started→done time; remote-expert wait: wall time with a remote expert call in flight / step time; experts/node: of `
  + `${2 * 8} (2 layers × 8); deltas missed: averaging contributions not there by the deadline; final loss: mean over each node's last ${AVERAGE_EVERY} steps`);

// Then a LoRA job on a q4 base fetched over the swarm (bench/swarm-lora.ts).
await benchLoraSwarm(quick);
