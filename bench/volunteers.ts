// 1,000 simulated volunteers (src/harness/sim-node.ts: real libp2p hosts and protocol, no training)
// against one coordinator in its own process (`node coordinator/bin.mjs --job ...`), spread over
// worker processes of several hundred nodes each, with churn: each minute `churn` of the nodes leave
// (half saying so, half vanishing) and as many new ones join, for the run's seconds after all joined. Then the nodes
// train the job to its end and the bench checks every batch was completed exactly once. Prints one table.
// Run: npm run bench:volunteers [-- --nodes 1000 --workers 3 --seconds 150 --churn 0.1 --train-ms 5000 --heartbeat-ms 1000]
//      npm run bench:volunteers -- --quick   (300 nodes, 2 workers, 60 s)
//      --joins-at-once 32: joins in flight per worker (0: every node at once; a worker's event loop then cannot finish
//        the handshakes in time)
//      --nice-workers: the workers at the lowest CPU priority, so the coordinator runs as if on a machine of its own
//      --probes 20: of the nodes, this many in a process of their own at normal priority and out of the churn: their round trips
//        are what a volunteer on a machine of its own would see (the crowd's include their crowded workers' event loops)
//      --cpu-prof <dir>: the coordinator and the workers write V8 CPU profiles there (open in Chrome's DevTools)
// Event-loop delays (the coordinator's through bench/loop-delay.mjs, each worker's own) say where a round trip waited.
import { fork, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { footprint, nodeBytes } from '../src/model/footprint.ts';
import { ShardPlanner, type PlannerNode } from '../coordinator/planner.ts';
import type { JobSpec } from '../proto/index.ts';
import { percentile, SimNode, SimStats, type SimOptions } from '../src/harness/sim-node.ts';
import { jobConfig, jobDocuments, jobFootprintSettings } from '../src/train/job.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { printTable } from './table.ts';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const VOCAB = 300;
const JOB: Omit<JobSpec, 'totalBatches'> = {
  jobId: 'volunteers',
  model: {
    hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 128,
    maxSeqLen: 64,
  },
  // Small batches of the whole book: an epoch of ~40k batches, so a thousand nodes never wait for the next one.
  mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick', batchSize: 1, seqLen: 16,
  heldOutFraction: 0.05, expectedNodes: 1, lr: 0.01, minLr: 0.001, warmupSteps: 2,
  averaging: { mode: 'periodic', every: 4, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};

/** Parent to worker. */
type Command = { start: number; options: SimOptions } | { leave: number } | { steady: true } | { finish: true };
/**
 * Worker to parent: its nodes' measurements once they are all done, how many round trips of each came before all had joined,
 * and its event loop's delay since then (ms): a round trip measured here includes it.
 */
interface WorkerReport { stats: SimStats; nodes: number; beforeSteady: Record<Timed, number>; loopDelay: LoopDelay }
interface LoopDelay { p50: number; p99: number; max: number }
type Timed = keyof SimStats['roundTrips'];
const LOOP_RESOLUTION_MS = 10;

// --- worker: a few hundred simulated nodes in one process ---------------------------------------

async function worker(): Promise<void> {
  const stats = new SimStats();
  const nodes: SimNode[] = [];
  let options: SimOptions | undefined;
  let beforeSteady: Record<Timed, number> = { join: 0, heartbeat: 0, lease: 0, leaseReport: 0 };
  const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  process.on('message', async (command: Command) => {
    if ('start' in command) {
      options = command.options;
      const started = await Promise.all(Array.from({ length: command.start }, () => SimNode.start(options!, stats)));
      nodes.push(...started);
    } else if ('leave' in command) {
      const leaving = nodes.filter((node) => !node.stopping).slice(0, command.leave);
      await Promise.all(leaving.map((node, i) => node.stop(i % 2 === 0)));
    } else if ('steady' in command) {
      beforeSteady = { join: 0, heartbeat: 0, lease: 0, leaseReport: 0 };
      for (const name of Object.keys(beforeSteady) as Timed[]) beforeSteady[name] = stats.roundTrips[name].length;
      loop.reset();
    } else {
      // The job trains to its end: every node hears it is done (or, still joining, gives up a minute later), then all stop.
      const giveUp = Date.now() + 60_000;
      while (!nodes.every((node) => node.done || node.stopping) && Date.now() < giveUp) {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      // The histogram holds the time between its timer's ticks: the delay is what exceeds the tick.
      const delay = (ns: number) => Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS);
      const loopDelay = { p50: delay(loop.percentile(50)), p99: delay(loop.percentile(99)), max: delay(loop.max) };
      await Promise.all(nodes.map((node) => node.stop(false)));
      process.send!({ stats, nodes: nodes.length, beforeSteady, loopDelay } satisfies WorkerReport, () => process.exit(0));
    }
  });
}

// --- parent: the coordinator, the workers, the measurements -------------------------------------

const progress = (message: string) => console.error(`[bench] ${new Date().toISOString().slice(11, 19)} ${message}`);

interface Usage { cpuSeconds: number; rssBytes: number }

const tally = (counts: Record<string, number>, key: string, by = 1) => (counts[key] = (counts[key] ?? 0) + by);
const loadAverage = () => loadavg().map((l) => l.toFixed(1)).join(' ');

function usageOf(pid: number): Usage {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime
  const rssPages = Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]);
  return { cpuSeconds: ticks / 100, rssBytes: rssPages * 4096 };
}

/** bench/loop-delay.mjs's measures of one 2-s window (ms), and when it came. */
interface LoopWindow { at: number; p99: number; max: number; gcLongest: number; gcTotal: number; heapUsed: number; external: number }

/**
 * The coordinator's event-loop delay in the 2-s windows from `since`: the median and the worst window's p99, the longest
 * delay; and its garbage collection: the longest pause, and the share of the time spent in it.
 */
function loopWindows(windows: LoopWindow[], since: number): string {
  const after = windows.filter((w) => w.at >= since);
  if (after.length === 0) return '-';
  const p99s = after.map((w) => w.p99);
  const ms = (v: number) => v.toFixed(1);
  const gcShare = after.reduce((sum, w) => sum + w.gcTotal, 0) / (after.length * 2000);
  const gc = `GC pauses up to ${ms(Math.max(...after.map((w) => w.gcLongest)))} ms, ${(gcShare * 100).toFixed(1)}% of the time`;
  return `${ms(percentile(p99s, 50))} / ${ms(Math.max(...p99s))} ms, ${ms(Math.max(...after.map((w) => w.max)))} ms; ${gc}`;
}

/** The planner alone on `nodes` nodes: the time of one re-plan after a node leaves. */
function replanMs(job: JobSpec, tokenizer: BpeTokenizer, nodes: number, memoryBytes: number): number {
  const planner = new ShardPlanner({ config: jobConfig(job, tokenizer), precision: jobFootprintSettings(job), replication: 2 });
  const all: PlannerNode[] = Array.from({ length: nodes }, (_, i) => ({ nodeId: `node${i}`, gemmGflops: 10 + (i % 7), memoryBytes }));
  planner.plan(all);
  const t0 = performance.now();
  for (let i = 1; i <= 10; i++) planner.plan(all.filter((_, j) => j !== i));
  return (performance.now() - t0) / 10;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean' }, nodes: { type: 'string' }, workers: { type: 'string' }, seconds: { type: 'string' },
      churn: { type: 'string' }, 'train-ms': { type: 'string' }, 'heartbeat-ms': { type: 'string' }, 'cpu-prof': { type: 'string' },
      'joins-at-once': { type: 'string' }, 'nice-workers': { type: 'boolean' }, probes: { type: 'string' },
    },
  });
  const quick = values.quick ?? false;
  const total = Number(values.nodes ?? (quick ? 300 : 1000));
  const workers = Number(values.workers ?? (quick ? 2 : 3));
  const seconds = Number(values.seconds ?? (quick ? 60 : 150));
  const churn = Number(values.churn ?? 0.1);
  const trainMs = Number(values['train-ms'] ?? 5000);
  const heartbeatMs = Number(values['heartbeat-ms'] ?? 1000);
  // Per worker (SimOptions.joinsAtOnce); 0: all at once.
  const joinsAtOnce = Number(values['joins-at-once'] ?? 32);
  const probes = Number(values.probes ?? 20);
  if (!Number.isInteger(probes) || probes < 0 || probes >= total) throw new RangeError(`--probes must be an integer in [0, ${total})`);
  const profile = values['cpu-prof'] === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', values['cpu-prof']];
  // About as many batches as the swarm trains in the run (a minute of joining, then the churn), so the job ends soon after the churn stops.
  const job: JobSpec = { ...JOB, totalBatches: Math.round((total * (60 + seconds) * 1000) / trainMs) };
  const tokenizer = BpeTokenizer.train(jobDocuments(job).documents, { vocabSize: VOCAB });
  const memoryBytes = nodeBytes(footprint(jobConfig(job, tokenizer), jobFootprintSettings(job)), 2, false); // the trunk and 2 experts

  const dir = await mkdtemp(join(tmpdir(), 'volunteers-'));
  const jobFile = join(dir, 'job.json');
  await writeFile(jobFile, JSON.stringify(job));
  const tokenizerFile = join(dir, 'tokenizer.json');
  await writeFile(tokenizerFile, JSON.stringify(tokenizer.toHuggingFace()));
  const coordinator = spawn(process.execPath, [
    ...profile, '--import', join(repoRoot, 'bench/loop-delay.mjs'),
    join(repoRoot, 'coordinator/bin.mjs'), '--job', jobFile, '--tokenizer', tokenizerFile, '--token', 'bench',
    '--heartbeat-ms', String(heartbeatMs), '--lease-ms', String(Math.max(30_000, 4 * trainMs)),
  ], { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] });
  const joinedAt = new Map<string, number>();
  let counters: Record<string, number> | undefined;
  let done: { completed: number; total: number } | undefined;
  let plans = 0;
  let died = 0;
  let left = 0;
  const refused: Record<string, number> = {}; // peer messages the coordinator's transport refused, by protocol and reason
  const coordinatorLoop: LoopWindow[] = []; // its event loop's delay, per 2-s window
  const listening = new Promise<string>((resolve) => {
    createInterface({ input: coordinator.stdout }).on('line', (line) => {
      const event = JSON.parse(line);
      if (event.event === 'listening') resolve(event.addrs[0]);
      else if (event.event === 'joined' && !joinedAt.has(event.node)) joinedAt.set(event.node, Date.now());
      else if (event.event === 'plan') plans++;
      else if (event.event === 'died') died++;
      else if (event.event === 'left') left++;
      else if (event.event === 'rejected') tally(refused, `${event.protocol.split('/').at(-2)}: ${event.reason}`);
      else if (event.event === 'progress') counters = event.counters;
      else if (event.event === 'done') done = event;
      else if (event.event === 'loop-delay') coordinatorLoop.push({ ...event, at: Date.now() });
    });
  });
  const address = await listening;
  const loadAtStart = loadAverage();
  const pid = coordinator.pid!;
  const before = usageOf(pid);
  let peakRss = before.rssBytes;

  const forkWorker = () => fork(fileURLToPath(import.meta.url), ['--worker'], {
    execArgv: [...profile, '--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const children = Array.from({ length: workers }, forkWorker);
  const prober = probes > 0 ? forkWorker() : undefined;
  // The volunteers' work yields to the coordinator's, as on a coordinator machine of its own (nice 19: the lowest priority).
  if (values['nice-workers']) for (const child of children) setPriority(child.pid!, 19);
  const crowd = total - probes;
  const share = (count: number, i: number) => Math.floor(count / workers) + (i < count % workers ? 1 : 0);
  // Each process's nodes dial from loopback addresses of their own, as volunteers from many addresses would.
  const options = (worker: number): SimOptions => ({
    coordinator: address, token: 'bench', memoryBytes, trainMs, idleMs: 1000, sourceNet: worker + 1,
    ...(joinsAtOnce > 0 ? { joinsAtOnce } : {}),
  });
  const t0 = Date.now();
  children.forEach((child, i) => child.send({ start: share(crowd, i), options: options(i) } satisfies Command));
  prober?.send({ start: probes, options: options(workers) } satisfies Command);
  const everyProcess = prober ? [...children, prober] : children;

  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, usageOf(pid).rssBytes);
  }, 1000);
  const waitUntil = async (deadline: number, stop: () => boolean = () => false) => {
    while (Date.now() < deadline && !stop()) await new Promise((resolve) => setTimeout(resolve, 200));
  };
  await waitUntil(t0 + 120_000, () => joinedAt.size >= total);
  progress(`${joinedAt.size} of ${total} joined`);
  const allJoinedMs = joinedAt.size >= total ? Math.max(...joinedAt.values()) - t0 : NaN;
  const steady = usageOf(pid);
  const steadyAt = Date.now();
  for (const child of everyProcess) child.send({ steady: true } satisfies Command);

  // Churn for the run's seconds once all have joined (or two minutes passed): every tenth of a minute, a tenth of the minute's
  // leavers and joiners.
  const tick = 6_000;
  const perTick = Math.max(1, Math.round((total * churn) / 10));
  let churned = 0;
  for (let at = steadyAt + tick; at <= steadyAt + seconds * 1000; at += tick) {
    await waitUntil(at);
    const i = churned++ % workers;
    children[i]!.send({ leave: perTick } satisfies Command);
    children[(i + 1) % workers]!.send({ start: perTick, options: options((i + 1) % workers) } satisfies Command);
  }
  progress(`churn over (${churned} rounds); training the job to its end (${counters?.completed ?? 0} of ${job.totalBatches} done)`);
  const running = usageOf(pid);
  const runningAt = Date.now();
  const reports = everyProcess.map((child) => new Promise<WorkerReport>((resolve) => child.once('message', resolve)));
  await waitUntil(Date.now() + 600_000, () => done !== undefined);
  const doneAt = Date.now();
  for (const child of everyProcess) child.send({ finish: true } satisfies Command);
  progress(done ? 'job done' : 'job NOT done');
  const results = await Promise.all(reports);
  clearInterval(sampler);
  coordinator.kill('SIGTERM');
  await rm(dir, { recursive: true, force: true });

  const merged = (name: Timed) => results.flatMap((r) => r.stats.roundTrips[name]);
  const afterJoins = (name: Timed, of = results) => of.flatMap((r) => r.stats.roundTrips[name].slice(r.beforeSteady[name]));
  const probeResults = results.slice(workers);
  const beats = merged('heartbeat').length;
  const sum = (of: (result: WorkerReport) => number) => results.reduce((s, r) => s + of(r), 0);
  const replyBytes = sum((r) => r.stats.heartbeatReplyBytes);
  const requestBytes = sum((r) => r.stats.heartbeatRequestBytes);
  const accepted = results.flatMap((r) => r.stats.completed).sort((a, b) => a - b);
  const twice = accepted.filter((id, i) => i > 0 && accepted[i - 1] === id).length;
  const failures: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.stats.failures)) tally(failures, k, v);
  const ms = (v: number) => (Number.isNaN(v) ? '-' : v.toFixed(1));
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
  const cores = (a: Usage, b: Usage, seconds: number) => (seconds < 1 ? '-' : ((b.cpuSeconds - a.cpuSeconds) / seconds).toFixed(2));
  const rows: string[][] = [
    [
      'nodes (workers)',
      `${total} (${workers}${probes > 0 ? `, ${probes} of them probes in a process of their own` : ''}), `
      + `${sum((r) => r.nodes)} in all with churn`,
    ],
    ['all joined', `${ms(allJoinedMs / 1000)} s`],
    ...(['join', 'heartbeat', 'lease', 'leaseReport'] as const).map((name) => {
      const p50p99 = (values: number[]) => `${ms(percentile(values, 50))} / ${ms(percentile(values, 99))} ms (${values.length})`;
      const probed = probes > 0 ? `; ${p50p99(afterJoins(name, probeResults))}` : '';
      return [`${name} round trip p50 / p99: all / after the joins${probes > 0 ? ' / the probes after the joins' : ''}`,
        `${p50p99(merged(name))}; ${p50p99(afterJoins(name))}${probed}`];
    }),
    [
      'heartbeats per second after the joins (sent by the nodes)',
      (afterJoins('heartbeat').length / ((doneAt - steadyAt) / 1000)).toFixed(0),
    ],
    [
      "coordinator event-loop delay after the joins: median / worst 2-s window's p99, max; GC",
      loopWindows(coordinatorLoop, steadyAt),
    ],
    [
      `each sim worker's event-loop delay after the joins: p50 / p99 / max${probes > 0 ? ' (the probes\' last)' : ''}`,
      results.map(({ loopDelay: d }) => `${ms(d.p50)} / ${ms(d.p99)} / ${ms(d.max)} ms`).join('; '),
    ],
    ['re-plan (planner alone)', `${ms(replanMs(job, tokenizer, total, memoryBytes))} ms at ${total} nodes`],
    ['plan versions', String(plans)],
    [
      'coordinator CPU: joining / churn',
      `${cores(before, steady, (steadyAt - t0) / 1000)} / ${cores(steady, running, (runningAt - steadyAt) / 1000)} cores`,
    ],
    ['coordinator RSS peak', `${mib(peakRss)} MiB`],
    [
      'coordinator JS heap used / outside the heap, largest',
      `${mib(Math.max(...coordinatorLoop.map((w) => w.heapUsed)))} / ${mib(Math.max(...coordinatorLoop.map((w) => w.external)))} MiB`,
    ],
    ['longest heartbeat period told to nodes', `${Math.max(...results.map((r) => r.stats.longestHeartbeatMs))} ms`],
    ['bytes per heartbeat (request / reply)', `${(requestBytes / beats).toFixed(0)} / ${(replyBytes / beats).toFixed(0)}`],
    ['plans received by nodes (as deltas)', `${sum((r) => r.stats.plansReceived)} (${sum((r) => r.stats.planDeltas)})`],
    ['left / died', `${left} / ${died}`],
    ['job', done ? `done, ${done.completed} of ${done.total}` : `NOT done (${counters?.completed ?? 0} of ${job.totalBatches})`],
    ['coordinator counters', JSON.stringify(counters ?? {})],
    ['accepted reports (twice)', `${accepted.length} (${twice})`],
    ['failed requests', JSON.stringify(failures)],
    ['requests the coordinator refused', JSON.stringify(refused)],
  ];
  console.log(
    `node ${process.version}, ${seconds} s, churn ${churn * 100}%/min, train ${trainMs} ms/batch, heartbeat ${heartbeatMs} ms, `
    + `joins at once per worker ${joinsAtOnce || 'unlimited'}${values['nice-workers'] ? ', workers at nice 19' : ''}`,
  );
  console.log(`load average (1, 5, 15 min) at the start: ${loadAtStart}, at the end: ${loadAverage()}`);
  printTable(['measure', 'value'], rows);
  // Exactly once by the coordinator's count; a node may miss the ack of a report the coordinator counted (a timeout), never the reverse.
  const exact = done !== undefined && done.completed === job.totalBatches && accepted.length <= job.totalBatches && twice === 0;
  if (!exact) process.exitCode = 1;
}

if (process.argv.includes('--worker')) await worker();
else await main();
