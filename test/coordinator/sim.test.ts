// A 50-node simulated swarm (src/harness/sim-node.ts: real libp2p hosts and protocol, no training)
// against one CoordinatorServer: every node joins before leases start, 10% leave mid-job (half
// saying so, half vanishing, declared dead by the coordinator) and 10% new ones join, and every
// batch of the job is completed exactly once, by the coordinator's own counts, its store and the nodes' acks.
// Also: a plan rebuilt from a delta is the plan, byte for byte of what is signed.
import { afterAll, expect, it } from 'vitest';
import { footprint, nodeBytes } from '../../src/model/footprint.ts';
import { CoordinatorServer, type CoordinatorEvent } from '../../coordinator/server.ts';
import { applyPlanDelta, planDelta, planSigningBytes, type JobSpec, type Plan } from '../../proto/index.ts';
import { SimNode, SimStats } from '../../src/harness/sim-node.ts';
import { jobConfig, jobDocuments, jobFootprintSettings } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';

const NODES = 50;
const CHURN = 5;
const TOTAL = 400;
const JOB: JobSpec = {
  jobId: 'sim-test',
  model: {
    hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 128,
    maxSeqLen: 64,
  },
  mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick', documents: { from: 0, to: 2 }, batchSize: 8, seqLen: 32,
  heldOutFraction: 0.05, totalBatches: TOTAL, expectedNodes: NODES, lr: 0.01, minLr: 0.001, warmupSteps: 2,
  averaging: { mode: 'periodic', every: 4, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};
const tokenizer = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 300 });
/** A budget for the trunk, 2 experts and one micro-batch's activations. */
const BUDGET = nodeBytes(footprint(jobConfig(JOB, tokenizer), jobFootprintSettings(JOB)), 2, false);

const events: CoordinatorEvent[] = [];
const stats = new SimStats();
const nodes: SimNode[] = [];
let server: CoordinatorServer | undefined;
afterAll(async () => {
  await Promise.all(nodes.map((node) => node.stop()));
  await server?.stop();
});

const until = async (what: string, condition: () => boolean, timeoutMs = 45_000) => {
  const t0 = Date.now();
  while (!condition()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};

it('a 50-node simulated swarm joins, churns and completes every lease exactly once', async () => {
  server = await CoordinatorServer.start({
    job: JOB, tokenizer, joinToken: 'sim', heartbeatMs: 250, nodeTimeoutMs: 2_000, leaseMs: 4_000, onEvent: (e) => events.push(e),
  });
  // Each node dials from a loopback address of its own (127.1.x.y), as volunteers come from many addresses.
  const options = { coordinator: server.addrs[0]!, token: 'sim', memoryBytes: BUDGET, trainMs: 100, idleMs: 100, sourceNet: 1 };
  const start = (count: number) => Promise.all(Array.from({ length: count }, () => SimNode.start(options, stats)));
  nodes.push(...(await start(NODES)));
  const started = () => events.find((e) => e.event === 'started');
  await until('the job to start', () => started() !== undefined);
  // Leases are granted only once all expected nodes are alive: all 50 joined first.
  expect(new Set(events.filter((e) => e.event === 'joined').map((e) => (e as { node: string }).node)).size).toBe(NODES);

  await until('a quarter of the job', () => server!.status().completed >= TOTAL / 4);
  const leaving = nodes.slice(0, CHURN);
  await Promise.all(leaving.map((node, i) => node.stop(i % 2 === 0))); // some say goodbye, the others vanish
  nodes.push(...(await start(CHURN)));

  await until('the job to end', () => server!.done);
  await until('every node to hear so', () => nodes.every((node) => node.done || node.stopping));
  const status = server.status();
  expect(status.done).toBe(true);
  expect(status.completed).toBe(TOTAL);
  expect(status.leases.counters.completed).toBe(TOTAL);
  expect(status.leases.outstanding).toBe(0);
  // Exactly once: the store holds each batch id once, and the nodes' accepted reports name each id at most once,
  // missing only ids whose report went unanswered (a vanishing node's last report may still have reached the coordinator).
  const everyBatch = Array.from({ length: TOTAL }, (_, id) => id);
  expect(server.store.completed(JOB.jobId)).toEqual(everyBatch);
  const accepted = new Set(stats.completed);
  expect(accepted.size).toBe(stats.completed.length);
  expect(everyBatch.filter((id) => !accepted.has(id) && !stats.unacknowledged.includes(id))).toEqual([]);
  expect(events.filter((e) => e.event === 'done')).toHaveLength(1);
  // The churn happened as planned: the vanished nodes were declared dead, the others left, the newcomers joined.
  const ids = (name: string) => new Set(events.filter((e) => e.event === name).map((e) => (e as { node: string }).node));
  const gone = leaving.map((node) => node.id);
  expect(gone.filter((id) => ids('left').has(id))).toHaveLength(Math.ceil(CHURN / 2));
  expect(gone.filter((id) => ids('died').has(id))).toHaveLength(Math.floor(CHURN / 2));
  expect(ids('joined').size).toBe(NODES + CHURN);
  // Plans after the join reply came as deltas, each rebuilding a plan whose signature checked out.
  expect(stats.badPlans).toBe(0);
  expect(stats.planDeltas).toBeGreaterThan(0);
}, 90_000);

it('a plan rebuilt from a delta signs the same bytes as the plan, and a delta for another version is refused', () => {
  const peer = (i: number) => `12D3KooW${String(i).padStart(4, '0')}`;
  const plan = (version: number, ids: number[], holders: (i: number) => number[], moved = -1): Plan => ({
    version,
    experts: [0, 1, 2].map((expert) => ({ layer: 0, expert, holders: holders(expert).map(peer) })),
    peers: ids.map((i) => ({ peerId: peer(i), addrs: [`/ip4/10.0.0.${i}/tcp/${i === moved ? 2 : 1}/p2p/${peer(i)}`] })),
  });
  const v1 = plan(1, [1, 2, 3, 4], (e) => [e + 1, e + 2]);
  // 2 left, 5 and 0 joined (0 sorts first), 3 moved, expert 1 went from 2 to 5, and the plan is degraded
  const v2 = { ...plan(2, [0, 1, 3, 4, 5], (e) => (e === 1 ? [3, 5] : [e + 1, e + 2]), 3), degraded: 'too few nodes' };
  const delta = planDelta(v1, v2);
  expect(delta.gone).toEqual([peer(2)]);
  expect(delta.peers.map((p) => p.peerId)).toEqual([peer(0), peer(3), peer(5)]);
  expect(delta.experts).toEqual([{ layer: 0, expert: 1, holders: [peer(3), peer(5)] }]);
  const rebuilt = applyPlanDelta(v1, delta);
  expect(planSigningBytes('job', rebuilt)).toEqual(planSigningBytes('job', v2));
  expect(applyPlanDelta(rebuilt, planDelta(v2, v1))).toEqual(v1);
  expect(() => applyPlanDelta(v2, delta)).toThrow(/does not apply to v2/);
});
