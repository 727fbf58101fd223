// `npm start`: a demo swarm on this machine. Starts the coordinator service (its data in ./data,
// its HTTP API and web UI on 127.0.0.1:8080) and 3 nodes as child processes on 127.0.0.1, queues a
// small job (a shrunk demo model on Moby-Dick, every expert on 2 of the 3 nodes, int8 deltas
// averaged every 8 steps) over the API, prints what happens (nodes joining, the plan, then every few
// seconds each node's step, loss, tokens/s and traffic) and stops everything cleanly when the job is
// done or on Ctrl-C: the job is paused (a checkpoint is written), then the nodes stop (they hand
// their unfinished batches back), then the coordinator. Run again, it resumes the paused job where it
// stopped. Every process's JSON events stay in tmp/demo/<name>.jsonl.
import { cpus } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CoordinatorClient } from './client.ts';
import type { JobView } from './api/service.ts';
import { AVERAGE_EVERY, demoJob } from '../src/harness/demo-job.ts';
import { startService, type Proc, type ServiceSwarm, type SwarmEvent } from '../src/harness/local-swarm.ts';

const USAGE = `Usage: npm start [-- --nodes <n>] [-- --batches <n>] [-- --data <dir>] [-- --http <host:port>] [-- --out <dir>]

Runs the coordinator service (data in --data, default ./data; HTTP API and web UI on --http, default
127.0.0.1:8080) and <n> nodes (default 3) on this machine, training a small MoE model on Moby-Dick for
<n> micro-batches in all (default 150 per node). Ctrl-C pauses the job and stops everything cleanly;
running it again resumes the job. Logs go to --out (default tmp/demo).
`;
const VOCAB = 1024;
const SUMMARY_SECONDS = 5;
/** How long the nodes have to finish a job that is done (their held-out loss) before they are stopped. */
const FINISH_GRACE_MS = 60_000;
/** How long a Ctrl-C waits for the pause's checkpoint before stopping the nodes anyway. */
const PAUSE_CHECKPOINT_MS = 30_000;
/** A second Ctrl-C this long after the first kills everything at once (sooner, it is the same keypress relayed). */
const FORCE_AFTER_MS = 1000;


function options() {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      nodes: { type: 'string', default: '3' }, batches: { type: 'string' }, out: { type: 'string', default: 'tmp/demo' },
      data: { type: 'string', default: 'data' }, http: { type: 'string', default: '127.0.0.1:8080' }, help: { type: 'boolean', short: 'h' },
    },
  });
  const nodes = Number(values.nodes);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 8) throw new Error(`--nodes must be an integer from 1 to 8, got ${JSON.stringify(values.nodes)}`);
  const batches = values.batches === undefined ? 150 * nodes : Number(values.batches);
  if (!Number.isInteger(batches) || batches < 1) throw new Error(`--batches must be a positive integer, got ${JSON.stringify(values.batches)}`);
  return { help: values.help ?? false, nodes, batches, out: resolve(values.out), data: resolve(values.data), http: values.http };
}

const shortId = (id: string) => `…${id.slice(-6)}`;
const size = (bytes: number) => (bytes < 2 ** 30 ? `${(bytes / 2 ** 20).toFixed(1)} MB` : `${(bytes / 2 ** 30).toFixed(2)} GB`);
const lastOf = (p: Proc, name: string) => p.events.findLast((e) => e.event === name);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** One line per coordinator event worth seeing as it happens. */
function describe(e: SwarmEvent, names: Map<string, string>): string | undefined {
  const who = (id: string) => names.get(id) ?? shortId(id);
  switch (e.event) {
    case 'joined': case 'rejoined':
      return `${e.event} ${who(e.node)} (${e.cores} core${e.cores === 1 ? '' : 's'}, ${e.gemmGflops.toFixed(0)} GFLOPS, ${size(e.memoryBytes)} budget)`;
    case 'started': return `started: ${e.nodes} nodes, training begins`;
    case 'plan': {
      const holders = e.holders as { holders: string[] }[];
      const perNode = new Map<string, number>();
      for (const expert of holders) for (const node of expert.holders) perNode.set(node, (perNode.get(node) ?? 0) + 1);
      const spread = [...perNode].map(([node, count]) => `${who(node)} ${count}`).join(', ');
      const balanced = e.balanced as { before: number; after: number } | undefined;
      const shares = balanced && `busiest node at ${balanced.before.toFixed(2)}× its share, now ${balanced.after.toFixed(2)}×`;
      const why = shares ? ` (experts swapped for their routed rows: ${shares})` : '';
      return `plan v${e.version}: ${holders.length} experts, held by ${spread || 'nobody yet'}${why}${e.degraded ? ` (degraded: ${e.degraded})` : ''}`;
    }
    case 'died': case 'left': return `${e.event}: ${who(e.node)}, ${e.releasedBatchIds.length} batches back to the pool`;
    case 'done': return `done: ${e.completed}/${e.total} micro-batches trained`;
    default: return undefined;
  }
}

class Monitor {
  private seen = 0;
  private over = false;
  private readonly started = performance.now();

  constructor(private readonly swarm: { coordinator: Proc; nodes: Proc[] }) {}

  /** Node processes by their peer id, once they have said it. */
  names(): Map<string, string> {
    const names = new Map<string, string>();
    for (const node of this.swarm.nodes) {
      const joined = lastOf(node, 'joined');
      if (joined) names.set(joined.node, node.name);
    }
    return names;
  }

  /** Prints the coordinator's events since the last call, up to the job's end (after it, nodes leaving is expected). */
  news(): void {
    const events = this.swarm.coordinator.events;
    const names = this.names();
    for (; this.seen < events.length && !this.over; this.seen++) {
      const line = describe(events[this.seen], names);
      if (line) this.print(line);
      this.over = events[this.seen].event === 'done';
    }
  }

  summary(): void {
    const progress = lastOf(this.swarm.coordinator, 'progress');
    if (progress) this.print(`${progress.completed}/${progress.total} micro-batches (${(100 * progress.completed / progress.total).toFixed(0)}%), epoch ${progress.epoch}`);
    for (const node of this.swarm.nodes) {
      const steps = node.events.filter((e) => e.event === 'step');
      const last = steps.at(-1);
      const experts = (lastOf(node, 'plan') ?? lastOf(node, 'joined'))?.experts as string[] | undefined;
      // Over the last averaging period, so one round's exchange is spread over its steps.
      const recent = steps.slice(-AVERAGE_EVERY);
      const tokensPerSecond = recent.reduce((sum, e) => sum + e.tokens, 0) / recent.reduce((sum, e) => sum + e.seconds, 0);
      const state = node.exitCode !== null ? `exited (${node.exitCode})` : !last ? (experts ? 'waiting for the other nodes' : 'starting') : '';
      const line = last
        ? `step ${String(last.step).padStart(4)}  loss ${last.loss.toFixed(3)}  ${String(Math.round(tokensPerSecond)).padStart(5)} tok/s  `
          + `sent ${size(last.bytesSent)}  recv ${size(last.bytesReceived)}  experts ${experts?.length ?? 0}  `
          + `remote calls ${last.remoteCalls}  served ${last.served}${state ? `  ${state}` : ''}`
        : state;
      const id = lastOf(node, 'joined')?.node as string | undefined;
      console.log(`           ${node.name} ${id ? shortId(id) : '       '}  ${line}`);
    }
  }

  print(line: string): void {
    const seconds = Math.round((performance.now() - this.started) / 1e3);
    console.log(`[${String(seconds).padStart(5)} s] ${line}`);
  }
}

/** The demo job to run: the one a Ctrl-C paused (resumed), one still running, or a new one. */
async function demoJobOf(api: CoordinatorClient, batches: number, nodes: number): Promise<{ job: JobView; resumed: boolean }> {
  const unfinished = (await api.jobs()).find((job) => job.name === 'demo' && (job.state === 'paused' || job.state === 'running'));
  if (unfinished?.state === 'paused') return { job: await api.resumeJob(unfinished.id), resumed: true };
  if (unfinished) return { job: unfinished, resumed: true };
  const { jobId: _, ...spec } = demoJob(batches, nodes);
  return { job: await api.createJob({ ...spec, name: 'demo', model: { ...spec.model, vocabSize: VOCAB } }), resumed: false };
}

async function main(): Promise<number> {
  const { help, nodes, batches, out, data, http } = options();
  if (help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const where = relative(process.cwd(), out) || '.';
  let swarm: ServiceSwarm | undefined;
  const killAll = () => {
    for (const p of swarm ? [...swarm.nodes, swarm.coordinator] : []) p.kill('SIGKILL');
  };
  process.on('exit', killAll); // never leave a process behind
  let interruptedAt: number | undefined;
  const interrupted = new Promise<void>((resolve) => {
    const onSignal = () => {
      const now = performance.now();
      if (interruptedAt === undefined) {
        interruptedAt = now;
        resolve();
      } else if (now - interruptedAt > FORCE_AFTER_MS) {
        console.log('killing every process now');
        killAll();
      }
    };
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
  });
  // Own process groups: a Ctrl-C reaches this process only, which stops the others in order.
  swarm = await startService(['--replication', '2', '--checkpoint-every', '2'], { dir: out, dataDir: data, http, detached: true });
  const api = new CoordinatorClient({ url: swarm.url, token: swarm.token });
  const { job, resumed } = await demoJobOf(api, batches, nodes);
  const monitor = new Monitor(swarm);
  console.log(`swarmtrain demo: the coordinator and ${nodes} nodes on 127.0.0.1 (${cpus().length} cores here); data in `
    + `${relative(process.cwd(), data) || '.'}/, logs in ${where}/. Ctrl-C pauses the job and stops everything cleanly.`);
  monitor.print(`${resumed ? 'resuming' : 'queued'} job ${job.id}: ${job.completed}/${job.total} micro-batches of `
    + `${job.spec.batchSize} × ${job.spec.seqLen} tokens of ${job.spec.corpus} done`);
  monitor.print(`web UI and API: ${swarm.url} (API token: ${swarm.token}); nodes join ${swarm.address}`);
  if (interruptedAt === undefined) {
    for (let i = 0; i < nodes; i++) swarm.startNode(['--threads', '1', '--key', join(data, 'nodes', `node-${i}.key`)]);
  }
  const ended = swarm.coordinator.waitFor(
    (e) => e.event === 'job' && e.jobId === job.id && ['done', 'failed', 'cancelled'].includes(e.state), 2 ** 31 - 1, 'the job to end',
  );
  ended.catch(() => {}); // a coordinator that exits early is reported below
  const ticker = setInterval(() => monitor.news(), 250);
  const summaries = setInterval(() => monitor.summary(), SUMMARY_SECONDS * 1000);
  const outcome = await Promise.race([
    ended.then((e) => (e.state === 'done' ? 'done' as const : 'ended' as const), () => 'coordinator exited' as const),
    interrupted.then(() => 'interrupted' as const),
  ]);
  monitor.news();
  if (outcome === 'interrupted') {
    monitor.print('stopping: the job is paused (a checkpoint is written), the nodes stop (they hand their batches back), then the coordinator');
    const paused = swarm.coordinator.events.length;
    await api.pauseJob(job.id).catch((err: Error) => monitor.print(`could not pause the job: ${err.message}`));
    await swarm.coordinator.waitFor((e) => swarm!.coordinator.events.indexOf(e) >= paused && e.event.startsWith('checkpoint'), PAUSE_CHECKPOINT_MS)
      .catch(() => monitor.print('no checkpoint came: stopping anyway'));
  } else if (outcome !== 'coordinator exited') {
    monitor.print(`job ${outcome}; waiting for the nodes to finish it (held-out loss), then stopping them and the coordinator`);
    const finished = swarm.nodes.map((n) => n.waitFor((e) => e.event === 'finished', FINISH_GRACE_MS, 'finished').catch(() => {}));
    await Promise.race([Promise.all(finished), interrupted]);
  }
  await swarm.shutdown();
  clearInterval(ticker);
  clearInterval(summaries);
  monitor.news();
  monitor.summary();

  const steps = swarm.nodes.map((n) => n.events.filter((e) => e.event === 'step'));
  const heldOut = swarm.nodes.map((n) => lastOf(n, 'finished')?.heldOut?.loss as number | undefined).filter((x) => x !== undefined);
  if (steps.some((s) => s.length > 0)) {
    const trainLoss = mean(steps.flatMap((s) => s.slice(-AVERAGE_EVERY).map((e) => e.loss)));
    monitor.print(`final training loss ${trainLoss.toFixed(3)} (mean of each node's last ${AVERAGE_EVERY} steps; ln ${VOCAB} = ${Math.log(VOCAB).toFixed(2)} untrained)`
      + (heldOut.length ? `, held-out loss ${mean(heldOut).toFixed(3)}` : ''));
  }
  const exits = [swarm.coordinator, ...swarm.nodes].map((p) => `${p.name} ${p.exitCode}`).join(', ');
  monitor.print(`stopped (exit codes: ${exits}). Events: ${where}/<process>.jsonl, errors: ${where}/<process>.stderr`);
  monitor.print(outcome === 'interrupted' ? 'run `npm start` again to resume the job'
    : `the result: npx swarmtrain job download ${job.id} -o result (with the coordinator running: npx swarmtrain coordinator --data ${relative(process.cwd(), data) || '.'})`);
  const clean = [swarm.coordinator, ...swarm.nodes].every((p) => p.exitCode === 0);
  return outcome !== 'coordinator exited' && outcome !== 'ended' && clean ? 0 : 1;
}

process.exitCode = await main().catch((err: Error) => {
  console.error(`swarmtrain demo: ${err.message}`);
  return 1;
});
