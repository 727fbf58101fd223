// The coordinator process's swarm side: a libp2p host serving join, heartbeat, lease and
// lease-report, and the job queue. One job runs at a time (run.ts); nodes stay in the swarm across
// jobs: a node of no job is idle and asks to join again until the next one starts. The queue and
// each job's progress live in the job store (store.ts), so a restarted coordinator carries on with
// the job it was running. Given one `job`, the coordinator serves just that one and then closes the
// swarm (its nodes leave). Nodes are identified by the libp2p peer id of their connection, never
// by what a message says. Everything that happens is reported as a structured event.
import '../src/p2p/polyfill.ts'; // before any libp2p import
import {
  msgpackCodec, PROTOCOL_VERSION, truncateReason,
  type Ack, type BaseManifest, type Heartbeat, type HeartbeatReply, type JobSpec, type JoinRequest, type JoinResponse,
  type LeaseGrant, type LeaseReport, type LeaseRequest, type Plan, type ProtocolName,
} from '../proto/index.ts';
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { connectionIp, createHost, identityKey, RefusedError, Rpc, type Host, type Rejection } from '../src/p2p/index.ts';
import type { TextCorpus } from '../src/train/text-corpus.ts';
import type { Tokenizer } from '../src/train/tokenizers/index.ts';
import type { BlobSource } from '../src/weights/index.ts';
import type { MetricPoint } from './api/service.ts';
import type { CheckpointEvent } from './checkpointer.ts';
import type { LeaseCounters } from './leases.ts';
import type { NodeRecord, NodeStats } from './membership.ts';
import type { DroppedReplica, ExpertHolders, NewReplica } from './planner.ts';
import { jobOnText } from './corpus.ts';
import { JobRun, MAX_NODES, prepareJob, type DistributiveOmit, type JobAssets, type RunSettings } from './run.ts';
import { JobStore, type JobRow } from './store.ts';
import { advertises } from './addresses.ts';

export interface CoordinatorOptions {
  /** Serve this one job, then close the swarm (its nodes leave); without it the coordinator runs the store's queue. */
  job?: JobSpec;
  /** With `job`: its tokenizer. */
  tokenizer?: Tokenizer;
  /**
   * With `job`: the checkpoint it starts from (src/weights buildManifest of a Hugging Face folder): the job's
   * model config is the base's, nodes get the manifest signed, and admitted nodes fetch its blobs from here.
   */
  base?: { manifest: BaseManifest; blobs: BlobSource; name: string };
  /** With `job`: the operator's own text as its documents (src/train/text-corpus.ts), sent to nodes as a verified blob. */
  corpus?: TextCorpus;
  /** Without `job`: the tokenizer and base of a queued job, read when it starts (a JobError fails the job). */
  assets?: (job: JobRow) => Promise<JobAssets>;
  /** The job queue and every job's progress (default: in memory, gone with the process). */
  store?: JobStore;
  /** Multiaddrs to listen on (default: an ephemeral TCP port on 127.0.0.1). */
  listen?: string[];
  /** Multiaddrs to advertise besides the listening ones (a public address forwarded to the coordinator). */
  announce?: string[];
  /** Give every node every peer address, private ones included (a swarm on one routed private network). */
  lan?: boolean;
  /** Serve as a circuit relay for the running job's live nodes (those behind NATs are reached through it). Default true. */
  relay?: boolean;
  /** The coordinator's libp2p identity, created on first use. */
  keyFile?: string;
  /** Shared secret a node must present to join; '' admits anyone. */
  joinToken: string;
  /** How often nodes heartbeat (sent to them on join). Default 1000. */
  heartbeatMs?: number;
  /**
   * Heartbeats served per second at most: past this many nodes their period stretches (up to a fifth of nodeTimeoutMs).
   * Default 400: each costs ~1 ms of CPU in libp2p alone, so a thousand nodes beat every 2.5 s and the coordinator stays under a core.
   */
  maxHeartbeatsPerSecond?: number;
  /** A node silent for longer is dead: its leases go back to the pool and its experts elsewhere. Default max(15000, 5 heartbeats). */
  nodeTimeoutMs?: number;
  /** Deadline of a lease. Default 30000. */
  leaseMs?: number;
  /** Nodes per expert. Default 2. */
  replication?: number;
  /**
   * How often to look at the rows routed to each node's experts, swapping experts between nodes when one node's are far over
   * its share (see planner.ts). Default 10000; 0: never.
   */
  balanceExpertsMs?: number;
  /** The coordinator's data directory: with it, jobs are checkpointed and their results written under <dataDir>/jobs/<jobId>/. */
  dataDir?: string;
  /** Checkpoint every this many averaging rounds (and at the end). Default 10. */
  checkpointEvery?: number;
  /** Checkpoints kept on disk. Default 3. */
  keepCheckpoints?: number;
  /** How often the running job's metrics are sampled into the store. Default 2000. */
  metricsMs?: number;
  onEvent?: (event: CoordinatorEvent) => void;
  /** The clock (ms since the Unix epoch) for liveness and lease deadlines; tests drive it by hand. */
  now?: () => number;
}

export type RequestName = Extract<ProtocolName, 'join' | 'heartbeat' | 'lease' | 'leaseReport'>;

/** Everything the coordinator reports, told apart by `event`. Batch ids are global; `at` is the coordinator's clock. */
export type CoordinatorEvent = { at: number } & (
  | { event: 'listening'; peerId: string; addrs: string[] }
  /** A job changed state (queued, running, paused, done, failed, cancelled). */
  | { event: 'job'; jobId: string; state: JobRow['state']; reason?: string }
  | ({ event: 'joined' } & JoinedNode)
  /** Joined again (restarted, or back after being declared dead): batches it held went back to the pool. */
  | ({ event: 'rejoined' } & JoinedNode)
  | { event: 'left'; node: string; releasedBatchIds: number[] }
  | { event: 'died'; node: string; releasedBatchIds: number[] }
  /** A request the coordinator turned down (join refusals, unadmitted peers, rejected reports). */
  | { event: 'refused'; node: string; request: RequestName; reason: string }
  /**
   * A new plan version: holders of every expert, replicas added (with a holder to copy from) and removed; `balanced` when
   * it swapped experts for their work (the busiest node's work over its share, before and after).
   */
  | {
    event: 'plan'; version: number; holders: ExpertHolders[]; degraded?: string; moves: { added: NewReplica[]; removed: DroppedReplica[] };
    balanced?: { before: number; after: number };
  }
  /** expectedNodes are alive: leases are granted from now on. */
  | { event: 'started'; nodes: number }
  | { event: 'expired'; node: string; leaseId: number; batchIds: number[] }
  | { event: 'progress'; completed: number; total: number; epoch: number; counters: LeaseCounters }
  | { event: 'done'; completed: number; total: number }
  | { event: 'metrics'; jobId: string; point: MetricPoint }
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

/** A node of the swarm as last heard from, whether or not it is in a job. */
export interface SwarmNode {
  nodeId: string;
  cores: number;
  gemmGflops: number;
  memoryBytes: number;
  addrs: string[];
  firstSeen: number;
  lastSeen: number;
  /** The last heartbeat's stats, and the job it was for. */
  stats?: NodeStats;
  jobId?: string;
}

export interface CoordinatorStatus {
  peerId: string;
  addrs: string[];
  /** The job running, or the last one ('' before any). */
  jobId: string;
  started: boolean;
  done: boolean;
  /** Every member of that job (status alive, dead or left), with its last heartbeat stats and experts held. */
  nodes: (NodeRecord & { addrs: string[]; experts: number })[];
  plan: Plan | null;
  leases: { epoch: number; batchesPerEpoch: number; outstanding: number; counters: LeaseCounters };
  completed: number;
  total: number;
}

function bounded(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(`coordinator: ${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/**
 * libp2p's defaults (300 connections, 5 new ones a second from one address, 10 handshakes at once) would stop a
 * swarm at ~300 nodes and let a crowd behind one address join at 5 a second: room for MAX_NODES and their joins.
 */
const CONNECTIONS = { maxConnections: MAX_NODES + 256, inboundConnectionThreshold: 100, maxIncomingPendingConnections: 128 };
/** Heartbeats and leases served at once: small messages (at most 16 KiB each), from every node about once a heartbeat. */
const SMALL_REQUESTS = { maxConcurrent: 512 };
/** Joins served at once: a crowd's joins wait together for their re-plan (JobRun.join), so room for a crowd's worth. */
const JOINS = { maxConcurrent: 512 };

const mean = (values: number[]) => (values.length === 0 ? undefined : values.reduce((a, b) => a + b, 0) / values.length);
const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

export class CoordinatorServer {
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly seen = new Map<string, SwarmNode>();
  private run?: JobRun;
  /** A job being opened: no second one starts meanwhile. */
  private scheduling?: Promise<void>;
  private stopped = false;

  private constructor(
    private readonly host: Host,
    private readonly rpc: Rpc,
    readonly store: JobStore,
    private readonly privateKey: PrivateKey,
    private readonly options: CoordinatorOptions & { settings: RunSettings; metricsMs: number },
  ) {}

  /** How often liveness is checked: twice per heartbeat period. */
  private get sweepIntervalMs(): number {
    return this.options.settings.heartbeatMs / 2;
  }

  /** Checks the settings (and a given job against its tokenizer and corpus), starts the host, serves the swarm and starts the queue. */
  static async start(options: CoordinatorOptions): Promise<CoordinatorServer> {
    const heartbeatMs = bounded('heartbeatMs', options.heartbeatMs ?? 1000, 100, 3_600_000);
    const nodeTimeoutMs = bounded('nodeTimeoutMs', options.nodeTimeoutMs ?? Math.max(15_000, 5 * heartbeatMs), 1, Number.MAX_SAFE_INTEGER);
    if (nodeTimeoutMs <= heartbeatMs) {
      throw new RangeError(`coordinator: nodeTimeoutMs (${nodeTimeoutMs}) must exceed heartbeatMs (${heartbeatMs}), or every node dies between heartbeats`);
    }
    const settings: RunSettings = {
      heartbeatMs, nodeTimeoutMs, now: options.now ?? Date.now,
      leaseMs: bounded('leaseMs', options.leaseMs ?? 30_000, 4, Number.MAX_SAFE_INTEGER),
      replication: bounded('replication', options.replication ?? 2, 1, 256),
      lan: options.lan ?? false,
      balanceExpertsMs: bounded('balanceExpertsMs', options.balanceExpertsMs ?? 10_000, 0, Number.MAX_SAFE_INTEGER),
      maxHeartbeatsPerSecond: bounded('maxHeartbeatsPerSecond', options.maxHeartbeatsPerSecond ?? 400, 1, 1_000_000),
      checkpointEvery: bounded('checkpointEvery', options.checkpointEvery ?? 10, 1, 1_000_000),
      keepCheckpoints: bounded('keepCheckpoints', options.keepCheckpoints ?? 3, 1, 1000),
      ...(options.dataDir === undefined ? {} : { dataDir: options.dataDir }),
    };
    const metricsMs = bounded('metricsMs', options.metricsMs ?? 2000, 10, 3_600_000);
    if (typeof options.joinToken !== 'string') throw new TypeError('coordinator: joinToken must be a string (empty: an open swarm)');
    if (options.job) {
      if (!options.tokenizer) throw new TypeError('coordinator: a job needs its tokenizer');
      const own = options.corpus && jobOnText(options.job, options.corpus);
      prepareJob(own?.job ?? options.job, options.tokenizer, settings.replication, options.base?.manifest, own?.text); // a bad job fails the start
    } else if (!options.assets) {
      throw new TypeError('coordinator: give a job, or the assets of queued jobs');
    }
    const store = options.store ?? JobStore.open(':memory:');
    if (options.job && !store.job(options.job.jobId)) {
      store.addJob({ id: options.job.jobId, name: options.job.jobId, spec: options.job, createdAt: settings.now() });
    }
    // The identity key also signs every plan nodes receive.
    const privateKey = await identityKey(options.keyFile);
    // The relay admits the running job's live nodes (the server, made below, knows them).
    let made: CoordinatorServer | undefined;
    const relayServer = options.relay === false ? undefined : { mayReserve: (peer: string) => made?.isAlive(peer) === true };
    const host = await createHost({
      listen: options.listen, privateKey, ...(options.announce ? { announce: options.announce } : {}), relayServer,
      connectionManager: CONNECTIONS, pingConnections: false,
    });
    const server = new CoordinatorServer(host, new Rpc({
      transport: host, codec: msgpackCodec, onReject: (rejection) => made?.emit({ event: 'rejected', ...rejection }),
    }), store, privateKey, { ...options, settings, metricsMs });
    made = server;
    try {
      await server.serve();
    } catch (err) {
      await host.stop();
      throw err;
    }
    return server;
  }

  isAlive(peer: string): boolean {
    return this.current?.membership.get(peer)?.status === 'alive';
  }

  /** The IP a node's direct connection to the coordinator comes from (see AddressBook). */
  private seenFrom(peer: string): string | undefined {
    // The peer's own connections only: a look-up of all of them per heartbeat was a thousand nodes squared a second.
    const direct = this.host.getConnections(peerIdFromString(peer)).map((c) => connectionIp(c.remoteAddr));
    return direct.find((ip) => ip !== undefined);
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

  /** The one job of a one-job coordinator is over (trained, and with a data directory, its result written). */
  get done(): boolean {
    return this.options.job !== undefined && this.store.job(this.options.job.jobId)?.state !== 'running';
  }

  /** The job holding the swarm, if any. */
  get current(): JobRun | undefined {
    return this.run && !this.run.done ? this.run : undefined;
  }

  /** Every node heard from since the start, newest first. */
  swarmNodes(): SwarmNode[] {
    return [...this.seen.values()].sort((a, b) => b.lastSeen - a.lastSeen).map((node) => ({ ...node }));
  }

  status(): CoordinatorStatus {
    const run = this.run;
    const plan = run?.plan;
    return {
      peerId: this.peerId,
      addrs: this.addrs,
      jobId: run?.id ?? '',
      started: run?.started ?? false,
      done: run?.done ?? false,
      nodes: run?.members() ?? [],
      plan: plan && run ? run.wirePlan(plan) : null,
      leases: run
        ? { epoch: run.leases.epoch, batchesPerEpoch: run.leases.batchesPerEpoch, outstanding: run.leases.leased, counters: run.leases.stats }
        : { epoch: 0, batchesPerEpoch: 0, outstanding: 0, counters: { issued: 0, reissued: 0, completed: 0, rejected: 0, expired: 0, released: 0 } },
      completed: run?.leases.completed ?? 0,
      total: run?.job.totalBatches ?? 0,
    };
  }

  // --- the queue ------------------------------------------------------------------------------

  /** Starts the next job when none holds the swarm: the one a restart interrupted first, then the oldest queued. */
  schedule(): Promise<void> {
    if (this.scheduling || this.stopped || this.current) return this.scheduling ?? Promise.resolve();
    const next = this.store.activeJob() ?? this.store.nextQueued();
    if (!next || (this.options.job && next.id !== this.options.job.jobId)) return Promise.resolve();
    this.scheduling = this.open(next).finally(() => {
      this.scheduling = undefined;
    });
    return this.scheduling;
  }

  /** Stops granting the running job's leases; its nodes keep their state (and heartbeats) until it resumes. */
  pause(jobId: string): JobRow {
    const row = this.changeState(jobId, 'paused');
    if (this.run?.id === jobId) this.run.pause();
    return row;
  }

  resume(jobId: string): JobRow {
    const row = this.changeState(jobId, 'running');
    if (this.run?.id === jobId) this.run.resume();
    return row;
  }

  /** Ends a job early; its checkpoints stay. Its nodes are told it is over and look for the next job. */
  async cancel(jobId: string): Promise<JobRow> {
    const row = this.changeState(jobId, 'cancelled');
    if (this.run?.id === jobId) await this.endRun();
    return row;
  }

  private async open(row: JobRow): Promise<void> {
    const { settings } = this.options;
    try {
      const assets = this.options.job
        ? {
          tokenizer: this.options.tokenizer!, ...(this.options.base ? { base: this.options.base } : {}),
          ...(this.options.corpus ? { corpus: this.options.corpus } : {}),
        }
        : await this.options.assets!(row);
      if (row.state === 'queued') this.changeState(row.id, 'running');
      this.run = await JobRun.open(this.store.job(row.id)!, assets, settings, {
        rpc: this.rpc, store: this.store, privateKey: this.privateKey, seenFrom: (peer) => this.seenFrom(peer),
        emit: (event) => this.emit(event),
        onDone: () => void this.finished(row.id),
      });
      if (row.state === 'paused') this.run.pause();
    } catch (err) {
      this.changeState(row.id, 'failed', (err as Error).message);
      if (this.options.job) throw err; // the one job cannot run: the coordinator cannot start
      void this.schedule();
    }
  }

  private async finished(jobId: string): Promise<void> {
    this.sampleMetrics(); // the job's last sample, from the nodes' last heartbeats
    if (this.store.job(jobId)?.state === 'running') this.changeState(jobId, 'done');
    if (this.options.job) return; // one-job mode: the run stays to tell late nodes the job is over
    await this.endRun();
  }

  /** Closes the current run (its protocols, its checkpoints under way) and starts the next job. */
  private async endRun(): Promise<void> {
    const run = this.run;
    if (!run) return;
    run.end();
    await run.close();
    await this.schedule();
  }

  private changeState(jobId: string, to: JobRow['state'], reason?: string): JobRow {
    const row = this.store.transition(jobId, to, this.options.settings.now(), reason);
    this.emit({ event: 'job', jobId, state: to, ...(reason ? { reason: truncateReason(reason) } : {}) });
    return row;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.scheduling;
    if (this.run) await this.run.close();
    await this.host.stop();
  }

  private async serve(): Promise<void> {
    const { rpc } = this;
    await rpc.handle('join', (request, { peer }) => this.join(request, peer.toString()), JOINS);
    await rpc.handle('heartbeat', (beat, { peer }) => this.heartbeat(beat, peer.toString()), SMALL_REQUESTS);
    await rpc.handle('lease', (request, { peer }) => this.lease(request, peer.toString()), SMALL_REQUESTS);
    await rpc.handle('leaseReport', (report, { peer }) => this.report(report, peer.toString()), SMALL_REQUESTS);
    // The three above also on one stream per node: a fifth of a stream's CPU per request at both ends (bench/volunteers.ts).
    await rpc.handleChannel(['heartbeat', 'lease', 'leaseReport']);
    for (const node of this.store.nodes()) this.seen.set(node.nodeId, { ...node });
    this.emit({ event: 'listening', peerId: this.peerId, addrs: this.addrs });
    await this.schedule();
    this.timers.push(setInterval(() => this.current?.sweep(this.sweepIntervalMs), this.sweepIntervalMs));
    this.timers.push(setInterval(() => this.current?.expire(), this.options.settings.leaseMs / 4));
    this.timers.push(setInterval(() => this.sampleMetrics(), this.options.metricsMs));
  }

  // --- handlers (synchronous: each runs to completion before the next) ------------------------

  private async join(request: JoinRequest, peer: string): Promise<JoinResponse> {
    const refuse = (reason: string, more: { retryMs?: number; closed?: boolean } = {}): JoinResponse => {
      this.emit({ event: 'refused', node: peer, request: 'join', reason });
      return { admitted: false, version: PROTOCOL_VERSION, reason: truncateReason(reason), ...more };
    };
    if (this.options.joinToken !== '' && request.token !== this.options.joinToken) return refuse('wrong join token');
    if (request.nodeId !== peer) return refuse(`nodeId ${request.nodeId} is not the peer id of the connection (${peer})`);
    const foreign = request.addrs.find((addr) => !advertises(addr, peer));
    if (foreign !== undefined) return refuse(`address ${foreign} is not a multiaddr ending in /p2p/${peer}`);
    const at = this.options.settings.now();
    const node = { nodeId: peer, cores: request.cores, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes, addrs: [...request.addrs] };
    this.seen.set(peer, { ...node, firstSeen: this.seen.get(peer)?.firstSeen ?? at, lastSeen: at });
    this.store.saveNode({ ...node, lastSeen: at });
    const run = this.current;
    if (run) {
      const reply = await run.join(request, peer);
      // A node too small for this job may fit the next one: a swarm with a queue keeps it waiting.
      return reply.admitted || this.options.job ? reply : { ...reply, retryMs: this.idleRetryMs };
    }
    if (this.options.job && this.done) return refuse(`job ${this.options.job.jobId} is over: the swarm is closed`, { closed: true });
    return { admitted: false, version: PROTOCOL_VERSION, reason: 'no job is running: waiting for the next one', retryMs: this.idleRetryMs };
  }

  /** How long an idle node waits before asking again: two heartbeats. */
  private get idleRetryMs(): number {
    return 2 * this.options.settings.heartbeatMs;
  }

  private heartbeat(beat: Heartbeat, peer: string): HeartbeatReply {
    const known = this.seen.get(peer);
    const run = this.run?.id === beat.jobId ? this.run : undefined;
    if (!run) return { accepted: false, reason: `job ${beat.jobId} is not running here`, stop: true };
    const reply = run.heartbeat(beat, peer);
    if (known && reply.accepted) {
      const { jobId, addrs: _, ...stats } = beat;
      Object.assign(known, { lastSeen: this.options.settings.now(), stats, jobId });
    }
    return reply;
  }

  private lease(request: LeaseRequest, peer: string): LeaseGrant {
    const run = this.run?.id === request.jobId ? this.run : undefined;
    // A job that ended (cancelled, or finished and replaced): nothing more, and the node moves on.
    if (!run) return { jobId: request.jobId, leaseId: 0, batchIds: [], deadline: this.options.settings.now(), done: true, planVersion: 0 };
    return run.lease(request, peer);
  }

  private report(report: LeaseReport, peer: string): Ack {
    const run = this.run?.id === report.jobId ? this.run : undefined;
    if (!run) {
      if (report.completedBatchIds.length === 0) return { accepted: true };
      throw this.refusal(peer, 'leaseReport', `job ${report.jobId} is not running here: its batches are not counted`);
    }
    return run.report(report, peer);
  }

  /** One sample of the running job's metrics over its live members, kept in the store. */
  private sampleMetrics(): void {
    const run = this.run;
    if (!run || !run.started || this.store.job(run.id)?.state !== 'running') return;
    const stats = run.membership.alive().flatMap((node) => (node.stats ? [node.stats] : []));
    const loss = mean(stats.flatMap((s) => (s.loss === undefined ? [] : [s.loss])));
    const heldOut = mean(stats.flatMap((s) => (s.heldOut === undefined ? [] : [s.heldOut])));
    const point: MetricPoint = {
      at: this.options.settings.now(), completed: run.leases.completed, ...(loss === undefined ? {} : { loss }),
      ...(heldOut === undefined ? {} : { heldOut }),
      tokensPerSecond: sum(stats.map((s) => s.tokensPerSecond)), nodes: stats.length,
      bytesSent: sum(stats.map((s) => s.bytesSent)), bytesReceived: sum(stats.map((s) => s.bytesReceived)),
      refusedUpdates: sum(stats.map((s) => s.refusedUpdates ?? 0)), droppedExpertCalls: sum(stats.map((s) => s.droppedExpertCalls)),
      staleness: mean(stats.map((s) => s.staleness)) ?? 0,
      updateBytes: sum(stats.map((s) => s.updateBytes ?? 0)), updateRawBytes: sum(stats.map((s) => s.updateRawBytes ?? 0)),
    };
    this.store.addMetric(run.id, point);
    this.emit({ event: 'metrics', jobId: run.id, point });
  }

  private refusal(peer: string, request: RequestName, reason: string): RefusedError {
    this.emit({ event: 'refused', node: peer, request, reason });
    return new RefusedError(reason);
  }

  private emit(event: DistributiveOmit<CoordinatorEvent, 'at'>): void {
    try {
      this.options.onEvent?.({ ...event, at: this.options.settings.now() } as CoordinatorEvent);
    } catch (err) {
      console.error('[coordinator] event listener failed:', err);
    }
  }
}
