// Which nodes belong to the swarm and whether they are alive. A node joins with its id and
// measured resources, then heartbeats; one not heard from within `timeoutMs` is declared dead by
// the next sweep(). The same id joining again is the same node coming back: its record (first
// join, last stats) is kept and it is alive again. Every change is announced to listeners
// (the shard planner re-plans on them). Time comes from `now()`, so tests need no sleeps.
import type { Heartbeat, JoinRequest } from '../proto/index.ts';

export type NodeInfo = Pick<JoinRequest, 'nodeId' | 'cores' | 'gemmGflops' | 'memoryBytes'>;
export type NodeStats = Omit<Heartbeat, 'jobId'>;
export type NodeStatus = 'alive' | 'dead' | 'left';

export interface NodeRecord extends NodeInfo {
  status: NodeStatus;
  firstJoinedAt: number;
  lastJoinedAt: number;
  lastSeen: number;
  /** Times this id joined, the first included. */
  joins: number;
  /** The last heartbeat's stats; absent before the first heartbeat. */
  stats?: NodeStats;
}

export type MembershipEventType = 'joined' | 'rejoined' | 'left' | 'died';

export interface MembershipEvent {
  type: MembershipEventType;
  /** The node's record just after the change (a copy). */
  node: NodeRecord;
  at: number;
}

export interface MembershipOptions {
  /** A node not heard from for longer than this is dead. */
  timeoutMs: number;
  now?: () => number;
}

export class Membership {
  private readonly records = new Map<string, NodeRecord>();
  private readonly listeners = new Set<(event: MembershipEvent) => void>();
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private lastSweep?: number;
  private alives = 0;

  constructor(options: MembershipOptions) {
    if (!(options.timeoutMs > 0) || !Number.isFinite(options.timeoutMs)) {
      throw new RangeError(`membership: timeoutMs must be a positive number, got ${options.timeoutMs}`);
    }
    this.timeoutMs = options.timeoutMs;
    this.now = options.now ?? Date.now;
  }

  /** Calls `listener` on every change; returns the function that unsubscribes it. */
  onChange(listener: (event: MembershipEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Admits a node, or takes back a known one (whatever its status) with its new resources. */
  join(info: NodeInfo): 'joined' | 'rejoined' {
    checkInfo(info);
    const at = this.now();
    const { nodeId, cores, gemmGflops, memoryBytes } = info;
    const known = this.records.get(nodeId);
    if (known?.status !== 'alive') this.alives++;
    if (known) {
      Object.assign(known, { cores, gemmGflops, memoryBytes, status: 'alive', lastJoinedAt: at, lastSeen: at, joins: known.joins + 1 });
    } else {
      const record: NodeRecord = { nodeId, cores, gemmGflops, memoryBytes, status: 'alive', firstJoinedAt: at, lastJoinedAt: at, lastSeen: at, joins: 1 };
      this.records.set(nodeId, record);
    }
    const type = known ? 'rejoined' : 'joined';
    this.emit(type, nodeId, at);
    return type;
  }

  /**
   * Records a heartbeat of a live node. Returns false for an unknown, dead or departed node:
   * it has to join again (and get a fresh assignment) before its heartbeats count.
   */
  heartbeat(nodeId: string, stats: NodeStats): boolean {
    const record = this.records.get(nodeId);
    if (!record || record.status !== 'alive') return false;
    checkStats(stats);
    record.lastSeen = this.now();
    record.stats = { ...stats };
    return true;
  }

  /** A node leaving on purpose. Returns false when it was not alive. */
  leave(nodeId: string): boolean {
    const record = this.records.get(nodeId);
    if (!record || record.status !== 'alive') return false;
    record.status = 'left';
    this.alives--;
    this.emit('left', nodeId, this.now());
    return true;
  }

  /**
   * Declares dead every live node silent for longer than the timeout; returns them. Called
   * every `intervalMs`, a sweep more than two intervals after the last finds that this process
   * was stalled: heartbeats that queued up meanwhile are not read yet, so it declares nobody
   * dead this time (the next sweep, after they are read, does).
   */
  sweep(intervalMs = Infinity): NodeRecord[] {
    const at = this.now();
    const late = this.lastSweep !== undefined && at - this.lastSweep > 2 * intervalMs;
    this.lastSweep = at;
    if (late) return [];
    const died: NodeRecord[] = [];
    for (const record of this.records.values()) {
      if (record.status !== 'alive' || at - record.lastSeen <= this.timeoutMs) continue;
      record.status = 'dead';
      this.alives--;
      died.push(this.emit('died', record.nodeId, at));
    }
    return died;
  }

  get(nodeId: string): NodeRecord | undefined {
    const record = this.records.get(nodeId);
    return record && copy(record);
  }

  /** Live nodes, in join order. */
  alive(): NodeRecord[] {
    return this.all().filter((r) => r.status === 'alive');
  }

  /** How many nodes are alive (kept as they change: asked on every heartbeat). */
  get aliveCount(): number {
    return this.alives;
  }

  /** Every node ever seen, in first-join order. */
  all(): NodeRecord[] {
    return [...this.records.values()].map(copy);
  }

  private emit(type: MembershipEventType, nodeId: string, at: number): NodeRecord {
    const node = copy(this.records.get(nodeId)!);
    for (const listener of this.listeners) listener({ type, node: copy(node), at });
    return node;
  }
}

function copy(record: NodeRecord): NodeRecord {
  return { ...record, stats: record.stats && { ...record.stats } };
}

function checkInfo(info: NodeInfo): void {
  if (typeof info.nodeId !== 'string' || info.nodeId.length === 0) throw new TypeError('membership: nodeId must be a non-empty string');
  if (!Number.isSafeInteger(info.cores) || info.cores < 1) throw new RangeError(`membership: cores must be a positive integer, got ${info.cores}`);
  checkNonNegative('gemmGflops', info.gemmGflops);
  checkNonNegative('memoryBytes', info.memoryBytes);
}

function checkStats(stats: NodeStats): void {
  if (stats.loss !== undefined && typeof stats.loss !== 'number') throw new TypeError(`membership: loss must be a number, got ${typeof stats.loss}`);
  for (const [key, value] of Object.entries(stats)) if (typeof value !== 'object' && key !== 'loss') checkNonNegative(key, value);
}

function checkNonNegative(name: string, value: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`membership: ${name} must be a finite non-negative number, got ${value}`);
  }
}
