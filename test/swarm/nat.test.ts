// Volunteers behind NATs, in network namespaces made here: a public namespace with the coordinator (its
// circuit relay on by default), two private ones each behind its own NAT router (nftables masquerade);
// the real CLI processes run inside them (`ip netns exec`). Both homes use the same private subnet, so a
// private address handed to the other side could only reach the wrong host. Each node holds experts the
// other needs (replication 1): expert calls, deltas and state flow both ways, through the relay first;
// once router A forwards node A's announced port, connections become direct. Behind symmetric NATs
// (masquerade random) and with nothing forwarded, the job still finishes, over the relay alone.
// Root only; skipped without root or `ip netns` unless CI=true, where it must run.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import { Proc, type SwarmEvent } from '../../src/harness/local-swarm.ts';

vi.setConfig({ testTimeout: 180_000 });

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const PREFIX = `stnat${process.pid}`;
const PUBLIC = `${PREFIX}-pub`;
/** Addresses from a public range (11.0.0.0/8), used only inside the namespaces, which have no link to the host. */
const COORDINATOR_IP = '11.0.0.1';
const NODE_PORT = 4002;
const homes = {
  a: { router: `${PREFIX}-ra`, node: `${PREFIX}-na`, wanIp: '11.0.1.2', pubIp: '11.0.1.1' },
  b: { router: `${PREFIX}-rb`, node: `${PREFIX}-nb`, wanIp: '11.0.2.2', pubIp: '11.0.2.1' },
};
const NODE_IP = '192.168.1.2'; // in both homes
const ROUTER_LAN_IP = '192.168.1.1';

function canUseNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const runnable = canUseNamespaces() || process.env.CI === 'true';

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const inNs = (ns: string, command: string[], input?: string) =>
  execFileSync('ip', ['netns', 'exec', ns, ...command], { input, stdio: ['pipe', 'ignore', 'pipe'] });

/** A veth pair from namespace `a` (interface `ifA`, address `addrA`) to `b`. */
function link(a: string, ifA: string, addrA: string, b: string, ifB: string, addrB: string): void {
  ip('-n', a, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', b);
  ip('-n', a, 'addr', 'add', addrA, 'dev', ifA);
  ip('-n', b, 'addr', 'add', addrB, 'dev', ifB);
  ip('-n', a, 'link', 'set', ifA, 'up');
  ip('-n', b, 'link', 'set', ifB, 'up');
}

function buildNetwork(): void {
  const all = [PUBLIC, ...Object.values(homes).flatMap((h) => [h.router, h.node])];
  for (const ns of all) {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  ip('-n', PUBLIC, 'addr', 'add', `${COORDINATOR_IP}/32`, 'dev', 'lo');
  inNs(PUBLIC, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  for (const [name, home] of Object.entries(homes)) {
    link(PUBLIC, `to-${name}`, `${home.pubIp}/24`, home.router, 'wan', `${home.wanIp}/24`);
    link(home.router, 'lan', `${ROUTER_LAN_IP}/24`, home.node, 'eth0', `${NODE_IP}/24`);
    ip('-n', home.router, 'route', 'add', 'default', 'via', home.pubIp);
    ip('-n', home.node, 'route', 'add', 'default', 'via', ROUTER_LAN_IP);
    inNs(home.router, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  }
}

/** Router `home`'s NAT: masquerade (port-preserving, or `random`: a new port per destination, symmetric), optionally a port forward. */
function setNat(home: (typeof homes)['a'], options: { symmetric: boolean; forward: boolean }): void {
  const forward = options.forward ? `iifname "wan" tcp dport ${NODE_PORT} dnat to ${NODE_IP}:${NODE_PORT}` : '';
  inNs(home.router, ['nft', '-f', '-'], `flush ruleset
table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; ${forward}; }
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade${options.symmetric ? ' random' : ''}; }
}
`);
}

/** Removes this run's namespaces, and those of earlier runs whose process is gone (killed before its cleanup). */
function removeNetwork(): void {
  const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((line) => line.split(' ')[0] ?? '');
  const ours = (name: string) => {
    const pid = /^stnat(\d+)-/.exec(name)?.[1];
    return pid !== undefined && (Number(pid) === process.pid || !alive(Number(pid)));
  };
  for (const ns of names.filter(ours)) {
    try {
      ip('netns', 'del', ns);
    } catch {
      // already gone
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const MODEL = {
  hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64, maxSeqLen: 32,
};
const JOB: JobSpec = {
  jobId: 'nat-job', model: MODEL, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 7, corpus: 'moby-dick',
  documents: { from: 0, to: 30 }, batchSize: 4, seqLen: 32, heldOutFraction: 0.05, totalBatches: 32, expectedNodes: 2,
  lr: 1e-2, minLr: 1e-3, warmupSteps: 5, averaging: { mode: 'periodic', every: 4, deadlineMs: 5000 }, expertTimeoutMs: 10_000,
};

let dir: string;
let processes: Proc[] = [];

function startIn(ns: string, name: string, script: string, args: string[]): Proc {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, join(repoRoot, script), ...args], {
    cwd: repoRoot, env: { ...process.env, FORCE_COLOR: '0' },
  });
  const proc = new Proc(name, child, dir);
  processes.push(proc);
  return proc;
}

/** The coordinator in the public namespace, and one node per home; resolves once the job is done. */
async function runJob(nodeArgs: { a: string[]; b: string[] }, onBothJoined?: (nodes: Proc[]) => void) {
  const jobFile = join(dir, 'job.json');
  await writeFile(jobFile, JSON.stringify(JOB));
  const coordinator = startIn(PUBLIC, 'coordinator', 'coordinator/bin.mjs', [
    '--job', jobFile, '--vocab', '300', '--replication', '1', '--heartbeat-ms', '300', '--listen', `/ip4/${COORDINATOR_IP}/tcp/4001`,
  ]);
  const listening = await coordinator.waitFor((e) => e.event === 'listening', 60_000, 'listening');
  const join_ = (listening.addrs as string[])[0]!;
  const nodes = (['a', 'b'] as const).map((name) => startIn(homes[name].node, `node-${name}`, 'node/bin.mjs', [
    'node', '--join', join_, '--memory-budget', '512MB', '--listen', `/ip4/${NODE_IP}/tcp/${NODE_PORT}`, ...nodeArgs[name],
  ]));
  await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'joined', 60_000, 'joined')));
  onBothJoined?.(nodes);
  await coordinator.waitFor((e) => e.event === 'done', 150_000, 'done');
  await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 30_000, 'finished')));
  return { coordinator, nodes, ids: nodes.map((n) => n.events.find((e) => e.event === 'joined')!.node as string) };
}

/** Every micro-batch completed once, by the coordinator's count, and trained once by the nodes. */
function expectEveryBatchOnce(coordinator: Proc, nodes: Proc[]): void {
  const done = coordinator.events.find((e) => e.event === 'done')!;
  expect(done).toMatchObject({ completed: JOB.totalBatches, total: JOB.totalBatches });
  const counters = coordinator.events.filter((e) => e.event === 'progress').at(-1)!.counters;
  expect(counters).toMatchObject({ completed: JOB.totalBatches, rejected: 0, reissued: 0 });
  const trained = nodes.flatMap((n) => n.events.filter((e) => e.event === 'step').map((e) => e.batch as number));
  expect(trained.sort((x, y) => x - y)).toEqual([...Array(JOB.totalBatches).keys()]);
}

/** Each node held experts nobody else held, and called the other's: expert calls went both ways. */
function expectCallsBothWays(coordinator: Proc, nodes: Proc[], ids: string[]): void {
  const done = coordinator.events.findIndex((e) => e.event === 'done');
  const plan = coordinator.events.slice(0, done).filter((e) => e.event === 'plan').at(-1)!; // nodes leave (re-plans) after it
  for (const id of ids) expect(plan.holders.some((h: { holders: string[] }) => h.holders.length === 1 && h.holders[0] === id)).toBe(true);
  for (const node of nodes) {
    const last = node.events.filter((e) => e.event === 'step').at(-1)!;
    expect(last.remoteCalls, node.name).toBeGreaterThan(0);
    expect(last.served, node.name).toBeGreaterThan(0);
  }
}

const linksTo = (node: Proc, peer: string) => node.events.filter((e) => e.event === 'link' && e.peer === peer);
const transfersTo = (node: Proc, peer: string) => node.events.filter((e) => e.event === 'transfer' && e.peer === peer);
/** The first connection a node has through a relay (only nodes are reached that way). */
const relayedLink = (node: Proc) => node.waitFor((e) => e.event === 'link' && e.via === 'relay', 60_000, 'a relayed link');
const summary = (events: SwarmEvent[]) => events.map((e) => `${e.event} ${e.via ?? ''} ${e.direction ?? e.protocol ?? ''}`).join('; ');

describe.skipIf(!runnable)('volunteers behind NATs (network namespaces)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'swarmtrain-nat-'));
    removeNetwork();
    buildNetwork();
  });

  afterEach(async () => {
    for (const p of processes) p.kill('SIGKILL');
    await Promise.all(processes.map((p) => p.exited));
    processes = [];
  });

  afterAll(async () => {
    removeNetwork();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('both nodes join through NATs, call each other through the relay, then directly once a port is forwarded', async () => {
    setNat(homes.a, { symmetric: false, forward: false });
    setNat(homes.b, { symmetric: false, forward: false });
    // Node A announces the public port its router will forward (and reserves a slot meanwhile); B finds it is behind a NAT.
    const { coordinator, nodes, ids } = await runJob({
      a: ['--announce', `/ip4/${homes.a.wanIp}/tcp/${NODE_PORT}`, '--reachability', 'private'],
      b: [],
    }, (joined) => {
      // Once expert calls and a round of deltas went through the relay, router A starts forwarding the announced port.
      const relayed = (e: SwarmEvent) => e.event === 'transfer' && e.via === 'relay';
      void Promise.all([...joined.map(relayedLink), Promise.any(joined.map((n) => n.waitFor(relayed, 90_000, 'a relayed transfer')))])
        .then(() => setNat(homes.a, { symmetric: false, forward: true }));
    });
    const [a, b] = nodes as [Proc, Proc];
    expectEveryBatchOnce(coordinator, nodes);
    expectCallsBothWays(coordinator, nodes, ids);
    for (const node of nodes) expect(node.events.some((e) => e.event === 'relay-reserved'), node.name).toBe(true);
    for (const [node, peer] of [[a, ids[1]!], [b, ids[0]!]] as const) {
      const links = linksTo(node, peer);
      expect(links[0]?.via, `${node.name}: ${summary(links)}`).toBe('relay');
      expect(links.some((l) => l.via === 'direct'), `${node.name}: ${summary(links)}`).toBe(true);
    }
    // Deltas and state went through the relay first, and directly once they could.
    const transfers = [...transfersTo(a, ids[1]!), ...transfersTo(b, ids[0]!)];
    expect(transfers.some((t) => t.via === 'relay'), summary(transfers)).toBe(true);
    expect(transfers.some((t) => t.via === 'direct'), summary(transfers)).toBe(true);
  });

  it('behind symmetric NATs with nothing forwarded, the job finishes over the relay alone', async () => {
    setNat(homes.a, { symmetric: true, forward: false });
    setNat(homes.b, { symmetric: true, forward: false });
    const { coordinator, nodes, ids } = await runJob({ a: [], b: [] });
    const [a, b] = nodes as [Proc, Proc];
    expectEveryBatchOnce(coordinator, nodes);
    expectCallsBothWays(coordinator, nodes, ids);
    for (const [node, peer] of [[a, ids[1]!], [b, ids[0]!]] as const) {
      const links = linksTo(node, peer);
      expect(links.length, node.name).toBeGreaterThan(0);
      expect(links.every((l) => l.via === 'relay'), `${node.name}: ${summary(links)}`).toBe(true);
      expect(transfersTo(node, peer).every((t) => t.via === 'relay')).toBe(true);
    }
  });
});
