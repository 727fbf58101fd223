// A 50-node simulated swarm (src/harness/sim-node.ts: real libp2p hosts and protocol, no training)
// against one CoordinatorServer: every node joins before leases start, 10% leave mid-job (half
// saying so, half vanishing, declared dead by the coordinator) and 10% new ones join, and every
// batch of the job is completed exactly once, by the coordinator's own counts, its store and the nodes' acks.
import { afterAll, expect, it } from 'vitest';
import { footprint } from '../../coordinator/footprint.ts';
import { CoordinatorServer, type CoordinatorEvent } from '../../coordinator/server.ts';
import type { JobSpec } from '../../proto/index.ts';
import { SimNode, SimStats } from '../../src/harness/sim-node.ts';
import { jobConfig, jobDocuments } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';

const NODES = 50;
const CHURN = 5;
const TOTAL = 400;
const JOB: JobSpec = {
  jobId: 'sim-test',
  model: { hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 128, maxSeqLen: 64 },
  mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick', documents: { from: 0, to: 2 }, batchSize: 8, seqLen: 32,
  heldOutFraction: 0.05, totalBatches: TOTAL, expectedNodes: NODES, lr: 0.01, minLr: 0.001, warmupSteps: 2,
  averaging: { mode: 'periodic', every: 4, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};
const tokenizer = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 300 });
const { trunkBytes, expertBytes } = footprint(jobConfig(JOB, tokenizer), { mode: 'full' });

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
  const options = { coordinator: server.addrs[0]!, token: 'sim', memoryBytes: trunkBytes + 2 * expertBytes, trainMs: 100, idleMs: 100 };
  const start = (count: number) => Promise.all(Array.from({ length: count }, () => SimNode.start(options, stats)));
  const T0 = Date.now();
  nodes.push(...(await start(NODES)));
  console.log('T hosts', Date.now() - T0);
  const started = () => events.find((e) => e.event === 'started');
  await until('the job to start', () => started() !== undefined);
  console.log('T started', Date.now() - T0);
  // Leases are granted only once all expected nodes are alive: all 50 joined first.
  expect(new Set(events.filter((e) => e.event === 'joined').map((e) => (e as { node: string }).node)).size).toBe(NODES);

  await until('a quarter of the job', () => server!.status().completed >= TOTAL / 4);
  const leaving = nodes.slice(0, CHURN);
  await Promise.all(leaving.map((node, i) => node.stop(i % 2 === 0))); // some say goodbye, the others vanish
  nodes.push(...(await start(CHURN)));
  console.log('T churn', Date.now() - T0);

  await until('the job to end', () => server!.done);
  await until('every node to hear so', () => nodes.every((node) => node.done || node.stopping));
  console.log('T end', Date.now() - T0, stats.failures, stats.roundTrips.join.length, stats.plansReceived);
  const status = server.status();
  expect(status.done).toBe(true);
  expect(status.completed).toBe(TOTAL);
  expect(status.leases.counters.completed).toBe(TOTAL);
  expect(status.leases.outstanding).toBe(0);
  // Exactly once: the store holds each batch id once, and the nodes' accepted reports cover the same ids once each.
  const everyBatch = Array.from({ length: TOTAL }, (_, id) => id);
  expect(server.store.completed(JOB.jobId)).toEqual(everyBatch);
  expect([...stats.completed].sort((a, b) => a - b)).toEqual(everyBatch);
  expect(events.filter((e) => e.event === 'done')).toHaveLength(1);
  // The churn happened as planned: the vanished nodes were declared dead, the others left, the newcomers joined.
  const ids = (name: string) => new Set(events.filter((e) => e.event === name).map((e) => (e as { node: string }).node));
  const gone = leaving.map((node) => node.id);
  expect(gone.filter((id) => ids('left').has(id))).toHaveLength(Math.ceil(CHURN / 2));
  expect(gone.filter((id) => ids('died').has(id))).toHaveLength(Math.floor(CHURN / 2));
  expect(ids('joined').size).toBe(NODES + CHURN);
  expect(stats.badPlans).toBe(0);
}, 90_000);
