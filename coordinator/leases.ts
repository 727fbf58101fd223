// Data leases. DataLeases: an epoch's micro-batches 0..N-1 are handed out to nodes with a deadline, and each
// must be reported done exactly once. A lease past its deadline (expire()) or of a node that died
// or left (release()) goes back to the pool and is handed out again, lowest ids first. A report
// counts only from the batch's current holder; when a lapsed batch has not been handed to anyone
// else yet, its last holder's report still counts (the work is done, nobody else is doing it).
// Epochs run in sequence: nextEpoch() once every batch of the current one is done, and reports
// name their epoch so a late report can never complete a batch of the next one.
// JobLeases: a job's batches over its epochs, as global ids epoch·batchesPerEpoch + id, at most
// totalBatches of them (the last epoch may be partial); the coordinator's server speaks only these.
// Time comes from `now()`, so tests need no sleeps.
//
// The state to persist and restore (a job store's rows): the epoch; per batch of the current epoch,
// whether it is reported and its last holder; the live leases (id, node, deadline, unreported batch
// ids) and the next lease id; the ids of the epoch's leases that granted batches (JobLeases); the
// counters. Everything else (the free-batch heap, the per-batch lease index) is derived from these.
export interface LeaseOptions {
  /** Micro-batches per epoch. */
  batches: number;
  leaseMs: number;
  now?: () => number;
}

export interface LeaseGrant {
  leaseId: number;
  epoch: number;
  /** Ascending; empty when no batch is free right now. */
  ids: number[];
  deadline: number;
}

export type ReportResult = { accepted: true } | { accepted: false; reason: string };

export interface LeaseCounters {
  /** Batches handed out, re-issues included. */
  issued: number;
  /** Of those, batches handed out before (after an expiry or a release). */
  reissued: number;
  completed: number;
  rejected: number;
  /** Batches returned to the pool by expire() and release(). */
  expired: number;
  released: number;
}

interface Lease {
  nodeId: string;
  deadline: number;
  /** Batches of the lease not yet reported. */
  ids: Set<number>;
}

const NO_LEASE = -1;

export class DataLeases {
  readonly batches: number;
  private readonly leaseMs: number;
  private readonly now: () => number;
  private epochNumber = 0;
  private readonly counters: LeaseCounters = { issued: 0, reissued: 0, completed: 0, rejected: 0, expired: 0, released: 0 };
  private nextLeaseId = 0;
  private readonly leases = new Map<number, Lease>();
  // Per batch of the current epoch:
  private readonly leaseOf: Int32Array;
  private readonly lastHolder: (string | undefined)[];
  private readonly reported: Uint8Array;
  private completedInEpoch = 0;
  /** Batches never handed out this epoch are nextFresh..N-1; returned ones wait in `returned`. */
  private nextFresh = 0;
  private readonly returned = new MinHeap();
  /** Leases granted, shrunk or ended since the last takeChanges(). */
  private readonly touched = new Set<number>();

  constructor(options: LeaseOptions) {
    if (!Number.isSafeInteger(options.batches) || options.batches < 1) throw new RangeError(`leases: batches must be a positive integer, got ${options.batches}`);
    if (!(options.leaseMs > 0) || !Number.isFinite(options.leaseMs)) throw new RangeError(`leases: leaseMs must be a positive number, got ${options.leaseMs}`);
    this.batches = options.batches;
    this.leaseMs = options.leaseMs;
    this.now = options.now ?? Date.now;
    this.leaseOf = new Int32Array(this.batches).fill(NO_LEASE);
    this.lastHolder = new Array(this.batches).fill(undefined);
    this.reported = new Uint8Array(this.batches);
  }

  get epoch(): number {
    return this.epochNumber;
  }

  /** Every batch of the current epoch is reported. */
  get done(): boolean {
    return this.completedInEpoch === this.batches;
  }

  /** Batches of the current epoch not reported yet. */
  get remaining(): number {
    return this.batches - this.completedInEpoch;
  }

  get stats(): Readonly<LeaseCounters> {
    return { ...this.counters };
  }

  /** Batches of the current epoch in live leases (handed out, not reported, not returned). */
  get leased(): number {
    let count = 0;
    for (const lease of this.leases.values()) count += lease.ids.size;
    return count;
  }

  /** Hands `nodeId` up to `count` of the lowest free batches, due at now + leaseMs. */
  lease(nodeId: string, count: number): LeaseGrant {
    checkNodeId(nodeId);
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`leases: count must be a positive integer, got ${count}`);
    const ids: number[] = [];
    while (ids.length < count) {
      const id = this.takeLowestFree();
      if (id === undefined) break;
      ids.push(id);
    }
    const leaseId = this.nextLeaseId++;
    const deadline = this.now() + this.leaseMs;
    if (ids.length > 0) {
      this.leases.set(leaseId, { nodeId, deadline, ids: new Set(ids) });
      this.touched.add(leaseId);
      for (const id of ids) {
        if (this.lastHolder[id] !== undefined) this.counters.reissued++;
        this.leaseOf[id] = leaseId;
        this.lastHolder[id] = nodeId;
      }
      this.counters.issued += ids.length;
    }
    return { leaseId, epoch: this.epochNumber, ids, deadline };
  }

  /** `nodeId` says batch `id` of `epoch` is done. Untrusted input: rejections are counted, not thrown. */
  report(nodeId: string, epoch: number, id: number): ReportResult {
    const problem = this.reportProblem(nodeId, epoch, id);
    if (problem) {
      this.counters.rejected++;
      return { accepted: false, reason: problem };
    }
    const leaseId = this.leaseOf[id];
    if (leaseId !== NO_LEASE) this.dropFromLease(leaseId, id);
    this.reported[id] = 1;
    this.completedInEpoch++;
    this.counters.completed++;
    return { accepted: true };
  }

  /** Returns every lease past its deadline to the pool; returns them. */
  expire(): { nodeId: string; leaseId: number; ids: number[] }[] {
    const at = this.now();
    const lapsed = [...this.leases].filter(([, lease]) => at > lease.deadline);
    return lapsed.map(([leaseId, lease]) => {
      const ids = this.returnLease(leaseId);
      this.counters.expired += ids.length;
      return { nodeId: lease.nodeId, leaseId, ids };
    });
  }

  /** Returns all of a dead or departing node's leased batches to the pool; returns their ids. */
  release(nodeId: string): number[] {
    const ids: number[] = [];
    for (const [leaseId, lease] of [...this.leases]) if (lease.nodeId === nodeId) ids.push(...this.returnLease(leaseId));
    this.counters.released += ids.length;
    return ids.sort((a, b) => a - b);
  }

  /**
   * Takes back a state saved before a restart: epoch `epoch` with batches `reported` done and `leases`
   * live again, each due a full lease from now (their nodes could not report while the coordinator
   * was away); every other batch is free. Only on a fresh pool.
   */
  restore(state: { epoch: number; reported: number[]; leases: { leaseId: number; nodeId: string; ids: number[] }[]; nextLeaseId: number }): void {
    if (this.counters.issued > 0 || this.epochNumber > 0) throw new Error('leases: restore() needs a fresh pool');
    this.epochNumber = state.epoch;
    for (const id of state.reported) {
      if (!this.reported[id]) this.completedInEpoch++;
      this.reported[id] = 1;
    }
    const deadline = this.now() + this.leaseMs;
    for (const { leaseId, nodeId, ids } of state.leases) {
      const live = ids.filter((id) => !this.reported[id] && this.leaseOf[id] === NO_LEASE);
      if (live.length === 0) continue;
      this.leases.set(leaseId, { nodeId, deadline, ids: new Set(live) });
      for (const id of live) {
        this.leaseOf[id] = leaseId;
        this.lastHolder[id] = nodeId;
      }
    }
    this.nextFresh = this.batches;
    for (let id = 0; id < this.batches; id++) if (!this.reported[id] && this.leaseOf[id] === NO_LEASE) this.returned.push(id);
    this.nextLeaseId = Math.max(this.nextLeaseId, state.nextLeaseId);
  }

  /** The next grant's lease id. */
  get nextLease(): number {
    return this.nextLeaseId;
  }

  /** Live leases: each with the batches not reported yet. */
  live(): { leaseId: number; nodeId: string; ids: number[] }[] {
    return [...this.leases.keys()].map((leaseId) => this.current(leaseId));
  }

  /**
   * The leases granted, shrunk or ended since the last call, as they are now (an ended one with no ids): what a
   * store must write to keep up, without comparing every live lease on each change.
   */
  takeChanges(): { leaseId: number; nodeId: string; ids: number[] }[] {
    const changes = [...this.touched].map((leaseId) => this.current(leaseId));
    this.touched.clear();
    return changes;
  }

  private current(leaseId: number): { leaseId: number; nodeId: string; ids: number[] } {
    const lease = this.leases.get(leaseId);
    return { leaseId, nodeId: lease?.nodeId ?? '', ids: lease ? [...lease.ids].sort((a, b) => a - b) : [] };
  }

  /** Starts the next epoch; the current one must be done. */
  nextEpoch(): number {
    if (!this.done) throw new Error(`leases: epoch ${this.epochNumber} is not done (${this.remaining} of ${this.batches} batches unreported)`);
    this.epochNumber++;
    this.leaseOf.fill(NO_LEASE);
    this.lastHolder.fill(undefined);
    this.reported.fill(0);
    this.returned.clear();
    this.completedInEpoch = 0;
    this.nextFresh = 0;
    return this.epochNumber;
  }

  private reportProblem(nodeId: string, epoch: number, id: number): string | undefined {
    if (epoch !== this.epochNumber) return `epoch ${epoch} is not the current epoch (${this.epochNumber})`;
    if (!Number.isSafeInteger(id) || id < 0 || id >= this.batches) return `no batch ${id} (the epoch has ${this.batches})`;
    if (this.reported[id]) return `batch ${id} was already reported`;
    const leaseId = this.leaseOf[id];
    if (leaseId !== NO_LEASE && this.leases.get(leaseId)!.nodeId !== nodeId) return `batch ${id} is leased to another node`;
    if (leaseId === NO_LEASE && this.lastHolder[id] !== nodeId) return `batch ${id} is not leased to ${nodeId}`;
    return undefined;
  }

  private takeLowestFree(): number | undefined {
    // `returned` may hold batches completed by a lapsed holder's late report: skip them.
    while (this.returned.size > 0 && this.reported[this.returned.peek()]) this.returned.pop();
    if (this.returned.size > 0 && (this.nextFresh >= this.batches || this.returned.peek() < this.nextFresh)) return this.returned.pop();
    return this.nextFresh < this.batches ? this.nextFresh++ : undefined;
  }

  private returnLease(leaseId: number): number[] {
    const ids = [...this.leases.get(leaseId)!.ids];
    for (const id of ids) {
      this.leaseOf[id] = NO_LEASE;
      this.returned.push(id);
    }
    this.leases.delete(leaseId);
    this.touched.add(leaseId);
    return ids;
  }

  private dropFromLease(leaseId: number, id: number): void {
    const lease = this.leases.get(leaseId)!;
    lease.ids.delete(id);
    if (lease.ids.size === 0) this.leases.delete(leaseId);
    this.touched.add(leaseId);
    this.leaseOf[id] = NO_LEASE;
  }
}

export interface JobLeaseOptions {
  batchesPerEpoch: number;
  /** Batches of the whole job; 0 is a job that is done from the start. */
  totalBatches: number;
  leaseMs: number;
  now?: () => number;
}

/** A grant in global batch ids. */
export interface BatchGrant {
  leaseId: number;
  /** Ascending. */
  batchIds: number[];
  deadline: number;
}

/** What a report did: `completed` batches counted (in `epoch`, the one they belonged to), and why the others did not. */
export interface ReportOutcome {
  completed: number;
  /** The batches this report completed, ascending as reported. */
  completedIds: number[];
  epoch: number;
  problems: string[];
}

export class JobLeases {
  readonly batchesPerEpoch: number;
  readonly totalBatches: number;
  private readonly pool: DataLeases;
  /** Leases of the current epoch that granted batches: a report names one of these or completes nothing. */
  private readonly epochLeases = new Set<number>();

  constructor(options: JobLeaseOptions) {
    if (!Number.isSafeInteger(options.totalBatches) || options.totalBatches < 0) {
      throw new RangeError(`leases: totalBatches must be a non-negative integer, got ${options.totalBatches}`);
    }
    this.pool = new DataLeases({ batches: options.batchesPerEpoch, leaseMs: options.leaseMs, now: options.now });
    this.batchesPerEpoch = options.batchesPerEpoch;
    this.totalBatches = options.totalBatches;
  }

  get epoch(): number {
    return this.pool.epoch;
  }

  /** Batches of the job completed so far (every earlier epoch is complete). */
  get completed(): number {
    return this.pool.epoch * this.batchesPerEpoch + (this.batchesPerEpoch - this.pool.remaining);
  }

  /** Every batch of the job is completed: nothing more is granted. */
  get done(): boolean {
    return this.completed >= this.totalBatches;
  }

  /** Batches in live leases. */
  get leased(): number {
    return this.pool.leased;
  }

  get stats(): Readonly<LeaseCounters> {
    return this.pool.stats;
  }

  /** Hands `nodeId` up to `maxBatches` of the lowest free batches; undefined when none may be granted now. */
  lease(nodeId: string, maxBatches: number): BatchGrant | undefined {
    const count = Math.min(maxBatches, this.grantable());
    if (count < 1) return undefined;
    const grant = this.pool.lease(nodeId, count);
    this.epochLeases.add(grant.leaseId);
    return { leaseId: grant.leaseId, batchIds: this.global(grant.ids), deadline: grant.deadline };
  }

  /** `nodeId` says the batches of lease `leaseId` are done; untrusted input. The next epoch starts once this one is complete. */
  report(nodeId: string, leaseId: number, batchIds: readonly number[]): ReportOutcome {
    const epoch = this.pool.epoch;
    const problems: string[] = [];
    const completedIds: number[] = [];
    if (!this.epochLeases.has(leaseId)) {
      if (batchIds.length > 0) problems.push(`lease ${leaseId} is unknown or of a finished epoch`);
      return { completed: 0, completedIds, epoch, problems };
    }
    const base = epoch * this.batchesPerEpoch;
    for (const batchId of batchIds) {
      const id = batchId - base;
      const result = id >= 0 && id < this.batchesPerEpoch
        ? this.pool.report(nodeId, epoch, id)
        : { accepted: false as const, reason: `not in epoch ${epoch} of lease ${leaseId}` };
      if (result.accepted) completedIds.push(batchId);
      else problems.push(`batch ${batchId}: ${result.reason}`);
    }
    const completed = completedIds.length;
    if (completed > 0 && !this.done && this.pool.done) {
      this.pool.nextEpoch();
      this.epochLeases.clear(); // reports of finished epochs can complete nothing
    }
    return { completed, completedIds, epoch, problems };
  }

  /**
   * Takes back the state of a job that ran before a restart: its completed batches (global ids; every
   * epoch before the last is complete) and its live leases. Only on fresh leases.
   */
  restore(completed: readonly number[], leases: readonly { leaseId: number; nodeId: string; batchIds: number[] }[], nextLeaseId: number): void {
    const epoch = Math.floor(completed.length / this.batchesPerEpoch);
    const base = epoch * this.batchesPerEpoch;
    const local = (ids: readonly number[]) => ids.filter((id) => id >= base && id < base + this.batchesPerEpoch).map((id) => id - base);
    this.pool.restore({
      epoch, reported: local(completed), nextLeaseId, leases: leases.map(({ leaseId, nodeId, batchIds }) => ({ leaseId, nodeId, ids: local(batchIds) })),
    });
    for (const { leaseId } of this.pool.live()) this.epochLeases.add(leaseId);
  }

  /** Live leases in global batch ids (what a restart needs to take them back). */
  live(): { leaseId: number; nodeId: string; batchIds: number[] }[] {
    return this.pool.live().map(({ leaseId, nodeId, ids }) => ({ leaseId, nodeId, batchIds: this.global(ids) }));
  }

  /** The leases changed since the last call (see DataLeases.takeChanges), in global batch ids. */
  takeChanges(): { leaseId: number; nodeId: string; batchIds: number[] }[] {
    return this.pool.takeChanges().map(({ leaseId, nodeId, ids }) => ({ leaseId, nodeId, batchIds: this.global(ids) }));
  }

  get nextLeaseId(): number {
    return this.pool.nextLease;
  }

  /** Returns every lease past its deadline to the pool; returns them. */
  expire(): { nodeId: string; leaseId: number; batchIds: number[] }[] {
    return this.pool.expire().map(({ nodeId, leaseId, ids }) => ({ nodeId, leaseId, batchIds: this.global(ids) }));
  }

  /** Returns all of a dead or departing node's leased batches to the pool; returns their ids, ascending. */
  release(nodeId: string): number[] {
    return this.global(this.pool.release(nodeId));
  }

  /**
   * Batches that may be granted now: those of the current epoch below the job's total, neither
   * completed nor leased. (Leases hand out the lowest free ids, so the grants stay below the total.)
   */
  private grantable(): number {
    const inEpoch = Math.min(this.batchesPerEpoch, this.totalBatches - this.pool.epoch * this.batchesPerEpoch);
    return Math.max(0, inEpoch - (this.batchesPerEpoch - this.pool.remaining) - this.pool.leased);
  }

  private global(ids: number[]): number[] {
    const base = this.pool.epoch * this.batchesPerEpoch;
    return ids.map((id) => base + id);
  }
}

function checkNodeId(nodeId: string): void {
  if (typeof nodeId !== 'string' || nodeId.length === 0) throw new TypeError('leases: nodeId must be a non-empty string');
}

/** Binary min-heap of batch ids. */
class MinHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  clear(): void {
    this.items.length = 0;
  }

  peek(): number {
    return this.items[0];
  }

  push(value: number): void {
    const items = this.items;
    items.push(value);
    for (let i = items.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (items[parent] <= items[i]) break;
      [items[parent], items[i]] = [items[i], items[parent]];
      i = parent;
    }
  }

  pop(): number {
    const items = this.items;
    const top = items[0];
    const last = items.pop()!;
    if (items.length > 0) {
      items[0] = last;
      for (let i = 0; ; ) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < items.length && items[left] < items[smallest]) smallest = left;
        if (right < items.length && items[right] < items[smallest]) smallest = right;
        if (smallest === i) break;
        [items[smallest], items[i]] = [items[i], items[smallest]];
        i = smallest;
      }
    }
    return top;
  }
}
