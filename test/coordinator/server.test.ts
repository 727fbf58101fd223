// The coordinator server against in-process libp2p clients acting as nodes (no training): join
// admission (token, identity, addresses, trunk memory), plans in join replies and heartbeats,
// leases withheld until the job's nodes are there, global batch ids, exactly totalBatches
// completed across epochs, dead and leaving nodes' batches re-issued and experts re-planned,
// refused and malformed requests logged; plus the real command in a child process.
// Liveness and lease deadlines run on a hand-driven clock, so nothing depends on timing.
import { peerIdFromString } from '@libp2p/peer-id';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { footprint, nodeBytes } from '../../src/model/footprint.ts';
import { CoordinatorServer, type CoordinatorEvent, type CoordinatorOptions } from '../../coordinator/server.ts';
import {
  applyPlanDelta, msgpackCodec, planSigningBytes, PROTOCOL_VERSION, type JobSpec, type JoinRequest, type MessageCodec, type Plan,
} from '../../proto/index.ts';
import { packPlain } from '../../proto/msgpack.ts';
import { createHost, RefusedError, RemoteError, Rpc, signedBy, type Host } from '../../src/p2p/index.ts';
import { jobConfig, jobData, jobDocuments, jobFootprintSettings } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { misbehaviours, sendRaw } from '../p2p/peers.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const MODEL = {
  hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 128, maxSeqLen: 64,
};
const EXPERTS = MODEL.numLayers * MODEL.numExperts;
const JOB: JobSpec = {
  jobId: 'coord-test', model: MODEL, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick',
  documents: { from: 0, to: 2 }, batchSize: 8, seqLen: 32, heldOutFraction: 0.05, totalBatches: 1000, expectedNodes: 1,
  lr: 0.01, minLr: 0.001, warmupSteps: 2, averaging: { mode: 'sync', every: 1, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};
const TOKEN = 'open-sesame';

const tokenizer = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 300 });
const perEpoch = jobData(JOB, tokenizer).train.batchesPerEpoch;
const fp = footprint(jobConfig(JOB, tokenizer), jobFootprintSettings(JOB));
/** A budget for the trunk and every expert. */
const ROOMY = nodeBytes(fp, EXPERTS, false, 2); // the test nodes run 2 kernel threads
/** Too little for the trunk and one micro-batch's activations, even checkpointed. */
const TOO_SMALL = nodeBytes(fp, 0, true, 2) - 1;

/** Coordinator events as they come, with a way to wait for the next one that matches. */
class EventLog {
  readonly events: CoordinatorEvent[] = [];
  private waiters: { match: (e: CoordinatorEvent) => boolean; resolve: (e: CoordinatorEvent) => void }[] = [];

  readonly push = (event: CoordinatorEvent): void => {
    this.events.push(event);
    for (const waiter of this.waiters.filter((w) => w.match(event))) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(event);
    }
  };

  of<E extends CoordinatorEvent['event']>(name: E): Extract<CoordinatorEvent, { event: E }>[] {
    return this.events.filter((e): e is Extract<CoordinatorEvent, { event: E }> => e.event === name);
  }

  waitFor<E extends CoordinatorEvent['event']>(name: E, match: (e: Extract<CoordinatorEvent, { event: E }>) => boolean = () => true): Promise<Extract<CoordinatorEvent, { event: E }>> {
    const test = (e: CoordinatorEvent) => e.event === name && match(e as Extract<CoordinatorEvent, { event: E }>);
    const logged = this.events.find(test);
    if (logged) return Promise.resolve(logged as Extract<CoordinatorEvent, { event: E }>);
    return new Promise((resolve) => this.waiters.push({ match: test, resolve: resolve as (e: CoordinatorEvent) => void }));
  }
}

/** A node's side of the coordinator protocols, on its own libp2p host. */
class FakeNode {
  readonly rpc: Rpc;
  constructor(readonly host: Host) {
    this.rpc = new Rpc({ transport: host, codec: msgpackCodec, onReject: () => {} });
  }

  get id(): string {
    return this.host.peerId.toString();
  }

  joinRequest(overrides: Partial<JoinRequest> = {}): JoinRequest {
    return {
      version: PROTOCOL_VERSION, nodeId: this.id, token: TOKEN, cores: 2, gemmGflops: 40, memoryBytes: ROOMY,
      addrs: this.host.getMultiaddrs().map(String), ...overrides,
    };
  }

  join(to: string, overrides: Partial<JoinRequest> = {}) {
    return this.rpc.request(to, 'join', this.joinRequest(overrides));
  }

  heartbeat(to: string, planVersion: number, step = 0, addrs?: string[], expertRows?: number[]) {
    return this.rpc.request(to, 'heartbeat', {
      jobId: JOB.jobId, step, loss: 3.5, tokensPerSecond: 100, bytesSent: 10, bytesReceived: 20, staleness: 0, droppedExpertCalls: 0, planVersion,
      ...(addrs ? { addrs } : {}), ...(expertRows ? { expertRows } : {}),
    });
  }

  lease(to: string, maxBatches: number, jobId = JOB.jobId) {
    return this.rpc.request(to, 'lease', { jobId, maxBatches });
  }

  report(to: string, leaseId: number, completedBatchIds: number[], leaving = false, jobId = JOB.jobId) {
    return this.rpc.request(to, 'leaseReport', { jobId, leaseId, completedBatchIds, leaving });
  }
}

let nodes: FakeNode[];
let a: FakeNode;
let b: FakeNode;
let c: FakeNode;
beforeAll(async () => {
  nodes = (await Promise.all([createHost(), createHost(), createHost()])).map((host) => new FakeNode(host));
  [a, b, c] = nodes;
});
afterAll(async () => {
  await Promise.all(nodes.map((n) => n.host.stop()));
});

let server: CoordinatorServer | undefined;
let log: EventLog;
let clock: number;
let to: string;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

async function startServer(options: Omit<Partial<CoordinatorOptions>, 'job'> & { job?: Partial<JobSpec> } = {}): Promise<CoordinatorServer> {
  log = new EventLog();
  clock = 1_000_000;
  const { job, ...rest } = options;
  server = await CoordinatorServer.start({ job: { ...JOB, ...job }, tokenizer, joinToken: TOKEN, replication: 2, onEvent: log.push, now: () => clock, ...rest });
  to = server.addrs[0];
  return server;
}

async function admitted(node: FakeNode, overrides: Partial<JoinRequest> = {}) {
  const reply = await node.join(to, overrides);
  if (!reply.admitted) throw new Error(`not admitted: ${reply.reason}`);
  return reply;
}

const holdersOf = (plan: Plan) => plan.experts.map((e) => e.holders);
const sorted = (ids: string[]) => [...ids].sort();

it('the test job has several micro-batches per epoch', () => {
  expect(perEpoch).toBeGreaterThan(4);
});

describe('join', () => {
  it('admits a node with the right token: the job, its tokenizer, a plan with the node and its addresses', async () => {
    await startServer();
    const reply = await admitted(a);
    expect(reply).toMatchObject({ version: PROTOCOL_VERSION, job: JOB, heartbeatMs: 1000, completedBatches: 0 });
    const received = BpeTokenizer.fromHuggingFace(JSON.parse(reply.tokenizer));
    const text = 'Call me Ishmael. Some years ago';
    expect(received.encode(text)).toEqual(tokenizer.encode(text));
    expect(reply.plan.version).toBe(1);
    expect(reply.plan.experts.map(({ layer, expert }) => `${layer}.${expert}`)).toEqual(['0.0', '0.1', '0.2', '0.3', '1.0', '1.1', '1.2', '1.3']);
    expect(holdersOf(reply.plan)).toEqual(Array(EXPERTS).fill([a.id]));
    expect(reply.plan.peers).toEqual([{ peerId: a.id, addrs: a.host.getMultiaddrs().map(String) }]);
    expect(reply.plan.degraded).toMatch(/replication 2 needs 2 nodes, 1 admitted/);
    expect(log.of('joined')).toMatchObject([{ node: a.id, cores: 2, memoryBytes: ROOMY, releasedBatchIds: [] }]);
    expect(log.of('plan')).toMatchObject([{ version: 1, holders: reply.plan.experts }]);
    expect(server!.status().nodes).toMatchObject([{ nodeId: a.id, status: 'alive', experts: EXPERTS }]);
  });

  it('refuses a wrong token, a nodeId that is not the connection\'s peer, and addresses of another peer', async () => {
    await startServer();
    const refusals = [
      await a.join(to, { token: 'guess' }),
      await a.join(to, { nodeId: b.id }), // a claims to be b
      await a.join(to, { addrs: b.host.getMultiaddrs().map(String) }),
      await a.join(to, { addrs: ['/ip4/127.0.0.1/tcp/4001'] }),
    ];
    expect(refusals.map((r) => r.admitted)).toEqual([false, false, false, false]);
    const reasons = refusals.map((r) => (r.admitted ? '' : r.reason));
    expect(reasons[0]).toBe('wrong join token');
    expect(reasons[1]).toContain(`is not the peer id of the connection (${a.id})`);
    expect(reasons[2]).toContain(`not a multiaddr ending in /p2p/${a.id}`);
    expect(reasons[3]).toContain('/ip4/127.0.0.1/tcp/4001');
    expect(log.of('refused').map((e) => [e.request, e.reason])).toEqual(reasons.map((r) => ['join', r]));
    expect(server!.status().nodes).toEqual([]);
    expect(server!.status().plan).toBeNull();
  });

  it('an empty token opens the swarm', async () => {
    await startServer({ joinToken: '' });
    expect((await a.join(to, { token: 'anything' })).admitted).toBe(true);
  });

  it('refuses a budget too small for the trunk and activations with the planner\'s reason; a member back with one leaves', async () => {
    await startServer();
    const small = await b.join(to, { memoryBytes: TOO_SMALL });
    expect(small).toMatchObject({ admitted: false, version: PROTOCOL_VERSION });
    const { reason } = small as { reason: string };
    const trunk = `memory budget of ${TOO_SMALL} bytes cannot hold the trunk \\(${fp.trunkBytes} bytes\\)`;
    expect(reason).toMatch(new RegExp(`^${trunk}, .*: ${TOO_SMALL + 1} bytes needed$`));
    expect(server!.status().nodes).toEqual([]);

    await admitted(a);
    await admitted(b);
    expect(server!.status().plan!.version).toBe(2);
    const shrunk = await b.join(to, { memoryBytes: 1000 });
    expect(shrunk.admitted).toBe(false);
    expect(log.of('left')).toMatchObject([{ node: b.id }]);
    const plan = await log.waitFor('plan', (p) => p.version === 3);
    expect(plan.holders.map((e) => e.holders)).toEqual(Array(EXPERTS).fill([a.id]));
    expect(plan.moves.removed).toHaveLength(EXPERTS);
    expect(plan.moves.removed.every((m) => m.node === b.id)).toBe(true);
    expect(await b.heartbeat(to, 3)).toEqual({ accepted: false, reason: 'rejoin', stop: false });
  });
});

describe('heartbeat period', () => {
  it('stretches past maxHeartbeatsPerSecond, up to a fifth of the node timeout, and back; joins and heartbeats carry it', async () => {
    await startServer({ maxHeartbeatsPerSecond: 1, nodeTimeoutMs: 12_500 });
    expect((await admitted(a)).heartbeatMs).toBe(1000); // one node beating every second: within the budget
    expect((await admitted(b)).heartbeatMs).toBe(2000);
    expect(await a.heartbeat(to, 0)).toMatchObject({ accepted: true, heartbeatMs: 2000 });
    expect((await admitted(c)).heartbeatMs).toBe(2500); // 3000 would leave fewer than five beats per timeout
    expect(await c.report(to, 0, [], true)).toEqual({ accepted: true });
    expect(await a.heartbeat(to, 0)).toMatchObject({ accepted: true, heartbeatMs: 2000 });
    expect(await b.report(to, 0, [], true)).toEqual({ accepted: true });
    expect(await a.heartbeat(to, 0)).toMatchObject({ accepted: true, heartbeatMs: 1000 }); // back to the configured period
  });
});

describe('plans', () => {
  it('go to joiners and ride on heartbeats when newer than the node\'s', async () => {
    await startServer();
    const first = await admitted(a, { gemmGflops: 30 });
    const second = await admitted(b, { gemmGflops: 60 });
    expect(first.plan.version).toBe(1);
    expect(second.plan.version).toBe(2);
    expect(holdersOf(second.plan)).toEqual(Array(EXPERTS).fill(sorted([a.id, b.id])));
    expect(sorted(second.plan.peers.map((p) => p.peerId))).toEqual(sorted([a.id, b.id]));
    expect(second.plan.degraded).toBeUndefined();

    // A node on a version the coordinator keeps gets the changes since, signed as the whole new plan; one on no version, all of it.
    const stale = await a.heartbeat(to, 1, 7);
    expect(stale).toEqual({
      accepted: true, planDelta: expect.objectContaining({ from: 1, version: 2, gone: [] }), planSignature: expect.any(Uint8Array),
      stop: false,
    });
    expect(applyPlanDelta(first.plan, stale.planDelta!)).toEqual(second.plan);
    expect(await a.heartbeat(to, 0, 7)).toEqual({ accepted: true, plan: second.plan, planSignature: stale.planSignature, stop: false });
    // Signed by the coordinator's identity (once per version): nodes check plans against the peer id they joined.
    const rebuilt = { plan: applyPlanDelta(first.plan, stale.planDelta!), planSignature: stale.planSignature };
    for (const { plan, planSignature } of [first, second, rebuilt]) {
      expect(signedBy(server!.peerId, planSigningBytes(JOB.jobId, plan!), planSignature!)).toBe(true);
    }
    expect(signedBy(server!.peerId, planSigningBytes(JOB.jobId, first.plan), second.planSignature)).toBe(false);
    expect(await a.heartbeat(to, 2, 8)).toEqual({ accepted: true, stop: false });
    expect(server!.status().nodes.find((n) => n.nodeId === a.id)!.stats).toMatchObject({ step: 8, loss: 3.5, planVersion: 2 });
    expect(await c.heartbeat(to, 0)).toEqual({ accepted: false, reason: 'rejoin', stop: false });
    expect(log.of('plan').map((p) => p.version)).toEqual([1, 2]);
  });

  it('swap experts once the routed rows heartbeats carry show one node doing far more than its share', async () => {
    await startServer({ replication: 1 });
    await admitted(a);
    const { plan } = await admitted(b);
    const own = (node: FakeNode, p: Plan) => p.experts.map((e) => e.holders.includes(node.id));
    // a's experts get 3 rows for every 1 of b's: 75% of the work. A look needs 256 new rows per expert from all nodes.
    const rows = own(a, plan).map((mine) => (mine ? 300 : 100));
    const share = (p: Plan) => rows.reduce((sum, n, g) => sum + (own(a, p)[g] ? n : 0), 0) / rows.reduce((x, y) => x + y, 0);
    expect(share(plan)).toBe(0.75);
    // A malformed count list is refused whole, counting nothing.
    await expect(a.heartbeat(to, plan.version, 1, undefined, rows.slice(1))).rejects.toThrow(/expertRows has 7 counts, the job 8 experts/);
    await expect(a.heartbeat(to, plan.version, 1, undefined, rows.map((n) => -n))).rejects.toThrow(/expertRows\/0: Expected integer/);
    // 1,600 rows are not a look's worth yet; 3,200 are, but too soon.
    expect(await a.heartbeat(to, plan.version, 1, undefined, rows)).toEqual({ accepted: true, stop: false });
    expect(await b.heartbeat(to, plan.version, 1, undefined, rows)).toEqual({ accepted: true, stop: false });
    clock += 10_000; // looks are 10 s apart
    const reply = await a.heartbeat(to, plan.version, 1);
    const balanced = applyPlanDelta(plan, reply.planDelta!);
    expect(balanced.version).toBe(plan.version + 1);
    expect(share(balanced)).toBe(0.5);
    expect(own(a, balanced).filter(Boolean).length).toBe(own(a, plan).filter(Boolean).length); // swaps: as many experts each
    const event = log.of('plan').at(-1)!;
    expect(event).toMatchObject({ version: balanced.version, balanced: { before: 1.5, after: 1 } });
    // Every expert that moved is copied from the node that gave it up, which the plan names in its handover.
    for (const { layer, expert, node, copyFrom } of event.moves.added) {
      expect(copyFrom).toBe(node === a.id ? b.id : a.id);
      expect(balanced.experts.find((e) => e.layer === layer && e.expert === expert)!.handover).toEqual([copyFrom]);
    }
    // The same work again moves nothing more.
    await a.heartbeat(to, balanced.version, 2, undefined, rows);
    clock += 10_000;
    expect(await b.heartbeat(to, balanced.version, 2, undefined, rows)).toEqual({ accepted: true, stop: false });
    expect(log.of('plan').at(-1)!.version).toBe(balanced.version);
  });

  it("make a new version when a node's addresses change (heartbeat or join), which the other nodes fetch as a delta", async () => {
    await startServer();
    await admitted(a);
    const joined = await admitted(b);
    const listening = a.host.getMultiaddrs().map(String);
    expect(await a.heartbeat(to, 2, 1, listening)).toEqual({ accepted: true, stop: false }); // the addresses it joined with
    // A relay reservation (on the coordinator, on this machine: b may use it).
    const reserved = [...listening, `${to}/p2p-circuit/p2p/${a.id}`];
    const change = { from: 2, version: 3, experts: [], peers: [{ peerId: a.id, addrs: reserved }], gone: [] };
    expect((await a.heartbeat(to, 2, 2, reserved)).planDelta).toEqual(change);
    const beat = await b.heartbeat(to, 2);
    expect(beat.planDelta).toEqual(change);
    const rebuilt = applyPlanDelta(joined.plan, beat.planDelta!);
    expect(signedBy(server!.peerId, planSigningBytes(JOB.jobId, rebuilt), beat.planSignature!)).toBe(true);
    expect(await a.heartbeat(to, 3, 3, reserved)).toEqual({ accepted: true, stop: false });
    // Joining again from the same place changes nothing; with other addresses (the reservation gone), a new version.
    expect((await admitted(a, { addrs: reserved })).plan.version).toBe(3);
    const back = await admitted(a, { addrs: listening });
    expect(back.plan).toEqual({ ...joined.plan, version: 4 });
    expect(log.of('plan').map((p) => p.version)).toEqual([1, 2, 3, 4]);
  });
});

describe('leases', () => {
  it('are withheld until expectedNodes have joined, then granted as global ids', async () => {
    await startServer({ job: { expectedNodes: 2 } });
    await admitted(a);
    const waiting = await a.lease(to, 4);
    expect(waiting).toMatchObject({ jobId: JOB.jobId, batchIds: [], done: false });
    expect(log.of('started')).toEqual([]);
    await admitted(b);
    expect(log.of('started')).toMatchObject([{ nodes: 2 }]);
    const first = await a.lease(to, 4);
    const second = await b.lease(to, 4);
    expect(first.batchIds).toEqual([0, 1, 2, 3]);
    expect(second.batchIds).toEqual([4, 5, 6, 7]);
    expect(first.deadline).toBe(clock + 30_000);
    expect(second.leaseId).not.toBe(first.leaseId);
  });

  it('complete exactly totalBatches across epochs (partial last one), each once, with global ids', async () => {
    const total = 2 * perEpoch + 3;
    await startServer({ job: { totalBatches: total, expectedNodes: 2 } });
    await admitted(a);
    await admitted(b);
    const granted: number[] = [];
    const problems: string[] = [];
    let turn = 0;
    for (let round = 0; round < 10 * total; round++) {
      const [node, other] = turn++ % 2 === 0 ? [a, b] : [b, a];
      const grant = await node.lease(to, 1 + (round % 4));
      if (grant.done) break;
      if (grant.batchIds.length === 0) continue;
      granted.push(...grant.batchIds);
      const epochs = new Set(grant.batchIds.map((id) => Math.floor(id / perEpoch)));
      expect(epochs.size, `grant ${grant.batchIds} spans one epoch`).toBe(1);
      // Someone else's batch and one past the total are refused; the holder's report counts once.
      const stolen = await other.report(to, grant.leaseId, [grant.batchIds[0]]);
      if (!stolen.accepted) problems.push(stolen.reason!);
      expect(stolen.accepted).toBe(false);
      expect(await node.report(to, grant.leaseId, grant.batchIds)).toEqual({ accepted: true });
      const again = await node.report(to, grant.leaseId, [grant.batchIds.at(-1)!]);
      expect(again.accepted).toBe(false);
      problems.push(again.reason!);
    }
    expect(granted.length).toBe(total);
    expect([...granted].sort((x, y) => x - y)).toEqual(Array.from({ length: total }, (_, i) => i));
    expect(problems.some((p) => /leased to another node/.test(p))).toBe(true);
    expect(problems.some((p) => /already reported|unknown or of a finished epoch/.test(p))).toBe(true);

    const status = server!.status();
    expect(status).toMatchObject({ completed: total, total, done: true });
    expect(status.leases.epoch).toBe(2);
    expect(status.leases.counters).toMatchObject({ issued: total, completed: total, reissued: 0 });
    expect(log.of('done')).toMatchObject([{ completed: total, total }]);
    const progress = log.of('progress').map((p) => p.completed);
    expect(progress.at(-1)).toBe(total);
    expect(progress.every((n, i) => i === 0 || n > progress[i - 1])).toBe(true);
    expect(await a.lease(to, 3)).toMatchObject({ batchIds: [], done: true });
    expect(await b.heartbeat(to, 2)).toEqual({ accepted: true, stop: true });
    // A report naming an id beyond the total can never count.
    expect((await a.report(to, 0, [total])).accepted).toBe(false);
    expect(server!.status().completed).toBe(total);
  });

  it('past their deadline go to another node; a late report of a batch not yet re-issued still counts', async () => {
    await startServer({ leaseMs: 400, job: { expectedNodes: 2 } });
    await admitted(a);
    await admitted(b);
    const slow = await a.lease(to, 3);
    expect(slow.batchIds).toEqual([0, 1, 2]);
    clock += 401;
    const expired = await log.waitFor('expired');
    expect(expired).toMatchObject({ node: a.id, leaseId: slow.leaseId, batchIds: [0, 1, 2] });
    expect(await a.report(to, slow.leaseId, [2])).toEqual({ accepted: true }); // finished late, nobody else has it
    const retry = await b.lease(to, 3);
    expect(retry.batchIds).toEqual([0, 1, 3]);
    expect((await a.report(to, slow.leaseId, [0])).reason).toMatch(/leased to another node/);
    expect(server!.status().leases.counters).toMatchObject({ expired: 3, reissued: 2, completed: 1 });
  });
});

describe('departures', () => {
  it('a node that stops heartbeating is declared dead: its batches are re-issued, its experts re-planned', async () => {
    await startServer({ heartbeatMs: 100, nodeTimeoutMs: 400, leaseMs: 60_000, job: { expectedNodes: 2 } });
    await admitted(a);
    await admitted(b);
    expect((await b.lease(to, 3)).batchIds).toEqual([0, 1, 2]);
    expect((await a.lease(to, 2)).batchIds).toEqual([3, 4]);
    clock += 300;
    expect((await a.heartbeat(to, 2)).accepted).toBe(true);
    clock += 200; // b silent for 500 ms, a for 200
    const died = await log.waitFor('died');
    expect(died).toMatchObject({ node: b.id, releasedBatchIds: [0, 1, 2] });
    const plan = await log.waitFor('plan', (p) => p.version === 3);
    expect(plan.holders.map((e) => e.holders)).toEqual(Array(EXPERTS).fill([a.id]));
    expect(plan.moves.removed.filter((m) => m.node === b.id)).toHaveLength(EXPERTS);
    expect(plan.degraded).toMatch(/1 admitted/);
    expect(log.of('died')).toHaveLength(1); // a is alive

    const beat = await a.heartbeat(to, 2);
    expect(beat.planDelta).toMatchObject({ from: 2, version: 3, gone: [b.id], peers: [] });
    expect((await a.lease(to, 5)).batchIds).toEqual([0, 1, 2, 5, 6]); // the lowest free first
    expect(server!.status().leases.counters).toMatchObject({ released: 3, reissued: 3 });

    expect(await b.heartbeat(to, 2)).toEqual({ accepted: false, reason: 'rejoin', stop: false });
    await expect(b.lease(to, 1)).rejects.toThrow(/join first/);
    const back = await admitted(b);
    expect(log.of('rejoined')).toMatchObject([{ node: b.id }]);
    expect(back.plan.version).toBe(4);
    expect(back.plan.peers.map((p) => p.peerId).sort()).toEqual(sorted([a.id, b.id]));
  });

  it('`leaving` hands a node\'s unfinished batches back at once and moves its experts', async () => {
    await startServer({ job: { expectedNodes: 2 } });
    await admitted(a);
    await admitted(b);
    const grant = await b.lease(to, 4);
    expect(grant.batchIds).toEqual([0, 1, 2, 3]);
    expect(await b.report(to, grant.leaseId, [0], true)).toEqual({ accepted: true });
    expect(log.of('left')).toMatchObject([{ node: b.id, releasedBatchIds: [1, 2, 3] }]);
    expect(log.of('progress').at(-1)).toMatchObject({ completed: 1 });
    expect(server!.status().plan!.experts.every((e) => e.holders.length === 1 && e.holders[0] === a.id)).toBe(true);
    // The job has started: the remaining node carries on alone.
    expect((await a.lease(to, 4)).batchIds).toEqual([1, 2, 3, 4]);
    expect(await b.heartbeat(to, 3)).toEqual({ accepted: false, reason: 'rejoin', stop: false });
    // What the daemon sends when it stops between leases.
    await admitted(c);
    expect(await c.report(to, 0, [], true)).toEqual({ accepted: true });
    expect(log.of('left').map((e) => e.node)).toEqual([b.id, c.id]);
  });
});

describe('bad requests', () => {
  it('are refused with logged reasons, and the coordinator keeps serving', async () => {
    await startServer();
    await admitted(a);

    const outsider = await c.lease(to, 1).catch((e) => e);
    expect(outsider).toBeInstanceOf(RefusedError);
    expect(outsider.message).toMatch(/not an admitted live node of the job: join first/);
    await expect(c.report(to, 0, [0])).rejects.toThrow(/not a node of the job/);
    // A job that is not running here is over for the node: nothing granted, its batches not counted.
    expect(await a.lease(to, 1, 'other-job')).toMatchObject({ jobId: 'other-job', batchIds: [], done: true });
    await expect(a.report(to, 0, [0], false, 'other-job')).rejects.toThrow(/job other-job is not running here/);
    expect(log.of('refused').map((e) => [e.node, e.request])).toEqual([[c.id, 'lease'], [c.id, 'leaseReport'], [a.id, 'leaseReport']]);

    const unknown = await a.report(to, 999, [0]);
    expect(unknown).toEqual({ accepted: false, reason: 'lease 999 is unknown or of a finished epoch' });
    expect(log.of('refused').at(-1)).toMatchObject({ node: a.id, request: 'leaseReport', reason: unknown.reason });

    const garbage = misbehaviours()[0];
    expect(garbage.name).toBe('garbage bytes');
    const outcome = await sendRaw(c.host, peerIdFromString(server!.peerId), garbage);
    expect(outcome.reply?.error?.code).toBe('malformed');
    expect(await log.waitFor('rejected', (r) => r.reason === 'malformed')).toMatchObject({ peer: c.id, direction: 'request' });

    // A node of another version or one that ignores the schema.
    const anything: MessageCodec = { ...msgpackCodec, encodeRequest: (_protocol, message) => packPlain(message) };
    const sloppy = new Rpc({ transport: c.host, codec: anything });
    const schema = await sloppy.request(to, 'lease', { jobId: JOB.jobId, maxBatches: 0 }).catch((e) => e);
    expect(schema).toBeInstanceOf(RemoteError);
    expect((await log.waitFor('rejected', (r) => r.reason === 'schema')).message).toMatch(/maxBatches/);

    expect((await a.heartbeat(to, 1)).accepted).toBe(true);
    expect(server!.status().nodes.map((n) => n.nodeId)).toEqual([a.id]);
  });

  // The job's schema is checked where it is read (proto's validateJob: test/proto/job.test.ts); these need its tokenizer and corpus.
  it('a bad job or option is refused before anything listens', async () => {
    const start = (options: Partial<CoordinatorOptions>) => CoordinatorServer.start({ job: JOB, tokenizer, joinToken: '', ...options });
    await expect(start({ job: { ...JOB, model: { ...MODEL, numKvHeads: 3 } } })).rejects.toThrow(/numKvHeads \(3\) must divide numHeads/);
    await expect(start({ job: { ...JOB, mode: 'lora' } })).rejects.toThrow(/lora mode needs lora \{ rank, alpha \}/);
    await expect(start({ job: { ...JOB, corpus: 'nope' } })).rejects.toThrow(/unknown corpus "nope"/);
    await expect(start({ heartbeatMs: 1000, nodeTimeoutMs: 1000 })).rejects.toThrow(/nodeTimeoutMs \(1000\) must exceed heartbeatMs \(1000\)/);
  });
});

describe('swarmtrain-coordinator', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'swarmtrain-coordinator-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function run(args: string[]) {
    const child = spawn(process.execPath, [join(repoRoot, 'coordinator/bin.mjs'), ...args], { cwd: repoRoot });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return { child, exited, stderr: () => stderr, lines: createInterface({ input: child.stdout })[Symbol.asyncIterator]() };
  }

  it('prints JSON events, the first one where to join; serves nodes; stops cleanly on SIGTERM', async () => {
    const jobFile = join(dir, 'job.json');
    await writeFile(jobFile, JSON.stringify(JOB));
    const { child, exited, stderr, lines } = run(['--job', jobFile, '--vocab', '300', '--token', TOKEN, '--heartbeat-ms', '200']);
    const first = JSON.parse((await lines.next()).value as string);
    expect(first.event).toBe('listening');
    expect(first.addrs.length).toBeGreaterThan(0);
    for (const addr of first.addrs) expect(addr).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${first.peerId}$`));

    expect(JSON.parse((await lines.next()).value as string)).toMatchObject({ event: 'job', jobId: JOB.jobId, state: 'running' });
    const reply = await a.join(first.addrs[0]);
    expect(reply).toMatchObject({ admitted: true, heartbeatMs: 200, job: JOB });
    const joined = JSON.parse((await lines.next()).value as string);
    expect(joined).toMatchObject({ event: 'joined', node: a.id });

    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr()).toBe('');
  });

  it('exits 2 with a message naming the field for a bad job file, and for a missing one', async () => {
    const badFile = join(dir, 'bad.json');
    await writeFile(badFile, JSON.stringify({ ...JOB, averaging: { mode: 'sync', every: 0, deadlineMs: 1000 } }));
    const bad = run(['--job', badFile, '--vocab', '300']);
    expect(await bad.exited).toBe(2);
    expect(bad.stderr()).toBe(`swarmtrain coordinator: job ${badFile}: /averaging/every: Expected integer to be greater or equal to 1\n`);

    const missing = run(['--job', join(dir, 'absent.json'), '--vocab', '300']);
    expect(await missing.exited).toBe(2);
    expect(missing.stderr()).toMatch(/absent\.json: no such file/);
  });
});
