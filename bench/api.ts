// The coordinator's HTTP API under load: requests/s and latency of the read routes (bounded in
// requests and time), SSE fan-out (server event to all N clients), and the server's CPU from /proc.
// Run: npm run bench:api -- --url http://127.0.0.1:8080 [--token t] [--pid <coordinator pid>]
//      npm run bench:api -- --fake   (serves the API over the test FakeSwarmService in a child process)
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { SwarmEvent } from '../coordinator/api/service.ts';
import { CoordinatorClient } from '../coordinator/client.ts';
import { printTable } from './table.ts';

export interface ApiBenchOptions {
  url: string;
  token?: string;
  /** The coordinator's process: its CPU is read from /proc/<pid>/stat around each phase. */
  pid?: number;
  /** Per read route: at most this many requests... (default 2000) */
  requests?: number;
  /** ...and at most this long (default 5 s). */
  seconds?: number;
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /** Event-stream clients (default 100). */
  sseClients?: number;
  /** Events to time (default 50), waited for at most `seconds`. */
  sseEvents?: number;
  /** Makes the server emit an event; called every 50 ms during the SSE phase (without it, the bench waits for the swarm's own events). */
  emitEvent?: () => void;
}

export interface ApiBenchRow {
  what: string;
  count: number;
  perSecond?: number;
  p50Ms: number;
  p99Ms: number;
  /** The coordinator's CPU over the phase, in % of one core, minus its idle share. */
  extraCpuPercent?: number;
}

const quantile = (sorted: number[], q: number) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);

/** CPU seconds (user + system) of a process so far. */
function cpuSeconds(pid: number): number {
  // Fields after the command name (which may hold spaces) start at state; utime and stime are fields 14 and 15.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const TICKS_PER_SECOND = 100;
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** Runs `phase`, returning its result and the pid's CPU share (% of one core) while it ran. */
async function withCpu<T>(pid: number | undefined, phase: () => Promise<T>): Promise<[T, number | undefined]> {
  const cpu0 = pid === undefined ? 0 : cpuSeconds(pid);
  const start = performance.now();
  const result = await phase();
  const seconds = (performance.now() - start) / 1000;
  return [result, pid === undefined ? undefined : (100 * (cpuSeconds(pid) - cpu0)) / seconds];
}

async function loadRoute(url: string, headers: Record<string, string>, requests: number, seconds: number, concurrency: number) {
  const latencies: number[] = [];
  const deadline = performance.now() + seconds * 1000;
  let issued = 0;
  const worker = async () => {
    while (issued < requests && performance.now() < deadline) {
      issued++;
      const start = performance.now();
      const response = await fetch(url, { headers });
      await response.arrayBuffer();
      if (!response.ok) throw new Error(`${url} answered ${response.status}`);
      latencies.push(performance.now() - start);
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { latencies: latencies.sort((a, b) => a - b), seconds: (performance.now() - start) / 1000 };
}

/** The time from an event's `at` (server clock) to the last of the clients receiving it, per event. */
async function fanOut(client: CoordinatorClient, clients: number, events: number, seconds: number, emit?: () => void): Promise<number[]> {
  const abort = new AbortController();
  const streams = await Promise.all(Array.from({ length: clients }, () => client.events(abort.signal)));
  const arrivals = new Map<number, { at: number; count: number; last: number }>();
  const spreads: number[] = [];
  let resolveAll!: () => void;
  const allDone = new Promise<void>((resolve) => (resolveAll = resolve));
  const read = async (stream: AsyncGenerator<SwarmEvent>) => {
    for await (const event of stream) {
      const seen = arrivals.get(event.seq) ?? { at: event.at, count: 0, last: 0 };
      seen.count++;
      seen.last = Date.now();
      arrivals.set(event.seq, seen);
      if (seen.count === clients) {
        spreads.push(seen.last - seen.at);
        if (spreads.length >= events) resolveAll();
      }
    }
  };
  const readers = streams.map(read);
  const ticker = emit === undefined ? undefined : setInterval(emit, 50);
  await Promise.race([allDone, new Promise((resolve) => setTimeout(resolve, seconds * 1000))]);
  clearInterval(ticker);
  abort.abort();
  await Promise.allSettled(readers);
  return spreads.sort((a, b) => a - b);
}

/** Measures a running coordinator's API; returns one row per phase. */
export async function measureApi(options: ApiBenchOptions): Promise<ApiBenchRow[]> {
  const { url, token, pid, requests = 2000, seconds = 5, concurrency = 8, sseClients = 100, sseEvents = 50 } = options;
  const client = new CoordinatorClient({ url, token });
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const jobs = await client.jobs();
  const job = jobs.find((j) => j.state === 'running') ?? jobs.at(-1);
  const [, idleCpu] = await withCpu(pid, () => new Promise((resolve) => setTimeout(resolve, 1000)));
  const extra = (cpu: number | undefined) => (cpu === undefined || idleCpu === undefined ? undefined : cpu - idleCpu);

  const routes = ['/api/jobs', '/api/nodes', '/api/swarm', ...(job ? [`/api/jobs/${job.id}/metrics?points=500`] : [])];
  const rows: ApiBenchRow[] = [];
  for (const route of routes) {
    await loadRoute(`${client.url}${route}`, headers, 200, seconds, concurrency); // warm-up: connections, JIT
    const load = () => loadRoute(`${client.url}${route}`, headers, requests, seconds, concurrency);
    const [{ latencies, seconds: took }, cpu] = await withCpu(pid, load);
    rows.push({
      what: `GET ${route}`, count: latencies.length, perSecond: latencies.length / took,
      p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99), extraCpuPercent: extra(cpu),
    });
  }
  const [spreads, cpu] = await withCpu(pid, () => fanOut(client, sseClients, sseEvents, seconds * 2, options.emitEvent));
  rows.push({
    what: `SSE event to all ${sseClients} clients`, count: spreads.length, p50Ms: quantile(spreads, 0.5), p99Ms: quantile(spreads, 0.99),
    extraCpuPercent: extra(cpu),
  });
  return rows;
}

export function printApiBench(rows: ApiBenchRow[]): void {
  const fixed = (x: number | undefined, digits: number) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits));
  printTable(['what', 'n', 'req/s', 'p50 ms', 'p99 ms', 'extra CPU %'], rows.map((row) => [
    row.what, String(row.count), fixed(row.perSecond, 0), fixed(row.p50Ms, 2), fixed(row.p99Ms, 2), fixed(row.extraCpuPercent, 0),
  ]));
}

/** The API over a FakeSwarmService with a busy-looking swarm (50 nodes, a job with 5,000 points), emitting a metrics event every 100 ms. */
async function serveFake(): Promise<void> {
  const { buildApi, listenApi } = await import('../coordinator/http/app.ts');
  const { FakeSwarmService } = await import('../test/coordinator/fake-service.ts');
  const service = new FakeSwarmService();
  for (let i = 0; i < 50; i++) service.setNode({ nodeId: `node-${i}`, status: 'training', experts: [{ layer: i % 4, expert: i % 8 }] });
  const job = await service.createJob({ totalBatches: 1_000_000 });
  for (let i = 0; i < 5000; i++) service.advance(job.id, 1);
  const url = await listenApi(buildApi({ service, apiToken: 'bench' }), '127.0.0.1:0');
  setInterval(() => service.advance(job.id, 1), 100);
  console.log(JSON.stringify({ url, pid: process.pid }));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' }, token: { type: 'string' }, pid: { type: 'string' }, fake: { type: 'boolean' }, 'serve-fake': { type: 'boolean' },
      requests: { type: 'string' }, seconds: { type: 'string' }, clients: { type: 'string' },
    },
  });
  if (values['serve-fake']) return serveFake();
  const common = {
    requests: values.requests ? Number(values.requests) : undefined, seconds: values.seconds ? Number(values.seconds) : undefined,
    sseClients: values.clients ? Number(values.clients) : undefined,
  };
  if (values.fake) {
    const args = ['--import', 'tsx', new URL(import.meta.url).pathname, '--serve-fake'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const [line] = await createInterface({ input: child.stdout })[Symbol.asyncIterator]().next().then((r) => [r.value as string]);
      const { url, pid } = JSON.parse(line) as { url: string; pid: number };
      printApiBench(await measureApi({ url, token: 'bench', pid, ...common }));
    } finally {
      child.kill();
    }
    return;
  }
  if (values.url === undefined) throw new Error('give --url <coordinator API> (and --token, --pid), or --fake');
  printApiBench(await measureApi({ url: values.url, token: values.token, pid: values.pid ? Number(values.pid) : undefined, ...common }));
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) await main();
