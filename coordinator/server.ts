// The coordinator process's swarm side: a libp2p host serving join, heartbeat, lease and
// lease-report to the job's nodes, built on the pure pieces (membership, shard planner, the job's
// data leases in global batch ids). Nodes are identified by the libp2p peer id of their connection,
// never by what a message says. The job comes in checked (proto's validateJob, where it was read).
// Everything that happens is reported as a structured event (the CLI prints them as JSON lines).
import '../src/p2p/polyfill.ts'; // before any libp2p import
import { multiaddr } from '@multiformats/multiaddr';
import {
  groupId,
  JobError,
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
  type BaseManifest,
  type JobBase,
  TRUNK_GROUP,
} from '../proto/index.ts';
import type { ModelConfig } from '../src/model/config.ts';
import type { PrivateKey } from '@libp2p/interface';
import { connectionIp, createHost, identityKey, RefusedError, Rpc, serveGroups, signSync, type Host, type Rejection } from '../src/p2p/index.ts';
import { jobBatchesPerEpoch, jobConfig, jobModelOptions } from '../src/train/job.ts';
import type { Tokenizer } from '../src/train/tokenizers/index.ts';
import { serveBlobs, signManifest, type BlobSource } from '../src/weights/index.ts';
import { AddressBook } from './addresses.ts';
import { JobCheckpoints, type CheckpointEvent } from './checkpointer.ts';
import { JobLeases, type LeaseCounters } from './leases.ts';
import { Membership, type NodeRecord } from './membership.ts';
import { planShards, ShardPlanner, type DroppedReplica, type ExpertHolders, type NewReplica, type PlannerNode, type PlannerOptions, type ShardPlan } from './planner.ts';

export interface CoordinatorOptions {
  job: JobSpec;
  tokenizer: Tokenizer;
  /**
   * The checkpoint the job starts from (src/weights buildManifest of a Hugging Face folder): the job's
   * model config is the base's, nodes get the manifest signed, and admitted nodes fetch its blobs from here.
   */
  base?: { manifest: BaseManifest; blobs: BlobSource; name: string };
  /** Multiaddrs to listen on (default: an ephemeral TCP port on 127.0.0.1). */
  listen?: string[];
  /** Multiaddrs to advertise besides the listening ones (a public address forwarded to the coordinator). */
  announce?: string[];
  /** Give every node every peer address, private ones included (a swarm on one routed private network). */
  lan?: boolean;
  /** Serve as a circuit relay for the admitted nodes (those behind NATs are reached through it). Default true. */
  relay?: boolean;
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
  /** The coordinator's data directory: with it, the job is checkpointed and its result written under <dataDir>/jobs/<jobId>/. */
  dataDir?: string;
  /** Checkpoint every this many averaging rounds (and at the end). Default 10. */
  checkpointEvery?: number;
  /** Checkpoints kept on disk. Default 3. */
  keepCheckpoints?: number;
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
  | CheckpointEvent
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

function bounded(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new RangeError(`coordinator: ${name} must be an integer in [${min}, ${max}], got ${value}`);
  return value;
}

/**
 * The job turned into a planner, the epoch size and the tokenizer's wire form; any problem is a
 * JobError. These checks need the tokenizer and the corpus, so they live here, not in validateJob.
 */
function prepareJob(job: JobSpec, tokenizer: Tokenizer, replication: number, base?: BaseManifest) {
  try {
    const config = jobConfig(job, tokenizer, base?.config as ModelConfig | undefined);
    const plannerOptions: PlannerOptions = { config, precision: jobModelOptions(job), replication };
    const planner = new ShardPlanner(plannerOptions);
    const batchesPerEpoch = jobBatchesPerEpoch(job, tokenizer);
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
  private readonly addresses: AddressBook;
  private readonly timers: NodeJS.Timeout[] = [];
  private announcedVersion = 0;
  private started = false;
  private stopped = false;
  /** With a data directory: the job's checkpoints, and whether the end's result is written (nodes are let go after it). */
  private checkpoints?: JobCheckpoints;
  private resultWritten = false;

  private constructor(
    private readonly host: Host,
    private readonly privateKey: PrivateKey,
    private readonly options: CoordinatorOptions & Required<Pick<CoordinatorOptions, 'heartbeatMs' | 'nodeTimeoutMs' | 'leaseMs' | 'now'>>,
    private readonly planner: ShardPlanner,
    private readonly plannerOptions: PlannerOptions,
    private readonly leases: JobLeases,
    private readonly tokenizerJson: string,
    /** The signed base sent in every join reply, if the job has one. */
    private readonly base: JobBase | undefined,
  ) {
    this.membership = new Membership({ timeoutMs: options.nodeTimeoutMs, now: options.now });
    this.addresses = new AddressBook(options.lan);
  }

  /** How often liveness is checked: twice per heartbeat period. */
  private get sweepIntervalMs(): number {
    return this.options.heartbeatMs / 2;
  }

  /** Checks the job against its tokenizer and corpus, starts the host, serves the swarm protocols and starts the timers. */
  static async start(options: CoordinatorOptions): Promise<CoordinatorServer> {
    const heartbeatMs = bounded('heartbeatMs', options.heartbeatMs ?? 1000, 100, 3_600_000);
    const nodeTimeoutMs = bounded('nodeTimeoutMs', options.nodeTimeoutMs ?? Math.max(15_000, 5 * heartbeatMs), 1, Number.MAX_SAFE_INTEGER);
    if (nodeTimeoutMs <= heartbeatMs) throw new RangeError(`coordinator: nodeTimeoutMs (${nodeTimeoutMs}) must exceed heartbeatMs (${heartbeatMs}), or every node dies between heartbeats`);
    const leaseMs = bounded('leaseMs', options.leaseMs ?? 30_000, 4, Number.MAX_SAFE_INTEGER);
    const replication = bounded('replication', options.replication ?? 2, 1, 256);
    if (typeof options.joinToken !== 'string') throw new TypeError('coordinator: joinToken must be a string (empty: an open swarm)');
    const { planner, plannerOptions, batchesPerEpoch, tokenizerJson } = prepareJob(
      options.job, options.tokenizer, replication, options.base?.manifest,
    );
    const now = options.now ?? Date.now;
    const leases = new JobLeases({ batchesPerEpoch, totalBatches: options.job.totalBatches, leaseMs, now });
    // The identity key also signs every plan nodes receive.
    const privateKey = await identityKey(options.keyFile);
    // networking: the relay admits the live nodes (the server, made below, knows them).
    let server: CoordinatorServer | undefined;
    const relayServer = options.relay === false ? undefined : { mayReserve: (peer: string) => server?.isAlive(peer) === true };
    const announce = options.announce ? { announce: options.announce } : {};
    const host = await createHost({ listen: options.listen, privateKey, ...announce, relayServer });
    const settings = { ...options, heartbeatMs, nodeTimeoutMs, leaseMs, now };
    const base = options.base && { manifest: options.base.manifest, ...signManifest(privateKey, options.base.manifest) };
    server = new CoordinatorServer(host, privateKey, settings, planner, plannerOptions, leases, tokenizerJson, base);
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

  isAlive(peer: string): boolean {
    return this.membership.get(peer)?.status === 'alive';
  }

  /** networking: the IP a node's direct connection to the coordinator comes from (see AddressBook). */
  private seenFrom(peer: string): string | undefined {
    const direct = this.host.getConnections().filter((c) => c.remotePeer.toString() === peer).map((c) => connectionIp(c.remoteAddr));
    return direct.find((ip) => ip !== undefined);
  }

  /** Where nodes dial the coordinator, each ending in /p2p/<peerId>. */
  get addrs(): string[] {
    return this.host.getMultiaddrs().map((a) => {
      const text = a.toString();
      return text.endsWith(`/p2p/${this.peerId}`) ? text : `${text}/p2p/${this.peerId}`;
    });
  }

  /** Every batch is trained and, with a data directory, the final checkpoint and result are written. */
  get done(): boolean {
    return this.leases.done && (this.checkpoints === undefined || this.resultWritten);
  }

  status(): CoordinatorStatus {
    const plan = this.planner.current;
    return {
      peerId: this.peerId,
      addrs: this.addrs,
      jobId: this.options.job.jobId,
      started: this.started,
      done: this.done,
      nodes: this.membership.all().map((record) => ({
        ...record,
        addrs: this.addresses.get(record.nodeId) ?? [],
        experts: plan?.nodes.get(record.nodeId)?.length ?? 0,
      })),
      plan: plan ? this.wirePlan(plan) : null,
      leases: {
        epoch: this.leases.epoch, batchesPerEpoch: this.leases.batchesPerEpoch, outstanding: this.leases.leased, counters: this.leases.stats,
      },
      completed: this.leases.completed,
      total: this.options.job.totalBatches,
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.checkpoints?.idle();
    await this.host.stop();
  }

  private async serve(): Promise<void> {
    const rpc = new Rpc({ transport: this.host, codec: msgpackCodec, onReject: (rejection) => this.emit({ event: 'rejected', ...rejection }) });
    await rpc.handle('join', (request, { peer }) => this.join(request, peer.toString()));
    await rpc.handle('heartbeat', (beat, { peer }) => this.heartbeat(beat, peer.toString()), { maxConcurrent: 64 });
    await rpc.handle('lease', (request, { peer }) => this.lease(request, peer.toString()), { maxConcurrent: 64 });
    await rpc.handle('leaseReport', (report, { peer }) => this.report(report, peer.toString()), { maxConcurrent: 64 });
    if (this.options.base) {
      // Any node admitted once (alive, or silent while fetching, or gone and coming back) may fetch the base.
      const admitted = (peer: string) => this.membership.get(peer) !== undefined;
      await serveBlobs({ rpc, source: this.options.base.blobs, admitted });
    }
    if (this.options.dataDir !== undefined) await this.keepCheckpoints(rpc, this.options.dataDir);
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
    this.addresses.set(peer, request.addrs, this.seenFrom(peer));
    // A node joining again restarted or was declared dead: whatever it held is not coming back.
    const released = this.leases.release(peer);
    this.emit({ event: type, node: peer, cores: request.cores, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes, addrs: [...request.addrs], releasedBatchIds: released });
    this.announcePlan();
    const alive = this.membership.alive().length;
    if (!this.started && alive >= this.options.job.expectedNodes) {
      this.started = true;
      this.emit({ event: 'started', nodes: alive });
    }
    return {
      admitted: true, version: PROTOCOL_VERSION, job: this.options.job, tokenizer: this.tokenizerJson, ...this.signedPlan(plan, peer),
      heartbeatMs: this.options.heartbeatMs, completedBatches: this.leases.completed, ...(this.base ? { base: this.base } : {}),
    };
  }

  private heartbeat(beat: Heartbeat, peer: string): HeartbeatReply {
    this.checkJob(beat.jobId, peer, 'heartbeat');
    const { jobId: _, addrs: __, ...stats } = beat;
    let alive: boolean;
    try {
      alive = this.membership.heartbeat(peer, stats);
    } catch (err) {
      throw this.refusal(peer, 'heartbeat', (err as Error).message);
    }
    if (!alive) return { accepted: false, reason: 'rejoin', stop: this.done };
    // networking: a node's addresses change (a relay reservation); every node then gets the plan again.
    if (beat.addrs) this.addresses.set(peer, beat.addrs.filter((addr) => advertises(addr, peer)), this.seenFrom(peer));
    const plan = this.planner.current!;
    const send = plan.version > beat.planVersion || this.addresses.changedFor(peer);
    return { accepted: true, ...(send ? this.signedPlan(plan, peer) : {}), stop: this.done };
  }

  private lease(request: LeaseRequest, peer: string): LeaseGrant {
    this.checkJob(request.jobId, peer, 'lease');
    if (this.membership.get(peer)?.status !== 'alive') throw this.refusal(peer, 'lease', 'not an admitted live node of the job: join first');
    const planVersion = this.planner.current?.version ?? 0;
    const grant = this.started ? this.leases.lease(peer, request.maxBatches) : undefined;
    if (grant === undefined) {
      return { jobId: request.jobId, leaseId: 0, batchIds: [], deadline: this.options.now(), done: this.done, planVersion };
    }
    return { jobId: request.jobId, ...grant, done: false, planVersion };
  }

  private report(report: LeaseReport, peer: string): Ack {
    this.checkJob(report.jobId, peer, 'leaseReport');
    if (this.membership.get(peer) === undefined) throw this.refusal(peer, 'leaseReport', 'not a node of the job: join first');
    const { completed, epoch, problems } = this.leases.report(peer, report.leaseId, report.completedBatchIds);
    if (completed > 0) this.progressed(epoch);
    if (report.leaving) {
      if (this.membership.leave(peer)) this.removed([peer], 'left');
      else this.leases.release(peer);
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
    for (const { nodeId, leaseId, batchIds } of this.leases.expire()) this.emit({ event: 'expired', node: nodeId, leaseId, batchIds });
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

  /** The plan as sent; to a node (`receiver`), with only the peer addresses it can use. */
  private wirePlan(plan: ShardPlan, receiver?: string): Plan {
    const addrs = (peerId: string) => (receiver === undefined ? this.addresses.get(peerId) ?? [] : this.addresses.usableBy(receiver, peerId));
    return {
      version: plan.version,
      experts: plan.experts.map(({ layer, expert, holders }) => ({ layer, expert, holders: [...holders] })),
      peers: [...plan.nodes.keys()].map((peerId) => ({ peerId, addrs: addrs(peerId) })),
      ...(plan.degraded ? { degraded: truncate(plan.degraded.reason) } : {}),
    };
  }

  /** Signed afresh each time: a node's addresses may change without a new plan version (it rejoined from elsewhere). */
  private signedPlan(shards: ShardPlan, receiver: string): { plan: Plan; planSignature: Uint8Array } {
    const plan = this.wirePlan(shards, receiver);
    return { plan, planSignature: signSync(this.privateKey, planSigningBytes(this.options.job.jobId, plan)) };
  }

  /** Nodes that left or died: their batches go back to the pool, and one re-plan moves their experts. */
  private removed(nodeIds: string[], type: 'left' | 'died'): void {
    if (nodeIds.length === 0) return;
    for (const nodeId of nodeIds) this.emit({ event: type, node: nodeId, releasedBatchIds: this.leases.release(nodeId) });
    this.replan();
    this.announcePlan();
  }

  /** After completions in `epoch`: progress, and the end of the job (completions stop once it is done, so this comes once). */
  private progressed(epoch: number): void {
    const { completed, totalBatches: total } = this.leases;
    this.emit({ event: 'progress', completed, total, epoch, counters: this.leases.stats });
    if (!this.leases.done) {
      this.checkpoints?.progressed(completed);
      return;
    }
    this.emit({ event: 'done', completed, total });
    // Nodes keep serving their state until the final checkpoint is gathered: only then does done reach them.
    void this.checkpoints?.finish(completed).then(() => { this.resultWritten = true; });
  }

  /**
   * Checkpoints under dataDir: gathered from one live holder per group, and served back over the
   * `state` protocol to admitted nodes, the last source a node tries for an expert nobody alive holds.
   */
  private async keepCheckpoints(rpc: Rpc, dataDir: string): Promise<void> {
    const { job } = this.options;
    const alive = (peer: string) => this.membership.get(peer)?.status === 'alive';
    const checkpoints = await JobCheckpoints.open({
      rpc, dataDir, job, config: this.plannerOptions.config, tokenizerJson: this.tokenizerJson,
      ...(this.options.base ? { baseModel: this.options.base.name } : {}),
      every: bounded('checkpointEvery', this.options.checkpointEvery ?? 10, 1, 1_000_000),
      keep: bounded('keepCheckpoints', this.options.keepCheckpoints ?? 3, 1, 1000),
      holders: () => {
        const plan = this.planner.current;
        if (!plan) return [];
        const experts = plan.experts.map(({ layer, expert, holders }) => ({
          group: groupId({ kind: 'expert', layer, expert }), holders: holders.filter(alive),
        }));
        return [{ group: TRUNK_GROUP, holders: [...plan.nodes.keys()].filter(alive) }, ...experts];
      },
      address: (peer) => this.addresses.get(peer)?.map((addr) => multiaddr(addr)),
      emit: (event) => this.emit(event),
    });
    await serveGroups(rpc, {
      jobId: job.jobId, admitted: async (peer) => alive(peer), lookup: (group) => checkpoints.lookup(group), round: () => checkpoints.round,
      onServe: (group, node) => this.emit({ event: 'restored', group, node, round: checkpoints.round }),
    });
    this.checkpoints = checkpoints;
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
