// The coordinator process's swarm side: a libp2p host serving join, heartbeat, lease and
// lease-report to the job's nodes, built on the pure pieces (membership, shard planner, data
// leases). Nodes are identified by the libp2p peer id of their connection, never by what a
// message says. Batches go out as global indices epoch·batchesPerEpoch + id, at most
// job.totalBatches of them (the last epoch may be partial), and each counts once.
// Everything that happens is reported as a structured event (the CLI prints them as JSON lines).
import '../src/p2p/polyfill.ts'; // before any libp2p import
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { multiaddr } from '@multiformats/multiaddr';
import {
  JobSpecSchema,
  msgpackCodec,
  PROTOCOL_VERSION,
  type JobSpec,
  type JoinRequest,
  type JoinResponse,
  type Heartbeat,
  type HeartbeatReply,
  type LeaseGrant,
  type LeaseReport,
  type LeaseRequest,
  type Ack,
  type Plan,
  type ProtocolName,
  planSigningBytes,
} from '../proto/index.ts';
import type { PrivateKey } from '@libp2p/interface';
import { createHost, identityKey, RefusedError, Rpc, signSync, type Host, type Rejection } from '../src/p2p/index.ts';
import { jobConfig, jobData, JobError, jobModelOptions } from '../src/train/job.ts';
import type { BpeTokenizer } from '../src/train/tokenizer.ts';
import { DataLeases, type LeaseCounters } from './leases.ts';
import { Membership, type NodeRecord } from './membership.ts';
import { planShards, ShardPlanner, type DroppedReplica, type ExpertHolders, type NewReplica, type PlannerNode, type PlannerOptions, type ShardPlan } from './planner.ts';

export interface CoordinatorOptions {
  job: JobSpec;
  tokenizer: BpeTokenizer;
  /** Multiaddrs to listen on (default: an ephemeral TCP port on 127.0.0.1). */
  listen?: string[];
  /** The coordinator's libp2p identity, created on first use. */
  keyFile?: string;
  /** Shared secret a node must present to join; '' admits anyone. */
  joinToken: string;
  /** How often nodes heartbeat (sent to them on join). Default 1000. */
  heartbeatMs?: number;
  /** A node silent for longer is dead: its leases go back to the pool and its experts elsewhere. Default max(15000, 5 heartbeats). */
  nodeTimeoutMs?: number;
  /** Deadline of a lease. Default 30000. */
  leaseMs?: number;
  /** Nodes per expert. Default 2. */
  replication?: number;
  onEvent?: (event: CoordinatorEvent) => void;
  /** The clock (ms since the Unix epoch) for liveness and lease deadlines; tests drive it by hand. */
  now?: () => number;
}

export type RequestName = Extract<ProtocolName, 'join' | 'heartbeat' | 'lease' | 'leaseReport'>;

/** Everything the coordinator reports, told apart by `event`. Batch ids are global; `at` is the coordinator's clock. */
export type CoordinatorEvent = { at: number } & (
  | { event: 'listening'; peerId: string; addrs: string[] }
  | ({ event: 'joined' } & JoinedNode)
  /** Joined again (restarted, or back after being declared dead): batches it held went back to the pool. */
  | ({ event: 'rejoined' } & JoinedNode)
  | { event: 'left'; node: string; releasedBatchIds: number[] }
  | { event: 'died'; node: string; releasedBatchIds: number[] }
  /** A request the coordinator turned down (join refusals, unadmitted peers, rejected reports). */
  | { event: 'refused'; node: string; request: RequestName; reason: string }
  /** A new plan version: holders of every expert, replicas added (with a holder to copy from) and removed. */
  | { event: 'plan'; version: number; holders: ExpertHolders[]; degraded?: string; moves: { added: NewReplica[]; removed: DroppedReplica[] } }
  /** expectedNodes are alive: leases are granted from now on. */
  | { event: 'started'; nodes: number }
  | { event: 'expired'; node: string; leaseId: number; batchIds: number[] }
  | { event: 'progress'; completed: number; total: number; epoch: number; counters: LeaseCounters }
  | { event: 'done'; completed: number; total: number }
  /** A peer message refused by the transport (too large, malformed, stalled, ...). */
  | ({ event: 'rejected' } & Rejection)
);

interface JoinedNode {
  node: string;
  cores: number;
  gemmGflops: number;
  memoryBytes: number;
  addrs: string[];
  releasedBatchIds: number[];
}

export interface CoordinatorStatus {
  peerId: string;
  addrs: string[];
  jobId: string;
  started: boolean;
  done: boolean;
  /** Every node ever seen (status alive, dead or left), with its last heartbeat stats and experts held. */
  nodes: (NodeRecord & { addrs: string[]; experts: number })[];
  plan: Plan | null;
  leases: { epoch: number; batchesPerEpoch: number; outstanding: number; counters: LeaseCounters };
  completed: number;
  total: number;
}

/** The proto Plan's bound on peers; beyond it the plan could not be sent. */
const MAX_NODES = 4096;
const MAX_REASON = 1024;
const jobChecker = TypeCompiler.Compile(JobSpecSchema);

/** Checks untrusted JSON against proto's JobSpec; the error names `where` and the first offending field. */
export function validateJob(value: unknown, where = 'job'): JobSpec {
  if (jobChecker.Check(value)) return value;
  const error = jobChecker.Errors(value).First();
  throw new JobError(`${where}: ${error?.path || '/'}: ${error?.message ?? 'does not match the job schema'}`);
}

function bounded(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new RangeError(`coordinator: ${name} must be an integer in [${min}, ${max}], got ${value}`);
  return value;
}

/** The job turned into a planner, the epoch size and the tokenizer's wire form; any problem is a JobError. */
function prepareJob(job: JobSpec, tokenizer: BpeTokenizer, replication: number) {
  validateJob(job);
  try {
    const config = jobConfig(job, tokenizer);
    const plannerOptions: PlannerOptions = { config, precision: jobModelOptions(job), replication };
    const planner = new ShardPlanner(plannerOptions);
    const batchesPerEpoch = jobData(job, tokenizer).train.batchesPerEpoch;
    if (batchesPerEpoch < 1) throw new Error('the training split has no micro-batch (too few tokens for batchSize × seqLen)');
    const tokenizerJson = JSON.stringify(tokenizer.toHuggingFace());
    if (tokenizerJson.length > 16 * 1024 * 1024) throw new Error(`the tokenizer's JSON (${tokenizerJson.length} characters) exceeds the 16 MiB a join reply carries`);
    return { planner, plannerOptions, batchesPerEpoch, tokenizerJson };
  } catch (err) {
    if (err instanceof JobError) throw err;
    throw new JobError(`job ${job.jobId}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A multiaddr that parses and ends in /p2p/<peer>: a node may only advertise itself. */
function advertises(addr: string, peer: string): boolean {
  try {
    const last = multiaddr(addr).getComponents().at(-1);
    return last?.name === 'p2p' && last.value === peer;
  } catch {
    return false;
  }
}

const truncate = (text: string) => (text.length <= MAX_REASON ? text : `${text.slice(0, MAX_REASON - 3)}...`);

export class CoordinatorServer {
  private readonly membership: Membership;
  private readonly leases: DataLeases;
  private readonly addrsOf = new Map<string, string[]>();
  /** Batches (ids within the current epoch) in live leases. */
  private readonly outstanding = new Set<number>();
  /** Epoch of every lease of the current epoch that granted batches. */
  private readonly leaseEpoch = new Map<number, number>();
  private readonly timers: NodeJS.Timeout[] = [];
  private announcedVersion = 0;
  private started = false;
  private finished = false;
  private stopped = false;

  private constructor(
    private readonly host: Host,
    private readonly privateKey: PrivateKey,
    private readonly options: CoordinatorOptions & Required<Pick<CoordinatorOptions, 'heartbeatMs' | 'nodeTimeoutMs' | 'leaseMs' | 'now'>>,
    private readonly planner: ShardPlanner,
    private readonly plannerOptions: PlannerOptions,
    private readonly batchesPerEpoch: number,
    private readonly tokenizerJson: string,
  ) {
    this.membership = new Membership({ timeoutMs: options.nodeTimeoutMs, now: options.now });
    this.leases = new DataLeases({ batches: batchesPerEpoch, leaseMs: options.leaseMs, now: options.now });
    this.finished = options.job.totalBatches === 0;
  }

  /** How often liveness is checked: twice per heartbeat period. */
  private get sweepIntervalMs(): number {
    return this.options.heartbeatMs / 2;
  }

  /** Checks the job, starts the host, serves the swarm protocols and starts the timers. */
  static async start(options: CoordinatorOptions): Promise<CoordinatorServer> {
    const heartbeatMs = bounded('heartbeatMs', options.heartbeatMs ?? 1000, 100, 3_600_000);
    const nodeTimeoutMs = bounded('nodeTimeoutMs', options.nodeTimeoutMs ?? Math.max(15_000, 5 * heartbeatMs), 1, Number.MAX_SAFE_INTEGER);
    if (nodeTimeoutMs <= heartbeatMs) throw new RangeError(`coordinator: nodeTimeoutMs (${nodeTimeoutMs}) must exceed heartbeatMs (${heartbeatMs}), or every node dies between heartbeats`);
    const leaseMs = bounded('leaseMs', options.leaseMs ?? 30_000, 4, Number.MAX_SAFE_INTEGER);
    const replication = bounded('replication', options.replication ?? 2, 1, 256);
    if (typeof options.joinToken !== 'string') throw new TypeError('coordinator: joinToken must be a string (empty: an open swarm)');
    const { planner, plannerOptions, batchesPerEpoch, tokenizerJson } = prepareJob(options.job, options.tokenizer, replication);
    // The identity key also signs every plan nodes receive.
    const privateKey = await identityKey(options.keyFile);
    const host = await createHost({ listen: options.listen, privateKey });
    const server = new CoordinatorServer(host, privateKey, { ...options, heartbeatMs, nodeTimeoutMs, leaseMs, now: options.now ?? Date.now }, planner, plannerOptions, batchesPerEpoch, tokenizerJson);
    try {
      await server.serve();
    } catch (err) {
      await host.stop();
      throw err;
    }
    return server;
  }

  get peerId(): string {
    return this.host.peerId.toString();
  }

  /** Where nodes dial the coordinator, each ending in /p2p/<peerId>. */
  get addrs(): string[] {
    return this.host.getMultiaddrs().map((a) => {
      const text = a.toString();
      return text.endsWith(`/p2p/${this.peerId}`) ? text : `${text}/p2p/${this.peerId}`;
    });
  }

  get done(): boolean {
    return this.finished;
  }

  status(): CoordinatorStatus {
    const plan = this.planner.current;
    return {
      peerId: this.peerId,
      addrs: this.addrs,
      jobId: this.options.job.jobId,
      started: this.started,
      done: this.finished,
      nodes: this.membership.all().map((record) => ({
        ...record,
        addrs: this.addrsOf.get(record.nodeId) ?? [],
        experts: plan?.nodes.get(record.nodeId)?.length ?? 0,
      })),
      plan: plan ? this.wirePlan(plan) : null,
      leases: { epoch: this.leases.epoch, batchesPerEpoch: this.batchesPerEpoch, outstanding: this.outstanding.size, counters: { ...this.leases.stats } },
      completed: this.completed(),
      total: this.options.job.totalBatches,
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.host.stop();
  }

  private async serve(): Promise<void> {
    const rpc = new Rpc({ transport: this.host, codec: msgpackCodec, onReject: (rejection) => this.emit({ event: 'rejected', ...rejection }) });
    await rpc.handle('join', (request, { peer }) => this.join(request, peer.toString()));
    await rpc.handle('heartbeat', (beat, { peer }) => this.heartbeat(beat, peer.toString()), { maxConcurrent: 64 });
    await rpc.handle('lease', (request, { peer }) => this.lease(request, peer.toString()), { maxConcurrent: 64 });
    await rpc.handle('leaseReport', (report, { peer }) => this.report(report, peer.toString()), { maxConcurrent: 64 });
    this.timers.push(setInterval(() => this.sweep(), this.sweepIntervalMs));
    this.timers.push(setInterval(() => this.expire(), this.options.leaseMs / 4));
    this.emit({ event: 'listening', peerId: this.peerId, addrs: this.addrs });
  }

  // --- handlers (synchronous: each runs to completion before the next) ------------------------

  private join(request: JoinRequest, peer: string): JoinResponse {
    const refuse = (reason: string): JoinResponse => {
      this.emit({ event: 'refused', node: peer, request: 'join', reason });
      return { admitted: false, version: PROTOCOL_VERSION, reason: truncate(reason) };
    };
    if (this.options.joinToken !== '' && request.token !== this.options.joinToken) return refuse('wrong join token');
    if (request.nodeId !== peer) return refuse(`nodeId ${request.nodeId} is not the peer id of the connection (${peer})`);
    const foreign = request.addrs.find((addr) => !advertises(addr, peer));
    if (foreign !== undefined) return refuse(`address ${foreign} is not a multiaddr ending in /p2p/${peer}`);
    const wasAlive = this.membership.get(peer)?.status === 'alive';
    if (!wasAlive && this.membership.alive().length >= MAX_NODES) return refuse(`the swarm is full (${MAX_NODES} nodes)`);

    const candidate: PlannerNode = { nodeId: peer, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes };
    // Whether the planner admits a node depends on that node alone: ask it about this one.
    const refusal = planShards([candidate], this.plannerOptions).refused[0];
    if (refusal) {
      if (wasAlive && this.membership.leave(peer)) this.removed([peer], 'left'); // came back with too small a budget
      return refuse(refusal.reason);
    }
    const plan = this.replan(candidate);
    const type = this.membership.join({ nodeId: peer, cores: request.cores, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes });
    this.addrsOf.set(peer, [...request.addrs]);
    // A node joining again restarted or was declared dead: whatever it held is not coming back.
    const released = this.release(peer);
    this.emit({ event: type, node: peer, cores: request.cores, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes, addrs: [...request.addrs], releasedBatchIds: released });
    this.announcePlan();
    const alive = this.membership.alive().length;
    if (!this.started && alive >= this.options.job.expectedNodes) {
      this.started = true;
      this.emit({ event: 'started', nodes: alive });
    }
    return { admitted: true, version: PROTOCOL_VERSION, job: this.options.job, tokenizer: this.tokenizerJson, ...this.signedPlan(plan), heartbeatMs: this.options.heartbeatMs, completedBatches: this.completed() };
  }

  private heartbeat(beat: Heartbeat, peer: string): HeartbeatReply {
    this.checkJob(beat.jobId, peer, 'heartbeat');
    const { jobId: _, ...stats } = beat;
    let alive: boolean;
    try {
      alive = this.membership.heartbeat(peer, stats);
    } catch (err) {
      throw this.refusal(peer, 'heartbeat', (err as Error).message);
    }
    if (!alive) return { accepted: false, reason: 'rejoin', stop: this.finished };
    const plan = this.planner.current!;
    return { accepted: true, ...(plan.version > beat.planVersion ? this.signedPlan(plan) : {}), stop: this.finished };
  }

  private lease(request: LeaseRequest, peer: string): LeaseGrant {
    this.checkJob(request.jobId, peer, 'lease');
    if (this.membership.get(peer)?.status !== 'alive') throw this.refusal(peer, 'lease', 'not an admitted live node of the job: join first');
    const planVersion = this.planner.current?.version ?? 0;
    const empty: LeaseGrant = { jobId: request.jobId, leaseId: 0, batchIds: [], deadline: this.options.now(), done: this.finished, planVersion };
    const count = Math.min(request.maxBatches, this.grantable());
    if (!this.started || this.finished || count === 0) return empty;
    const grant = this.leases.lease(peer, count);
    this.leaseEpoch.set(grant.leaseId, grant.epoch);
    for (const id of grant.ids) this.outstanding.add(id);
    const base = grant.epoch * this.batchesPerEpoch;
    return { jobId: request.jobId, leaseId: grant.leaseId, batchIds: grant.ids.map((id) => base + id), deadline: grant.deadline, done: false, planVersion };
  }

  private report(report: LeaseReport, peer: string): Ack {
    this.checkJob(report.jobId, peer, 'leaseReport');
    if (this.membership.get(peer) === undefined) throw this.refusal(peer, 'leaseReport', 'not a node of the job: join first');
    const problems: string[] = [];
    const epoch = this.leaseEpoch.get(report.leaseId);
    let accepted = 0;
    if (epoch === undefined && report.completedBatchIds.length > 0) {
      problems.push(`lease ${report.leaseId} is unknown or of a finished epoch`);
    } else if (epoch !== undefined) {
      const base = epoch * this.batchesPerEpoch;
      for (const batchId of report.completedBatchIds) {
        const id = batchId - base;
        const result = id >= 0 && id < this.batchesPerEpoch ? this.leases.report(peer, epoch, id) : { accepted: false as const, reason: `not in epoch ${epoch} of lease ${report.leaseId}` };
        if (result.accepted) {
          this.outstanding.delete(id);
          accepted++;
        } else {
          problems.push(`batch ${batchId}: ${result.reason}`);
        }
      }
    }
    if (accepted > 0) this.advance();
    if (report.leaving) {
      if (this.membership.leave(peer)) this.removed([peer], 'left');
      else this.release(peer);
    }
    if (problems.length === 0) return { accepted: true };
    const reason = truncate(problems.join('; '));
    this.emit({ event: 'refused', node: peer, request: 'leaseReport', reason });
    return { accepted: false, reason };
  }

  // --- timers ---------------------------------------------------------------------------------

  private sweep(): void {
    this.removed(this.membership.sweep(this.sweepIntervalMs).map((node) => node.nodeId), 'died');
  }

  private expire(): void {
    for (const { nodeId, leaseId, ids } of this.leases.expire()) {
      for (const id of ids) this.outstanding.delete(id);
      this.emit({ event: 'expired', node: nodeId, leaseId, batchIds: this.global(ids) });
    }
  }

  // --- helpers --------------------------------------------------------------------------------

  /** Plans for the live nodes, with `candidate` (a joiner) in place of its old record. */
  private replan(candidate?: PlannerNode): ShardPlan {
    const nodes: PlannerNode[] = this.membership
      .alive()
      .filter((n) => n.nodeId !== candidate?.nodeId)
      .map(({ nodeId, gemmGflops, memoryBytes }) => ({ nodeId, gemmGflops, memoryBytes }));
    return this.planner.plan(candidate ? [...nodes, candidate] : nodes);
  }

  private announcePlan(): void {
    const plan = this.planner.current;
    if (!plan || plan.version === this.announcedVersion) return;
    this.announcedVersion = plan.version;
    this.emit({
      event: 'plan',
      version: plan.version,
      holders: plan.experts.map(({ layer, expert, holders }) => ({ layer, expert, holders: [...holders] })),
      ...(plan.degraded ? { degraded: plan.degraded.reason } : {}),
      moves: { added: plan.diff.added.map((m) => ({ ...m })), removed: plan.diff.removed.map((m) => ({ ...m })) },
    });
  }

  private wirePlan(plan: ShardPlan): Plan {
    return {
      version: plan.version,
      experts: plan.experts.map(({ layer, expert, holders }) => ({ layer, expert, holders: [...holders] })),
      peers: [...plan.nodes.keys()].map((peerId) => ({ peerId, addrs: this.addrsOf.get(peerId) ?? [] })),
      ...(plan.degraded ? { degraded: truncate(plan.degraded.reason) } : {}),
    };
  }

  /** Signed afresh each time: a node's addresses may change without a new plan version (it rejoined from elsewhere). */
  private signedPlan(shards: ShardPlan): { plan: Plan; planSignature: Uint8Array } {
    const plan = this.wirePlan(shards);
    return { plan, planSignature: signSync(this.privateKey, planSigningBytes(this.options.job.jobId, plan)) };
  }

  /** Nodes that left or died: their batches go back to the pool, and one re-plan moves their experts. */
  private removed(nodeIds: string[], type: 'left' | 'died'): void {
    if (nodeIds.length === 0) return;
    for (const nodeId of nodeIds) this.emit({ event: type, node: nodeId, releasedBatchIds: this.release(nodeId) });
    this.replan();
    this.announcePlan();
  }

  private release(nodeId: string): number[] {
    const ids = this.leases.release(nodeId);
    for (const id of ids) this.outstanding.delete(id);
    return this.global(ids);
  }

  /** Batches of the job completed so far (every earlier epoch is complete). */
  private completed(): number {
    return this.leases.epoch * this.batchesPerEpoch + (this.batchesPerEpoch - this.leases.remaining);
  }

  /**
   * Batches that may be granted now: those of the current epoch below the job's total, neither
   * completed nor leased. (Leases hand out the lowest free ids, so the grants stay below the total.)
   */
  private grantable(): number {
    const inEpoch = Math.min(this.batchesPerEpoch, this.options.job.totalBatches - this.leases.epoch * this.batchesPerEpoch);
    return Math.max(0, inEpoch - (this.batchesPerEpoch - this.leases.remaining) - this.outstanding.size);
  }

  /** After completions: progress, the next epoch when this one is done, the end of the job. */
  private advance(): void {
    const total = this.options.job.totalBatches;
    this.emit({ event: 'progress', completed: this.completed(), total, epoch: this.leases.epoch, counters: { ...this.leases.stats } });
    if (this.completed() >= total) {
      if (!this.finished) {
        this.finished = true;
        this.emit({ event: 'done', completed: this.completed(), total });
      }
    } else if (this.leases.done) {
      this.leases.nextEpoch();
      this.outstanding.clear();
      this.leaseEpoch.clear(); // reports of finished epochs can complete nothing
    }
  }

  private global(ids: number[]): number[] {
    const base = this.leases.epoch * this.batchesPerEpoch;
    return ids.map((id) => base + id);
  }

  private checkJob(jobId: string, peer: string, request: RequestName): void {
    if (jobId !== this.options.job.jobId) throw this.refusal(peer, request, `job ${jobId} is not this coordinator's job (${this.options.job.jobId})`);
  }

  private refusal(peer: string, request: RequestName, reason: string): RefusedError {
    this.emit({ event: 'refused', node: peer, request, reason });
    return new RefusedError(reason);
  }

  private emit(event: DistributiveOmit<CoordinatorEvent, 'at'>): void {
    try {
      this.options.onEvent?.({ ...event, at: this.options.now() } as CoordinatorEvent);
    } catch (err) {
      console.error('[coordinator] event listener failed:', err);
    }
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
