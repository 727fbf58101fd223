// What a relay costs volunteers behind NATs, in the network namespaces of src/harness/netns.ts (root)
// with each home's public link shaped by tbf to 20 Mbit/s both ways:
// - time from `swarmtrain node` start to its first training step, direct (both routers forward their
//   node's announced port) vs relayed (symmetric NATs, nothing forwarded: through the coordinator's relay);
// - round-trip latency of a 4 KiB message (an expert call's size) and throughput of 512 KiB ones (a
//   delta's part; --bulk-kib for another size, e.g. 8192 for a state transfer's 8 MiB) between the two homes' hosts: direct, through the relay, and upgraded by DCUtR (the
//   caller's router forwards its port; the callee, reached through the relay, dials back directly).
// Run: npm run bench:links [-- --quick] [-- --only first-step|links]   (as root; roles: this file with --role)
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { canUseNamespaces, COORDINATOR_IP, NatNetwork, NODE_IP, NODE_PORT, type NatOptions } from '../src/harness/netns.ts';
import type { Proc } from '../src/harness/local-swarm.ts';
import { demoJob } from '../src/harness/demo-job.ts';
import { createHost, frameStream, isRelayed, type Host } from '../src/p2p/index.ts';
import { printTable } from './table.ts';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false }, role: { type: 'string' }, target: { type: 'string' },
    relay: { type: 'string' }, announce: { type: 'string' }, wait: { type: 'string' }, only: { type: 'string' },
    'bulk-kib': { type: 'string', default: '512' },
  },
});
const RATE = '20mbit';
const ECHO = '/swarmtrain-bench/echo/1';
const ROUNDS = values.quick ? 20 : 100;
const BULK_KIB = Number(values['bulk-kib']);
if (!Number.isInteger(BULK_KIB) || BULK_KIB < 1) throw new Error(`--bulk-kib must be a positive integer, got ${values['bulk-kib']}`);
/** Echoes of BULK_KIB each, 4 MiB (quick) or 16 MiB in all, and at least 2. */
const BULK = { bytes: BULK_KIB * 1024, count: Math.max(2, Math.round(((values.quick ? 4 : 16) * 1024) / BULK_KIB)) };
const JOB_STEPS = values.quick ? 8 : 16;

// --- role processes, run inside a namespace -------------------------------------------------

const print = (event: Record<string, unknown>) => console.log(JSON.stringify(event));
const listen = [`/ip4/${NODE_IP}/tcp/${NODE_PORT}`];

/** Echoes every framed message back on the stream it came on. */
async function serveEcho(host: Host): Promise<void> {
  await host.handle(ECHO, async (stream: Stream) => {
    const frames = frameStream(stream, 64 * 1024 * 1024);
    for (;;) {
      const message = await frames.read().catch(() => undefined);
      if (message === undefined) return;
      await frames.write(message.subarray());
    }
  }, { runOnLimitedConnection: true });
}

async function role(name: string): Promise<void> {
  if (name === 'relay') {
    const host = await createHost({ listen: [`/ip4/${COORDINATOR_IP}/tcp/4001`], relayServer: { mayReserve: () => true } });
    print({ event: 'ready', addrs: host.getMultiaddrs().map(String) });
    return;
  }
  const announce = values.announce ? [values.announce] : undefined;
  if (name === 'server') {
    // Behind its NAT with a reservation on the relay, or reachable at its announced (forwarded) port.
    const host = await createHost({
      listen, relayClient: true, reachability: { mode: announce ? 'public' : 'private' }, ...(announce ? { announce } : {}),
    });
    await serveEcho(host);
    await host.dial(multiaddr(values.relay!));
    for (let i = 0; i < 100 && !announce && !host.getMultiaddrs().some((a) => isRelayed(a)); i++) await sleep(100);
    print({ event: 'ready', addrs: host.getMultiaddrs().map(String) });
    return;
  }
  const host = await createHost({ listen, relayClient: true, reachability: { mode: 'public' }, ...(announce ? { announce } : {}) });
  const started = performance.now();
  const addrs = values.target!.split(',').map((a) => multiaddr(a));
  let connection = await host.dial(addrs);
  // Upgraded: the callee, reached through the relay, dials this host's announced address (DCUtR).
  for (let i = 0; i < 150 && values.wait === 'direct' && isRelayed(connection.remoteAddr); i++) {
    await sleep(100);
    connection = host.getConnections(connection.remotePeer).find((c) => !isRelayed(c.remoteAddr)) ?? connection;
  }
  const connectMs = performance.now() - started;
  const stream = await connection.newStream(ECHO, { runOnLimitedConnection: true });
  const frames = frameStream(stream, 64 * 1024 * 1024);
  const echo = async (bytes: Uint8Array) => {
    await frames.write(bytes);
    await frames.read();
  };
  const small = new Uint8Array(4096).fill(1);
  const latencies: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = performance.now();
    await echo(small);
    latencies.push(performance.now() - t0);
  }
  const big = new Uint8Array(BULK.bytes).fill(2);
  const t0 = performance.now();
  for (let i = 0; i < BULK.count; i++) await echo(big);
  const seconds = (performance.now() - t0) / 1e3;
  latencies.sort((x, y) => x - y);
  print({
    event: 'result', via: isRelayed(connection.remoteAddr) ? 'relay' : 'direct', connectMs,
    medianMs: latencies[latencies.length >> 1], p90Ms: latencies[Math.floor(latencies.length * 0.9)],
    // Each message goes there and back: the link carries 2 × bytes per echo, one way each.
    mbitPerSecond: (BULK.count * BULK.bytes * 8) / seconds / 1e6,
  });
  await stream.close();
  await host.stop();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// --- the orchestrator -------------------------------------------------------------------------

interface LinkSetting {
  name: string;
  nat: NatOptions;
  /** The server announces its forwarded port; the client announces its own (for DCUtR's dial-back). */
  serverForwarded: boolean;
  clientForwarded: boolean;
}

const LINK_SETTINGS: LinkSetting[] = [
  { name: 'direct (forwarded port)', nat: { symmetric: false, forward: true }, serverForwarded: true, clientForwarded: false },
  { name: 'relayed (symmetric NATs)', nat: { symmetric: true, forward: false }, serverForwarded: false, clientForwarded: false },
  { name: 'upgraded by DCUtR', nat: { symmetric: false, forward: true }, serverForwarded: false, clientForwarded: true },
];

async function measureLink(network: NatNetwork, dir: string, setting: LinkSetting): Promise<Record<string, any>> {
  const { a, b } = network.homes;
  network.setNat(a, { ...setting.nat, forward: setting.clientForwarded });
  network.setNat(b, { ...setting.nat, forward: setting.serverForwarded });
  const procs: Proc[] = [];
  const run = (ns: string, name: string, args: string[]) => {
    const proc = network.start(ns, name, 'bench/links.ts', ['--role', name, ...args], dir);
    procs.push(proc);
    return proc;
  };
  try {
    const relay = await run(network.public, 'relay', []).waitFor((e) => e.event === 'ready', 60_000, 'relay ready');
    const server = await run(b.node, 'server', [
      '--relay', (relay.addrs as string[])[0]!, ...(setting.serverForwarded ? ['--announce', `/ip4/${b.wanIp}/tcp/${NODE_PORT}`] : []),
    ]).waitFor((e) => e.event === 'ready', 60_000, 'server ready');
    // The client is given only what a plan would give it: public and publicly relayed addresses.
    const target = (server.addrs as string[]).filter((addr) => !addr.includes(NODE_IP)).join(',');
    const client = run(a.node, 'client', [
      '--target', target, '--bulk-kib', String(BULK_KIB), ...(setting.clientForwarded ? ['--announce', `/ip4/${a.wanIp}/tcp/${NODE_PORT}`, '--wait', 'direct'] : []),
    ]);
    return await client.waitFor((e) => e.event === 'result', 120_000, 'result');
  } finally {
    for (const proc of procs) proc.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
  }
}

/** Seconds from `swarmtrain node` start to its first step, for both nodes; `direct`: both ports forwarded and announced. */
async function timeToFirstStep(network: NatNetwork, dir: string, direct: boolean): Promise<number[]> {
  const { a, b } = network.homes;
  for (const home of [a, b]) network.setNat(home, { symmetric: !direct, forward: direct });
  const jobFile = join(dir, 'job.json');
  await writeFile(jobFile, JSON.stringify({ ...demoJob(JOB_STEPS * 2, 2), jobId: `bench-links-${direct ? 'direct' : 'relayed'}` }));
  const procs: Proc[] = [];
  try {
    const coordinator = network.start(network.public, 'coordinator', 'coordinator/bin.mjs', [
      '--job', jobFile, '--vocab', '1024', '--replication', '1', '--listen', `/ip4/${COORDINATOR_IP}/tcp/4001`,
    ], dir);
    procs.push(coordinator);
    const listening = await coordinator.waitFor((e) => e.event === 'listening', 120_000, 'listening');
    const started = performance.now();
    const nodes = [a, b].map((home) => network.start(home.node, `node-${home === a ? 'a' : 'b'}`, 'node/bin.mjs', [
      'node', '--join', (listening.addrs as string[])[0]!, '--memory-budget', '1GB', '--listen', `/ip4/${NODE_IP}/tcp/${NODE_PORT}`,
      ...(direct ? ['--announce', `/ip4/${home.wanIp}/tcp/${NODE_PORT}`, '--reachability', 'public'] : []),
    ], dir));
    procs.push(...nodes);
    return await Promise.all(nodes.map(async (node) => {
      await node.waitFor((e) => e.event === 'step', 180_000, 'a first step');
      return (performance.now() - started) / 1e3;
    }));
  } finally {
    for (const proc of procs) proc.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
  }
}

async function main(): Promise<void> {
  if (!canUseNamespaces()) throw new Error('bench:links builds network namespaces: run it as root, with iproute2 and nftables');
  const dir = await mkdtemp(join(tmpdir(), 'swarmtrain-links-'));
  const network = NatNetwork.build({ rate: RATE });
  try {
    console.log(`Node ${process.version}; each home's public link shaped to ${RATE} both ways (tbf)`);
    const firstStep: string[][] = [];
    for (const direct of values.only === 'links' ? [] : [true, false]) {
      const seconds = await timeToFirstStep(network, dir, direct);
      firstStep.push([direct ? 'direct (ports forwarded)' : 'relayed (symmetric NATs)', ...seconds.map((s) => s.toFixed(1))]);
    }
    printTable(['node start → first step', 'node A s', 'node B s'], firstStep);
    console.log();
    const rows: string[][] = [];
    for (const setting of values.only === 'first-step' ? [] : LINK_SETTINGS) {
      console.error(`measuring: ${setting.name}`);
      const r = await measureLink(network, dir, setting);
      rows.push([setting.name, r.via, r.connectMs.toFixed(0), r.medianMs.toFixed(1), r.p90Ms.toFixed(1), r.mbitPerSecond.toFixed(1)]);
    }
    printTable(['link', 'connection', 'connect ms', '4 KiB echo median ms', 'p90 ms', `${BULK_KIB} KiB echo Mbit/s each way`], rows);
  } finally {
    network.remove();
    await rm(dir, { recursive: true, force: true });
  }
}

if (values.role) await role(values.role);
else await main();
