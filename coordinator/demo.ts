// `npm start`: a demo swarm on this machine. Writes a small job (a shrunk demo model on
// Moby-Dick, every expert on 2 of the 3 nodes, int8 deltas averaged every 8 steps) to
// tmp/demo/job.json, starts a coordinator and 3 nodes as child processes on 127.0.0.1, prints
// what happens (nodes joining, the plan, then every few seconds each node's step, loss, tokens/s
// and traffic) and stops everything cleanly when the job is done or on Ctrl-C: the nodes first
// (they hand their unfinished batches back), then the coordinator. Every process's JSON events
// stay in tmp/demo/<name>.jsonl. Options: --nodes <n>, --batches <n> (a shorter job), --out <dir>.
import { cpus } from 'node:os';
import { relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AVERAGE_EVERY, demoJob } from '../src/harness/demo-job.ts';
import { startSwarm, type Proc, type Swarm, type SwarmEvent } from '../src/harness/local-swarm.ts';

const USAGE = `Usage: npm start [-- --nodes <n>] [-- --batches <n>] [-- --out <dir>]

Runs a coordinator and <n> nodes (default 3) on this machine, training a small MoE model on
Moby-Dick for <n> micro-batches in all (default 150 per node). Ctrl-C stops it cleanly.
`;
const VOCAB = 1024;
const SUMMARY_SECONDS = 5;
/** A node still running this long after the job is done is stopped. */
const FINISH_GRACE_MS = 60_000;
/** A second Ctrl-C this long after the first kills everything at once (sooner, it is the same keypress relayed). */
const FORCE_AFTER_MS = 1000;


function options() {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: { nodes: { type: 'string', default: '3' }, batches: { type: 'string' }, out: { type: 'string', default: 'tmp/demo' }, help: { type: 'boolean', short: 'h' } },
  });
  const nodes = Number(values.nodes);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 8) throw new Error(`--nodes must be an integer from 1 to 8, got ${JSON.stringify(values.nodes)}`);
  const batches = values.batches === undefined ? 150 * nodes : Number(values.batches);
  if (!Number.isInteger(batches) || batches < 1) throw new Error(`--batches must be a positive integer, got ${JSON.stringify(values.batches)}`);
  return { help: values.help ?? false, nodes, batches, out: resolve(values.out) };
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
      return `plan v${e.version}: ${holders.length} experts, held by ${spread || 'nobody yet'}${e.degraded ? ` (degraded: ${e.degraded})` : ''}`;
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

  constructor(private readonly swarm: Swarm) {}

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

async function main(): Promise<number> {
  const { help, nodes, batches, out } = options();
  if (help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const job = demoJob(batches, nodes);
  const where = relative(process.cwd(), out) || '.';
  console.log(`swarmtrain demo: a coordinator and ${nodes} nodes on 127.0.0.1 (${cpus().length} cores here), ${batches} micro-batches of `
    + `${job.batchSize} × ${job.seqLen} tokens of ${job.corpus}; job and logs in ${where}/. Ctrl-C stops everything cleanly.`);
  let swarm: Swarm | undefined;
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
  swarm = await startSwarm(job, ['--vocab', String(VOCAB), '--replication', '2'], { dir: out, detached: true });
  const monitor = new Monitor(swarm);
  monitor.print(`coordinator listening on ${swarm.address}`);
  if (interruptedAt === undefined) for (let i = 0; i < nodes; i++) swarm.startNode(['--threads', '1']);
  const done = swarm.coordinator.waitFor((e) => e.event === 'done', 2 ** 31 - 1, 'done');
  done.catch(() => {}); // a coordinator that exits early is reported below
  const ticker = setInterval(() => monitor.news(), 250);
  const summaries = setInterval(() => monitor.summary(), SUMMARY_SECONDS * 1000);
  const outcome = await Promise.race([
    done.then(() => 'done' as const, () => 'coordinator exited' as const),
    interrupted.then(() => 'interrupted' as const),
  ]);
  monitor.news();
  if (outcome === 'done') {
    monitor.print('job done; waiting for the nodes to finish (held-out loss)');
    const finished = Promise.all(swarm.nodes.map((n) => n.exited));
    await Promise.race([finished, interrupted, new Promise((resolve) => setTimeout(resolve, FINISH_GRACE_MS).unref())]);
  } else {
    monitor.print(outcome === 'interrupted' ? 'stopping: nodes first (they hand their batches back), then the coordinator' : 'the coordinator exited');
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
  monitor.print(`stopped (exit codes: ${exits}). Job: ${where}/job.json; events: ${where}/<process>.jsonl, errors: ${where}/<process>.stderr`);
  monitor.print(`run the same swarm by hand: npx swarmtrain-coordinator --job ${where}/job.json --vocab ${VOCAB}, then npx swarmtrain node --join <its address>`);
  const clean = [swarm.coordinator, ...swarm.nodes].every((p) => p.exitCode === 0);
  return outcome !== 'coordinator exited' && clean ? 0 : 1;
}

process.exitCode = await main().catch((err: Error) => {
  console.error(`swarmtrain demo: ${err.message}`);
  return 1;
});
