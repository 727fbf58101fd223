import { describe, expect, it } from 'vitest';
import { footprint, heapBytes, nodeBytes, type Precision } from '../../src/model/footprint.ts';
import { planShards, ShardPlanner, type PlannerNode, type PlannerOptions, type ShardPlan } from '../../coordinator/planner.ts';
import { createConfig, DEMO_CONFIG } from '../../src/model/config.ts';
import { rng } from '../helpers.ts';

const FULL: Precision = { mode: 'full' };
/** LoRA on a q4 base on the integer path with bf16 activations: the leanest setting. */
const LORA_Q4: Precision = { mode: 'lora', lora: { rank: 8, alpha: 16 }, baseFormat: 'q4', basePath: 'int', activationStorage: 'bf16' };
const config = DEMO_CONFIG; // 4 layers × 8 experts
const GROUPS = config.numLayers * config.numExperts;
const { trunkBytes, expertBytes } = footprint(config, FULL);

/** A node whose budget holds the trunk and exactly `capacity` experts. */
function node(nodeId: string, gemmGflops = 40, capacity = 1000): PlannerNode {
  return { nodeId, gemmGflops, memoryBytes: trunkBytes + capacity * expertBytes + (expertBytes >> 1) };
}

function loads(plan: ShardPlan): Record<string, number> {
  return Object.fromEntries([...plan.nodes].map(([id, experts]) => [id, experts.length]));
}

/** Structural invariants every plan must satisfy, checked from scratch. */
function checkPlan(plan: ShardPlan, nodes: PlannerNode[], replication: number, groups = GROUPS, bytes = { trunkBytes, expertBytes }) {
  const admitted = new Set(nodes.filter((n) => n.memoryBytes >= bytes.trunkBytes).map((n) => n.nodeId));
  expect(new Set(plan.nodes.keys())).toEqual(admitted);
  expect(plan.experts).toHaveLength(groups);
  const perNode = new Map([...admitted].map((id) => [id, [] as string[]]));
  const under: string[] = [];
  for (const { layer, expert, holders } of plan.experts) {
    expect(new Set(holders).size).toBe(holders.length); // never two replicas on one node
    expect(holders.length).toBeLessThanOrEqual(replication);
    for (const id of holders) perNode.get(id)!.push(`${layer}.${expert}`);
    if (holders.length < replication) under.push(`${layer}.${expert}:${holders.length}`);
  }
  for (const n of nodes) {
    if (!admitted.has(n.nodeId)) continue;
    const mine = plan.nodes.get(n.nodeId)!.map((e) => `${e.layer}.${e.expert}`);
    expect(mine.sort()).toEqual(perNode.get(n.nodeId)!.sort());
    expect(bytes.trunkBytes + mine.length * bytes.expertBytes).toBeLessThanOrEqual(n.memoryBytes); // memory bound
  }
  expect(plan.degraded?.underReplicated.map((u) => `${u.layer}.${u.expert}:${u.replicas}`) ?? []).toEqual(under);
}

describe('shard planner', () => {
  const options: PlannerOptions = { config, precision: FULL };

  it('places every expert on R distinct nodes, evenly across equal nodes', () => {
    const nodes = ['a', 'b', 'c', 'd'].map((id) => node(id));
    const plan = planShards(nodes, options);
    checkPlan(plan, nodes, 2);
    expect(plan.degraded).toBeNull();
    expect(plan.experts.every((e) => e.holders.length === 2)).toBe(true);
    expect(loads(plan)).toEqual({ a: 16, b: 16, c: 16, d: 16 });
    expect(plan.version).toBe(1);
    expect(plan.diff.added).toHaveLength(64);
    expect(plan.diff.added.every((a) => a.copyFrom === null)).toBe(true);
    expect(plan.diff.removed).toEqual([]);
    // R = 3 on 3 nodes: every node holds every expert, still one replica per node.
    const three = planShards(nodes.slice(0, 3), { ...options, replication: 3 });
    checkPlan(three, nodes.slice(0, 3), 3);
    expect(loads(three)).toEqual({ a: GROUPS, b: GROUPS, c: GROUPS });
  });

  it('weights by speed: a 2x faster node takes ~2x the experts', () => {
    const big = createConfig({ numLayers: 8, numExperts: 8 }); // 64 experts
    const fp = footprint(big, FULL);
    const nodes = [['slow', 10], ['mid1', 20], ['mid2', 20], ['fast', 40]].map(([id, gflops]) => ({
      nodeId: id as string, gemmGflops: gflops as number, memoryBytes: fp.trunkBytes + 1000 * fp.expertBytes,
    }));
    for (const replication of [1, 2]) {
      const plan = planShards(nodes, { config: big, precision: FULL, replication });
      checkPlan(plan, nodes, replication, 64, fp);
      const total = 64 * replication;
      for (const n of nodes) {
        const share = (total * n.gemmGflops) / 90;
        expect(Math.abs(plan.nodes.get(n.nodeId)!.length - share)).toBeLessThanOrEqual(1);
      }
    }
  });

  it('respects memory: nodes that each hold half the experts still cover all of them at R=1', () => {
    const nodes = [node('a', 10, GROUPS / 2), node('b', 40, GROUPS / 2), node('c', 20, GROUPS / 2)];
    const plan = planShards(nodes, { ...options, replication: 1 });
    checkPlan(plan, nodes, 1);
    expect(plan.degraded).toBeNull();
    expect(plan.nodes.get('b')).toHaveLength(GROUPS / 2); // the fast node is stopped by its memory
    // R = 2 needs 64 replicas where 48 fit: exactly 16 experts are left with one replica, none with zero.
    const two = planShards(nodes, options);
    checkPlan(two, nodes, 2);
    expect(two.degraded!.underReplicated).toHaveLength(2 * GROUPS - (3 * GROUPS) / 2);
    expect(two.degraded!.underReplicated.every((u) => u.replicas === 1)).toBe(true);
    expect(two.degraded!.reason).toBe(`memory: the admitted nodes have room for 48 expert replicas, 64 needed`);
  });

  it('finds a placement when every node with room already holds the expert (shifting fresh replicas)', () => {
    // 3 experts, 3 nodes with room for 2 each, R = 2: feasible only as a cycle of pairs.
    const tiny = createConfig({ numLayers: 1, numExperts: 3 });
    const fp = footprint(tiny, FULL);
    const nodes = ['a', 'b', 'c'].map((nodeId) => ({ nodeId, gemmGflops: 1, memoryBytes: fp.trunkBytes + 2 * fp.expertBytes }));
    const plan = planShards(nodes, { config: tiny, precision: FULL });
    checkPlan(plan, nodes, 2, 3, fp);
    expect(plan.degraded).toBeNull();
  });

  it('covers everything whenever memory allows (random budgets and speeds, fresh plans)', () => {
    const random = rng(7);
    const pick = (n: number) => Math.floor(((random() + 1) / 2) * n);
    for (let trial = 0; trial < 200; trial++) {
      const replication = 1 + pick(3);
      const nodes = Array.from({ length: 1 + pick(6) }, (_, i) => node(`n${i}`, pick(3) === 0 ? 0 : 1 + pick(50), pick(GROUPS + 4)));
      const plan = planShards(nodes, { ...options, replication });
      checkPlan(plan, nodes, replication);
      // Feasible exactly when R nodes exist and the room (each node at most one replica per expert) suffices.
      const room = nodes.reduce((s, n) => s + Math.min(GROUPS, Math.floor((n.memoryBytes - trunkBytes) / expertBytes)), 0);
      const feasible = nodes.length >= replication && room >= GROUPS * replication;
      expect(plan.degraded === null).toBe(feasible);
      if (!feasible) {
        const placed = plan.experts.reduce((s, e) => s + e.holders.length, 0);
        expect(placed).toBe(Math.min(room, GROUPS * Math.min(replication, nodes.length)));
      }
    }
  });

  it('a join moves only the replicas the new node takes over, from nodes over their share', () => {
    const planner = new ShardPlanner(options);
    const nodes = ['a', 'b', 'c'].map((id) => node(id));
    const before = planner.plan(nodes);
    const joined = planner.plan([...nodes, node('d')]);
    checkPlan(joined, [...nodes, node('d')], 2);
    expect(joined.version).toBe(before.version + 1);
    expect(joined.diff.added.every((a) => a.node === 'd')).toBe(true);
    expect(joined.diff.added).toHaveLength(16); // d's fair share: 64 / 4
    expect(joined.diff.removed).toHaveLength(16);
    for (const { layer, expert, copyFrom } of joined.diff.added) {
      expect(before.experts[layer * config.numExperts + expert].holders).toContain(copyFrom);
    }
    expect(Object.values(loads(joined)).sort()).toEqual([16, 16, 16, 16]);
  });

  it('nodes joining one by one hold experts of every layer, not whole layers', () => {
    // Replication 1, as bench/scaling.ts's split runs: a second node used to take layers 0-1 whole from the first.
    const planner = new ShardPlanner({ ...options, replication: 1 });
    const perLayer = (plan: ShardPlan, id: string) => {
      const counts = new Array<number>(config.numLayers).fill(0);
      for (const { layer } of plan.nodes.get(id)!) counts[layer]++;
      return counts;
    };
    const nodes: PlannerNode[] = [];
    for (const [id, speed] of [['a', 40], ['b', 36], ['c', 44], ['d', 40]] as const) {
      nodes.push(node(id, speed));
      const plan = planner.plan(nodes);
      checkPlan(plan, nodes, 1);
      for (const n of nodes) {
        const counts = perLayer(plan, n.nodeId);
        const fair = plan.nodes.get(n.nodeId)!.length / config.numLayers;
        for (const count of counts) expect(Math.abs(count - fair), `${n.nodeId} after ${id} joined: ${counts}`).toBeLessThanOrEqual(1);
      }
    }
  });

  it('a join within the overload margin moves nothing; the new node is still in the plan', () => {
    const planner = new ShardPlanner({ ...options, maxOverload: Infinity });
    const nodes = ['a', 'b', 'c'].map((id) => node(id));
    const before = planner.plan(nodes);
    const joined = planner.plan([...nodes, node('d')]);
    expect(joined.diff).toEqual({ added: [], removed: [] });
    expect(joined.nodes.get('d')).toEqual([]);
    expect(joined.version).toBe(before.version + 1);
    // Nothing changed at all: same version.
    expect(planner.plan([...nodes, node('d')]).version).toBe(joined.version);
  });

  it('bump() gives the same placement the next version, nothing moved; re-plans go on from it', () => {
    const planner = new ShardPlanner(options);
    expect(planner.bump()).toBeUndefined(); // no plan yet
    const nodes = ['a', 'b', 'c'].map((id) => node(id));
    planner.plan(nodes);
    const grown = planner.plan([...nodes, node('d')]);
    const bumped = planner.bump()!;
    expect(bumped).toEqual({ ...grown, version: grown.version + 1, diff: { added: [], removed: [] } });
    expect(planner.current).toBe(bumped);
    const left = planner.plan(nodes);
    expect(left.version).toBe(bumped.version + 1);
    expect(left.diff.removed.every((r) => r.node === 'd')).toBe(true);
  });

  it('a node leaving moves only its own replicas, each copied from the surviving holder', () => {
    const planner = new ShardPlanner(options);
    const nodes = ['a', 'b', 'c', 'd', 'e'].map((id) => node(id));
    const before = planner.plan(nodes);
    const dGroups = before.nodes.get('d')!.map((e) => `${e.layer}.${e.expert}`).sort();
    const after = planner.plan(nodes.filter((n) => n.nodeId !== 'd'));
    checkPlan(after, nodes.filter((n) => n.nodeId !== 'd'), 2);
    expect(after.degraded).toBeNull();
    expect(after.diff.removed.every((r) => r.node === 'd')).toBe(true);
    expect(after.diff.added.map((a) => `${a.layer}.${a.expert}`).sort()).toEqual(dGroups);
    for (const { layer, expert, node: to, copyFrom } of after.diff.added) {
      const holders = after.experts[layer * config.numExperts + expert].holders;
      expect(holders).toContain(copyFrom);
      expect(copyFrom).not.toBe(to);
      expect(copyFrom).not.toBe('d');
    }
  });

  it('when every holder of an expert is gone, the new replica has no peer to copy from', () => {
    const planner = new ShardPlanner(options);
    const nodes = ['a', 'b', 'c'].map((id) => node(id));
    const before = planner.plan(nodes);
    const lost = before.experts.filter((e) => e.holders.join() === 'a,b').map((e) => `${e.layer}.${e.expert}`);
    expect(lost.length).toBeGreaterThan(0);
    const after = planner.plan([node('c'), node('d')]);
    checkPlan(after, [node('c'), node('d')], 2);
    for (const a of after.diff.added) {
      expect(a.copyFrom).toBe(lost.includes(`${a.layer}.${a.expert}`) ? null : 'c');
    }
  });

  it('reports degraded when too few nodes, and never throws for lack of nodes', () => {
    const none = planShards([], options);
    expect(none.degraded!.underReplicated).toHaveLength(GROUPS);
    expect(none.degraded!.reason).toBe('replication 2 needs 2 nodes, 0 admitted');
    const one = planShards([node('a')], options);
    checkPlan(one, [node('a')], 2);
    expect(one.degraded!.underReplicated.every((u) => u.replicas === 1)).toBe(true);
    expect(one.degraded!.reason).toBe('replication 2 needs 2 nodes, 1 admitted');
    // Recovery: a second node restores R = 2 by adding replicas only.
    const planner = new ShardPlanner(options);
    planner.plan([node('a')]);
    const two = planner.plan([node('a'), node('b')]);
    expect(two.degraded).toBeNull();
    expect(two.diff.removed).toEqual([]);
    expect(two.diff.added.every((a) => a.node === 'b' && a.copyFrom === 'a')).toBe(true);
  });

  it('refuses a node whose budget cannot hold the trunk, with the reason', () => {
    const small = { nodeId: 'small', gemmGflops: 100, memoryBytes: trunkBytes - 1 };
    const nodes = [node('a'), small, node('b')];
    const plan = planShards(nodes, options);
    checkPlan(plan, nodes, 2);
    expect(plan.refused).toEqual([{ nodeId: 'small', reason: `memory budget of ${trunkBytes - 1} bytes cannot hold the trunk (${trunkBytes} bytes)` }]);
    expect(plan.nodes.has('small')).toBe(false);
    expect(plan.degraded).toBeNull();
    const alone = planShards([node('a'), small], options);
    expect(alone.degraded!.reason).toBe('replication 2 needs 2 nodes, 1 admitted (1 refused: too little memory for the trunk)');
  });

  it('a rejoin with a smaller budget sheds only what no longer fits', () => {
    const planner = new ShardPlanner(options);
    const nodes = ['a', 'b', 'c', 'd'].map((id) => node(id));
    planner.plan(nodes);
    const shrunk = planner.plan([node('a', 40, 10), ...nodes.slice(1)]);
    checkPlan(shrunk, [node('a', 40, 10), ...nodes.slice(1)], 2);
    expect(shrunk.nodes.get('a')).toHaveLength(10);
    expect(shrunk.diff.removed.every((r) => r.node === 'a')).toBe(true);
    expect(shrunk.diff.removed).toHaveLength(6);
    expect(shrunk.diff.added).toHaveLength(6);
  });

  it('a shrinking budget sheds experts that have another replica before sole copies', () => {
    const planner = new ShardPlanner(options);
    const before = planner.plan([node('a', 40, GROUPS), node('b', 40, GROUPS / 2)]);
    expect(before.degraded!.underReplicated).toHaveLength(GROUPS / 2);
    const after = planner.plan([node('a', 40, 20), node('b', 40, GROUPS / 2)]);
    checkPlan(after, [node('a', 40, 20), node('b', 40, GROUPS / 2)], 2);
    expect(after.nodes.get('a')).toHaveLength(20);
    expect(after.experts.every((e) => e.holders.length >= 1)).toBe(true); // 16 sole copies on a kept, 4 shared
    expect(after.diff.added).toEqual([]);
  });

  it('does not depend on the order nodes are listed in', () => {
    const nodes = [node('x', 10), node('y', 30), node('z', 20), node('w', 25)];
    const a = planShards(nodes, options);
    const b = planShards([...nodes].reverse(), options);
    expect(b.experts).toEqual(a.experts);
  });

  /** Each node's share of `work` under `plan` (a group's work split evenly over its holders), by node id. */
  function workDone(plan: ShardPlan, work: number[]): Map<string, number> {
    const done = new Map([...plan.nodes.keys()].map((id) => [id, 0]));
    plan.experts.forEach(({ holders }, g) => holders.forEach((id) => done.set(id, done.get(id)! + work[g] / holders.length)));
    return done;
  }
  /** The largest work over a speed-weighted share, computed from scratch. */
  function worstOverload(plan: ShardPlan, nodes: PlannerNode[], work: number[]): number {
    const done = workDone(plan, work);
    const total = [...done.values()].reduce((a, b) => a + b, 0);
    const speeds = nodes.filter((n) => plan.nodes.get(n.nodeId)?.length);
    const speedTotal = speeds.reduce((sum, n) => sum + n.gemmGflops, 0);
    return Math.max(...speeds.map((n) => done.get(n.nodeId)! / ((total * n.gemmGflops) / speedTotal)));
  }
  const perLayerCounts = (plan: ShardPlan) =>
    [...plan.nodes].map(([id, experts]) => `${id}:${[0, 1, 2, 3].map((l) => experts.filter((e) => e.layer === l).length)}`);

  it('balances the experts\' work: a router favouring one node\'s experts swaps replicas of the same layer', () => {
    const planner = new ShardPlanner({ ...options, replication: 1 });
    const nodes = [node('a'), node('b')];
    const first = planner.plan(nodes);
    // Every expert of a does 1.5× the work of one of b's: a does 60% of it all.
    const work = first.experts.map(({ holders }) => (holders[0] === 'a' ? 1500 : 1000));
    expect(worstOverload(first, nodes, work)).toBeCloseTo(1.2, 10);
    const balanced = planner.plan(nodes, work);
    checkPlan(balanced, nodes, 1);
    expect(balanced.version).toBe(first.version + 1);
    expect(balanced.balanced?.before).toBeCloseTo(1.2, 10);
    expect(balanced.balanced!.after).toBeLessThanOrEqual(1.05);
    expect(balanced.balanced!.after).toBeCloseTo(worstOverload(balanced, nodes, work), 10);
    // Swaps only: the same counts per node and per layer, every move copied from the node that gave it up.
    expect(loads(balanced)).toEqual(loads(first));
    expect(perLayerCounts(balanced)).toEqual(perLayerCounts(first));
    expect(balanced.diff.added.length).toBe(balanced.diff.removed.length);
    for (const { layer, expert, node: to, copyFrom } of balanced.diff.added) {
      expect(copyFrom).toBe(to === 'a' ? 'b' : 'a');
      expect(balanced.diff.removed).toContainEqual({ layer, expert, node: copyFrom });
    }
    // Balanced now: the same work again moves nothing.
    const again = planner.plan(nodes, work);
    expect(again.version).toBe(balanced.version);
    expect(again.balanced).toBeUndefined();
  });

  it('work within maxWorkOverload of the speed-weighted share moves nothing', () => {
    const planner = new ShardPlanner({ ...options, replication: 1 });
    const nodes = [node('a', 60), node('b', 40)];
    const first = planner.plan(nodes);
    // Work per replica equal: a, 1.5× as fast, holds ~1.5× the experts, so its work is its share.
    const even = first.experts.map(() => 1000);
    expect(worstOverload(first, nodes, even)).toBeLessThan(1.05);
    expect(planner.plan(nodes, even).version).toBe(first.version);
    // The same plan, a's experts 20% busier: a over its share by ~6%, so moved under a bound of 1.05, not of 1.1.
    const busier = first.experts.map(({ holders }) => (holders[0] === 'a' ? 1200 : 1000));
    expect(worstOverload(first, nodes, busier)).toBeGreaterThan(1.05);
    expect(worstOverload(first, nodes, busier)).toBeLessThan(1.1);
    expect(new ShardPlanner({ ...options, replication: 1, maxWorkOverload: 1.1 }).plan(nodes, busier).balanced).toBeUndefined();
    const swapped = planner.plan(nodes, busier);
    expect(swapped.balanced!.after).toBeLessThan(swapped.balanced!.before);
  });

  it('balancing work lowers the worst overload and keeps the plan valid (random work, nodes and replication)', () => {
    const random = rng(5);
    const pick = (n: number) => Math.floor(((random() + 1) / 2) * n);
    for (let trial = 0; trial < 40; trial++) {
      const replication = 1 + pick(2);
      const nodes = Array.from({ length: 2 + pick(5) }, (_, i) => node(`n${i}`, 20 + pick(40), 8 + pick(GROUPS)));
      const planner = new ShardPlanner({ ...options, replication });
      const first = planner.plan(nodes);
      const work = first.experts.map(() => pick(4000));
      const plan = planner.plan(nodes, work);
      checkPlan(plan, nodes, replication);
      expect(loads(plan)).toEqual(loads(first));
      expect(perLayerCounts(plan)).toEqual(perLayerCounts(first));
      const before = worstOverload(first, nodes, work);
      const after = worstOverload(plan, nodes, work);
      expect(after).toBeLessThanOrEqual(before + 1e-12);
      if (plan.balanced) expect([plan.balanced.before, plan.balanced.after]).toEqual([expect.closeTo(before, 9), expect.closeTo(after, 9)]);
      else expect(plan.version, `trial ${trial}`).toBe(first.version);
    }
  });

  it('refuses work that is not one finite non-negative number per expert', () => {
    const nodes = [node('a'), node('b')];
    expect(() => planShards(nodes, options, undefined, [1, 2, 3])).toThrow(/work must be 32 finite non-negative numbers/);
    expect(() => planShards(nodes, options, undefined, new Array(GROUPS).fill(Number.NaN))).toThrow(/work must be 32/);
    expect(() => planShards(nodes, { ...options, maxWorkOverload: 0.5 })).toThrow(/maxWorkOverload must be at least 1/);
  });

  it('keeps its invariants through a random sequence of joins, leaves and deaths', () => {
    const random = rng(11);
    const pick = (n: number) => Math.floor(((random() + 1) / 2) * n);
    const planner = new ShardPlanner(options);
    let live: PlannerNode[] = [];
    let previous: ShardPlan | undefined;
    for (let step = 0; step < 150; step++) {
      if (live.length > 0 && pick(3) === 0) live.splice(pick(live.length), 1);
      else live.push(node(`n${step}`, 5 + pick(60), 8 + pick(GROUPS)));
      const plan = planner.plan(live);
      checkPlan(plan, live, 2);
      // Every replica still valid is kept; every new one copies from a live previous holder when there is one.
      if (previous) {
        const liveIds = new Set(live.map((n) => n.nodeId));
        for (const { layer, expert, node: to, copyFrom } of plan.diff.added) {
          const was = previous.experts[layer * config.numExperts + expert].holders.filter((id) => liveIds.has(id));
          if (was.length === 0) expect(copyFrom).toBeNull();
          else expect(was).toContain(copyFrom);
          expect(was).not.toContain(to);
        }
      }
      previous = plan;
    }
  });
});

describe('shard planner: budgets that hold the trunk, experts and activations', () => {
  const micro = { batchSize: 4, seqLen: 128 };
  const modes: [string, Precision][] = [
    ['full', { mode: 'full', ...micro }],
    ['lora on a q4 base', { ...LORA_Q4, ...micro }],
  ];
  for (const [name, precision] of modes) {
    const fp = footprint(config, precision);
    const options: PlannerOptions = { config, precision, replication: 1 };
    const half = GROUPS / 2;
    const pair = (memoryBytes: number) => ['a', 'b'].map((nodeId) => ({ nodeId, gemmGflops: 10, memoryBytes }));
    /** Every admitted node within its budget, with the activations the plan says it keeps. */
    const withinBudgets = (plan: ShardPlan, nodes: PlannerNode[]) => {
      for (const n of nodes.filter((n) => plan.nodes.has(n.nodeId))) {
        const held = plan.nodes.get(n.nodeId)!.length;
        expect(nodeBytes(fp, held, plan.checkpointing.includes(n.nodeId), n.cores)).toBeLessThanOrEqual(n.memoryBytes);
      }
    };

    const saved = (fp.activationBytes - fp.checkpointedActivationBytes) / fp.expertBytes;
    it(`${name}: checkpointing makes room for whole layers of activations (${saved.toFixed(1)} experts' worth)`, () => {
      expect(fp.activationBytes - fp.checkpointedActivationBytes).toBeGreaterThan(fp.expertBytes);
    });

    it(`${name}: a budget just above the trunk, half the experts and full activations runs without checkpointing`, () => {
      const nodes = pair(nodeBytes(fp, half, false));
      const plan = planShards(nodes, options);
      expect(plan.degraded).toBeNull();
      expect(plan.checkpointing).toEqual([]);
      expect(loads(plan)).toEqual({ a: half, b: half });
      withinBudgets(plan, nodes);
    });

    it(`${name}: a byte less turns checkpointing on for the nodes that need it, and still covers every expert`, () => {
      const nodes = [...pair(nodeBytes(fp, half, false) - 1), { nodeId: 'c', gemmGflops: 10, memoryBytes: nodeBytes(fp, GROUPS, false) }];
      const plan = planShards([nodes[0], nodes[1]], options);
      expect(plan.degraded).toBeNull();
      expect(plan.checkpointing).toEqual(['a', 'b']);
      withinBudgets(plan, nodes.slice(0, 2));
      // With room elsewhere, nobody needs checkpointing.
      const roomy = planShards(nodes, options);
      expect(roomy.degraded).toBeNull();
      expect(roomy.checkpointing).toEqual([]);
      withinBudgets(roomy, nodes);
    });

    it(`${name}: below even that, the plan is short of memory and says so`, () => {
      const nodes = pair(nodeBytes(fp, half, true) - 1);
      const plan = planShards(nodes, options);
      expect(plan.checkpointing).toEqual(['a', 'b']);
      expect(loads(plan)).toEqual({ a: half - 1, b: half - 1 });
      expect(plan.degraded!.reason).toBe(`memory: the admitted nodes have room for ${GROUPS - 2} expert replicas, ${GROUPS} needed`);
      withinBudgets(plan, nodes);
    });

    it(`${name}: a node that cannot hold the trunk and checkpointed activations is refused with what it needed`, () => {
      const needed = fp.trunkBytes + fp.checkpointedActivationBytes;
      const twoThreads = needed + fp.threadBytes;
      const threadScratch = `(${fp.threadBytes} bytes)`;
      const small = [
        { nodeId: 'small', gemmGflops: 10, memoryBytes: needed - 1 }, { nodeId: 'two', gemmGflops: 10, memoryBytes: twoThreads - 1, cores: 2 },
      ];
      const plan = planShards([...small, { nodeId: 'ok', gemmGflops: 10, memoryBytes: needed }], options);
      const activations = `one micro-batch's activations with gradient checkpointing (${fp.checkpointedActivationBytes} bytes)`;
      const trunk = (budget: number) => `memory budget of ${budget} bytes cannot hold the trunk (${fp.trunkBytes} bytes), ${activations}`;
      expect(plan.refused).toEqual([
        { nodeId: 'small', reason: `${trunk(needed - 1)}: ${needed} bytes needed` },
        { nodeId: 'two', reason: `${trunk(twoThreads - 1)}, the scratch of 1 more kernel thread ${threadScratch}: ${twoThreads} bytes needed` },
      ]);
      // Exactly enough: admitted, with checkpointing and no room for an expert.
      expect(plan.nodes.get('ok')).toEqual([]);
      expect(plan.checkpointing).toEqual(['ok']);
    });
  }

  it('a node keeps its choice over re-plans: one running with full activations is not given more than that holds', () => {
    const precision: Precision = { mode: 'full', ...micro };
    const fp = footprint(config, precision);
    const planner = new ShardPlanner({ config, precision, replication: 1 });
    const budget = nodeBytes(fp, 12, false); // 12 experts with full activations, more with checkpointing
    expect(nodeBytes(fp, 13, true)).toBeLessThanOrEqual(budget);
    const nodes = ['a', 'b', 'c'].map((nodeId) => ({ nodeId, gemmGflops: 10, memoryBytes: budget }));
    const first = planner.plan(nodes);
    expect(first.checkpointing).toEqual([]);
    const after = planner.plan(nodes.slice(0, 2)); // c left: a and b built their models without checkpointing
    expect(after.checkpointing).toEqual([]);
    expect(loads(after)).toEqual({ a: 12, b: 12 });
    expect(after.degraded!.underReplicated).toHaveLength(GROUPS - 24);
    // A node joining now may run with checkpointing to take what is left.
    const joined = planner.plan([...nodes.slice(0, 2), { nodeId: 'd', gemmGflops: 10, memoryBytes: nodeBytes(fp, 7, false) }]);
    expect(joined.degraded).toBeNull();
    expect(joined.checkpointing).toEqual(['d']);
    expect(nodeBytes(fp, joined.nodes.get('d')!.length, true)).toBeLessThanOrEqual(nodeBytes(fp, 7, false));
  });
});

describe('shard planner: the 4 GiB kernel heap', () => {
  it('bounds a node by wasm32\'s heap whatever its budget (Mixtral-8x7B layer shapes, 2 layers, LoRA on q4)', () => {
    const mixtral = createConfig({
      vocabSize: 32000, hiddenSize: 4096, numLayers: 2, numHeads: 32, numKvHeads: 8, headDim: 128, numExperts: 8,
      expertHiddenSize: 14336, maxSeqLen: 4096,
    });
    const precision: Precision = { ...LORA_Q4, batchSize: 1, seqLen: 512 };
    const fp = footprint(mixtral, precision);
    const nodes = ['a', 'b', 'c', 'd'].map((nodeId) => ({ nodeId, gemmGflops: 10, memoryBytes: 64 * 2 ** 30 }));
    const plan = planShards(nodes, { config: mixtral, precision, replication: 2 });
    expect(plan.degraded).toBeNull();
    for (const [id, experts] of plan.nodes) {
      expect(heapBytes(fp, experts.length, plan.checkpointing.includes(id))).toBeLessThanOrEqual(2 ** 32);
    }
    // Alone, a node takes what its heap holds: not all 16 experts (~313 MB each on the integer path).
    const alone = planShards(nodes.slice(0, 1), { config: mixtral, precision, replication: 1 });
    const held = alone.nodes.get('a')!.length;
    expect(held).toBeLessThan(16);
    expect(heapBytes(fp, held + 1, true)).toBeGreaterThan(2 ** 32);
    // A micro-batch too large for the heap even checkpointed refuses every node, saying why.
    const huge = planShards(nodes.slice(0, 1), { config: mixtral, precision: { ...precision, batchSize: 16 }, replication: 1 });
    const checkpointed = "the trunk and one micro-batch's activations with gradient checkpointing";
    expect(huge.refused[0].reason).toMatch(new RegExp(`^${checkpointed} take \\d+ bytes of kernel heap, more than wasm32's 4294967296$`));
  });
});
