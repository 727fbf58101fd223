// Base weights over loopback libp2p: a random-weight checkpoint of the demo config (~60 MiB f32) in 4 MiB
// chunks. Baseline: the same chunks requested one by one over bare RPC (no store, no checks); every fetch verifies
// each chunk. The coordinator and both nodes share this one process (and its core): see bench/swarm-lora.ts for processes.
// Run: npx tsx bench/weights.ts   (numbers on a shared machine are noisy: compare ratios within one run)
import '../src/p2p/polyfill.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { msgpackCodec } from '../proto/index.ts';
import { saveHfModel } from '../src/io/hf.ts';
import { DEMO_CONFIG, parameterShapes, type F32Tensor } from '../src/model/config.ts';
import { createHost, Rpc } from '../src/p2p/index.ts';
import { BlobStore, buildManifest, serveBlobs, WeightFetcher, type WeightSource } from '../src/weights/index.ts';
import { printTable } from './table.ts';

const MiB = 1024 * 1024;
const root = await mkdtemp(join(tmpdir(), 'swarmtrain-bench-weights-'));
const hosts = await Promise.all([createHost(), createHost(), createHost()]);
try {
  const params = new Map<string, F32Tensor>();
  let seed = 1;
  for (const [name, shape] of parameterShapes(DEMO_CONFIG)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5;
    params.set(name, { shape, data });
  }
  const dir = join(root, 'checkpoint');
  await saveHfModel(dir, { config: DEMO_CONFIG, layout: { family: 'mixtral', packedExperts: false }, params });

  const timed = async <T>(run: () => Promise<T>): Promise<[T, number]> => {
    const start = performance.now();
    const value = await run();
    return [value, (performance.now() - start) / 1000];
  };
  const [built, buildSeconds] = await timed(() => buildManifest(dir));
  const { manifest } = built;
  const [coordinator, nodeA, nodeB] = hosts.map((host) => ({ host, rpc: new Rpc({ transport: host, codec: msgpackCodec }) }));
  const source = (host: typeof hosts[number]): WeightSource => ({ peer: host.peerId.toString(), addrs: host.getMultiaddrs().map(String) });
  const admitted = () => true;
  await serveBlobs({ rpc: coordinator.rpc, source: built.blobs, admitted });
  const storeA = new BlobStore(join(root, 'a'));
  await serveBlobs({ rpc: nodeA.rpc, source: storeA, admitted });
  const all = [...new Set(manifest.tensors.map((t) => t.group))];
  const totalMiB = [...new Map(manifest.tensors.map((t) => [t.sha256, t.bytes])).values()].reduce((a, b) => a + b, 0) / MiB;

  const [, rawSeconds] = await timed(async () => {
    for (const { sha256, bytes } of new Map(manifest.tensors.map((t) => [t.sha256, t])).values()) {
      for (let offset = 0; offset < bytes; offset += manifest.chunkBytes) {
        const length = Math.min(manifest.chunkBytes, bytes - offset);
        await nodeB.rpc.request(coordinator.host.getMultiaddrs(), 'blobChunk', { blob: sha256, offset, length });
      }
    }
  });
  const rows: [string, number, number][] = [
    ['bare RPC: every chunk once, nothing checked or stored', totalMiB, rawSeconds],
    ['manifest build (read + sha256 from disk)', totalMiB, buildSeconds],
  ];
  const fetchAll = async (label: string, dirName: string, sources: WeightSource[], concurrency: number, pipeline: number) => {
    const fetcher = new WeightFetcher({ rpc: nodeB.rpc, store: new BlobStore(join(root, dirName)) }, { concurrency, pipeline });
    const [result, seconds] = await timed(() => fetcher.fetchGroups(manifest, all, sources));
    rows.push([label, result.report.fetchedBytes / MiB, seconds]);
  };
  await fetchAll('fetch all from the coordinator, 1 blob, 1 chunk at a time', 'b1', [source(coordinator.host)], 1, 1);
  await fetchAll('fetch all from the coordinator, 2 blobs, 1 chunk each at a time', 'b2', [source(coordinator.host)], 2, 1);
  await fetchAll('fetch all from the coordinator, 2 blobs, 4 chunks each in flight (default)', 'b2p', [source(coordinator.host)], 2, 4);
  await new WeightFetcher({ rpc: nodeA.rpc, store: storeA }).fetchGroups(manifest, ['trunk'], [source(coordinator.host)]);
  const fromNodeFirst = [source(nodeA.host), source(coordinator.host)];
  await fetchAll('fetch all: trunk from a node, experts from the coordinator (default)', 'bn', fromNodeFirst, 2, 4);
  await fetchAll('restart on the same store (nothing fetched; reads and decodes)', 'b2p', [], 2, 4);

  console.log(`checkpoint: ${totalMiB.toFixed(1)} MiB in ${manifest.tensors.length} tensors, ${manifest.chunkBytes / MiB} MiB chunks`);
  printTable(['scenario', 'MiB moved', 's', 'MiB/s', 'time vs bare RPC'], rows.map(([label, mib, s]) => [
    label, mib.toFixed(1), s.toFixed(2), mib > 0 ? (mib / s).toFixed(0) : '-', `${(s / rawSeconds).toFixed(2)}x`,
  ]));
} finally {
  await Promise.all(hosts.map((h) => h.stop()));
  await rm(root, { recursive: true, force: true });
}
