// Weights over real libp2p hosts on loopback: a coordinator serving a checkpoint folder, nodes
// serving their stores, and sources that corrupt, truncate, stall, drop or refuse; every fetch is
// compared with the checkpoint as the model's own loader reads it.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { msgpackCodec, type BaseManifest } from '../../proto/index.ts';
import { loadHfModel } from '../../src/io/hf.ts';
import type { F32Tensor } from '../../src/model/config.ts';
import { createHost, Rpc, type Host } from '../../src/p2p/index.ts';
import {
  BlobStore, buildManifest, FetchError, serveBlobs, WeightFetcher, type BlobSource, type FetchReport, type WeightSource,
} from '../../src/weights/index.ts';
import { hfFixturesDir } from '../fixtures.ts';
import { bitEqual } from '../helpers.ts';
import { f32Sha256, randomParams, TINY, writeCheckpoint } from './checkpoints.ts';

const CHUNK = 256;
const CHUNK_TIMEOUT_MS = 600;
const quiet = () => {}; // refused messages are expected here; the report says what happened

interface Peer {
  host: Host;
  rpc: Rpc;
  source: WeightSource;
}

async function peer(): Promise<Peer> {
  const host = await createHost();
  const rpc = new Rpc({ transport: host, codec: msgpackCodec, onReject: quiet });
  return { host, rpc, source: { peer: host.peerId.toString(), addrs: host.getMultiaddrs().map(String) } };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const uniqueBytes = (manifest: BaseManifest, groups: string[]) =>
  [...new Map(manifest.tensors.filter((t) => groups.includes(t.group)).map((t) => [t.sha256, t.bytes])).values()].reduce((a, b) => a + b, 0);

function expectSameTensors(got: Map<string, F32Tensor>, want: Map<string, F32Tensor>, names: string[]): void {
  expect([...got.keys()].sort()).toEqual([...names].sort());
  for (const name of names) {
    expect(got.get(name)!.shape).toEqual(want.get(name)!.shape);
    expect(bitEqual(got.get(name)!.data, want.get(name)!.data), name).toBe(true);
  }
}

describe('weights over the swarm', () => {
  let root: string;
  let manifest: BaseManifest;
  let checkpoint: Map<string, F32Tensor>;
  let coordinator: Peer;
  let faulty: Peer;
  let strict: Peer;
  let nodeA: Peer;
  let nodeB: Peer;
  let storeA: BlobStore;
  /** How the faulty source misbehaves after its first `goodChunks` chunks. */
  const fault = { mode: 'good' as 'good' | 'corrupt' | 'truncate' | 'stall' | 'drop', goodChunks: 2, served: 0 };
  const GROUPS = ['trunk', 'expert.0.1', 'expert.1.3'];
  const namesOf = (groups: string[]) => manifest.tensors.filter((t) => groups.includes(t.group)).map((t) => t.name);
  // One chunk of one blob at a time, so a fault lands at a known chunk.
  const fetcherFor = (node: Peer, dir: string) =>
    new WeightFetcher({ rpc: node.rpc, store: new BlobStore(dir) }, { chunkTimeoutMs: CHUNK_TIMEOUT_MS, concurrency: 1, pipeline: 1 });

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'swarmtrain-weights-'));
    const dir = join(root, 'checkpoint');
    await writeCheckpoint(dir, randomParams(TINY, 3));
    checkpoint = (await loadHfModel(dir)).params;
    const built = await buildManifest(dir, CHUNK);
    manifest = built.manifest;
    [coordinator, faulty, strict, nodeA, nodeB] = await Promise.all([peer(), peer(), peer(), peer(), peer()]);
    const members = new Set([nodeA, nodeB].map((n) => n.source.peer));
    const admitted = (p: string) => members.has(p);
    const faultySource: BlobSource = {
      size: (blob) => built.blobs.size(blob),
      async read(blob, offset, length) {
        const data = await built.blobs.read(blob, offset, length);
        if (fault.mode === 'good' || ++fault.served <= fault.goodChunks) return data;
        switch (fault.mode) {
          case 'corrupt':
            data[length >> 1] ^= 0x40;
            return data;
          case 'truncate':
            return data.subarray(0, length - 1);
          case 'stall':
            await sleep(5 * CHUNK_TIMEOUT_MS);
            return data;
          case 'drop':
            await Promise.all([nodeA, nodeB].map((n) => faulty.host.hangUp(n.host.peerId)));
            throw new Error('connection dropped');
        }
      },
    };
    storeA = new BlobStore(join(root, 'node-a'));
    await serveBlobs({ rpc: coordinator.rpc, source: built.blobs, admitted });
    await serveBlobs({ rpc: faulty.rpc, source: faultySource, admitted });
    await serveBlobs({ rpc: strict.rpc, source: built.blobs, admitted: (p) => p !== nodeB.source.peer && admitted(p) });
    await serveBlobs({ rpc: nodeA.rpc, source: storeA, admitted });
  });

  afterAll(async () => {
    await Promise.all([coordinator, faulty, strict, nodeA, nodeB].map((p) => p?.host.stop()));
    await rm(root, { recursive: true, force: true });
  });

  const begin = (mode: typeof fault.mode, goodChunks = 2) => Object.assign(fault, { mode, goodChunks, served: 0 });

  it('fetches the trunk and two experts from the coordinator, then from a node that has them and the coordinator', async () => {
    const first = await new WeightFetcher({ rpc: nodeA.rpc, store: storeA }).fetchGroups(manifest, GROUPS, [coordinator.source]);
    expectSameTensors(first.tensors, checkpoint, namesOf(GROUPS));
    expect(first.report.fetchedBytes).toBe(uniqueBytes(manifest, GROUPS));
    for (const t of manifest.tensors.filter((x) => GROUPS.includes(x.group))) {
      expect(f32Sha256(new Float32Array((await readFile(storeA.path(t.sha256))).buffer.slice(0))), t.name).toBe(t.sha256);
    }
    // Node B wants expert 0.2 too, which node A does not hold: it comes from the coordinator.
    const wanted = ['trunk', 'expert.0.1', 'expert.0.2'];
    const second = await fetcherFor(nodeB, join(root, 'node-b')).fetchGroups(manifest, wanted, [nodeA.source, coordinator.source]);
    expectSameTensors(second.tensors, checkpoint, namesOf(wanted));
    const fromA = uniqueBytes(manifest, ['trunk', 'expert.0.1']);
    expect(second.report.bytesBySource.get(nodeA.source.peer)).toBe(fromA);
    expect(second.report.bytesBySource.get(coordinator.source.peer)).toBe(uniqueBytes(manifest, wanted) - fromA);
    expect(second.report.failures.every((f) => f.peer === nodeA.source.peer && f.reason === 'refused' && /not held here/.test(f.message))).toBe(true);
    expect(second.report.failures.length).toBe(3); // one per blob of expert 0.2
  });

  for (const [mode, reasons] of [['corrupt', ['hash']], ['truncate', ['truncated']], ['stall', ['deadline', 'stalled']]] as const) {
    const what = { corrupt: 'corrupted', truncate: 'truncated', stall: 'stalled' }[mode];
    it(`refuses a source that sends a ${what} chunk mid-transfer and takes the chunk from the next`, async () => {
      begin(mode);
      const fetcher = fetcherFor(nodeB, join(root, `node-${mode}`));
      const { tensors, report } = await fetcher.fetchGroups(manifest, GROUPS, [faulty.source, coordinator.source]);
      expectSameTensors(tensors, checkpoint, namesOf(GROUPS));
      expect(report.failures).toHaveLength(1);
      expect(report.failures[0].peer).toBe(faulty.source.peer);
      expect(reasons).toContain(report.failures[0].reason);
      expect(report.bytesBySource.get(faulty.source.peer)).toBe(2 * CHUNK); // its good chunks of the first blob (embed)
      expect(report.fetchedBytes).toBe(uniqueBytes(manifest, GROUPS));
    });
  }

  it('with many chunk requests in flight, takes every chunk after a corrupted one from the next source, each counted once', async () => {
    begin('corrupt', 5);
    // The default fetcher (8 requests in flight, within what a server takes at once: no busy replies) and chunk
    // deadline: on a loaded machine 8 requests in flight may take longer than CHUNK_TIMEOUT_MS.
    const fetcher = new WeightFetcher({ rpc: nodeB.rpc, store: new BlobStore(join(root, 'node-pipelined')) });
    const { tensors, report } = await fetcher.fetchGroups(manifest, GROUPS, [faulty.source, coordinator.source]);
    expectSameTensors(tensors, checkpoint, namesOf(GROUPS));
    expect(report.failures.length).toBeGreaterThanOrEqual(1);
    expect(report.failures.every((f) => f.peer === faulty.source.peer && f.reason === 'hash')).toBe(true);
    const fromFaulty = report.bytesBySource.get(faulty.source.peer) ?? 0;
    expect(fromFaulty).toBeLessThanOrEqual(5 * CHUNK); // only verified chunks count, and none after it was cut off
    expect(fromFaulty + report.bytesBySource.get(coordinator.source.peer)!).toBe(uniqueBytes(manifest, GROUPS));
    expect(report.fetchedBytes).toBe(uniqueBytes(manifest, GROUPS));
  });

  it('waits out a source that is busy (at its limit of requests served at once) instead of passing it over', async () => {
    const narrow = await peer();
    try {
      await serveBlobs({ rpc: narrow.rpc, source: new BlobStore(join(root, 'node-a')), admitted: () => true }, { maxConcurrent: 1 });
      const fetcher = new WeightFetcher({ rpc: nodeB.rpc, store: new BlobStore(join(root, 'node-busy')) }, { concurrency: 2, pipeline: 4 });
      const { tensors, report } = await fetcher.fetchGroups(manifest, ['trunk'], [narrow.source, coordinator.source]);
      expectSameTensors(tensors, checkpoint, namesOf(['trunk']));
      expect(report.failures.length).toBeGreaterThan(0);
      expect(report.failures.every((f) => f.reason === 'busy')).toBe(true);
      expect(report.bytesBySource.get(narrow.source.peer)).toBe(uniqueBytes(manifest, ['trunk']));
    } finally {
      await narrow.host.stop();
    }
  });

  it('a restarted node (a new store and fetcher on the same directory) fetches nothing', async () => {
    const restarted = new WeightFetcher({ rpc: nodeA.rpc, store: new BlobStore(join(root, 'node-a')) });
    const { tensors, report } = await restarted.fetchGroups(manifest, GROUPS, []);
    expectSameTensors(tensors, checkpoint, namesOf(GROUPS));
    expect(report.fetchedBytes).toBe(0);
    expect(report.bytesBySource.size).toBe(0);
    expect(report.cachedBlobs).toBe(new Set(manifest.tensors.filter((t) => GROUPS.includes(t.group)).map((t) => t.sha256)).size);
  });

  it('resumes a download cut by a dropped connection, fetching only the rest', async () => {
    const embed = manifest.tensors.find((t) => t.name === 'embed')!;
    const dir = join(root, 'node-resume');
    begin('drop', 5);
    const failed = await fetcherFor(nodeB, dir).fetchTensors(manifest, [embed], [faulty.source]).catch((err: unknown) => err);
    expect(failed).toBeInstanceOf(FetchError);
    const before: FetchReport = (failed as FetchError).report;
    expect(before.fetchedBytes).toBe(5 * CHUNK);
    expect((failed as FetchError).message).toMatch(/1280 of 4096 bytes verified/);
    const { tensors, report } = await fetcherFor(nodeB, dir).fetchTensors(manifest, [embed], [coordinator.source]);
    expectSameTensors(tensors, checkpoint, ['embed']);
    expect(report.resumedBytes).toBe(5 * CHUNK);
    expect(report.bytesBySource.get(coordinator.source.peer)).toBe(embed.bytes - 5 * CHUNK);
  });

  it('is refused by a source that has not admitted it, and takes everything from the next', async () => {
    const dir = join(root, 'node-refused');
    const alone = await fetcherFor(nodeB, dir).fetchGroups(manifest, ['expert.1.1'], [strict.source]).catch((err: unknown) => err);
    expect(alone).toBeInstanceOf(FetchError);
    expect((alone as FetchError).report.failures[0]).toMatchObject({ peer: strict.source.peer, reason: 'refused' });
    expect((alone as FetchError).report.failures[0].message).toMatch(/not admitted/);
    const { tensors, report } = await fetcherFor(nodeB, dir).fetchGroups(manifest, ['expert.1.1'], [strict.source, coordinator.source]);
    expectSameTensors(tensors, checkpoint, namesOf(['expert.1.1']));
    expect(report.bytesBySource.has(strict.source.peer)).toBe(false);
    // The same source serves an admitted node.
    const admittedFetch = await fetcherFor(nodeA, join(root, 'node-a-strict')).fetchGroups(manifest, ['expert.1.1'], [strict.source]);
    expect(admittedFetch.report.bytesBySource.get(strict.source.peer)).toBe(uniqueBytes(manifest, ['expert.1.1']));
  });
});

describe('weights of the tiny Mixtral fixture over the swarm', () => {
  const fixtures = hfFixturesDir();
  it.skipIf(fixtures === null)('fetches its trunk and two experts from the coordinator and a node, equal to the loaded checkpoint', async () => {
    const dir = join(fixtures!, 'atenia-tiny-mixtral-classic');
    const root = await mkdtemp(join(tmpdir(), 'swarmtrain-fixture-'));
    const peers = await Promise.all([peer(), peer(), peer()]);
    try {
      const [coordinator, nodeA, nodeB] = peers;
      const built = await buildManifest(dir, 4096);
      const admitted = (p: string) => p === nodeA.source.peer || p === nodeB.source.peer;
      await serveBlobs({ rpc: coordinator.rpc, source: built.blobs, admitted });
      const storeA = new BlobStore(join(root, 'a'));
      await serveBlobs({ rpc: nodeA.rpc, source: storeA, admitted });
      const groups = ['trunk', 'expert.0.1', 'expert.1.2'];
      await new WeightFetcher({ rpc: nodeA.rpc, store: storeA }).fetchGroups(built.manifest, ['trunk'], [coordinator.source]);
      const { tensors, report } = await new WeightFetcher({ rpc: nodeB.rpc, store: new BlobStore(join(root, 'b')) })
        .fetchGroups(built.manifest, groups, [nodeA.source, coordinator.source]);
      const names = built.manifest.tensors.filter((t) => groups.includes(t.group)).map((t) => t.name);
      expectSameTensors(tensors, (await loadHfModel(dir)).params, names);
      expect(report.bytesBySource.get(nodeA.source.peer)).toBe(uniqueBytes(built.manifest, ['trunk']));
      expect(report.bytesBySource.get(coordinator.source.peer)).toBe(uniqueBytes(built.manifest, groups) - uniqueBytes(built.manifest, ['trunk']));
    } finally {
      await Promise.all(peers.map((p) => p.host.stop()));
      await rm(root, { recursive: true, force: true });
    }
  });
});
