// Does the swarm pay off on real cores? The demo job (`npm start`'s model) on 1 node holding every
// expert, then on 2 nodes with every expert on both (replication 2: data parallel) and with the experts
// split between them (replication 1: every token's experts are half remote), that also with the job's
// splitBatch. Each node runs one kernel thread pinned to its own core (taskset), so 2 nodes have 2 cores
// and 1 node has 1. From the nodes'
// step events after the warm-up: aggregate tokens/s and its ratio to the 1-node run, the share of step
// time waiting on remote experts, idle and serving peers, bytes sent per token per node, remote calls per step.
// Run: npm run bench:scaling [-- --quick] [-- --steps N]
import { spawnSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { demoJob } from '../src/harness/demo-job.ts';
import { startSwarm, type Proc, type SwarmEvent } from '../src/harness/local-swarm.ts';
import { printTable } from './table.ts';

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, steps: { type: 'string' } } });
const STEPS_PER_NODE = Number(values.steps ?? (values.quick ? 24 : 64));
const WARMUP_STEPS = 6;
const VOCAB = 1024;

interface Setting {
  name: string;
  nodes: number;
  replication: number;
  /** The job's splitBatch: one half's attention computes while the other's experts are remote. */
  splitBatch?: boolean;
}

const SETTINGS: Setting[] = [
  { name: '1 node, every expert', nodes: 1, replication: 1 },
  { name: '2 nodes, replication 2 (data parallel)', nodes: 2, replication: 2 },
  { name: '2 nodes, replication 1 (experts split)', nodes: 2, replication: 1 },
  { name: '2 nodes, replication 1, split batch (halves overlap)', nodes: 2, replication: 1, splitBatch: true },
];

/** Pins a process and all its threads to one core. */
function pin(proc: Proc, core: number): void {
  const result = spawnSync('taskset', ['-a', '-pc', String(core), String(proc.child.pid)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`taskset failed: ${result.stderr || result.error}`);
}

async function run(setting: Setting): Promise<SwarmEvent[][]> {
  const job = {
    ...demoJob(STEPS_PER_NODE * setting.nodes, setting.nodes), jobId: `bench-scaling-${setting.nodes}-${setting.replication}`,
    ...(setting.splitBatch ? { splitBatch: true } : {}),
  };
  const swarm = await startSwarm(job, ['--vocab', String(VOCAB), '--replication', String(setting.replication), '--lease-ms', '120000']);
  try {
    const procs = Array.from({ length: setting.nodes }, (_, i) => {
      const proc = swarm.startNode(['--threads', '1']);
      pin(proc, i % cpus().length);
      return proc;
    });
    await swarm.coordinator.waitFor((e) => e.event === 'done', 900_000, 'done');
    await Promise.all(procs.map((p) => p.waitFor((e) => e.event === 'finished', 120_000, 'finished')));
    return procs.map((p) => p.events.filter((e) => e.event === 'step'));
  } finally {
    await swarm.shutdown();
  }
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/** A node's steady state: its steps after the warm-up, and its counters' growth over them. */
function steady(steps: SwarmEvent[]) {
  const base = steps[WARMUP_STEPS - 1];
  const kept = steps.slice(WARMUP_STEPS);
  const last = kept.at(-1)!;
  const seconds = sum(kept.map((e) => e.seconds));
  const tokens = sum(kept.map((e) => e.tokens));
  return {
    tokensPerSecond: tokens / seconds,
    sentPerToken: (last.bytesSent - base.bytesSent) / tokens,
    remoteWaitShare: (last.remoteWaitMs - base.remoteWaitMs) / 1e3 / seconds,
    idleShare: sum(kept.map((e) => e.idleMs)) / 1e3 / seconds,
    tokensPerCpuSecond: tokens / (sum(kept.map((e) => e.cpuMs)) / 1e3),
    servingShare: (last.servingMs - base.servingMs) / 1e3 / seconds,
    remoteCallsPerStep: (last.remoteCalls - base.remoteCalls) / kept.length,
  };
}

console.log(`scaling bench: the demo job (hidden 128, 4 layers, 8 experts top-2, batch 8 × 128), ${STEPS_PER_NODE} steps per node, `
  + `first ${WARMUP_STEPS} left out; each node --threads 1 pinned to its own core; ${cpus().length} cores, load average ${loadavg()[0].toFixed(2)}; `
  + `Node ${process.version}`);
const rows: string[][] = [];
let baseline: number | undefined;
let cpuBaseline: number | undefined;
for (const setting of SETTINGS) {
  const perNode = (await run(setting)).map(steady);
  const aggregate = sum(perNode.map((n) => n.tokensPerSecond));
  // What the nodes would reach on cores of their own with no waiting: their tokens per CPU-second, summed.
  const cpuBound = sum(perNode.map((n) => n.tokensPerCpuSecond));
  baseline ??= aggregate;
  cpuBaseline ??= cpuBound;
  const mean = (pick: (n: (typeof perNode)[number]) => number) => sum(perNode.map(pick)) / perNode.length;
  rows.push([
    setting.name, aggregate.toFixed(0), `${(aggregate / baseline).toFixed(2)}×`, `${(cpuBound / cpuBaseline).toFixed(2)}×`, `${(100 * mean((n) => n.remoteWaitShare)).toFixed(1)}%`,
    `${(100 * mean((n) => n.idleShare)).toFixed(1)}%`, `${(100 * mean((n) => n.servingShare)).toFixed(1)}%`,
    (mean((n) => n.sentPerToken) / 1024).toFixed(2), mean((n) => n.remoteCallsPerStep).toFixed(1),
  ]);
  console.log(`  ${setting.name}: ${aggregate.toFixed(0)} tokens/s`);
}
printTable(['setting', 'aggregate tokens/s', 'vs one node', 'per CPU-second vs one node', 'remote-expert wait', 'idle', 'serving peers', 'sent kB per token per node', 'remote calls per step'], rows);
console.log('aggregate tokens/s: steady-state steps\' tokens over their own seconds, summed over nodes; remote-expert wait: wall time with a '
  + 'remote expert call in flight / step time; per CPU-second: tokens per CPU-second of each node, summed (the ratio with a core per node '
  + 'and no waiting; steadier than wall time on a loaded machine); idle: the event loop waiting with nothing to run; serving peers: answering peers\' expert calls');
