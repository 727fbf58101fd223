// The shard planner: which nodes hold which experts. The trunk is replicated on every node, so a
// node whose memory budget cannot hold it and one micro-batch's activations (even under gradient
// checkpointing) is refused. Each expert (layer, expert) goes on R distinct nodes, nodes taking
// experts in proportion to their measured speed, each bounded by the memory left after the trunk
// and the activations (src/model/footprint.ts). A node runs with every layer's activations kept
// when its share fits that way, and with gradient checkpointing when only that makes room: a
// first placement bounds every node by its room without checkpointing (nodes that cannot run
// without it at all: with it); only when that leaves experts short of replicas are nodes new to
// the plan bounded by their room with checkpointing. A node keeps its choice over re-plans (it
// builds its model once, when it joins). A re-plan starts from the previous plan and moves as
// little as it can:
//   1. keep every replica whose holder is still admitted and within its memory;
//   2. add the missing replicas, level by level (every expert to 1 replica, then to 2, ...) so a
//      shortage of memory costs redundancy before it costs coverage; each goes to the node with
//      the lowest (load + 1) / speed; when every node with room already holds the expert, a
//      replica placed in this same re-plan is shifted along to make room (shortest chain);
//   3. rebalance only nodes far from their speed-weighted fair share (by a factor maxOverload):
//      one far over gives replicas to nodes under theirs, one far under (a node that just
//      joined) takes replicas from nodes over theirs;
//   4. given the experts' measured work (the rows the router sent each), swap replicas of the same
//      layer between nodes whose work is far from their speed-weighted share (maxWorkOverload):
//      replica counts say nothing of a router that favours some experts.
// When R cannot be met the plan places what it can and says why in `degraded`; it never throws
// for a lack of nodes or memory.
import type { ExpertRef, JoinRequest } from '../proto/index.ts';
import type { ModelConfig } from '../src/model/config.ts';
import { MAX_HEAP_BYTES } from '../src/kernels/runtime.ts';
import { expertCapacity, footprint, heapBytes, nodeBytes, type Footprint, type Precision } from '../src/model/footprint.ts';

/** A node as the planner sees it; `cores` (its kernel threads, default 1) each take scratch memory. */
export type PlannerNode = Pick<JoinRequest, 'nodeId' | 'gemmGflops' | 'memoryBytes'> & Partial<Pick<JoinRequest, 'cores'>>;

export interface PlannerOptions {
  config: ModelConfig;
  /** The job's precision and, for the activations, its micro-batch (src/train/job.ts jobFootprintSettings). */
  precision: Precision;
  /** Distinct nodes per expert (default 2). */
  replication?: number;
  /**
   * A node holding more than this times its fair share, or less than its share divided by this,
   * is brought back to its share by moving replicas (default 1.25; Infinity: never rebalance).
   */
  maxOverload?: number;
  /**
   * Given the experts' work, a node doing more than this times its speed-weighted share of it swaps replicas
   * with nodes doing less (default 1.05; Infinity: never).
   */
  maxWorkOverload?: number;
}

export interface ExpertHolders extends ExpertRef {
  holders: string[];
}

export interface NewReplica extends ExpertRef {
  node: string;
  /** A live holder of the previous plan to copy the expert's state from; null: none survived. */
  copyFrom: string | null;
}

export interface DroppedReplica extends ExpertRef {
  node: string;
}

export interface UnderReplicated extends ExpertRef {
  replicas: number;
}

export interface ShardPlan {
  /** 1 for the first plan, +1 whenever assignments or the set of admitted nodes change. */
  version: number;
  replication: number;
  trunkBytes: number;
  expertBytes: number;
  /** Holders of every expert, at index layer · numExperts + expert. */
  experts: ExpertHolders[];
  /** The experts of every admitted node (each also holds the trunk), by node id. */
  nodes: Map<string, ExpertRef[]>;
  /**
   * Admitted nodes that run with gradient checkpointing (sorted): their share fits their budget only
   * so. A node decides the same from its budget and share (src/model/footprint.ts checkpointingFor).
   */
  checkpointing: string[];
  refused: { nodeId: string; reason: string }[];
  degraded: { reason: string; underReplicated: UnderReplicated[] } | null;
  /** From the previous plan: replicas to create, and replicas gone (including departed nodes'). */
  diff: { added: NewReplica[]; removed: DroppedReplica[] };
  /** Replicas swapped for the experts' work (step 4): the most loaded node's work over its share, before and after. */
  balanced?: { before: number; after: number };
}

/** Keeps the current plan and re-plans from it whenever the live nodes change. */
export class ShardPlanner {
  private last?: ShardPlan;

  constructor(private readonly options: PlannerOptions) {
    planShards([], options); // validates the options now rather than at the first join
  }

  get current(): ShardPlan | undefined {
    return this.last;
  }

  /** `work`: the experts' measured work (see planShards), when the plan should balance it. */
  plan(nodes: PlannerNode[], work?: ArrayLike<number>): ShardPlan {
    this.last = planShards(nodes, this.options, this.last, work);
    return this.last;
  }

  /** The current plan again under the next version, nothing moved: what nodes know of it changed (a node's addresses). */
  bump(): ShardPlan | undefined {
    if (this.last) this.last = { ...this.last, version: this.last.version + 1, diff: { added: [], removed: [] } };
    return this.last;
  }

  /** Continues from a plan made before a restart (re-plans start from it; versions go on from its). */
  restore(plan: ShardPlan): void {
    if (this.last) throw new Error('planner: restore() comes before the first plan');
    this.last = plan;
  }
}

/** A plan as JSON (its node map as entries), for the job store. */
export type StoredShardPlan = Omit<ShardPlan, 'nodes'> & { nodes: [string, ExpertRef[]][] };

export const storedPlan = (plan: ShardPlan): StoredShardPlan => ({ ...plan, nodes: [...plan.nodes] });
/** Plans stored before nodes could run with checkpointing have no `checkpointing`: none did. */
export const shardPlan = (stored: StoredShardPlan): ShardPlan => ({
  ...stored, checkpointing: stored.checkpointing ?? [], nodes: new Map(stored.nodes),
});

/**
 * A plan for `nodes` (the live ones), starting from `previous` when there is one. `work` (index layer · numExperts +
 * expert): each expert's measured work, e.g. the rows routed to it lately; with it the plan also balances that (step 4).
 */
export function planShards(nodes: PlannerNode[], options: PlannerOptions, previous?: ShardPlan, work?: ArrayLike<number>): ShardPlan {
  const { config } = options;
  const replication = options.replication ?? 2;
  const maxOverload = options.maxOverload ?? 1.25;
  const maxWorkOverload = options.maxWorkOverload ?? 1.05;
  if (!Number.isSafeInteger(replication) || replication < 1) throw new RangeError(`planner: replication must be a positive integer, got ${replication}`);
  if (!(maxOverload >= 1)) throw new RangeError(`planner: maxOverload must be at least 1, got ${maxOverload}`);
  if (!(maxWorkOverload >= 1)) throw new RangeError(`planner: maxWorkOverload must be at least 1, got ${maxWorkOverload}`);
  checkNodes(nodes);
  const fp = footprint(config, options.precision);
  const { trunkBytes, expertBytes } = fp;
  const groups = config.numLayers * config.numExperts;
  if (work && (work.length !== groups || !Array.prototype.every.call(work, (w: number) => w >= 0 && Number.isFinite(w)))) {
    throw new RangeError(`planner: work must be ${groups} finite non-negative numbers (one per expert)`);
  }
  if (previous && previous.experts.length !== groups) throw new Error(`planner: the previous plan has ${previous.experts.length} experts, the model ${groups}`);
  const ref = (g: number): ExpertRef => ({ layer: Math.floor(g / config.numExperts), expert: g % config.numExperts });

  const refused: ShardPlan['refused'] = [];
  const admitted: PlannerNode[] = [];
  for (const node of [...nodes].sort((a, b) => compareIds(a.nodeId, b.nodeId))) {
    const reason = refusal(fp, node);
    if (reason) refused.push({ nodeId: node.nodeId, reason });
    else admitted.push(node);
  }
  const index = new Map(admitted.map((n, i) => [n.nodeId, i]));
  const room = (n: PlannerNode, checkpointing: boolean) => Math.min(groups, expertCapacity(fp, n.memoryBytes, checkpointing, n.cores));
  const stays = (n: PlannerNode) => previous?.nodes.has(n.nodeId) === true;
  // A node of the previous plan keeps its choice; a new one runs without checkpointing if it can run at all so.
  const checkpointing = admitted.map((n) => (stays(n) && previous!.checkpointing.includes(n.nodeId)) || room(n, false) < 0);
  const place = () => {
    const capacity = admitted.map((n, i) => room(n, checkpointing[i]));
    const placement = new Placement(config.numExperts, groups, admitted.map((n) => n.gemmGflops), capacity);
    keepValid(placement, previous, index, capacity);
    for (let level = 1; level <= replication; level++) {
      for (let g = 0; g < groups; g++) if (placement.holders[g].length < level) placement.place(g);
    }
    if (maxOverload !== Infinity) placement.rebalance(maxOverload);
    return { placement, capacity };
  };
  let { placement, capacity } = place();
  const short = () => placement.holders.some((h) => h.length < replication);
  const roomier = admitted.map((n, i) => !stays(n) && !checkpointing[i] && room(n, true) > room(n, false));
  if (short() && roomier.some(Boolean)) {
    for (const [i, more] of roomier.entries()) checkpointing[i] ||= more;
    ({ placement, capacity } = place());
  }
  const balanced = work && maxWorkOverload !== Infinity ? placement.balanceWork(work, maxWorkOverload) : undefined;
  // A new node whose share fits without checkpointing runs without it.
  for (const [i, n] of admitted.entries()) if (!stays(n) && checkpointing[i]) checkpointing[i] = placement.load[i] > room(n, false);

  const experts = placement.holders.map((holders, g) => ({ ...ref(g), holders: holders.map((n) => admitted[n].nodeId).sort(compareIds) }));
  const perNode = new Map(admitted.map((n) => [n.nodeId, [] as ExpertRef[]]));
  for (const [g, e] of experts.entries()) for (const id of e.holders) perNode.get(id)!.push(ref(g));

  const underReplicated = experts.filter((e) => e.holders.length < replication).map(({ layer, expert, holders }) => ({ layer, expert, replicas: holders.length }));
  const degraded = underReplicated.length === 0 ? null : { reason: degradedReason(replication, admitted.length, refused.length, capacity, groups), underReplicated };

  const diff = diffPlans(previous, experts, admitted);
  const sameNodes = previous !== undefined && previous.nodes.size === perNode.size && [...perNode.keys()].every((id) => previous.nodes.has(id));
  const changed = !sameNodes || diff.added.length > 0 || diff.removed.length > 0;
  const version = previous ? previous.version + (changed ? 1 : 0) : 1;
  const checkpointed = admitted.filter((_, i) => checkpointing[i]).map((n) => n.nodeId);
  return {
    version, replication, trunkBytes, expertBytes, experts, nodes: perNode, checkpointing: checkpointed, refused, degraded, diff,
    ...(balanced ? { balanced } : {}),
  };
}

/** Why a node cannot run the job at all (not the trunk and one micro-batch's activations, even checkpointed), or undefined. */
function refusal(fp: Footprint, { memoryBytes, cores = 1 }: PlannerNode): string | undefined {
  const needed = nodeBytes(fp, 0, true, cores);
  const heap = heapBytes(fp, 0, true, cores);
  if (heap > MAX_HEAP_BYTES) {
    const what = `the trunk and one micro-batch's activations with gradient checkpointing take ${heap} bytes of kernel heap`;
    return `${what}, more than wasm32's ${MAX_HEAP_BYTES}`;
  }
  if (memoryBytes >= needed) return undefined;
  const trunk = `memory budget of ${memoryBytes} bytes cannot hold the trunk (${fp.trunkBytes} bytes)`;
  if (needed === fp.trunkBytes) return trunk;
  const more = cores - 1;
  const threads = more > 0 ? `, the scratch of ${more} more kernel thread${more > 1 ? 's' : ''} (${more * fp.threadBytes} bytes)` : '';
  const activations = `one micro-batch's activations with gradient checkpointing (${fp.checkpointedActivationBytes} bytes)`;
  return `${trunk}, ${activations}${threads}: ${needed} bytes needed`;
}

/** Replicas of one re-plan, over admitted nodes 0..N-1 (sorted by id). */
class Placement {
  readonly holders: number[][];
  readonly load: number[];
  /**
   * Replicas of each layer on each node ([node · layers + layer]), so moves keep a node's experts spread over the
   * layers: a node holding whole layers computes, in those, its peers' rows besides its own, and in the others waits
   * on remote experts with none of its own to compute beside them.
   */
  private readonly layerLoad: Uint16Array;
  private readonly layers: number;
  private readonly held: Uint8Array;
  /** Placed during this re-plan, not yet materialized: may be shifted to another node at no cost. */
  private readonly fresh: Uint8Array;
  private readonly n: number;

  constructor(private readonly perLayer: number, readonly groups: number, private readonly speed: number[], private readonly capacity: number[]) {
    this.n = speed.length;
    this.holders = Array.from({ length: groups }, () => []);
    this.load = new Array(this.n).fill(0);
    this.layers = Math.ceil(groups / perLayer);
    this.layerLoad = new Uint16Array(this.n * this.layers);
    this.held = new Uint8Array(groups * this.n);
    this.fresh = new Uint8Array(groups * this.n);
  }

  holds(g: number, node: number): boolean {
    return this.held[g * this.n + node] === 1;
  }

  add(g: number, node: number, fresh: boolean): void {
    this.held[g * this.n + node] = 1;
    this.fresh[g * this.n + node] = fresh ? 1 : 0;
    this.holders[g].push(node);
    this.load[node]++;
    this.layerLoad[this.layerSlot(g, node)]++;
  }

  remove(g: number, node: number): void {
    this.held[g * this.n + node] = 0;
    this.fresh[g * this.n + node] = 0;
    this.holders[g].splice(this.holders[g].indexOf(node), 1);
    this.load[node]--;
    this.layerLoad[this.layerSlot(g, node)]--;
  }

  private layerSlot(g: number, node: number): number {
    return node * this.layers + Math.floor(g / this.perLayer);
  }

  /** Adds one replica of group g if any node can take it; returns whether it did. */
  place(g: number): boolean {
    let best = -1;
    for (let node = 0; node < this.n; node++) {
      if (!this.holds(g, node) && this.hasRoom(node) && (best < 0 || this.prefer(node, best))) best = node;
    }
    if (best >= 0) {
      this.add(g, best, true);
      return true;
    }
    return this.placeByShifting(g);
  }

  /**
   * Every node with room already holds g: find the shortest chain g → X0, h1: X0 → X1, ...,
   * hk: X(k-1) → Xk where Xk has room, shifting only replicas placed in this re-plan.
   */
  private placeByShifting(g: number): boolean {
    if (!this.load.some((l, node) => l < this.capacity[node])) return false;
    const cameFrom = new Map<number, { group: number; from: number }>();
    const queue: number[] = [];
    for (let node = 0; node < this.n; node++) {
      if (!this.holds(g, node)) {
        cameFrom.set(node, { group: g, from: -1 });
        queue.push(node);
      }
    }
    for (let head = 0; head < queue.length; head++) {
      const x = queue[head];
      for (let h = 0; h < this.groups; h++) {
        if (this.fresh[h * this.n + x] !== 1) continue;
        for (let y = 0; y < this.n; y++) {
          if (cameFrom.has(y) || this.holds(h, y)) continue;
          cameFrom.set(y, { group: h, from: x });
          if (this.hasRoom(y)) {
            for (let node = y; node >= 0; ) {
              const step = cameFrom.get(node)!;
              if (step.from >= 0) this.remove(step.group, step.from);
              this.add(step.group, node, true);
              node = step.from;
            }
            return true;
          }
          queue.push(y);
        }
      }
    }
    return false;
  }

  /**
   * Brings nodes far from their fair share back to it: a node over maxOverload × its share gives
   * replicas to nodes under theirs; a node under its share / maxOverload (one that just joined)
   * takes replicas from nodes over theirs. Nodes within the margin are left alone.
   */
  rebalance(maxOverload: number): void {
    const share = this.fairShares();
    const nodes = [...this.load.keys()];
    const excess = (node: number) => this.load[node] - share[node];
    const byPreference = (a: number, b: number) => (this.prefer(a, b) ? -1 : 1);
    const byExcess = (a: number, b: number) => excess(b) - excess(a) || a - b;

    for (const x of nodes.filter((node) => this.load[node] > Math.ceil(share[node] * maxOverload)).sort(byExcess)) {
      while (this.load[x] > Math.ceil(share[x])) {
        const receivers = nodes.filter((y) => this.load[y] < Math.ceil(share[y]) && this.hasRoom(y)).sort(byPreference);
        if (!this.moveOne([x], receivers)) break;
      }
    }
    for (const y of nodes.filter((node) => this.load[node] < Math.floor(share[node] / maxOverload)).sort(byExcess).reverse()) {
      while (this.load[y] < Math.floor(share[y]) && this.hasRoom(y)) {
        const donors = nodes.filter((x) => excess(x) >= 1).sort(byExcess);
        if (!this.moveOne(donors, [y])) break;
      }
    }
  }

  /**
   * Moves one replica from the first giver that has one the first possible receiver lacks: a fresh one before one to copy,
   * and among those, one of the layer where the giver holds the most more than the receiver.
   */
  private moveOne(givers: number[], receivers: number[]): boolean {
    for (const x of givers) {
      for (const y of receivers) {
        let group = -1;
        let bestFresh = -1;
        let bestSpread = -Infinity;
        for (let g = 0; g < this.groups; g++) {
          if (!this.holds(g, x) || this.holds(g, y)) continue;
          const fresh = this.fresh[g * this.n + x];
          const spread = this.layerLoad[this.layerSlot(g, x)] - this.layerLoad[this.layerSlot(g, y)];
          if (fresh > bestFresh || (fresh === bestFresh && spread > bestSpread)) [group, bestFresh, bestSpread] = [g, fresh, spread];
        }
        if (group >= 0) {
          this.remove(group, x);
          this.add(group, y, true);
          return true;
        }
      }
    }
    return false;
  }

  /**
   * Step 4: while the node with the most work over its speed-weighted share is over maxOverload × it, swaps one of its
   * replicas for a lighter one of the same layer held by another node, the swap that leaves the pair's larger
   * overload lowest; stops when no swap lowers it. A group's work is split evenly over its holders. Swaps keep every
   * node's replica count and per-layer counts (memory, the count balance). Returns the overloads when it swapped.
   */
  balanceWork(work: ArrayLike<number>, maxOverload: number): { before: number; after: number } | undefined {
    const speedTotal = this.speed.reduce((sum, s, node) => sum + (this.load[node] > 0 ? s : 0), 0);
    const perHolder = (g: number) => (this.holders[g].length > 0 ? work[g] / this.holders[g].length : 0);
    const done = new Array<number>(this.n).fill(0);
    for (let g = 0; g < this.groups; g++) for (const node of this.holders[g]) done[node] += perHolder(g);
    const total = done.reduce((a, b) => a + b, 0);
    if (!(total > 0) || !(speedTotal > 0)) return undefined;
    const share = this.speed.map((s, node) => (this.load[node] > 0 ? (total * s) / speedTotal : 0));
    const overload = (node: number, w = done[node]) => (share[node] > 0 ? w / share[node] : 0);
    const worst = () => done.reduce((best, _, node) => (overload(node) > overload(best) ? node : best), 0);
    const before = overload(worst());
    let swaps = 0;
    // Each swap lowers the largest overload of the pair it touches; the bound only guards against float ties.
    for (let x = worst(); overload(x) > maxOverload && swaps < this.groups * this.n; x = worst()) {
      let best: { g: number; y: number; h: number; after: number } | undefined;
      for (let g = 0; g < this.groups; g++) {
        if (!this.holds(g, x)) continue;
        const layer = Math.floor(g / this.perLayer) * this.perLayer;
        for (let h = layer; h < Math.min(layer + this.perLayer, this.groups); h++) {
          const moved = perHolder(g) - perHolder(h);
          if (!(moved > 0) || this.holds(h, x)) continue;
          for (const y of this.holders[h]) {
            if (this.holds(g, y)) continue;
            const after = Math.max(overload(x, done[x] - moved), overload(y, done[y] + moved));
            if (after < overload(x) && (!best || after < best.after)) best = { g, y, h, after };
          }
        }
      }
      if (!best) break;
      const { g, y, h } = best;
      const moved = perHolder(g) - perHolder(h);
      this.remove(g, x);
      this.remove(h, y);
      this.add(g, y, true);
      this.add(h, x, true);
      done[x] -= moved;
      done[y] += moved;
      swaps++;
    }
    return swaps > 0 ? { before, after: overload(worst()) } : undefined;
  }

  /** Replicas each node should hold: the total split by speed, capped by capacity (water-filling). */
  private fairShares(): number[] {
    const share = new Array<number>(this.n).fill(0);
    let remaining = this.load.reduce((a, b) => a + b, 0);
    let open = [...this.load.keys()];
    while (open.length > 0) {
      const total = open.reduce((s, node) => s + this.speed[node], 0);
      const weight = (node: number) => (total > 0 ? this.speed[node] / total : 1 / open.length);
      const capped = open.filter((node) => remaining * weight(node) > this.capacity[node]);
      if (capped.length === 0) {
        for (const node of open) share[node] = remaining * weight(node);
        break;
      }
      for (const node of capped) {
        share[node] = this.capacity[node];
        remaining -= this.capacity[node];
      }
      open = open.filter((node) => !capped.includes(node));
    }
    return share;
  }

  private hasRoom(node: number): boolean {
    return this.load[node] < this.capacity[node];
  }

  /** Whether `a` should take the next replica before `b`: lower (load + 1) / speed, then less load. */
  private prefer(a: number, b: number): boolean {
    const ra = (this.load[a] + 1) / this.speed[a];
    const rb = (this.load[b] + 1) / this.speed[b];
    if (ra !== rb) return ra < rb;
    return this.load[a] !== this.load[b] ? this.load[a] < this.load[b] : a < b;
  }
}

/** Step 1: the previous plan's replicas on nodes still admitted, trimmed to each node's capacity. */
function keepValid(placement: Placement, previous: ShardPlan | undefined, index: Map<string, number>, capacity: number[]): void {
  if (!previous) return;
  const kept: number[][] = capacity.map(() => []);
  for (const [g, { holders }] of previous.experts.entries()) {
    for (const id of holders) {
      const node = index.get(id);
      if (node !== undefined) kept[node].push(g);
    }
  }
  const replicasOf = (g: number) => previous.experts[g].holders.filter((id) => index.has(id)).length;
  for (const [node, groups] of kept.entries()) {
    // A budget that shrank (a rejoin with less memory) sheds the best-replicated experts first.
    const keep = groups.sort((a, b) => replicasOf(a) - replicasOf(b) || a - b).slice(0, capacity[node]);
    for (const g of keep) placement.add(g, node, false);
  }
}

function diffPlans(previous: ShardPlan | undefined, experts: ExpertHolders[], admitted: PlannerNode[]): ShardPlan['diff'] {
  const added: NewReplica[] = [];
  const removed: DroppedReplica[] = [];
  const speed = new Map(admitted.map((n) => [n.nodeId, n.gemmGflops]));
  for (const [g, { layer, expert, holders }] of experts.entries()) {
    const before = previous?.experts[g].holders ?? [];
    const now = new Set(holders);
    // Copy from a surviving holder, one that keeps the expert first, then the fastest.
    const sources = before
      .filter((id) => speed.has(id))
      .sort((a, b) => Number(now.has(b)) - Number(now.has(a)) || speed.get(b)! - speed.get(a)! || compareIds(a, b));
    for (const id of holders) if (!before.includes(id)) added.push({ layer, expert, node: id, copyFrom: sources[0] ?? null });
    for (const id of before) if (!now.has(id)) removed.push({ layer, expert, node: id });
  }
  return { added, removed };
}

function degradedReason(replication: number, admitted: number, refused: number, capacity: number[], groups: number): string {
  const refusedNote = refused > 0 ? ` (${refused} refused: too little memory for the trunk)` : '';
  if (admitted < replication) return `replication ${replication} needs ${replication} nodes, ${admitted} admitted${refusedNote}`;
  const room = capacity.reduce((a, b) => a + b, 0);
  if (room < groups * replication) return `memory: the admitted nodes have room for ${room} expert replicas, ${groups * replication} needed`;
  return 'nodes with room already hold the under-replicated experts; the replicas kept from the previous plan leave no other arrangement';
}

function checkNodes(nodes: PlannerNode[]): void {
  const seen = new Set<string>();
  for (const { nodeId, gemmGflops, memoryBytes } of nodes) {
    if (seen.has(nodeId)) throw new Error(`planner: node ${nodeId} listed twice`);
    seen.add(nodeId);
    if (!Number.isFinite(gemmGflops) || gemmGflops < 0) throw new RangeError(`planner: node ${nodeId}: gemmGflops must be a finite non-negative number, got ${gemmGflops}`);
    if (!Number.isFinite(memoryBytes) || memoryBytes < 0) throw new RangeError(`planner: node ${nodeId}: memoryBytes must be a finite non-negative number, got ${memoryBytes}`);
  }
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
