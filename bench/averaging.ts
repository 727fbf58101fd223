// Averaging bytes against group size: bytes each node sends per periodic round of a trunk-sized
// group, for groups of 2, 4 and 8 nodes, all-to-all against reduce-scatter, in f32 and int8-block.
// Each node is a real libp2p host (TCP, noise, yamux) on 127.0.0.1 in this process; bytes are
// counted at the message codec as the daemon counts them (libp2p framing adds a few percent).
// Goal: reduce-scatter's bytes per node flat within 1.5× from 2 to 8 nodes.
// Run: npx tsx bench/averaging.ts
import '../src/p2p/polyfill.ts';
import { msgpackCodec } from '../proto/index.ts';
import { createAverager, type AveragingOptions } from '../node/averaging/index.ts';
import { countingCodec, type Traffic } from '../node/traffic.ts';
import type { Param } from '../src/model/params.ts';
import { createHost, Rpc, type Host } from '../src/p2p/index.ts';
import { printTable } from './table.ts';

const SIZES = [2, 4, 8];
const ROUNDS = 3;
/** A trunk-like group: four 256×256 projections and a 1024×128 embedding (393,216 values, 1.5 MiB in f32). */
const SHAPES = [[256, 256], [256, 256], [256, 256], [256, 256], [1024, 128]];
const VALUES = SHAPES.reduce((n, s) => n + s[0] * s[1], 0);
const CODECS = ['f32', 'int8-block:32'];
const TOPOLOGIES = ['all-to-all', 'reduce-scatter'] as const;

interface Node {
  host: Host;
  traffic: Traffic;
  params: Param[];
  averager: ReturnType<typeof createAverager>;
}

/** Starts `n` nodes holding the trunk, each with its own host; returns them once all serve. */
async function startNodes(n: number, averaging: Partial<AveragingOptions>): Promise<Node[]> {
  const hosts = await Promise.all(Array.from({ length: n }, () => createHost()));
  const ids = hosts.map((h) => h.peerId.toString());
  const nodes = hosts.map((host) => {
    const traffic: Traffic = { sent: 0, received: 0 };
    const rpc = new Rpc({ transport: host, codec: countingCodec(msgpackCodec, traffic) });
    const params: Param[] = SHAPES.map((shape, i) => ({ name: `t${i}`, shape, value: new Float32Array(shape[0] * shape[1]) }));
    const directory = {
      members: () => ids,
      address: (peer: string) => hosts.find((h) => h.peerId.toString() === peer)?.getMultiaddrs(),
      admitted: () => true,
    };
    const averager = createAverager({ rpc, directory, groups: () => new Map([['trunk', params]]) }, {
      mode: 'periodic', every: 1, deadlineMs: 60_000, jobId: 'bench', self: host.peerId.toString(), ...averaging,
    });
    return { host, traffic, params, averager };
  });
  for (const node of nodes) {
    await node.averager.serve();
    node.averager.track('trunk', node.params);
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
      // A fresh random local update on every node (a deterministic xorshift, small values).
      for (const node of nodes) {
        for (const p of node.params) {
          for (let j = 0; j < p.value.length; j++) {
            seed ^= seed << 13;
            seed ^= seed >>> 17;
            seed ^= seed << 5;
            p.value[j] += ((seed >>> 0) / 2 ** 32 - 0.5) * 1e-3;
          }
        }
      }
      await Promise.all(nodes.map((node) => node.averager.afterUpdate(round)));
    }
    const seconds = (performance.now() - t0) / 1000 / ROUNDS;
    const bytes = nodes.reduce((sum, node) => sum + node.traffic.sent, 0) / n / ROUNDS;
    return { bytes, seconds };
  } finally {
    await Promise.all(nodes.map((node) => node.host.stop()));
  }
}

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
console.log(`trunk group of ${VALUES.toLocaleString('en')} values, ${ROUNDS} rounds per row; bytes at the codec (requests and replies)`);
printTable(['codec', 'topology', 'nodes', 'MiB sent / node / round', '× one delta', '× at 2 nodes', 's / round (noisy)'], rows);
