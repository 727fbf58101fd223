// Real swarms: a coordinator and node processes on 127.0.0.1 train a small MoE model on
// Moby-Dick. Checked: the loss falls and experts really run remotely; sharding lets nodes that
// could each hold only half of the experts train the whole model; a node killed with SIGKILL
// costs no micro-batch (none lost, none doubled) and its experts are re-replicated from the
// survivors; a restarted node with the same identity catches up from a peer; experts swapped between nodes
// for the rows routed to them keep their training; and with
// synchronous averaging and every expert on every node, the swarm retraces a single process;
// bad peers are refused, and a node refuses a coordinator whose plan is not signed by its peer id.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { multiaddr } from '@multiformats/multiaddr';
import { f32Tensor, groupId, msgpackCodec, type JobSpec } from '../../proto/index.ts';
import { footprint, nodeBytes } from '../../src/model/footprint.ts';
import { createHost, Rpc } from '../../src/p2p/index.ts';
import { JOIN_TOKEN, misbehaviours, sendRaw, serveToy } from '../p2p/peers.ts';
import { jobConfig, jobDocuments, jobFootprintSettings } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { start, startSwarm, type Swarm, type SwarmEvent } from '../../src/harness/local-swarm.ts';
import { replaySync, stepsByNode } from './replay.ts';

const MODEL = {
  hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2,
  expertHiddenSize: 64, maxSeqLen: 32,
};

function job(overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    jobId: 'test-job', model: MODEL, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 7, corpus: 'moby-dick',
    documents: { from: 0, to: 30 }, batchSize: 4, seqLen: 32, heldOutFraction: 0.05, totalBatches: 60, expectedNodes: 3,
    lr: 1e-2, minLr: 1e-3, warmupSteps: 5, averaging: { mode: 'periodic', every: 4, deadlineMs: 3000 }, expertTimeoutMs: 5000,
    ...overrides,
  };
}

const COORDINATOR = ['--vocab', '300', '--heartbeat-ms', '300', '--node-timeout-ms', '3000', '--lease-ms', '20000'];
const steps = (events: SwarmEvent[]) => events.filter((e) => e.event === 'step');
/** The plan in force when the job finished (nodes leave, and re-plans follow, after that). */
const planWhenDone = (events: SwarmEvent[]) => events.slice(0, events.findIndex((e) => e.event === 'done')).reverse().find((e) => e.event === 'plan')!;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

let swarm: Swarm | undefined;
afterEach(async () => {
  await swarm?.stop();
  swarm = undefined;
});

// Each test starts its own swarm of processes; a few minutes at most on 2 cores.
vi.setConfig({ testTimeout: 300_000 });

describe('a swarm of processes on 127.0.0.1', () => {
  it('3 nodes train the model: loss falls, every expert on 2 nodes, remote expert calls happen', async () => {
    swarm = await startSwarm(job(), [...COORDINATOR, '--replication', '2']);
    const nodes = [0, 1, 2].map(() => swarm!.startNode());
    await swarm.coordinator.waitFor((e) => e.event === 'done', 240_000, 'done');
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 30_000, 'finished')));
    const all = nodes.flatMap((n) => steps(n.events));
    expect(all.length).toBeGreaterThanOrEqual(60);
    const ordered = all.sort((a, b) => a.batch - b.batch);
    expect(mean(ordered.slice(-12).map((e) => e.loss))).toBeLessThan(mean(ordered.slice(0, 12).map((e) => e.loss)) - 0.3);
    const plan = planWhenDone(swarm.coordinator.events);
    for (const expert of plan.holders as { holders: string[] }[]) expect(new Set(expert.holders).size).toBe(2);
    expect(nodes.reduce((sum, n) => sum + steps(n.events).at(-1)!.remoteCalls, 0)).toBeGreaterThan(0);
    expect(nodes.reduce((sum, n) => sum + steps(n.events).at(-1)!.served, 0)).toBeGreaterThan(0);
  });
});

describe('faults', () => {
  it('kill -9 of a node mid-run: training goes on, its experts are re-replicated, every batch is trained exactly once', async () => {
    swarm = await startSwarm(job({ totalBatches: 72 }), [...COORDINATOR, '--replication', '2']);
    const nodes = [0, 1, 2].map(() => swarm!.startNode());
    await nodes[2].waitFor((e) => e.event === 'step' && e.step === 4, 120_000, 'step 4');
    nodes[2].kill('SIGKILL');
    await swarm.coordinator.waitFor((e) => e.event === 'died', 30_000, 'died');
    const done = await swarm.coordinator.waitFor((e) => e.event === 'done', 240_000, 'done');
    expect(done.completed).toBe(72);
    const progress = [...swarm.coordinator.events].reverse().find((e) => e.event === 'progress')!;
    expect(progress.completed).toBe(72);
    expect(progress.counters.completed).toBe(72); // each batch reported done exactly once
    const survivors = nodes.slice(0, 2);
    const added = survivors.flatMap((n) => n.events.filter((e) => e.event === 'expert-added'));
    expect(added.length).toBeGreaterThan(0);
    expect(added.every((e) => e.copied)).toBe(true); // from the surviving replica, not re-initialized
    const plan = planWhenDone(swarm.coordinator.events);
    for (const expert of plan.holders as { holders: string[] }[]) expect(new Set(expert.holders).size).toBe(2);
    // Every batch was trained by someone (the killed node's unreported batch again by a survivor).
    const trained = nodes.flatMap((n) => steps(n.events).map((e) => e.batch as number));
    expect(new Set(trained).size).toBe(72);
  });

  it('a node restarted with the same identity rejoins and catches up from a peer', async () => {
    // A job far longer than the test, so the first node cannot finish it while the second restarts.
    swarm = await startSwarm(job({ totalBatches: 100_000, expectedNodes: 2 }), [...COORDINATOR, '--replication', '2']);
    const key = `${swarm.dir}/node1.key`;
    const first = swarm.startNode();
    const second = swarm.startNode(['--key', key]);
    await second.waitFor((e) => e.event === 'step' && e.step === 3, 120_000, 'step 3');
    second.kill('SIGKILL');
    await swarm.coordinator.waitFor((e) => e.event === 'died', 30_000, 'died');
    const again = swarm.startNode(['--key', key]);
    const caught = await again.waitFor((e) => e.event === 'caught-up', 60_000, 'caught-up');
    const logs = [...again.events.filter((e) => e.event === 'log').map((e) => e.message), ...swarm.coordinator.events.filter((e) => e.event === 'died').map((e) => `coordinator: ${e.node} died`)];
    expect(caught.trunk, `the trunk was not fetched; the node logged: ${logs.join(' | ')}`).toBe(true);
    await swarm.coordinator.waitFor((e) => e.event === 'rejoined', 10_000, 'rejoined');
    const joined = await again.waitFor((e) => e.event === 'joined');
    expect(joined.node).toBe((await second.waitFor((e) => e.event === 'joined')).node);
    await again.waitFor((e) => e.event === 'step', 60_000, 'a step after rejoining');
    // Caught up: its first loss is near the others' current loss, not an untrained model's.
    const fresh = steps(first.events)[0].loss as number;
    expect(steps(again.events)[0].loss).toBeLessThan(fresh - 0.2);
  });

  it('experts moved to a node that joins keep their training: the node that gave them up hands their state over', async () => {
    // One replica each, so a moved expert has no other holder: only the node giving it up has its state
    // (the coordinator here keeps no checkpoints), and no swaps for routed rows: the last plan must be the join's.
    const fixed = ['--replication', '1', '--balance-experts-ms', '0'];
    swarm = await startSwarm(job({ totalBatches: 100_000, expectedNodes: 1 }), [...COORDINATOR, ...fixed]);
    const first = swarm.startNode();
    await first.waitFor((e) => e.event === 'step' && e.step === 8, 120_000, 'step 8');
    const second = swarm.startNode();
    const joined = await second.waitFor((e) => e.event === 'joined', 60_000, 'joined');
    const caught = await second.waitFor((e) => e.event === 'caught-up', 60_000, 'caught-up');
    const moves = swarm.coordinator.events.filter((e) => e.event === 'plan').at(-1)!.moves as { removed: { node: string }[] };
    const firstId = (await first.waitFor((e) => e.event === 'joined')).node;
    expect(moves.removed.filter((m) => m.node === firstId).length).toBe((joined.experts as string[]).length);
    expect(caught.experts).toEqual({ held: (joined.experts as string[]).length, copied: (joined.experts as string[]).length });
    expect((joined.experts as string[]).length).toBeGreaterThan(0);
    await second.waitFor((e) => e.event === 'step', 60_000, 'a step after joining');
    // Its first loss is near the first node's current one, not that of a model with half its experts untrained.
    const fresh = steps(first.events)[0].loss as number;
    expect(steps(second.events)[0].loss).toBeLessThan(fresh - 0.2);
  });

  it('experts swapped for the rows routed to them keep their training, also on a node that skipped the version moving one', async () => {
    // One replica each and no load-balancing loss, so the routers soon favour some experts: the coordinator, looking
    // at every window of routed rows, swaps experts between the nodes faster than they apply plans (a node applies only
    // the newest, so it often skips the version that moved an expert to it, and its handover), and each swap's state
    // comes only from the node giving it up.
    const unbalanced = job({ totalBatches: 80, expectedNodes: 2, model: { ...MODEL, routerAuxLossCoef: 0 } });
    swarm = await startSwarm(unbalanced, [...COORDINATOR, '--replication', '1', '--balance-experts-ms', '1']);
    const nodes = [swarm.startNode(), swarm.startNode()];
    await swarm.coordinator.waitFor((e) => e.event === 'done', 240_000, 'done');
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 30_000, 'finished')));
    const balanced = swarm.coordinator.events.filter((e) => e.event === 'plan' && e.balanced);
    expect(balanced.length).toBeGreaterThan(0);
    for (const plan of balanced) {
      const { before, after } = plan.balanced as { before: number; after: number };
      expect(before).toBeGreaterThan(1.05);
      expect(after).toBeLessThan(before);
    }
    const added = nodes.flatMap((n) => n.events.filter((e) => e.event === 'expert-added'));
    // (Fewer than two per swap: a node skipping versions skips a swap and its swap back, and the last plans may come after its last step.)
    expect(added.length).toBeGreaterThan(0);
    expect(added.filter((e) => !e.copied)).toEqual([]); // every move copied from the giver, none re-initialized
    const ordered = nodes.flatMap((n) => steps(n.events)).sort((a, b) => a.batch - b.batch);
    expect(mean(ordered.slice(-12).map((e) => e.loss))).toBeLessThan(mean(ordered.slice(0, 12).map((e) => e.loss)) - 0.3);
  });

  it('a node stopped in a step longer than the node timeout keeps beating until it leaves: it is not declared dead', async () => {
    swarm = await startSwarm(job({ totalBatches: 100_000, expectedNodes: 1 }), COORDINATOR);
    // Each step sleeps 5 s after training: twice the time it takes the coordinator to declare a silent node dead.
    const node = swarm.startNode(['--step-delay-ms', '5000']);
    const joined = await node.waitFor((e) => e.event === 'joined', 60_000, 'joined');
    await node.waitFor((e) => e.event === 'step', 60_000, 'a step');
    await new Promise((resolve) => setTimeout(resolve, 500)); // into the next step's sleep
    node.kill('SIGTERM');
    await node.waitFor((e) => e.event === 'finished', 30_000, 'finished');
    const membership = (e: SwarmEvent) => e.node === joined.node && ['joined', 'rejoined', 'left', 'died'].includes(e.event as string);
    const left = await swarm.coordinator.waitFor((e) => membership(e) && e.event !== 'joined', 10_000, 'left');
    expect(left.event).toBe('left');
    // And it stays gone: no beat after its leaving report brings it back (rejoined), to be declared dead later.
    await new Promise((resolve) => setTimeout(resolve, 4000));
    expect(swarm.coordinator.events.filter(membership).map((e) => e.event)).toEqual(['joined', 'left']);
  });
});

describe('sharding', () => {
  it('nodes that can each hold only half of the experts, and only with checkpointing, still train the whole model', async () => {
    const spec = job({ totalBatches: 45 });
    const tokenizer = BpeTokenizer.train(jobDocuments(spec).documents, { vocabSize: 300 });
    const fp = footprint(jobConfig(spec, tokenizer), jobFootprintSettings(spec));
    const experts = MODEL.numLayers * MODEL.numExperts;
    const budget = nodeBytes(fp, experts / 2, true);
    swarm = await startSwarm(spec, [...COORDINATOR, '--replication', '2']);
    const nodes = [0, 1, 2].map(() => swarm!.startNode(['--memory-budget', String(budget)]));
    await swarm.coordinator.waitFor((e) => e.event === 'done', 240_000, 'done');
    const plan = planWhenDone(swarm.coordinator.events);
    const held = new Map<string, number>();
    for (const expert of plan.holders as { holders: string[] }[]) {
      expect(expert.holders.length).toBeGreaterThanOrEqual(1); // every expert is somewhere
      for (const node of expert.holders) held.set(node, (held.get(node) ?? 0) + 1);
    }
    for (const count of held.values()) expect(count).toBeLessThanOrEqual(experts / 2);
    expect(plan.degraded).toMatch(/replica/); // 3 × 4 places cannot hold 8 experts twice
    const all = nodes.flatMap((n) => steps(n.events)).sort((a, b) => a.batch - b.batch);
    expect(mean(all.slice(-9).map((e) => e.loss))).toBeLessThan(mean(all.slice(0, 9).map((e) => e.loss)) - 0.2);
    expect(nodes.every((n) => steps(n.events).at(-1)!.remoteCalls > 0)).toBe(true);
    // Each node chose checkpointing as the planner did, and its model, once built, fits its budget.
    for (const node of nodes) {
      const memory = node.events.find((e) => e.event === 'memory')!;
      expect(memory).toMatchObject({ experts: experts / 2, checkpointing: true, budgetBytes: budget, predictedBytes: budget });
      expect(memory.projectedBytes as number).toBeLessThanOrEqual(budget);
    }
  });
});

describe('bad peers', () => {
  it('garbage, oversized and truncated messages, a wrong version and an unadmitted caller are refused; training goes on', async () => {
    swarm = await startSwarm(job({ totalBatches: 60, expectedNodes: 2 }), [...COORDINATOR, '--replication', '1']);
    const nodes = [0, 1].map(() => swarm!.startNode());
    const joined = await swarm.coordinator.waitFor((e) => e.event === 'joined', 60_000, 'joined');
    await nodes[0].waitFor((e) => e.event === 'step', 60_000, 'a step');
    const target = multiaddr((joined.addrs as string[])[0]);
    const victim = nodes.find((n) => n.events.some((e) => e.event === 'joined' && e.node === joined.node))!;
    const attacker = await createHost();
    const rpc = new Rpc({ transport: attacker, codec: msgpackCodec, onReject: () => {} });
    try {
      for (const bad of misbehaviours().filter((b) => b.protocol === 'expertForward' || b.close)) {
        const outcome = await sendRaw(attacker, target, { ...bad, protocol: 'expertForward' });
        expect(outcome.reply?.ok, bad.name).toBeUndefined();
      }
      const call = { jobId: 'test-job', step: 0, call: 1, layer: 0, expert: 0, rows: 1, tensor: f32Tensor([1, 64], new Float32Array(64)) };
      await expect(rpc.request(target, 'expertForward', call)).rejects.toThrow(/not admitted/);
      const delta = { jobId: 'test-job', group: groupId({ kind: 'trunk' }), round: 1, steps: 1, codec: 'f32', parts: [] };
      await expect(rpc.request(target, 'delta', delta)).rejects.toThrow(/not admitted/);
      const join = {
        version: '2.0.0', nodeId: attacker.peerId.toString(), token: '', cores: 1, gemmGflops: 1, memoryBytes: 2 ** 30,
        addrs: attacker.getMultiaddrs().map(String),
      };
      await expect(rpc.request(swarm.address, 'join', join)).rejects.toThrow(/major versions differ/);
    } finally {
      await attacker.stop();
    }
    const rejected = victim.events.filter((e) => e.event === 'rejected');
    expect(rejected.map((e) => e.reason)).toEqual(expect.arrayContaining(['malformed', 'too-large', 'truncated']));
    const before = steps(victim.events).length;
    await victim.waitFor((e) => e.event === 'step' && e.step > before, 60_000, 'a step after the attack');
    expect(victim.exitCode).toBeNull();
  });

  it('a node refuses a plan its coordinator did not sign', async () => {
    const impostor = await createHost();
    const dir = await mkdtemp(join(tmpdir(), 'swarmtrain-impostor-'));
    try {
      await serveToy(new Rpc({ transport: impostor, codec: msgpackCodec, onReject: () => {} })); // admits with a zero signature
      const node = start('node', 'node/bin.mjs', ['node', '--join', impostor.getMultiaddrs()[0].toString(), '--token', JOIN_TOKEN], { logDir: dir });
      expect(await node.exited).toBe(2);
      expect(node.stderr).toContain(`the plan in the join reply is not signed by ${impostor.peerId}`);
    } finally {
      await impostor.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('equivalence', () => {
  it('with synchronous averaging every step and every expert on every node, 20 steps match one process to 1e-4', async () => {
    const spec = job({ totalBatches: 60, averaging: { mode: 'sync', every: 1, deadlineMs: 30_000 } });
    swarm = await startSwarm(spec, [...COORDINATOR, '--replication', '3']);
    const nodes = [0, 1, 2].map(() => swarm!.startNode());
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'step' && e.step === 20, 240_000, 'step 20')));
    const { perNode, batchesPerStep } = await stepsByNode(nodes, 20);
    // The coordinator trained its tokenizer the same deterministic way (--vocab 300 on the job's documents).
    const tokenizer = BpeTokenizer.train(jobDocuments(spec).documents, { vocabSize: 300 });
    const reference = await replaySync(spec, tokenizer, batchesPerStep);
    for (let s = 0; s < 20; s++) {
      const swarmLoss = mean(perNode.map((events) => events[s].loss));
      const oneProcess = mean(reference[s]);
      expect(Math.abs(swarmLoss - oneProcess) / oneProcess, `step ${s}`).toBeLessThan(1e-4);
    }
  });
});
