// One job on the swarm, from its start to its end: the shard planner, the data leases (global
// batch ids), the job's members (nodes admitted to it, alive or not), its checkpoints and result.
// The coordinator (server.ts) routes the job's requests here; every change that must survive a
// crash goes to the job store as it happens: a lease granted, a report's completed batches (with
// the lease change, one transaction), a new plan. A run made from the store after a restart takes
// all of that back, its members included: nodes carry on with their heartbeats as if nothing happened.
import { multiaddr } from '@multiformats/multiaddr';
import {
  comparePeerIds, groupId, JobError, PROTOCOL_VERSION, planSigningBytes, truncateReason, TRUNK_GROUP,
  type Ack, type BaseManifest, type Heartbeat, type HeartbeatReply, type JobBase, type JobSpec, type JoinRequest, type JoinResponse,
  type LeaseGrant, type LeaseReport, type LeaseRequest, type Plan,
} from '../proto/index.ts';
import type { ModelConfig } from '../src/model/config.ts';
import type { PrivateKey } from '@libp2p/interface';
import { RefusedError, serveGroups, signSync, type AddressView, type Rpc } from '../src/p2p/index.ts';
import { jobBatchesPerEpoch, jobConfig, jobFootprintSettings, type JobText } from '../src/train/job.ts';
import type { TextCorpus } from '../src/train/text-corpus.ts';
import type { Tokenizer } from '../src/train/tokenizers/index.ts';
import { joinBlobSources, serveBlobs, signManifest, type BlobSource } from '../src/weights/index.ts';
import { AddressBook, advertises } from './addresses.ts';
import { JobCheckpoints } from './checkpointer.ts';
import { jobOnText } from './corpus.ts';
import { ExpertWork } from './expert-work.ts';
import { JobLeases } from './leases.ts';
import { Membership, type NodeRecord } from './membership.ts';
import {
  planShards, shardPlan, ShardPlanner, storedPlan, type PlannerNode, type PlannerOptions, type ShardPlan, type StoredShardPlan,
} from './planner.ts';
import type { CoordinatorEvent, RequestName } from './server.ts';
import { SignedPlans, type SignedPlan } from './signed-plans.ts';
import type { JobRow, JobStore, StoredNode } from './store.ts';

/** What a job needs besides its spec: the tokenizer, and the checkpoint it starts from. */
export interface JobAssets {
  tokenizer: Tokenizer;
  /** The base's manifest (its config is the model's), where its blobs are read, and its name (for the adapter). */
  base?: { manifest: BaseManifest; blobs: BlobSource; name: string };
  /** The operator's own text, the job's documents: nodes fetch it as a verified blob (the spec's corpus stays its label). */
  corpus?: TextCorpus;
}

export interface RunSettings {
  heartbeatMs: number;
  nodeTimeoutMs: number;
  leaseMs: number;
  replication: number;
  /** Give every node every peer address, private ones included (see addresses.ts). */
  lan: boolean;
  /** How often to look at the rows routed to each node's experts, swapping experts to balance them (see balanceWork); 0: never. */
  balanceExpertsMs: number;
  /** Past this many heartbeats a second, their period stretches (see JobRun.heartbeatPeriodMs). */
  maxHeartbeatsPerSecond: number;
  /** With a data directory, checkpoints and the result go to <dataDir>/jobs/<jobId>/. */
  dataDir?: string;
  checkpointEvery: number;
  keepCheckpoints: number;
  now: () => number;
}

export interface RunComponents {
  rpc: Rpc;
  store: JobStore;
  /** Signs the plans and the base manifest. */
  privateKey: PrivateKey;
  emit: (event: DistributiveOmit<CoordinatorEvent, 'at'>) => void;
  /** Called once, when every batch is trained and (with a data directory) the result is written. */
  onDone: () => void;
  /** The IP a node's direct connection to the coordinator comes from (see AddressBook). */
  seenFrom: (peer: string) => string | undefined;
}

export const MAX_NODES = 4096;
/**
 * Joins this close to the previous ones share their re-plan (see JobRun.join): 200 ms, and 1 ms more per live node
 * (up to 2 s), since each version costs every node a delta and a signature check over the whole plan, O(nodes) each.
 */
const joinWindowMs = (nodes: number) => Math.min(2000, Math.max(200, nodes));
/** New routed rows per expert a look at the experts' work balance needs at least (see ExpertWork). */
const WORK_WINDOW_ROWS_PER_EXPERT = 256;

/**
 * The job turned into a planner, the epoch size and the tokenizer's wire form; any problem is a
 * JobError. These checks need the tokenizer and the corpus, so they live here, not in validateJob.
 */
export function prepareJob(job: JobSpec, tokenizer: Tokenizer, replication: number, base?: BaseManifest, text?: JobText) {
  try {
    const config = jobConfig(job, tokenizer, base?.config as ModelConfig | undefined);
    const plannerOptions: PlannerOptions = { config, precision: jobFootprintSettings(job), replication };
    const batchesPerEpoch = jobBatchesPerEpoch(job, tokenizer, text);
    if (batchesPerEpoch < 1) throw new Error('the training split has no micro-batch (too few tokens for batchSize × seqLen)');
    const tokenizerJson = JSON.stringify(tokenizer.toHuggingFace());
    if (tokenizerJson.length > 16 * 1024 * 1024) {
      throw new Error(`the tokenizer's JSON (${tokenizerJson.length} characters) exceeds the 16 MiB a join reply carries`);
    }
    planShards([], plannerOptions);
    return { plannerOptions, batchesPerEpoch, tokenizerJson };
  } catch (err) {
    if (err instanceof JobError) throw err;
    throw new JobError(`job ${job.jobId}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

export class JobRun {
  readonly job: JobSpec;
  readonly membership: Membership;
  readonly addresses: AddressBook;
  private readonly planner: ShardPlanner;
  readonly plannerOptions: PlannerOptions;
  readonly leases: JobLeases;
  private readonly tokenizerJson: string;
  /** The signed base sent in every join reply, if the job has one. */
  private readonly base?: JobBase;
  /** What admitted nodes may fetch from here: the base's tensors and the job's own text. */
  private readonly blobs?: BlobSource;
  private checkpoints?: JobCheckpoints;
  private announcedVersion = 0;
  /** The next lease id as last written to the store. */
  private persistedNextLeaseId?: number;
  private readonly plans: SignedPlans;
  private readonly work: ExpertWork;
  /** Admissible joiners waiting for their re-plan, which joinTimer runs; when the last ones were admitted (performance.now()). */
  private joiners: { request: JoinRequest; peer: string; admit: (reply: JoinResponse) => void; fail: (err: unknown) => void }[] = [];
  private joinTimer?: NodeJS.Timeout;
  private lastJoinsAt = -Infinity;
  /** The heartbeat period has been stretched (see heartbeatPeriodMs): heartbeat replies carry it. */
  private stretched = false;
  started = false;
  /** No leases are granted while paused; members keep their state and heartbeats. */
  private paused = false;
  private finished = false;

  private constructor(
    readonly row: JobRow,
    private readonly assets: JobAssets,
    private readonly settings: RunSettings,
    private readonly components: RunComponents,
  ) {
    const own = assets.corpus && jobOnText(row.spec, assets.corpus);
    this.job = own?.job ?? row.spec;
    const { plannerOptions, batchesPerEpoch, tokenizerJson } = prepareJob(
      this.job, assets.tokenizer, settings.replication, assets.base?.manifest, own?.text,
    );
    const blobSources = [assets.base?.blobs, own?.blobs].filter((source) => source !== undefined);
    if (blobSources.length > 0) this.blobs = joinBlobSources(blobSources);
    this.plannerOptions = plannerOptions;
    this.planner = new ShardPlanner(plannerOptions);
    const groups = plannerOptions.config.numLayers * plannerOptions.config.numExperts;
    this.work = new ExpertWork({
      groups, windowRows: groups * WORK_WINDOW_ROWS_PER_EXPERT, intervalMs: settings.balanceExpertsMs, now: settings.now,
    });
    this.tokenizerJson = tokenizerJson;
    const { leaseMs, now } = settings;
    this.leases = new JobLeases({ batchesPerEpoch, totalBatches: this.job.totalBatches, leaseMs, now });
    this.membership = new Membership({ timeoutMs: settings.nodeTimeoutMs, now });
    this.addresses = new AddressBook(settings.lan);
    this.plans = new SignedPlans((plan) => signSync(components.privateKey, planSigningBytes(this.id, plan)));
    if (assets.base) this.base = { manifest: assets.base.manifest, ...signManifest(components.privateKey, assets.base.manifest) };
  }

  /**
   * Starts (or, with state in the store, resumes) a job: its state taken back, its protocols served.
   * Throws JobError when the job cannot run (its corpus, tokenizer or base do not fit it).
   */
  static async open(row: JobRow, assets: JobAssets, settings: RunSettings, components: RunComponents): Promise<JobRun> {
    const run = new JobRun(row, assets, settings, components);
    run.restore();
    await run.serve();
    return run;
  }

  get id(): string {
    return this.job.jobId;
  }

  get plan(): ShardPlan | undefined {
    return this.planner.current;
  }

  /** Every batch is trained and, with a data directory, the final checkpoint and result are written. */
  get done(): boolean {
    return this.finished;
  }

  /**
   * Stops granting leases (batches under way are still reported) and, with a data directory, writes a
   * checkpoint: members keep their state, and if they are gone when the job resumes, it comes from there.
   */
  pause(): void {
    this.paused = true;
    void this.checkpoints?.now(this.leases.completed);
  }

  resume(): void {
    this.paused = false;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** The job is over before its end (cancelled): its nodes are told so at their next request. */
  end(): void {
    this.finished = true;
  }

  /** Hands the job's protocols back (the next job serves its own) once checkpoints under way are written. */
  async close(): Promise<void> {
    if (this.joinTimer !== undefined) {
      clearTimeout(this.joinTimer);
      this.admitJoiners();
    }
    await this.checkpoints?.idle();
    if (this.checkpoints) await this.components.rpc.unhandle('state');
    if (this.blobs) await this.components.rpc.unhandle('blobChunk');
  }

  // --- requests (synchronous, but for a join's wait for its re-plan: each runs to completion before the next) ----

  /**
   * Admits a node with the joiners of the same moment: joins within joinWindowMs of the last ones wait for
   * one re-plan together, so a crowd makes a plan version (planned, stored, signed, fetched by every node) per
   * window instead of one per node. A join after a quiet spell is planned at once.
   */
  join(request: JoinRequest, peer: string): JoinResponse | Promise<JoinResponse> {
    const { emit } = this.components;
    const refuse = (reason: string, retryMs?: number): JoinResponse => {
      emit({ event: 'refused', node: peer, request: 'join', reason });
      return { admitted: false, version: PROTOCOL_VERSION, reason: truncateReason(reason), ...(retryMs ? { retryMs } : {}) };
    };
    const wasAlive = this.membership.get(peer)?.status === 'alive';
    if (!wasAlive && this.membership.aliveCount + this.joiners.length >= MAX_NODES) {
      return refuse(`the swarm is full (${MAX_NODES} nodes)`, this.settings.nodeTimeoutMs);
    }
    const candidate: PlannerNode = { nodeId: peer, gemmGflops: request.gemmGflops, memoryBytes: request.memoryBytes, cores: request.cores };
    // Whether the planner admits a node depends on that node alone: ask it about this one.
    const refusal = planShards([candidate], this.plannerOptions).refused[0];
    if (refusal) {
      if (wasAlive && this.membership.leave(peer)) this.removed([peer], 'left'); // came back with too small a budget
      return refuse(refusal.reason);
    }
    return new Promise((admit, fail) => {
      this.joiners.push({ request, peer, admit, fail });
      const wait = this.lastJoinsAt + joinWindowMs(this.membership.aliveCount) - performance.now();
      this.joinTimer ??= setTimeout(() => this.admitJoiners(), Math.max(0, wait));
    });
  }

  /** The joiners waiting: members from now, one re-plan for all, each answered with the new plan in its address view. */
  private admitJoiners(): void {
    const { emit } = this.components;
    const joiners = this.joiners;
    this.joiners = [];
    this.joinTimer = undefined;
    this.lastJoinsAt = performance.now();
    try {
      const before = this.planner.current?.version;
      let moved = false;
      for (const { request, peer } of joiners) {
        const { cores, gemmGflops, memoryBytes } = request;
        const type = this.membership.join({ nodeId: peer, cores, gemmGflops, memoryBytes });
        moved = this.addresses.set(peer, request.addrs, this.components.seenFrom(peer)) || moved;
        // A node joining again restarted or was declared dead: whatever it held is not coming back.
        const released = this.leases.release(peer);
        emit({ event: type, node: peer, cores, gemmGflops, memoryBytes, addrs: [...request.addrs], releasedBatchIds: released });
      }
      let plan = this.replan();
      // Back from elsewhere with the plan unchanged: its new addresses make a new version (see signedPlan).
      if (moved && plan.version === before) plan = this.planner.bump()!;
      this.persistLeases();
      this.announcePlan();
      this.startIfReady();
      for (const { peer, admit } of joiners) {
        admit({
          admitted: true, version: PROTOCOL_VERSION, job: this.job, tokenizer: this.tokenizerJson, ...this.signedPlan(plan, peer),
          heartbeatMs: this.heartbeatPeriodMs(), completedBatches: this.leases.completed, ...(this.base ? { base: this.base } : {}),
        });
      }
    } catch (err) {
      for (const { fail } of joiners) fail(err);
    }
  }

  heartbeat(beat: Heartbeat, peer: string): HeartbeatReply {
    const { jobId: _, addrs: __, expertRows, ...stats } = beat;
    let alive: boolean;
    try {
      if (expertRows) this.work.add(expertRows);
      alive = this.membership.heartbeat(peer, stats);
    } catch (err) {
      throw this.refusal(peer, 'heartbeat', (err as Error).message);
    }
    if (!alive) return { accepted: false, reason: 'rejoin', stop: this.done };
    this.balanceWork();
    // A node's addresses changed (a relay reservation): a new plan version carries them to every node (see signedPlan).
    const addrs = beat.addrs?.filter((addr) => advertises(addr, peer));
    if (addrs && this.addresses.set(peer, addrs, this.components.seenFrom(peer))) {
      this.planner.bump();
      this.announcePlan();
    }
    const plan = this.planner.current!;
    const heartbeatMs = this.heartbeatPeriodMs();
    return {
      accepted: true, ...(this.stretched ? { heartbeatMs } : {}),
      ...(plan.version > beat.planVersion ? this.newerPlan(plan, peer, beat.planVersion) : {}), stop: this.done,
    };
  }

  /**
   * The period nodes are told to heartbeat at: the configured one, stretched (in steps of 100 ms) to keep the swarm's
   * heartbeats within maxHeartbeatsPerSecond, and never past a fifth of the node timeout, so a node misses four
   * beats before it is declared dead. Once it has stretched, every heartbeat reply carries it (a shrinking swarm's
   * nodes go back to the configured period); until then replies stay as they were.
   */
  private heartbeatPeriodMs(): number {
    const { heartbeatMs, nodeTimeoutMs, maxHeartbeatsPerSecond } = this.settings;
    const spread = Math.ceil((this.membership.aliveCount * 1000) / maxHeartbeatsPerSecond / 100) * 100;
    const period = Math.max(heartbeatMs, Math.min(spread, Math.floor(nodeTimeoutMs / 5)));
    if (period !== heartbeatMs) this.stretched = true;
    return period;
  }

  lease(request: LeaseRequest, peer: string): LeaseGrant {
    if (this.membership.get(peer)?.status !== 'alive') throw this.refusal(peer, 'lease', 'not an admitted live node of the job: join first');
    const planVersion = this.planner.current?.version ?? 0;
    const grant = this.started && !this.paused ? this.leases.lease(peer, request.maxBatches) : undefined;
    if (grant === undefined) {
      return { jobId: request.jobId, leaseId: 0, batchIds: [], deadline: this.settings.now(), done: this.done, planVersion };
    }
    this.persistLeases();
    return { jobId: request.jobId, ...grant, done: false, planVersion };
  }

  report(report: LeaseReport, peer: string): Ack {
    const { emit } = this.components;
    if (this.membership.get(peer) === undefined) throw this.refusal(peer, 'leaseReport', 'not a node of the job: join first');
    const { completedIds, epoch, problems } = this.leases.report(peer, report.leaseId, report.completedBatchIds);
    // The completions and the lease change are one transaction: a crash keeps both or neither.
    this.persistLeases(completedIds.length > 0 ? { nodeId: peer, batchIds: completedIds, at: this.settings.now() } : undefined);
    if (completedIds.length > 0) this.progressed(epoch);
    if (report.leaving) {
      if (this.membership.leave(peer)) this.removed([peer], 'left');
      else this.leases.release(peer);
      this.persistLeases();
    }
    if (problems.length === 0) return { accepted: true };
    const reason = truncateReason(problems.join('; '));
    emit({ event: 'refused', node: peer, request: 'leaseReport', reason });
    return { accepted: false, reason };
  }

  // --- timers ---------------------------------------------------------------------------------

  sweep(intervalMs: number): void {
    this.removed(this.membership.sweep(intervalMs).map((node) => node.nodeId), 'died');
  }

  expire(): void {
    const expired = this.leases.expire();
    for (const { nodeId, leaseId, batchIds } of expired) this.components.emit({ event: 'expired', node: nodeId, leaseId, batchIds });
    if (expired.length > 0) this.persistLeases();
  }

  // --- helpers --------------------------------------------------------------------------------

  /** A job that ran before a restart: its leases, completions, plan and members, as the store kept them. */
  private restore(): void {
    const { store } = this.components;
    this.leases.restore(store.completed(this.id), store.leases(this.id), this.row.nextLeaseId);
    const stored = store.plan<StoredShardPlan>(this.id);
    if (!stored) return;
    this.planner.restore(shardPlan(stored.plan));
    this.announcedVersion = stored.version;
    const known = new Map<string, StoredNode>(store.nodes().map((node) => [node.nodeId, node]));
    // Members are taken back as alive: each has one node timeout to show up again, as after any silence.
    for (const nodeId of stored.members) {
      const node = known.get(nodeId);
      if (!node) continue;
      this.membership.join({ nodeId, cores: node.cores, gemmGflops: node.gemmGflops, memoryBytes: node.memoryBytes });
      this.addresses.set(nodeId, node.addrs, undefined);
    }
    this.started = this.leases.completed > 0 || this.membership.alive().length >= this.job.expectedNodes;
  }

  private async serve(): Promise<void> {
    const { rpc } = this.components;
    if (this.blobs) {
      // Any node admitted once (alive, or silent while fetching, or gone and coming back) may fetch the base and the text.
      const admitted = (peer: string) => this.membership.get(peer) !== undefined;
      await serveBlobs({ rpc, source: this.blobs, admitted });
    }
    if (this.settings.dataDir !== undefined) await this.keepCheckpoints(this.settings.dataDir);
    if (this.leases.done) this.progressed(this.leases.epoch); // stopped between the last report and the result
  }

  private startIfReady(): void {
    const alive = this.membership.aliveCount;
    if (this.started || alive < this.job.expectedNodes) return;
    this.started = true;
    this.components.emit({ event: 'started', nodes: alive });
  }

  /** Writes the lease changes since the last call (and `completed`, in the same transaction): only leases that changed. */
  private persistLeases(completed?: { nodeId: string; batchIds: number[]; at: number }): void {
    const leases = this.leases.takeChanges();
    const { nextLeaseId } = this.leases;
    if (!completed && leases.length === 0 && nextLeaseId === this.persistedNextLeaseId) return;
    this.persistedNextLeaseId = nextLeaseId;
    this.components.store.updateLeases(this.id, { ...(completed ? { completed } : {}), leases, nextLeaseId });
  }

  /** Plans for the live nodes; with `work`, one that also balances the experts' work (a new version only if it moved any). */
  private replan(work?: ArrayLike<number>): ShardPlan {
    const nodes = this.membership.alive();
    return this.planner.plan(nodes.map(({ nodeId, gemmGflops, memoryBytes, cores }) => ({ nodeId, gemmGflops, memoryBytes, cores })), work);
  }

  /** When a look at the routed rows is due (see ExpertWork), swaps experts between nodes doing far more and far less than their share. */
  private balanceWork(): void {
    if (this.settings.balanceExpertsMs === 0) return;
    const work = this.work.take();
    // Joiners wait for their own re-plan; once every batch is trained moving experts gains nothing.
    if (!work || !this.planner.current || this.joiners.length > 0 || this.leases.done) return;
    this.replan(work);
    this.announcePlan();
  }

  private announcePlan(): void {
    const plan = this.planner.current;
    if (!plan || plan.version === this.announcedVersion) return;
    this.announcedVersion = plan.version;
    // Once every batch is trained, nodes leaving do not change where the job's experts were: the store keeps that.
    if (!this.leases.done) {
      this.components.store.savePlan(this.id, { version: plan.version, plan: storedPlan(plan), members: [...plan.nodes.keys()] });
    }
    this.components.emit({
      event: 'plan',
      version: plan.version,
      holders: plan.experts.map(({ layer, expert, holders }) => ({ layer, expert, holders: [...holders] })),
      ...(plan.degraded ? { degraded: plan.degraded.reason } : {}),
      moves: { added: plan.diff.added.map((m) => ({ ...m })), removed: plan.diff.removed.map((m) => ({ ...m })) },
      ...(plan.balanced ? { balanced: { ...plan.balanced } } : {}),
    });
  }

  /**
   * The plan as sent, peers in the planner's order (comparePeerIds) as a plan rebuilt from a delta has them;
   * to the nodes of an address view, with only the peer addresses they can use.
   */
  wirePlan(plan: ShardPlan, view?: AddressView): Plan {
    const addrs = (peerId: string) => (view === undefined ? this.addresses.get(peerId) ?? [] : this.addresses.usableIn(view, peerId));
    const handover = new Map<string, string[]>();
    for (const { layer, expert, node } of plan.diff.removed) {
      const key = `${layer}.${expert}`;
      if (plan.nodes.has(node)) handover.set(key, [...(handover.get(key) ?? []), node].sort(comparePeerIds));
    }
    return {
      version: plan.version,
      experts: plan.experts.map(({ layer, expert, holders }) => {
        const givers = handover.get(`${layer}.${expert}`);
        return { layer, expert, holders: [...holders], ...(givers ? { handover: givers } : {}) };
      }),
      peers: [...plan.nodes.keys()].map((peerId) => ({ peerId, addrs: addrs(peerId) })),
      ...(plan.degraded ? { degraded: truncateReason(plan.degraded.reason) } : {}),
    };
  }

  /**
   * The plan for a node, made and signed once per version and address view: any change of addresses
   * makes a new version (join, heartbeat), so a version's wire form for a view never changes.
   */
  private signedPlan(shards: ShardPlan, receiver: string): SignedPlan {
    const view = this.addresses.view(receiver);
    return this.plans.signed(receiver, shards.version, view.key, () => this.wirePlan(shards, view));
  }

  /** For a node on plan `known`: the changes since, when the plan it was sent is still kept, else the whole plan. */
  private newerPlan(shards: ShardPlan, receiver: string, known: number): Pick<HeartbeatReply, 'plan' | 'planDelta' | 'planSignature'> {
    const held = this.plans.held(receiver, known);
    const { plan, planSignature } = this.signedPlan(shards, receiver);
    return held ? { planDelta: this.plans.delta(held, plan), planSignature } : { plan, planSignature };
  }

  /** Nodes that left or died: their batches go back to the pool, and one re-plan moves their experts. */
  private removed(nodeIds: string[], type: 'left' | 'died'): void {
    if (nodeIds.length === 0) return;
    for (const nodeId of nodeIds) this.components.emit({ event: type, node: nodeId, releasedBatchIds: this.leases.release(nodeId) });
    this.persistLeases();
    this.replan();
    this.announcePlan();
  }

  /** After completions in `epoch`: progress, and the end of the job (completions stop once it is done, so this comes once). */
  private progressed(epoch: number): void {
    const { completed, totalBatches: total } = this.leases;
    const { emit } = this.components;
    emit({ event: 'progress', completed, total, epoch, counters: this.leases.stats });
    if (!this.leases.done) {
      this.checkpoints?.progressed(completed);
      return;
    }
    emit({ event: 'done', completed, total });
    // Nodes keep serving their state until the final checkpoint is gathered: only then does done reach them.
    const finish = this.checkpoints?.finish(completed) ?? Promise.resolve();
    void finish.then(() => {
      this.finished = true;
      this.components.onDone();
    });
  }

  /**
   * Checkpoints under dataDir: gathered from one live holder per group, and served back over the
   * `state` protocol to admitted nodes, the last source a node tries for an expert nobody alive holds.
   */
  private async keepCheckpoints(dataDir: string): Promise<void> {
    const { rpc, emit } = this.components;
    const alive = (peer: string) => this.membership.get(peer)?.status === 'alive';
    const checkpoints = await JobCheckpoints.open({
      rpc, dataDir, job: this.job, config: this.plannerOptions.config, tokenizerJson: this.tokenizerJson,
      ...(this.assets.base ? { baseModel: this.assets.base.name } : {}),
      every: this.settings.checkpointEvery,
      keep: this.settings.keepCheckpoints,
      holders: () => {
        const plan = this.planner.current;
        if (!plan) return [];
        const experts = plan.experts.map(({ layer, expert, holders }) => ({
          group: groupId({ kind: 'expert', layer, expert }), holders: holders.filter(alive),
        }));
        return [{ group: TRUNK_GROUP, holders: [...plan.nodes.keys()].filter(alive) }, ...experts];
      },
      address: (peer) => this.addresses.get(peer)?.map((addr) => multiaddr(addr)),
      emit,
    });
    await serveGroups(rpc, {
      jobId: this.id, admitted: async (peer) => alive(peer), lookup: (group) => checkpoints.lookup(group), round: () => checkpoints.round,
      onServe: (group, node) => emit({ event: 'restored', group, node, round: checkpoints.round }),
    });
    this.checkpoints = checkpoints;
  }

  refusal(peer: string, request: RequestName, reason: string): RefusedError {
    this.components.emit({ event: 'refused', node: peer, request, reason });
    return new RefusedError(reason);
  }

  /** The members with their addresses and the experts the current plan gives them. */
  members(): (NodeRecord & { addrs: string[]; experts: number })[] {
    const plan = this.planner.current;
    return this.membership.all().map((record) => ({
      ...record, addrs: this.addresses.get(record.nodeId) ?? [], experts: plan?.nodes.get(record.nodeId)?.length ?? 0,
    }));
  }
}

export type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
