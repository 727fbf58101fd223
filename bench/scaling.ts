// Does the swarm pay off on real cores? The demo job (`npm start`'s model) on 1 node holding every
// expert, then on 2 nodes with every expert on both (replication 2: data parallel) and with the experts
// split between them (replication 1: every token's experts are half remote), that also with the job's
// splitBatch; replication 2 also with each averaging round waited for (the demo job overlaps them); last,
// two separate 1-node swarms at once, each on its own core: what two cores give with no swarm (the ceiling:
// the cores share caches, memory bandwidth and the machine's other work).
// Each node runs one kernel thread pinned to its own core (taskset), so 2 nodes have 2 cores and 1 node
// has 1. From the nodes' step events after the warm-up: aggregate tokens/s and its ratio to the
// 1-node run (run first and again last: the ratios are against the mean of both), tokens per CPU-second
// against one node's (what cores of their own with no waiting would give), the share of step time waiting
// on remote experts, idle and serving peers, bytes sent per token per node, remote calls per step and the
// requests they travelled in (a layer's calls to one holder go together).
// Over real-world links (--links RATE[,RATE...], as root): the coordinator and each node in a network
// namespace of its own, all joined through a hub namespace by veth pairs whose both ends tbf shapes to
// RATE (src/harness/netns.ts's StarNetwork), so each host has a RATE uplink and a RATE downlink. This
// kernel has no netem, so the one-way delay (--delay-ms, default 25) comes from bench/delay-proxy.ts: in
// each host's namespace a TCP proxy listens on the host's link address and forwards to the process,
// which listens on a loopback address no other host can route to and announces the proxy's address;
// every chunk is forwarded 25 ms after it was read, in order, both ways. Any connection enters exactly
// one proxy (the accepting host's), so each direction of it takes the link's rate plus 25 ms, and
// libp2p's own flow control (yamux windows) sees the full round trip. The namespaces are deleted at the
// end, on failure and on Ctrl-C (and those of a killed run by the next one).
// One run of a setting varies by ±10% here (the machine's other tenants, where the router's favourites land): --rounds N
// runs the settings N times in turn, the 1-node baseline in every round, and prints each setting's median and range.
// --hidden N runs the demo model at hidden size N instead of 128 (experts 2N wide, 4 heads of N/4): an expert row's compute
// grows with N² and its bytes with N, so how much messaging costs against the compute it carries is measured by width.
// Run: npm run bench:scaling [-- --quick] [-- --steps N] [-- --only 1,3] [-- --rounds 3] [-- --hidden 256]
//   [-- --links 20mbit,100mbit [--delay-ms 25]]
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { JobSpec } from '../proto/index.ts';
import { demoJob } from '../src/harness/demo-job.ts';
import { startSwarm, type Proc, type SwarmEvent } from '../src/harness/local-swarm.ts';
import { StarNetwork } from '../src/harness/netns.ts';
import { median, printTable } from './table.ts';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false }, steps: { type: 'string' }, links: { type: 'string' }, only: { type: 'string' },
    'delay-ms': { type: 'string', default: '25' }, rounds: { type: 'string', default: '1' }, hidden: { type: 'string', default: '128' },
  },
});
const DELAY_MS = Number(values['delay-ms']);
if (!(DELAY_MS >= 0)) throw new RangeError(`--delay-ms takes a number ≥ 0, got ${values['delay-ms']}`);
const RATES = values.links?.split(',') ?? [];
for (const rate of RATES) {
  if (!/^\d+(\.\d+)?[kmg]bit$/.test(rate)) throw new RangeError(`--links takes rates like 20mbit or 100mbit, got ${rate}`);
}
const ROUNDS = Number(values.rounds);
if (!(Number.isInteger(ROUNDS) && ROUNDS >= 1)) throw new RangeError(`--rounds takes a whole number ≥ 1, got ${values.rounds}`);
const HIDDEN = Number(values.hidden);
if (!(Number.isInteger(HIDDEN) && HIDDEN >= 32 && HIDDEN % 32 === 0)) throw new RangeError(`--hidden takes a multiple of 32, got ${values.hidden}`);
const STEPS_PER_NODE = Number(values.steps ?? (values.quick ? 24 : 64));
const WARMUP_STEPS = 6;
const VOCAB = 1024;

interface Setting {
  name: string;
  nodes: number;
  replication: number;
  /** The job's splitBatch: one half's attention computes while the other's experts are remote. */
  splitBatch?: boolean;
  /** The demo job overlaps averaging rounds with training; false: each round is waited for, as before. */
  overlap?: false;
  /** As many separate 1-node swarms at once, each on its own core: what the machine gives with no swarm at all. */
  separate?: boolean;
}

const SETTINGS: Setting[] = [
  { name: '1 node, every expert', nodes: 1, replication: 1 },
  { name: '2 nodes, replication 2 (data parallel)', nodes: 2, replication: 2 },
  { name: '2 nodes, replication 2, rounds waited for', nodes: 2, replication: 2, overlap: false },
  { name: '2 nodes, replication 1 (experts split)', nodes: 2, replication: 1 },
  { name: '2 nodes, replication 1, split batch (halves overlap)', nodes: 2, replication: 1, splitBatch: true },
  { name: '2 separate 1-node swarms at once (no swarm: the ceiling)', nodes: 2, replication: 1, separate: true },
];
/** --only 1,3: those settings (by their row, 0-based) after the 1-node baseline. */
const ONLY = values.only?.split(',').map(Number);
if (ONLY?.some((i) => !(Number.isInteger(i) && i >= 1 && i < SETTINGS.length))) {
  throw new RangeError(`--only takes rows 1-${SETTINGS.length - 1} of the table, comma-separated, got ${values.only}`);
}
// Over links the separate swarms would share the namespaces' one coordinator address; their ceiling is loopback's.
const SELECTED = SETTINGS.filter((s, i) => i === 0 || ((ONLY ?? [i]).includes(i) && !(s.separate && RATES.length > 0)));

/** Pins a process and all its threads to one core. */
function pin(proc: Proc, core: number): void {
  const result = spawnSync('taskset', ['-a', '-pc', String(core), String(proc.child.pid)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`taskset failed: ${result.stderr || result.error}`);
}

/** A running coordinator for one setting's job, and how to add nodes to it and stop it all. */
interface Launch {
  coordinator: Proc;
  /** Node `index` (0-based), with these extra arguments. */
  startNode(index: number, args: string[]): Proc;
  shutdown(): Promise<void>;
}
type Launcher = (job: JobSpec, coordinatorArgs: string[]) => Promise<Launch>;

/** On 127.0.0.1, as the local harness starts swarms. */
const onLoopback: Launcher = async (job, coordinatorArgs) => {
  const swarm = await startSwarm(job, coordinatorArgs);
  return { coordinator: swarm.coordinator, startNode: (_, args) => swarm.startNode(args), shutdown: () => swarm.shutdown() };
};

/** What a run gives: each node's step events, and the plans that swapped experts for their routed rows. */
interface Ran {
  steps: SwarmEvent[][];
  balanced: SwarmEvent[];
}

async function run(setting: Setting, launch: Launcher): Promise<Ran> {
  if (setting.separate) {
    const alone = { name: setting.name, nodes: 1, replication: 1 };
    const runs = await Promise.all(Array.from({ length: setting.nodes }, (_, i) => runOne(alone, launch, i)));
    return { steps: runs.flatMap((r) => r.steps), balanced: runs.flatMap((r) => r.balanced) };
  }
  return runOne(setting, launch, 0);
}

/** The demo model at hidden size `hidden`: its experts 2× as wide, its 4 heads hidden / 4 each (the demo: 128). */
function widened(hidden: number): JobSpec['model'] {
  return { hiddenSize: hidden, expertHiddenSize: 2 * hidden, headDim: hidden / 4 };
}

/** One swarm of `setting.nodes` nodes, its first node pinned to core `firstCore`. */
async function runOne(setting: Setting, launch: Launcher, firstCore: number): Promise<Ran> {
  const job = {
    ...demoJob(STEPS_PER_NODE * setting.nodes, setting.nodes), jobId: `bench-scaling-${setting.nodes}-${setting.replication}-${firstCore}`,
    ...(setting.splitBatch ? { splitBatch: true } : {}),
  };
  job.model = { ...job.model, ...widened(HIDDEN) };
  if (setting.overlap === false) job.averaging = { ...job.averaging, overlap: false };
  const swarm = await launch(job, ['--vocab', String(VOCAB), '--replication', String(setting.replication), '--lease-ms', '120000']);
  try {
    const procs = Array.from({ length: setting.nodes }, (_, i) => {
      const proc = swarm.startNode(firstCore + i, ['--threads', '1']);
      pin(proc, (firstCore + i) % cpus().length);
      return proc;
    });
    await swarm.coordinator.waitFor((e) => e.event === 'done', 900_000, 'done');
    await Promise.all(procs.map((p) => p.waitFor((e) => e.event === 'finished', 120_000, 'finished')));
    const balanced = swarm.coordinator.events.filter((e) => e.event === 'plan' && e.balanced);
    return { steps: procs.map((p) => p.events.filter((e) => e.event === 'step')), balanced };
  } finally {
    await swarm.shutdown();
  }
}

const PORT = 4001;
const HOSTS = ['coordinator', 'node-a', 'node-b'];
/** Every process started in namespaces, so a failure or Ctrl-C can end them before the namespaces go. */
const running = new Set<Proc>();

/** A StarNetwork shaped to `rate`, with a delay proxy in front of each host's port; launches swarms in it. */
async function shapedLinks(rate: string, logDir: string): Promise<{ launch: Launcher; remove(): Promise<void> }> {
  const network = StarNetwork.build(HOSTS, { rate });
  const started = (proc: Proc) => (running.add(proc), proc);
  const remove = async () => {
    for (const proc of running) proc.kill('SIGKILL');
    await Promise.all([...running].map((p) => p.exited));
    running.clear();
    network.remove();
  };
  try {
    await Promise.all(HOSTS.map((name) => {
      const host = network.hosts[name];
      const args = ['--listen', `${host.ip}:${PORT}`, '--target', `${host.localIp}:${PORT}`, '--delay-ms', String(DELAY_MS)];
      return started(network.start(host.ns, `proxy-${name}`, 'bench/delay-proxy.ts', args, logDir)).waitFor((e) => e.event === 'ready');
    }));
  } catch (err) {
    await remove();
    throw err;
  }
  const launch: Launcher = async (job, coordinatorArgs) => {
    const jobFile = join(logDir, `${job.jobId}.json`);
    await writeFile(jobFile, JSON.stringify(job));
    const { coordinator: c, 'node-a': a, 'node-b': b } = network.hosts;
    const coordinator = started(network.start(c.ns, `coordinator-${job.jobId}`, 'coordinator/bin.mjs', [
      '--job', jobFile, '--listen', `/ip4/${c.localIp}/tcp/${PORT}`, ...coordinatorArgs,
    ], logDir));
    const listening = await coordinator.waitFor((e) => e.event === 'listening', 120_000, 'listening');
    const peerId = (listening.addrs as string[])[0].split('/p2p/')[1];
    const nodes: Proc[] = [];
    return {
      coordinator,
      startNode(index, args) {
        const host = [a, b][index];
        const node = started(network.start(host.ns, `${host.ns}-${job.jobId}`, 'node/bin.mjs', [
          'node', '--join', `/ip4/${c.ip}/tcp/${PORT}/p2p/${peerId}`, '--listen', `/ip4/${host.localIp}/tcp/${PORT}`,
          '--announce', `/ip4/${host.ip}/tcp/${PORT}`, '--reachability', 'public', ...args,
        ], logDir));
        nodes.push(node);
        return node;
      },
      async shutdown() {
        await Promise.all(nodes.map((n) => n.interrupt(30_000)));
        await coordinator.interrupt(30_000);
        for (const proc of [...nodes, coordinator]) running.delete(proc);
      },
    };
  };
  return { launch, remove };
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
    remoteWaitShare: sum(kept.map((e) => e.stepRemoteWaitMs)) / 1e3 / seconds,
    idleShare: sum(kept.map((e) => e.idleMs)) / 1e3 / seconds,
    tokensPerCpuSecond: tokens / (sum(kept.map((e) => e.cpuMs)) / 1e3),
    servingShare: (last.servingMs - base.servingMs) / 1e3 / seconds,
    remoteCallsPerStep: (last.remoteCalls - base.remoteCalls) / kept.length,
    remoteRequestsPerStep: (last.requests - base.requests) / kept.length,
  };
}

/** The settings' table over `launch`. */
async function table(title: string, launch: Launcher): Promise<void> {
  type PerNode = ReturnType<typeof steady>[];
  const aggregateOf = (perNode: PerNode) => sum(perNode.map((n) => n.tokensPerSecond));
  // What the nodes would reach on cores of their own with no waiting: their tokens per CPU-second, summed.
  const cpuBoundOf = (perNode: PerNode) => sum(perNode.map((n) => n.tokensPerCpuSecond));
  const measured: { setting: Setting; perNode: PerNode; swapped: number; round: number }[] = [];
  const measure = async (setting: Setting, round: number) => {
    const { steps, balanced } = await run(setting, launch);
    const perNode = steps.map(steady);
    const swapped = sum(balanced.map((e) => (e.moves as { added: unknown[] }).added.length));
    measured.push({ setting, perNode, swapped, round });
    const swaps = balanced.map((e) => {
      const { before, after } = e.balanced as { before: number; after: number };
      return `; plan v${e.version} swapped experts for their work, busiest node ${before.toFixed(2)}× → ${after.toFixed(2)}× its share`;
    });
    const rate = `${aggregateOf(perNode).toFixed(0)} tokens/s (load average ${loadavg()[0].toFixed(2)})`;
    console.log(`  ${title}, ${setting.name}: ${rate}${swaps.join('')}`);
  };
  for (let round = 1; round <= ROUNDS; round++) for (const setting of SELECTED) await measure(setting, round);
  // This machine drifts by 10-25% within minutes (other tenants): the baseline again at the end, ratios against every one.
  const again = { ...SELECTED[0], name: `${SELECTED[0].name}, again at the end` };
  if (SELECTED.length > 1) await measure(again, ROUNDS);
  const baselines = measured.filter((m) => m.setting.nodes === 1 && !m.setting.separate).map((m) => m.perNode);
  const baselineRates = baselines.map(aggregateOf);
  const baseline = sum(baselineRates) / baselines.length;
  const cpuBaseline = sum(baselines.map(cpuBoundOf)) / baselines.length;
  const rows = measured.map(({ setting, perNode, swapped, round }) => {
    const aggregate = aggregateOf(perNode);
    const mean = (pick: (n: (typeof perNode)[number]) => number) => sum(perNode.map(pick)) / perNode.length;
    const percent = (pick: (n: (typeof perNode)[number]) => number) => `${(100 * mean(pick)).toFixed(1)}%`;
    return [
      ROUNDS > 1 && setting !== again ? `${setting.name}, round ${round}` : setting.name, aggregate.toFixed(0),
      `${(aggregate / baseline).toFixed(2)}×`, `${(cpuBoundOf(perNode) / cpuBaseline).toFixed(2)}×`,
      percent((n) => n.remoteWaitShare), percent((n) => n.idleShare), percent((n) => n.servingShare),
      (mean((n) => n.sentPerToken) / 1024).toFixed(2), mean((n) => n.remoteCallsPerStep).toFixed(1),
      mean((n) => n.remoteRequestsPerStep).toFixed(1), String(swapped),
    ];
  });
  console.log(title);
  printTable([
    'setting', 'aggregate tokens/s', 'vs one node', 'per CPU-second vs one node', 'remote-expert wait', 'idle', 'serving peers',
    'sent kB per token per node', 'remote calls per step', 'requests per step', 'experts moved for load',
  ], rows);
  if (baselines.length > 1) {
    const [first, last] = [baselineRates[0], baselineRates.at(-1)!];
    const drift = (100 * (last - first)) / first;
    const signed = `${drift >= 0 ? '+' : ''}${drift.toFixed(1)}%`;
    const [lowest, highest] = [Math.min(...baselineRates), Math.max(...baselineRates)];
    const runs = baselines.length > 2 ? `, ${baselines.length} runs from ${lowest.toFixed(0)} to ${highest.toFixed(0)}` : '';
    console.log(`one node: ${first.toFixed(0)} tokens/s first, ${last.toFixed(0)} at the end (${signed}${runs}); `
      + 'the ratios are against their mean');
  }
  if (ROUNDS > 1) {
    for (const setting of SELECTED.slice(1)) {
      const runs = measured.filter((m) => m.setting === setting).map((m) => m.perNode);
      const spread = (values: number[]) =>
        `${median(values).toFixed(2)}× (${Math.min(...values).toFixed(2)}-${Math.max(...values).toFixed(2)}×)`;
      const wall = spread(runs.map((r) => aggregateOf(r) / baseline));
      const cpu = spread(runs.map((r) => cpuBoundOf(r) / cpuBaseline));
      console.log(`${setting.name}: median of ${runs.length} rounds ${wall} one node, per CPU-second ${cpu}`);
    }
  }
}

console.log(`scaling bench: the demo job (hidden ${HIDDEN}, 4 layers, 8 experts top-2, batch 8 × 128), ${STEPS_PER_NODE} steps per node, `
  + `first ${WARMUP_STEPS} left out; each node --threads 1 pinned to its own core; ${cpus().length} cores, `
  + `load average ${loadavg()[0].toFixed(2)}; Node ${process.version}`);
if (RATES.length === 0) {
  await table('on loopback', onLoopback);
} else {
  if (process.getuid?.() !== 0) throw new Error('--links builds network namespaces: run it as root (iproute2 and tc needed)');
  const logDir = await mkdtemp(join(tmpdir(), 'swarmtrain-scaling-links-'));
  let network: Awaited<ReturnType<typeof shapedLinks>> | undefined;
  const interrupted = async (signal: NodeJS.Signals) => {
    await network?.remove();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    for (const rate of RATES) {
      network = await shapedLinks(rate, logDir);
      await table(`links of ${rate} each way, ${DELAY_MS} ms one-way delay`, network.launch);
      await network.remove();
      network = undefined;
    }
  } finally {
    await network?.remove();
    await rm(logDir, { recursive: true, force: true });
  }
}
console.log('aggregate tokens/s: steady-state steps\' tokens over their own seconds, summed over nodes; remote-expert wait: wall time with a '
  + 'remote expert call in flight / step time; per CPU-second: tokens per CPU-second of each node, summed (the ratio with a core per node '
  + 'and no waiting; steadier than wall time on a loaded machine); idle: the event loop waiting with nothing to run; '
  + 'serving peers: answering peers\' expert calls; experts moved for load: replicas the coordinator moved to balance the rows routed to '
  + 'each node\'s experts');
