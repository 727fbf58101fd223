// The coordinator's checkpoints against an in-process libp2p client acting as a node (no training):
// each group is gathered from a holder every round, a group no holder serves is carried over from
// the previous checkpoint, the job's end reaches nodes only once the final checkpoint and result are
// written, and the checkpoint is served back only to admitted nodes. The clock is driven by hand.
import { multiaddr } from '@multiformats/multiaddr';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoordinatorServer, type CoordinatorEvent } from '../../coordinator/server.ts';
import { msgpackCodec, PROTOCOL_VERSION, type JobSpec } from '../../proto/index.ts';
import { latestCheckpoint } from '../../coordinator/checkpoints.ts';
import { loadHfModel } from '../../src/io/hf.ts';
import { expertOf, type F32Tensor } from '../../src/model/config.ts';
import { initTensors } from '../../src/model/init.ts';
import { createHost, fetchGroup, RefusedError, Rpc, serveGroups, type Host } from '../../src/p2p/index.ts';
import { jobConfig, jobDocuments } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';

const JOB: JobSpec = {
  jobId: 'ckpt-unit',
  model: { hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 16, numExperts: 2, expertsPerToken: 1, expertHiddenSize: 32, maxSeqLen: 16 },
  mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick', documents: { from: 0, to: 2 }, batchSize: 2, seqLen: 16,
  heldOutFraction: 0.05, totalBatches: 3, expectedNodes: 1, lr: 0.01, minLr: 0.001, warmupSteps: 0,
  averaging: { mode: 'sync', every: 1, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};
const tokenizer = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 280 });
const config = jobConfig(JOB, tokenizer);

/** The node's state: the seeded init, by group, with every value shifted by `round` so each checkpoint differs. */
function nodeState(round: number): Map<string, Map<string, F32Tensor>> {
  const groups = new Map<string, Map<string, F32Tensor>>();
  for (const [name, t] of initTensors(config, 1)) {
    const owner = expertOf(name);
    const group = owner ? `expert.${owner.layer}.${owner.expert}` : 'trunk';
    if (!groups.has(group)) groups.set(group, new Map());
    groups.get(group)!.set(name, { shape: t.shape, data: t.data.map((x) => x + round) });
  }
  return groups;
}

let node: Host;
let stranger: Host;
let data: string;
beforeAll(async () => {
  [node, stranger] = await Promise.all([createHost(), createHost()]);
  data = await mkdtemp(join(tmpdir(), 'swarmtrain-checkpointer-'));
});
afterAll(async () => {
  await Promise.all([node.stop(), stranger.stop()]);
  await rm(data, { recursive: true, force: true });
});

describe('coordinator checkpoints of a job', () => {
  it('gathers every round, carries over a group nobody serves, holds the end back until result/ is written, serves only members', async () => {
    const events: CoordinatorEvent[] = [];
    const waitFor = (name: string, count = 1) => new Promise<CoordinatorEvent>((resolve) => {
      const poll = () => {
        const found = events.filter((e) => e.event === name);
        if (found.length >= count) resolve(found[count - 1]);
        else setTimeout(poll, 20);
      };
      poll();
    });
    const server = await CoordinatorServer.start({
      job: JOB, tokenizer, joinToken: '', replication: 1, now: () => 1_000_000, dataDir: data, checkpointEvery: 1,
      onEvent: (e) => events.push(e),
    });
    try {
      const to = server.addrs[0];
      const rpc = new Rpc({ transport: node, codec: msgpackCodec, onReject: () => {} });
      let round = 1;
      let hidden: string | undefined;
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      await serveGroups(rpc, {
        jobId: JOB.jobId, round: () => round,
        // The final gather waits at the gate: meanwhile the job's end must not reach the node.
        admitted: async (peer) => (round === 3 && (await gate), peer === server.peerId),
        lookup: (group) => (group === hidden ? undefined : nodeState(round).get(group)),
      });
      const joined = await rpc.request(to, 'join', {
        version: PROTOCOL_VERSION, nodeId: node.peerId.toString(), token: '', cores: 1, gemmGflops: 10, memoryBytes: 2 ** 30,
        addrs: node.getMultiaddrs().map(String),
      });
      expect(joined.admitted).toBe(true);
      const trainBatch = async () => {
        const grant = await rpc.request(to, 'lease', { jobId: JOB.jobId, maxBatches: 1 });
        await rpc.request(to, 'leaseReport', { jobId: JOB.jobId, leaseId: grant.leaseId, completedBatchIds: grant.batchIds, leaving: false });
      };
      await trainBatch();
      expect(await waitFor('checkpoint')).toMatchObject({ round: 1, groups: 5, carried: [] });
      round = 2;
      hidden = 'expert.1.0';
      await trainBatch();
      expect(await waitFor('checkpoint', 2)).toMatchObject({ round: 2, groups: 5, carried: ['expert.1.0'] });
      round = 3;
      hidden = undefined;
      await trainBatch();
      await waitFor('done');
      const beat = {
        jobId: JOB.jobId, step: 3, tokensPerSecond: 1, bytesSent: 0, bytesReceived: 0, staleness: 0, droppedExpertCalls: 0, planVersion: 1,
      };
      expect((await rpc.request(to, 'heartbeat', beat)).stop).toBe(false);
      expect((await rpc.request(to, 'lease', { jobId: JOB.jobId, maxBatches: 1 })).done).toBe(false);
      release();
      expect(await waitFor('result')).toMatchObject({ round: 3, mode: 'full' });
      expect((await rpc.request(to, 'heartbeat', beat)).stop).toBe(true);
      expect((await rpc.request(to, 'lease', { jobId: JOB.jobId, maxBatches: 1 })).done).toBe(true);

      const { checkpoint } = await latestCheckpoint(join(data, 'jobs', JOB.jobId, 'checkpoints'));
      const expected = nodeState(3);
      for (const [group, tensors] of expected) {
        for (const [name, t] of tensors) expect(checkpoint!.groups.get(group)!.get(name)!.data, name).toEqual(t.data);
      }
      const hf = await loadHfModel(join(data, 'jobs', JOB.jobId, 'result'));
      for (const [name, t] of [...expected.values()].flatMap((g) => [...g])) expect(hf.params.get(name)!.data, name).toEqual(t.data);

      // Served back to the member, and to nobody else.
      const served = await fetchGroup(rpc, multiaddr(to), JOB.jobId, 'expert.1.0', 5000);
      expect(served.get('layers.1.experts.0.down')!.data).toEqual(expected.get('expert.1.0')!.get('layers.1.experts.0.down')!.data);
      expect(events.filter((e) => e.event === 'restored')).toMatchObject([{ group: 'expert.1.0', node: node.peerId.toString(), round: 3 }]);
      await expect(rpc.request(to, 'state', { jobId: JOB.jobId, group: 'expert.9.9', names: [] })).rejects.toThrow(/not held here/);
      await expect(rpc.request(to, 'state', { jobId: 'other', group: 'trunk', names: [] })).rejects.toThrow(/not other/);
      const strangerRpc = new Rpc({ transport: stranger, codec: msgpackCodec, onReject: () => {} });
      const refused = await strangerRpc.request(to, 'state', { jobId: JOB.jobId, group: 'trunk', names: [] }).catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(RefusedError);
      expect((refused as Error).message).toMatch(/is not admitted to job ckpt-unit/);
    } finally {
      await server.stop();
    }
  });
});
