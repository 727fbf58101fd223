// A coordinator checkpoint of the demo config (~60 MiB f32, full mode): each group gathered from a
// node over loopback `state` requests and written with its manifest, against writing the same groups locally.
// Run: npx tsx bench/checkpoint.ts   (numbers on a shared machine are noisy: compare ratios within one run)
import '../src/p2p/polyfill.ts';
import { multiaddr } from '@multiformats/multiaddr';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { latestCheckpoint, writeCheckpoint, type GroupStates } from '../coordinator/checkpoints.ts';
import { msgpackCodec } from '../proto/index.ts';
import { DEMO_CONFIG, expertOf } from '../src/model/config.ts';
import { initTensors } from '../src/model/init.ts';
import { createHost, fetchGroup, Rpc, serveGroups } from '../src/p2p/index.ts';
import { printTable } from './table.ts';

const MiB = 1024 * 1024;
const root = await mkdtemp(join(tmpdir(), 'swarmtrain-bench-checkpoint-'));
const [coordinator, node] = await Promise.all([createHost(), createHost()]);
try {
  const groups: GroupStates = new Map();
  for (const [name, t] of initTensors(DEMO_CONFIG, 1)) {
    const owner = expertOf(name);
    const group = owner ? `expert.${owner.layer}.${owner.expert}` : 'trunk';
    if (!groups.has(group)) groups.set(group, new Map());
    groups.get(group)!.set(name, t);
  }
  const jobId = 'bench';
  await serveGroups(new Rpc({ transport: node, codec: msgpackCodec }), {
    jobId, admitted: async () => true, lookup: (group) => groups.get(group), round: () => 0,
  });
  const rpc = new Rpc({ transport: coordinator, codec: msgpackCodec });
  const target = node.getMultiaddrs().map((addr) => multiaddr(addr.toString()));

  const timed = async <T>(run: () => Promise<T>): Promise<[T, number]> => {
    const start = performance.now();
    const value = await run();
    return [value, (performance.now() - start) / 1000];
  };
  const [{ bytes }, localSeconds] = await timed(() => writeCheckpoint(join(root, 'local'), { jobId, round: 1, completedBatches: 0 }, groups));
  const [, gatherSeconds] = await timed(async () => {
    const gathered: GroupStates = new Map();
    for (const group of groups.keys()) gathered.set(group, await fetchGroup(rpc, target, jobId, group, 60_000));
    return writeCheckpoint(join(root, 'gathered'), { jobId, round: 1, completedBatches: 0 }, gathered);
  });
  const [, readSeconds] = await timed(() => latestCheckpoint(join(root, 'gathered')));
  const mib = bytes / MiB;
  console.log(`checkpoint: ${mib.toFixed(1)} MiB in ${groups.size} groups (demo config, full mode)`);
  printTable(['scenario', 'MiB', 's', 'MiB/s', 'time vs local write'], [
    ['write locally (safetensors + sha256 + manifest)', localSeconds],
    ['gather over loopback state requests, then write', gatherSeconds],
    ['read back, checking every sha256', readSeconds],
  ].map(([label, s]) => [label as string, mib.toFixed(1), (s as number).toFixed(2), (mib / (s as number)).toFixed(0),
    `${((s as number) / localSeconds).toFixed(2)}x`]));
} finally {
  await Promise.all([coordinator.stop(), node.stop()]);
  await rm(root, { recursive: true, force: true });
}
