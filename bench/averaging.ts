// Averaging bytes against group size: bytes each node sends per periodic round of a trunk-sized
// group, for groups of 2, 4 and 8 nodes, all-to-all against reduce-scatter and small groups per round
// (topology groups, at most 4 a group), in f32 and int8-block. Each node is a real libp2p host (TCP,
// noise, yamux) on 127.0.0.1 in this process; bytes are counted at the message codec as the daemon
// counts them (libp2p framing adds a few percent). Goal: bytes per node flat within 1.5× from 2 to 8.
// Then what the topology costs in quality: a small job (hidden 64, 2 layers, 4 experts, Moby-Dick) on 4
// node processes, every expert on every node, the same micro-batches under synchronous f32 gradients
// and under int8-block deltas every 4 steps all-to-all (waiting for each round, and overlapping it with the
// next steps), by reduce-scatter and in groups of 2; held-out loss at the end (mean over nodes, each
// evaluating its own model). Last, a round's CPU: 2 nodes holding every group of the demo job (`npm start`'s
// model: the trunk and 32 experts, 3.7 M values), int8-block with overlap as the demo averages, the per-value
// passes in JavaScript against the kernels' WASM SIMD passes a node uses (parameters on the kernel heap, as a
// node's are), alternating, CPU of this process (both holders and their hosts) per holder per round.
// Run: npm run bench:averaging [-- --only bytes|loss|cpu] [-- --quick]
import '../src/p2p/polyfill.ts';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { groupId, msgpackCodec, type Averaging, type JobSpec } from '../proto/index.ts';
import { createAverager, type AveragingOptions } from '../node/averaging/index.ts';
import { startSwarm } from '../src/harness/local-swarm.ts';
import { countingCodec, type Traffic } from '../node/traffic.ts';
import type { RoundPasses } from '../src/averaging/index.ts';
import { demoJob } from '../src/harness/demo-job.ts';
import { createKernels, type Kernels } from '../src/kernels/index.ts';
import { initTensors } from '../src/model/init.ts';
import { createConfig, expertOf } from '../src/model/config.ts';
import type { Param } from '../src/model/params.ts';
import { createHost, Rpc, type Host } from '../src/p2p/index.ts';
import { printTable } from './table.ts';

const { values: args } = parseArgs({ options: { only: { type: 'string' }, quick: { type: 'boolean', default: false } } });
const SECTIONS = ['bytes', 'loss', 'cpu'];
if (args.only !== undefined && !SECTIONS.includes(args.only)) throw new RangeError(`--only takes ${SECTIONS.join(', ')}, got ${args.only}`);
const SIZES = [2, 4, 8];
/** An even count: groups of 8 nodes alternate pairs and fours (a 2 × 4 grid), so a whole number of grid passes. */
const ROUNDS = 4;
/** A trunk-like group: four 256×256 projections and a 1024×128 embedding (393,216 values, 1.5 MiB in f32). */
const SHAPES = [[256, 256], [256, 256], [256, 256], [256, 256], [1024, 128]];
const VALUES = SHAPES.reduce((n, s) => n + s[0] * s[1], 0);
const CODECS = ['f32', 'int8-block:32'];
const TOPOLOGIES = ['all-to-all', 'reduce-scatter', 'groups'] as const;

interface Node {
  host: Host;
  traffic: Traffic;
  groups: Map<string, Param[]>;
  averager: ReturnType<typeof createAverager>;
}

/** Parameter groups a node holds, made afresh for each node. */
type GroupsOf = () => Map<string, Param[]>;
const trunkOnly: GroupsOf = () => new Map([
  ['trunk', SHAPES.map((shape, i) => ({ name: `t${i}`, shape, value: new Float32Array(shape[0] * shape[1]) }))],
]);

/** Starts `n` nodes holding `groupsOf`'s groups (default: the trunk above), each with its own host; returns them once all serve. */
async function startNodes(n: number, averaging: Partial<AveragingOptions>, groupsOf = trunkOnly, passes?: RoundPasses): Promise<Node[]> {
  const hosts = await Promise.all(Array.from({ length: n }, () => createHost()));
  const ids = hosts.map((h) => h.peerId.toString());
  const nodes = hosts.map((host) => {
    const traffic: Traffic = { sent: 0, received: 0 };
    const rpc = new Rpc({ transport: host, codec: countingCodec(msgpackCodec, traffic) });
    const groups = groupsOf();
    const directory = {
      members: () => ids,
      address: (peer: string) => hosts.find((h) => h.peerId.toString() === peer)?.getMultiaddrs(),
      admitted: () => true,
    };
    const averager = createAverager({ rpc, directory, groups: () => groups, ...(passes ? { passes } : {}) }, {
      mode: 'periodic', every: 1, deadlineMs: 60_000, jobId: 'bench', self: host.peerId.toString(), ...averaging,
    });
    return { host, traffic, groups, averager };
  });
  for (const node of nodes) {
    await node.averager.serve();
    for (const [group, params] of node.groups) node.averager.track(group, params);
  }
  return nodes;
}

/** Mean bytes sent per node per round, and the mean round time in seconds. */
async function measure(n: number, averaging: Partial<AveragingOptions>): Promise<{ bytes: number; seconds: number }> {
  const nodes = await startNodes(n, averaging);
  try {
    let seed = 1;
    const t0 = performance.now();
    for (let round = 0; round < ROUNDS; round++) {
      seed = trainALittle(nodes, seed);
      await Promise.all(nodes.map((node) => node.averager.afterUpdate(round)));
    }
    const seconds = (performance.now() - t0) / 1000 / ROUNDS;
    const bytes = nodes.reduce((sum, node) => sum + node.traffic.sent, 0) / n / ROUNDS;
    return { bytes, seconds };
  } finally {
    await Promise.all(nodes.map((node) => node.host.stop()));
  }
}

/** A fresh random local update on every node's parameters (a deterministic xorshift, small values); returns the seed. */
function trainALittle(nodes: Node[], seed: number): number {
  for (const node of nodes) {
    for (const params of node.groups.values()) {
      for (const p of params) {
        for (let j = 0; j < p.value.length; j++) {
          seed ^= seed << 13;
          seed ^= seed >>> 17;
          seed ^= seed << 5;
          p.value[j] += ((seed >>> 0) / 2 ** 32 - 0.5) * 1e-3;
        }
      }
    }
  }
  return seed;
}

async function bytesTable(): Promise<void> {
  const rows: string[][] = [];
  for (const codec of CODECS) {
    const deltaBytes = codec === 'f32' ? 4 * VALUES : VALUES + (VALUES / 32) * 4; // the codec's tensor data of one whole delta
    for (const topology of TOPOLOGIES) {
      let baseline = 0;
      for (const n of SIZES) {
        const { bytes, seconds } = await measure(n, { codec, topology });
        baseline ||= bytes;
        const ratios = [bytes / deltaBytes, bytes / baseline].map((r) => r.toFixed(2));
        rows.push([codec, topology, String(n), (bytes / 2 ** 20).toFixed(2), ...ratios, seconds.toFixed(2)]);
      }
    }
  }
  console.log(`trunk group of ${VALUES.toLocaleString('en')} values, ${ROUNDS} rounds per row; bytes at the codec (requests and replies); `
    + `groups of at most 4; load average ${loadavg()[0].toFixed(2)}`);
  printTable(['codec', 'topology', 'nodes', 'MiB sent / node / round', '× one delta', '× at 2 nodes', 's / round (noisy)'], rows);
}

const LOSS_NODES = 4;
const LOSS_STEPS_PER_NODE = args.quick ? 24 : 48;
const LOSS_MODEL = {
  hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2,
  expertHiddenSize: 64, maxSeqLen: 32,
};
const int8Every4 = (extra: Partial<Averaging>): Averaging => ({
  mode: 'periodic', every: 4, deadlineMs: 10_000, codec: 'int8-block', ...extra,
});
const LOSS_SETTINGS: { label: string; averaging: Averaging }[] = [
  { label: 'synchronous f32 gradients', averaging: { mode: 'sync', every: 1, deadlineMs: 30_000 } },
  { label: 'int8-block every 4, all-to-all', averaging: int8Every4({}) },
  { label: 'int8-block every 4, all-to-all, overlap', averaging: int8Every4({ overlap: true }) },
  { label: 'int8-block every 4, reduce-scatter', averaging: int8Every4({ topology: 'reduce-scatter' }) },
  { label: 'int8-block every 4, groups of 2', averaging: int8Every4({ topology: 'groups', groupSize: 2 }) },
];

function lossJob(averaging: Averaging): JobSpec {
  return {
    jobId: 'bench-averaging-loss', model: LOSS_MODEL, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 11, corpus: 'moby-dick',
    documents: { from: 0, to: 40 }, batchSize: 4, seqLen: 32, heldOutFraction: 0.05, totalBatches: LOSS_STEPS_PER_NODE * LOSS_NODES,
    expectedNodes: LOSS_NODES, lr: 1e-2, minLr: 1e-3, warmupSteps: 5, averaging, expertTimeoutMs: 5000,
  };
}

/** Held-out loss of each node at the end of the job, and its averaging rounds. */
async function heldOut(averaging: Averaging): Promise<{ losses: number[]; rounds: number[]; seconds: number }> {
  const swarm = await startSwarm(lossJob(averaging), [
    '--vocab', '300', '--replication', String(LOSS_NODES), '--heartbeat-ms', '500', '--node-timeout-ms', '30000', '--lease-ms', '120000',
  ]);
  try {
    const nodes = Array.from({ length: LOSS_NODES }, () => swarm.startNode(['--threads', '1']));
    const started = await swarm.coordinator.waitFor((e) => e.event === 'started', 120_000, 'started');
    const done = await swarm.coordinator.waitFor((e) => e.event === 'done', 900_000, 'done');
    const finished = await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 120_000, 'finished')));
    const rounds = nodes.map((n) => n.events.findLast((e) => e.event === 'step')?.averaging?.rounds ?? 0);
    return { losses: finished.map((e) => e.heldOut.loss as number), rounds, seconds: (done.at - started.at) / 1e3 };
  } finally {
    await swarm.stop();
  }
}

async function lossTable(): Promise<void> {
  const rows: string[][] = [];
  let baseline: number | undefined;
  for (const { label, averaging } of LOSS_SETTINGS) {
    console.error(`held-out loss: ${label}`);
    const { losses, rounds, seconds } = await heldOut(averaging);
    const loss = losses.reduce((a, b) => a + b, 0) / losses.length;
    baseline ??= loss;
    const spread = Math.max(...losses) - Math.min(...losses);
    const difference = `${(100 * (loss / baseline - 1)).toFixed(1)}%`;
    rows.push([label, loss.toFixed(4), difference, spread.toFixed(4), rounds.join(' '), seconds.toFixed(0)]);
  }
  console.log(`held-out loss: ${LOSS_NODES} node processes, ${LOSS_STEPS_PER_NODE * LOSS_NODES} micro-batches of 4 × 32 tokens in all, `
    + `every expert on every node; ${cpus().length} cores, load average ${loadavg()[0].toFixed(2)}; `
    + 'one run per setting (runs of one setting differ by ~1-2%)');
  const columns = ['averaging', 'held-out loss', 'vs synchronous', 'spread over nodes', 'rounds per node (all its groups)', 'job s (noisy)'];
  printTable(columns, rows);
}

const CPU_ROUNDS = args.quick ? 6 : 12;
const CPU_REPEATS = args.quick ? 2 : 3;

/** The demo job's groups (the trunk and every expert) with its initial values, on the kernel heap when `kernels` is given. */
function demoGroups(kernels?: Kernels): GroupsOf {
  const config = createConfig({ ...demoJob(1, 1).model, vocabSize: 1024 });
  return () => {
    const groups = new Map<string, Param[]>();
    for (const [name, tensor] of initTensors(config, 1)) {
      const value = kernels ? kernels.heap.f32(tensor.data.length) : new Float32Array(tensor.data.length);
      value.set(tensor.data);
      const owner = expertOf(name);
      const group = groupId(owner ? { kind: 'expert', ...owner } : { kind: 'trunk' });
      groups.set(group, [...(groups.get(group) ?? []), { name, shape: tensor.shape, value }]);
    }
    return groups;
  };
}

/**
 * Median CPU ms of this process per holder per round (the first round, which allocates, left out), and the
 * groups and values each holder averaged.
 */
async function roundCpu(kernels: Kernels | undefined): Promise<{ ms: number; groups: number; values: number }> {
  const { averaging } = demoJob(1, 2);
  const nodes = await startNodes(2, { ...averaging, every: 1, deadlineMs: 60_000 }, demoGroups(kernels), kernels?.deltas);
  try {
    const cpu: number[] = [];
    let seed = 1;
    for (let round = 0; round < CPU_ROUNDS; round++) {
      seed = trainALittle(nodes, seed); // not counted: training's part
      const start = process.cpuUsage();
      await Promise.all(nodes.map((node) => node.averager.afterUpdate(round)));
      await Promise.all(nodes.map((node) => node.averager.settle()));
      const used = process.cpuUsage(start);
      if (round > 0) cpu.push((used.user + used.system) / 1000 / nodes.length);
    }
    const held = [...nodes[0].groups.values()].flat();
    const ms = cpu.sort((a, b) => a - b)[cpu.length >> 1];
    return { ms, groups: nodes[0].groups.size, values: held.reduce((n, p) => n + p.value.length, 0) };
  } finally {
    await Promise.all(nodes.map((node) => node.host.stop()));
    if (kernels) for (const node of nodes) for (const params of node.groups.values()) params.forEach((p) => kernels.heap.release(p.value));
  }
}

async function cpuTable(): Promise<void> {
  const kernels = await createKernels();
  try {
    const runs: { js: number; wasm: number }[] = [];
    let held = { groups: 0, values: 0 };
    for (let repeat = 0; repeat < CPU_REPEATS; repeat++) {
      const js = await roundCpu(undefined);
      const wasm = await roundCpu(kernels);
      runs.push({ js: js.ms, wasm: wasm.ms });
      held = wasm;
    }
    const what = `a round of the demo job's ${held.groups} groups (${(held.values / 1e6).toFixed(2)} M values) between 2 holders`;
    console.log(`${what}, int8-block, overlap; `
      + `median of ${CPU_ROUNDS - 1} rounds per run, runs alternating; load average ${loadavg()[0].toFixed(2)}`);
    const rows = runs.flatMap(({ js, wasm }, i) => [
      [String(i + 1), 'JavaScript (jsPasses)', js.toFixed(1), '1.00×'],
      [String(i + 1), 'kernels (WASM SIMD)', wasm.toFixed(1), `${(wasm / js).toFixed(2)}×`],
    ]);
    printTable(['run', 'per-value passes', 'CPU ms per holder per round', 'vs JavaScript'], rows);
  } finally {
    await kernels.close();
  }
}

if (args.only === undefined || args.only === 'bytes') await bytesTable();
if (args.only === undefined || args.only === 'loss') await lossTable();
if (args.only === undefined || args.only === 'cpu') await cpuTable();
