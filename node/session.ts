// One job on a volunteer node (daemon.ts joins the swarm and runs one session per job): builds the
// job's model with the trunk and the experts the plan gives this node, serves those experts (and its
// state, and averaging) to its peers, and trains on leased micro-batches until the job is over. Plan
// changes (a node joined, left or died) are applied between steps: experts given up are released (their
// last state still served a while, to the node they were moved to), new ones copied from a surviving
// holder or that node. A job with a base checkpoint: the frozen base of the groups held here comes from
// the blob store (fetched from peers or the coordinator, verified); only what training changes comes
// from holders. Everything that happens is reported through onEvent.
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  applyPlanDelta, groupId, parseGroupId, planSigningBytes, PROTOCOL_NAMES, TRUNK_GROUP,
  type ExpertGroup, type HeartbeatReply, type JobBase, type JobSpec, type JoinRequest, type JoinResponse, type Plan,
} from '../proto/index.ts';
import { createKernels, type Kernels } from '../src/kernels/index.ts';
import { expertOf, type F32Tensor } from '../src/model/config.ts';
import { checkpointingFor, footprint, nodeBytes, type Footprint } from '../src/model/footprint.ts';
import { Model } from '../src/model/model.ts';
import { fetchGroup, signedBy, type DialTarget, type Host, type Rpc } from '../src/p2p/index.ts';
import { RefusedError, RpcError } from '../src/p2p/errors.ts';
import { jobConfig, jobData, jobFootprintSettings, jobModelOptions, type JobText } from '../src/train/job.ts';
import { DEFAULT_ADAMW } from '../src/train/optimizer.ts';
import { tokenizerFromJson, type Tokenizer } from '../src/train/tokenizers/index.ts';
import { Trainer } from '../src/train/trainer.ts';
import { FetchError, ManifestError, type WeightSource } from '../src/weights/index.ts';
import { multiaddr } from '@multiformats/multiaddr';
import type { NodeEvent, NodeOptions } from './daemon.ts';
import { createAverager, type Averager, type AveragingFault } from './averaging/index.ts';
import { serveExperts, type ExpertServer } from './expert-server.ts';
import { expertPrecisions, SwarmRemoteExperts } from './experts.ts';
import { NodeBase } from './base.ts';
import { advertisedAddrs } from './links.ts';
import { fetchJobText } from './corpus.ts';
import { groupState, ReleasedGroups, serveState } from './state.ts';
import type { Traffic } from './traffic.ts';

export class JoinRefusedError extends Error {
  override name = 'JoinRefusedError';
}

/** The coordinator did not answer for longer than the node's patience (NodeOptions.giveUpAfterMs). */
export class CoordinatorUnreachableError extends RpcError {
  override name = 'CoordinatorUnreachableError';
}

/** A request the coordinator did not answer (down, restarting, the network, too busy right now), as opposed to one it refused. */
export const unanswered = (err: unknown): err is RpcError => err instanceof RpcError && !(err instanceof CoordinatorUnreachableError)
  && (!(err instanceof RefusedError) || err.reason === 'unreachable' || err.reason === 'busy');

/** What every session of a node shares: its host, identity, transport and the coordinator. */
export interface Volunteer {
  readonly options: NodeOptions;
  readonly host: Host;
  readonly rpc: Rpc;
  /** The coordinator's address; its peer id signs every plan (a plan it did not sign is ignored). */
  readonly coordinator: DialTarget;
  readonly coordinatorId: string;
  readonly gemmGflops: number;
  readonly traffic: Traffic;
  /** The join request this node sends. */
  joinRequest(): JoinRequest;
  /** A request to the coordinator: its failures are counted against the node's patience (see daemon.ts). */
  ask: Rpc['request'];
}

type Admitted = Extract<JoinResponse, { admitted: true }>;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const COORDINATOR_TIMEOUT_MS = 10_000;
const STATE_TIMEOUT_MS = 30_000;
const CATCH_UP_ROUNDS = 4;
const CATCH_UP_BACKOFF_MS = 1_000;
/** How long an expert given up is still served to its new holder: a joining one may first fetch a base for minutes. */
const HANDOVER_KEEP_MS = 10 * 60_000;
/** Held-out micro-batches a node evaluates before its first step and when it finishes. */
export const HELD_OUT_BATCHES = 8;
/** Held-out micro-batches of the evaluations along the way. */
const CURVE_BATCHES = 2;

export class JobSession {
  readonly self: string;
  private job!: JobSpec;
  private plan!: Plan;
  private pendingPlan?: Plan;
  private readonly released = new ReleasedGroups(HANDOVER_KEEP_MS);
  private readonly parsedPeers = new WeakMap<Plan, Map<string, DialTarget | undefined>>();
  private model?: Model;
  /** The job's base checkpoint, when it has one. */
  private base?: NodeBase;
  private trainer!: Trainer;
  private averager!: Averager;
  /** The transport to experts other nodes hold; the model runs the ones held here. */
  private experts!: SwarmRemoteExperts;
  private expertServer?: ExpertServer;
  /** The job's memory per part, and whether this node's model keeps only each layer's input (chosen at join). */
  private memory!: { footprint: Footprint; checkpointing: boolean };
  private heartbeatMs = 1000;
  private stopping = false;
  /** The leaving report is on its way (or the session closed): heartbeats end. */
  private gone = false;
  private done = false;
  private lastLoss?: number;
  private lastHeldOut?: number;
  private tokensPerSecond = 0;
  private heartbeat?: NodeJS.Timeout;
  private evaluatedBase = false;
  private heartbeating = false;
  /** A plan rebuilt from a delta did not check out: the next heartbeat asks for the whole plan. */
  private wantWholePlan = false;
  /** The routed rows (Model.routedRows) the coordinator has had, counted by this model. */
  private reportedRows?: { model: Model; rows: Float64Array };
  private readonly options: NodeOptions;
  private readonly rpc: Rpc;
  private readonly coordinator: DialTarget;
  private readonly coordinatorId: string;
  private readonly traffic: Traffic;

  private constructor(private readonly volunteer: Volunteer, private readonly kernels: Kernels) {
    this.self = volunteer.host.peerId.toString();
    ({ options: this.options, rpc: this.rpc, coordinator: this.coordinator, coordinatorId: this.coordinatorId, traffic: this.traffic } = volunteer);
  }

  /** The session of the job a join reply admitted this node to: its model built, its protocols served. */
  static async open(volunteer: Volunteer, reply: Admitted): Promise<JobSession> {
    const kernels = await createKernels({ threads: volunteer.options.threads ?? 1 });
    const session = new JobSession(volunteer, kernels);
    try {
      await session.setUp(reply);
    } catch (err) {
      await session.close();
      throw err;
    }
    return session;
  }

  private emit(event: NodeEvent): void {
    this.options.onEvent?.(event);
  }

  private log = (message: string) => this.emit({ event: 'log', message });

  /** Declared dead (or the coordinator restarted without us): join again and carry on with the new plan, or end the session. */
  private async rejoin(): Promise<void> {
    const reply = await this.volunteer.ask(this.coordinator, 'join', this.volunteer.joinRequest(), { timeout: COORDINATOR_TIMEOUT_MS });
    if (!reply.admitted || reply.job.jobId !== this.job.jobId || !this.signedPlan(reply.job.jobId, reply.plan, reply.planSignature)) {
      this.log(`rejoin: ${reply.admitted ? `the coordinator runs job ${reply.job.jobId} now` : reply.reason}`);
      this.done = true;
      return;
    }
    this.heartbeatMs = reply.heartbeatMs;
    this.pendingPlan = reply.plan;
  }

  private async setUp(reply: Admitted): Promise<void> {
    if (!this.signedPlan(reply.job.jobId, reply.plan, reply.planSignature)) {
      throw new JoinRefusedError(`the plan in the join reply is not signed by ${this.coordinatorId}`);
    }
    this.heartbeatMs = reply.heartbeatMs;
    this.job = reply.job;
    this.plan = reply.plan;
    const tokenizer = tokenizerFromJson(JSON.parse(reply.tokenizer));
    if (reply.base) await this.openBase(reply.base);
    const config = jobConfig(this.job, tokenizer, this.base?.config);
    // Who may call us and whom we average with follow the newest plan we know; which experts
    // this node computes follows the applied plan (the model changes only between steps).
    const directory = {
      holders: (layer: number, expert: number) => this.holders(layer, expert),
      address: (peer: string) => this.address(peer),
      admitted: (peer: string) => this.newestPlan().peers.some((p) => p.peerId === peer),
      members: (group: string) => (group === TRUNK_GROUP ? this.newestPlan().peers.map((p) => p.peerId) : this.groupHolders(group)),
    };
    this.experts = new SwarmRemoteExperts({ rpc: this.rpc, rows: this.kernels.rows, directory }, {
      jobId: this.job.jobId, self: this.self, hidden: config.hiddenSize, timeoutMs: this.job.expertTimeoutMs,
      ...expertPrecisions(this.job), log: this.log,
    });
    const hosted = this.hostedExperts(this.plan);
    this.memory = this.memoryFor(footprint(config, jobFootprintSettings(this.job)), hosted.size);
    if (this.base || this.job.corpusBlob) this.startHeartbeat(); // the fetch may outlast the coordinator's patience
    const text = this.job.corpusBlob ? await this.fetchText() : undefined; // the operator's own text
    const base = this.base ? await this.fetchBase([TRUNK_GROUP, ...hosted.keys()]) : undefined;
    const model = new Model(this.kernels, config, {
      ...jobModelOptions(this.job),
      checkpointing: this.memory.checkpointing,
      hosts: (layer, expert) => hosted.has(groupId({ kind: 'expert', layer, expert })),
      remote: this.experts,
    }, base);
    this.model = model;
    this.averager = createAverager({ rpc: this.rpc, directory, groups: () => this.groups(), passes: this.kernels.deltas }, {
      ...this.job.averaging, jobId: this.job.jobId, self: this.self, log: this.log,
      fetchState: (group, peer) => this.fetchFromAny([peer], group),
      ...(this.options.fault ? { fault: this.options.fault } : {}),
    });
    this.trainer = this.createTrainer(model, tokenizer, text);
    this.reportMemory(hosted.size);
    if (reply.completedBatches > 0) await this.catchUp(model, hosted);
    const servers = { rpc: this.rpc, kernels: this.kernels, experts: model.experts, directory, stats: this.experts.stats };
    this.expertServer = await serveExperts(servers, { jobId: this.job.jobId, hidden: config.hiddenSize });
    await this.averager.serve();
    // A peer unknown to our plan may have joined since: one heartbeat brings the newer plan. The
    // coordinator may ask too: it gathers checkpoints of the groups held here.
    const admittedNow = async (peer: string) =>
      peer === this.coordinatorId || directory.admitted(peer) || (await this.beat(), directory.admitted(peer));
    await serveState(this.rpc, model, this.released, admittedNow, this.job.jobId, () => this.step);
    this.emit({
      event: 'joined', node: this.self, jobId: this.job.jobId, experts: [...hosted], planVersion: this.plan.version,
      gemmGflops: this.volunteer.gemmGflops,
    });
  }

  /**
   * Whether this node keeps every layer's activations or checkpoints them for a share of `experts`, decided
   * from its budget as the planner decides (src/model/footprint.ts); a share that fits neither way is refused.
   */
  private memoryFor(fp: Footprint, experts: number): JobSession['memory'] {
    const { memoryBytes, threads = 1 } = this.options;
    const checkpointing = checkpointingFor(fp, memoryBytes, experts, threads);
    if (checkpointing === undefined) {
      const needed = nodeBytes(fp, experts, true, threads);
      const why = `${needed} bytes even with gradient checkpointing, more than its memory budget of ${memoryBytes} bytes`;
      throw new JoinRefusedError(`the plan gives this node ${experts} experts: ${why}`);
    }
    return { footprint: fp, checkpointing };
  }

  /**
   * The memory this node's model takes once built, against its budget: the heap's live bytes (weights,
   * optimizer, kernel scratch) plus what comes with the first step and the first calls (activations) and
   * what averaging keeps off the heap, both as predicted. Reported as a `memory` event; over the budget, logged.
   */
  private reportMemory(experts: number): void {
    const { footprint: fp, checkpointing } = this.memory;
    const { memoryBytes, threads = 1 } = this.options;
    const heapBytes = this.kernels.heap.allocatedBytes;
    const toCome = (checkpointing ? fp.checkpointedActivationBytes : fp.activationBytes) + experts * fp.expertCallBytes
      + fp.offHeap.trunkBytes + experts * fp.offHeap.expertBytes;
    const projectedBytes = heapBytes + toCome;
    const predictedBytes = nodeBytes(fp, experts, checkpointing, threads);
    this.emit({ event: 'memory', experts, checkpointing, budgetBytes: memoryBytes, predictedBytes, heapBytes, projectedBytes });
    if (projectedBytes > memoryBytes) {
      const share = `this node's share (${experts} experts) comes to ${projectedBytes} bytes`;
      this.log(`memory: built, ${share}, over its budget of ${memoryBytes} (predicted ${predictedBytes})`);
    }
  }

  /**
   * The trainer of this node's steps: one micro-batch per step on the job's schedule, whose
   * steps span the job's share of one node; the averager joins each step through the hooks.
   */
  private createTrainer(model: Model, tokenizer: Tokenizer, text?: JobText): Trainer {
    const { lr, minLr, warmupSteps, totalBatches, expectedNodes } = this.job;
    const data = jobData(this.job, tokenizer, text);
    return new Trainer(this.kernels, model, data.train, data.heldOut, tokenizer, {
      lr, minLr, warmupSteps, totalSteps: Math.ceil(totalBatches / expectedNodes), accumulation: 1, adamw: DEFAULT_ADAMW,
    }, {
      afterBackward: (step) => this.averager.afterBackward(step),
      afterUpdate: (step) => this.averager.afterUpdate(step),
    });
  }

  private get dataDir(): string {
    const { keyFile } = this.options;
    return this.options.dataDir ?? (keyFile ? join(dirname(keyFile), 'swarmtrain-data') : 'swarmtrain-data');
  }

  private admittedPeer = (peer: string): boolean => this.newestPlan().peers.some((p) => p.peerId === peer);

  /** The job's corpus blob from peers or the coordinator (with a base, the base's server already serves the same store). */
  private async fetchText(): Promise<JobText> {
    const components = { rpc: this.rpc, dataDir: this.dataDir, admitted: this.admittedPeer, serve: !this.base };
    const { text, summary } = await fetchJobText(this.job, this.weightSources(TRUNK_GROUP), components);
    this.emit({ event: 'corpus', ...summary });
    return text;
  }

  /** Checks the join reply's base against the coordinator's key and serves the blob store to admitted peers. */
  private async openBase(base: JobBase): Promise<void> {
    try {
      this.base = await NodeBase.open(base, this.coordinatorId, { rpc: this.rpc, dataDir: this.dataDir, admitted: this.admittedPeer });
    } catch (err) {
      if (err instanceof ManifestError) throw new JoinRefusedError(`the job's base: ${err.message}`);
      throw err;
    }
  }

  /**
   * The base tensors of `groups`, from the store or fetched into it; reported as a `weights` event. Sources
   * may refuse for a while (the coordinator just declared us dead, a holder left): a few rounds are tried,
   * each from the newest plan, and what was verified stays in the store for the next one.
   */
  private async fetchBase(groups: string[]): Promise<Iterable<[string, F32Tensor]>> {
    for (let round = 1; ; round++) {
      try {
        const { tensors, summary } = await this.base!.fetch(groups, (group) => this.weightSources(group));
        this.emit({ event: 'weights', ...summary });
        return tensors;
      } catch (err) {
        if (!(err instanceof FetchError) || round === CATCH_UP_ROUNDS) throw err;
        this.log(`base weights of ${groups.join(', ')} (attempt ${round}): ${err.message}`);
        await sleep(CATCH_UP_BACKOFF_MS * round);
        await this.beat();
      }
    }
  }

  /** Where a group's blobs may be: the other nodes that hold it (the trunk: every node), then the coordinator. */
  private weightSources(group: string): WeightSource[] {
    const plan = this.newestPlan();
    const holders = group === TRUNK_GROUP ? plan.peers.map((p) => p.peerId) : this.groupHolders(group);
    const peers = plan.peers.filter((p) => p.peerId !== this.self && p.addrs.length > 0 && holders.includes(p.peerId));
    return [...peers.map((p) => ({ peer: p.peerId, addrs: p.addrs })), { peer: this.coordinatorId, addrs: [this.options.join] }];
  }

  /** What a node takes from a holder's state: with a base, only what training changes (the frozen base comes from the store). */
  private fromHolder = (name: string): boolean => !this.base || this.job.mode === 'full' || this.model!.weights.loraShapes.has(name);

  /** Local optimizer steps taken. */
  get step(): number {
    return this.trainer.step;
  }

  /** A node joining a running job: the trunk and its experts come from peers that hold them. */
  private async catchUp(model: Model, hosted: Map<string, ExpertGroup>): Promise<void> {
    const trunk = await this.fetchWhileJoining(() => this.newestPlan().peers.map((p) => p.peerId), TRUNK_GROUP);
    if (trunk) model.params.load(trunk);
    let copied = 0;
    for (const [group, { layer, expert }] of hosted) {
      const state = await this.fetchWhileJoining(() => this.copySources(layer, expert, this.newestPlan(), this.plan), group);
      if (state) model.params.load(new Map([...state].filter(([name]) => model.params.has(name))));
      if (state) copied++;
    }
    this.emit({ event: 'caught-up', trunk: trunk !== undefined, experts: { held: hosted.size, copied } });
  }

  /**
   * A group's state for a joining node, asked of every other holder in a few rounds: starting from
   * untrained values would throw away the swarm's work, so a busy or briefly unreachable holder
   * (or one just declared dead and rejoining) is worth waiting for. Each round starts from the newest plan.
   */
  private async fetchWhileJoining(holders: () => string[], group: string) {
    for (let round = 1; ; round++) {
      const peers = holders().filter((peer) => peer !== this.self);
      // The coordinator's checkpoint is older than any live holder's state: asked last, when none is left.
      const lastResort = peers.length === 0 || round === CATCH_UP_ROUNDS;
      const state = await this.fetchFromAny(peers, group, lastResort);
      if (state || round === CATCH_UP_ROUNDS) return state;
      await sleep(CATCH_UP_BACKOFF_MS * round);
      await this.beat();
    }
  }

  /**
   * A group's state from the first of `peers` that serves it (each tried twice: a fresh connection may
   * be reset), then, with `fromCheckpoint`, from the coordinator's newest checkpoint of it.
   */
  private async fetchFromAny(peers: string[], group: string, fromCheckpoint = false) {
    const sources = [...peers, ...peers, ...(fromCheckpoint ? [this.coordinatorId] : [])];
    for (const peer of sources) {
      const target = peer === this.coordinatorId ? this.coordinator : this.address(peer);
      if (!target) continue;
      try {
        return await fetchGroup(this.rpc, target, this.job.jobId, group, STATE_TIMEOUT_MS, this.fromHolder);
      } catch (err) {
        this.log(`state ${group} from ${peer}: ${(err as Error).message}`);
      }
    }
    return undefined;
  }

  private signedPlan(jobId: string, plan: Plan, signature: Uint8Array | undefined): boolean {
    return signature !== undefined && signedBy(this.coordinatorId, planSigningBytes(jobId, plan), signature);
  }

  /** Whether `peer` is in the newest plan. */
  admits(peer: string): boolean {
    return this.plan !== undefined && this.newestPlan().peers.some((p) => p.peerId === peer);
  }

  private newestPlan(): Plan {
    return this.pendingPlan && this.pendingPlan.version > this.plan.version ? this.pendingPlan : this.plan;
  }

  private holders(layer: number, expert: number, plan = this.plan): string[] {
    return plan.experts.find((x) => x.layer === layer && x.expert === expert)?.holders ?? [];
  }

  /**
   * Where a new replica's state comes from: the expert's other holders in the newest plan, then the nodes that
   * handed it over to this node (in any of `plans` giving it to us: a handover to another node is stale once that
   * node trained it), then its holders in the older plans (a node that skipped the version moving it to us never saw
   * that version's handover; the holder it names keeps the state a while after giving it up); only peers still in
   * the newest plan (asking a dead one costs a timeout per try).
   */
  private copySources(layer: number, expert: number, newest: Plan, ...older: Plan[]): string[] {
    const present = new Set(newest.peers.map((p) => p.peerId));
    const entries = [newest, ...older].map((plan) => plan.experts.find((x) => x.layer === layer && x.expert === expert));
    const toUs = entries.filter((x) => x?.holders.includes(this.self));
    const earlier = entries.slice(1).flatMap((x) => x?.holders ?? []);
    const peers = [...(entries[0]?.holders ?? []), ...toUs.flatMap((x) => x?.handover ?? []), ...earlier];
    return [...new Set(peers)].filter((peer) => peer !== this.self && present.has(peer));
  }

  private groupHolders(group: string): string[] {
    const ref = parseGroupId(group);
    return ref?.kind === 'expert' ? this.holders(ref.layer, ref.expert, this.newestPlan()) : [];
  }

  /** A peer's dial addresses from the newest plan that lists it (none when it lists none). */
  private address(peer: string): DialTarget | undefined {
    const newest = this.dialTargets(this.newestPlan());
    return newest.has(peer) ? newest.get(peer) : this.dialTargets(this.plan).get(peer);
  }

  /** A plan's peers' addresses, parsed once per plan: every expert call asks for its holder's. */
  private dialTargets(plan: Plan): Map<string, DialTarget | undefined> {
    let targets = this.parsedPeers.get(plan);
    if (!targets) {
      targets = new Map(plan.peers.map((p) => [p.peerId, p.addrs?.length ? p.addrs.map((a) => multiaddr(a)) : undefined]));
      this.parsedPeers.set(plan, targets);
    }
    return targets;
  }

  /** The experts the plan gives this node, by group id. */
  private hostedExperts(plan: Plan): Map<string, ExpertGroup> {
    const held = plan.experts.filter((x) => x.holders.includes(this.self));
    return new Map(held.map(({ layer, expert }) => [groupId({ kind: 'expert', layer, expert }), { kind: 'expert', layer, expert }]));
  }

  /** The trainable parameters of every group held here: the trunk, and each hosted expert. */
  private groups(): Map<string, ReturnType<Model['params']['trainable']>> {
    const groups = new Map<string, ReturnType<Model['params']['trainable']>>([[TRUNK_GROUP, []]]);
    for (const p of this.model!.params.trainable()) {
      const owner = expertOf(p.name);
      const group = owner ? groupId({ kind: 'expert', ...owner }) : TRUNK_GROUP;
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group)!.push(p);
    }
    return groups;
  }

  /** Between steps: give up experts no longer ours, take on new ones from a surviving holder. */
  private async applyPlan(plan: Plan): Promise<void> {
    const model = this.model!;
    const previous = this.plan;
    const before = this.hostedExperts(previous);
    this.plan = plan;
    const after = this.hostedExperts(plan);
    for (const [group, { layer, expert }] of before) {
      if (after.has(group) || !model.experts.hosts(layer, expert)) continue;
      this.released.keep(group, groupState(model, group)!);
      this.trainer.optimizer.remove(model.experts.tensorNames(layer, expert));
      this.averager.resetGroup(group);
      model.experts.remove(layer, expert);
      this.expertServer?.forget(layer, expert);
    }
    for (const [group, { layer, expert }] of after) {
      if (model.experts.hosts(layer, expert)) continue;
      const sources = this.copySources(layer, expert, plan, previous);
      // Live peers named as its holders since we gave it up, none of which has it, never took it over (plans swapped it
      // away and back before they applied one): our own copy is then its newest; with no such peer, a checkpoint is.
      const state = (await this.fetchFromAny(sources, group))
        ?? (sources.length > 0 ? this.released.get(group) : undefined) ?? (await this.fetchFromAny([], group, true));
      let base: Iterable<[string, F32Tensor]> | undefined;
      try {
        base = this.base ? await this.fetchBase([group]) : undefined;
      } catch (err) {
        // Not hosted after all: callers fail over to its other holders, and the next plan tries again.
        this.emit({ event: 'expert-skipped', layer, expert, reason: (err as Error).message });
        continue;
      }
      this.trainer.optimizer.add(model.experts.add(layer, expert, base ? new Map([...base, ...(state ?? [])]) : state));
      this.averager.track(group, this.groups().get(group) ?? []);
      this.emit({ event: 'expert-added', layer, expert, copied: state !== undefined });
    }
    this.emit({ event: 'plan', version: plan.version, experts: [...after] });
    const { footprint: fp, checkpointing } = this.memory;
    const needed = nodeBytes(fp, after.size, checkpointing, this.options.threads);
    if (needed > this.options.memoryBytes) {
      const kept = checkpointing ? 'with gradient checkpointing' : 'with every layer\'s activations (chosen at join)';
      const share = `plan v${plan.version} gives this node ${after.size} experts, ${needed} bytes ${kept}`;
      this.log(`memory: ${share}, over its budget of ${this.options.memoryBytes}`);
    }
  }

  /** Reports progress to the coordinator; its reply may carry a newer plan or the end of the job. */
  private async beat(): Promise<void> {
    // While joining (fetching a base can take minutes) there is no trainer or averager yet: nothing to report but life.
    const { averager } = this;
    const averaging = averager ? {
      staleness: averager.staleness(this.step), refusedUpdates: averager.stats.refused, flaggedPeers: [...averager.stats.flagged].slice(0, 256),
      updateBytes: averager.stats.encodedBytes, updateRawBytes: averager.stats.rawBytes,
    } : { staleness: 0 };
    const { model } = this;
    const routed = model?.routedRows();
    const reported = this.reportedRows && this.reportedRows.model === model ? this.reportedRows.rows : undefined;
    const expertRows = routed && Array.from(routed, (n, g) => n - (reported?.[g] ?? 0));
    try {
      const reply = await this.volunteer.ask(this.coordinator, 'heartbeat', {
        jobId: this.job.jobId, step: this.trainer ? this.step : 0, ...(this.lastLoss === undefined ? {} : { loss: this.lastLoss }),
        ...(this.lastHeldOut === undefined ? {} : { heldOut: this.lastHeldOut }), rssBytes: process.memoryUsage.rss(),
        heapBytes: this.kernels.heap.allocatedBytes,
        tokensPerSecond: this.tokensPerSecond, bytesSent: this.traffic.sent, bytesReceived: this.traffic.received,
        droppedExpertCalls: this.experts.stats.unanswered, planVersion: this.wantWholePlan ? 0 : this.newestPlan().version, ...averaging,
        addrs: advertisedAddrs(this.volunteer.host), ...(expertRows?.some((n) => n > 0) ? { expertRows } : {}),
      }, { timeout: COORDINATOR_TIMEOUT_MS });
      // Counted as reported only once the coordinator has them: a lost heartbeat's rows go with the next one.
      if (model && routed) this.reportedRows = { model, rows: routed };
      this.options.onHeartbeat?.();
      if (reply.heartbeatMs !== undefined) this.heartbeatMs = reply.heartbeatMs; // a larger swarm, a longer period
      // Only newer versions: peers' new addresses come as one (the coordinator never changes a version it sent).
      const plan = this.newerPlan(reply);
      if (plan && plan.version > this.newestPlan().version) {
        this.wantWholePlan = !this.signedPlan(this.job.jobId, plan, reply.planSignature);
        if (!this.wantWholePlan) this.pendingPlan = plan;
        else this.log(`heartbeat: ignored plan v${plan.version}, not signed by ${this.coordinatorId}`);
      }
      // A stopping node ends as stopped (no final evaluation), and does not come back before it leaves.
      if (reply.stop && !this.stopping) this.done = true;
      // Declared dead mid-join: the join under way ends first, and the next heartbeat rejoins.
      if (!reply.accepted && reply.reason === 'rejoin' && this.model && !this.stopping && !this.gone) await this.rejoin();
    } catch (err) {
      this.log(`heartbeat: ${(err as Error).message}`);
    }
  }

  /** A heartbeat's newer plan: whole, or rebuilt from the delta and the plan it starts from (undefined if we moved on meanwhile). */
  private newerPlan(reply: HeartbeatReply): Plan | undefined {
    const delta = reply.planDelta;
    if (!delta) return reply.plan;
    const from = [this.pendingPlan, this.plan].find((plan) => plan?.version === delta.from);
    try {
      return from && applyPlanDelta(from, delta);
    } catch (err) {
      this.log(`heartbeat: plan delta v${delta.from}..v${delta.version}: ${(err as Error).message}`);
      this.wantWholePlan = true;
      return undefined;
    }
  }

  private startHeartbeat(): void {
    if (this.heartbeating) return;
    this.heartbeating = true;
    const loop = async () => {
      await this.beat();
      // Beats go on while the last batch and round finish after a stop (an averaging deadline can take longer than
      // the node timeout): a node silent until its leaving report would be declared dead instead of leaving.
      if (!this.gone) this.heartbeat = setTimeout(loop, this.heartbeatMs);
    };
    this.heartbeat = setTimeout(loop, 0);
  }

  /** Applies the newest known plan, first fetching it when the coordinator has a newer one. */
  private async catchUpPlan(coordinatorVersion: number): Promise<void> {
    if (coordinatorVersion > this.newestPlan().version) await this.beat();
    const plan = this.pendingPlan;
    this.pendingPlan = undefined;
    if (plan && plan.version > this.plan.version) await this.applyPlan(plan);
  }

  /** Trains leased micro-batches until the job is done or stop() is called. */
  async run(): Promise<void> {
    for (const [group, params] of this.groups()) this.averager.track(group, params);
    this.startHeartbeat();
    const { jobId } = this.job;
    let failures = 0;
    while (!this.stopping && !this.done) {
      await this.catchUpPlan(0);
      let grant;
      try {
        grant = await this.volunteer.ask(this.coordinator, 'lease', { jobId, maxBatches: 1 }, { timeout: COORDINATOR_TIMEOUT_MS });
      } catch (err) {
        // The coordinator away (restarting?): the volunteer's patience decides how long we wait for it.
        if (err instanceof CoordinatorUnreachableError) throw err;
        this.log(`lease: ${(err as Error).message}`);
        await sleep(Math.min(5_000, 500 * 2 ** Math.min(failures++, 4)));
        continue;
      }
      failures = 0;
      if (grant.done) {
        this.done = true;
        break;
      }
      if (grant.batchIds.length === 0) {
        await sleep(100);
        continue;
      }
      await this.catchUpPlan(grant.planVersion);
      if (this.base && this.step === 0 && !this.evaluatedBase) {
        // The held-out loss of the pretrained base (LoRA starts as the identity), what training is measured against.
        this.evaluatedBase = true;
        await this.evaluate();
      }
      const completed: number[] = [];
      for (const index of grant.batchIds) {
        if (this.stopping) break;
        await this.trainBatch(index);
        completed.push(index);
      }
      await this.report(grant.leaseId, completed, false);
      // A held-out point four times a job for the coordinator's curve (heartbeats carry the latest), on the
      // same few batches each time: cheap, and comparable from point to point.
      if (this.step % Math.max(1, Math.ceil(this.trainer.options.totalSteps / 4)) === 0) await this.evaluate(CURVE_BATCHES);
    }
    // A round still under way (overlap) lands before the final evaluation.
    await this.averager.settle();
    // Leaving, whether stopped or done: the coordinator hands back our leases now instead of
    // declaring us dead a timeout later. No beat after it: one answered after we left would have us rejoin.
    this.gone = true;
    clearTimeout(this.heartbeat);
    await this.report(0, [], true);
    const heldOut = this.done ? await this.trainer.evaluate(HELD_OUT_BATCHES) : undefined;
    // Every node's frozen base must be the checkpoint's, quantized the same way, bit for bit.
    const baseDigests = this.base ? { baseDigests: Object.fromEntries(this.model!.weights.baseDigests()) } : {};
    const { sent: bytesSent, received: bytesReceived } = this.traffic;
    this.emit({ event: 'finished', steps: this.step, bytesSent, bytesReceived, heldOut, ...baseDigests });
  }

  private async evaluate(batches = HELD_OUT_BATCHES): Promise<void> {
    const heldOut = await this.trainer.evaluate(batches);
    this.lastHeldOut = heldOut.loss;
    this.emit({ event: 'evaluated', step: this.step, heldOut });
  }

  /**
   * Reports finished batches (and a departure). A lost report costs the batches a second training, so
   * while the coordinator does not answer (restarting, say) it is sent again with backoff, as long as the
   * node's patience lasts; one the coordinator refused, or a departure, is tried twice.
   */
  private async report(leaseId: number, completedBatchIds: number[], leaving: boolean): Promise<void> {
    const message = { jobId: this.job.jobId, leaseId, completedBatchIds, leaving };
    for (let attempt = 1; ; attempt++) {
      try {
        await this.volunteer.ask(this.coordinator, 'leaseReport', message, { timeout: COORDINATOR_TIMEOUT_MS });
        return;
      } catch (err) {
        this.log(`lease report (attempt ${attempt}): ${(err as Error).message}`);
        const worthWaiting = completedBatchIds.length > 0 && !leaving && unanswered(err);
        if (err instanceof CoordinatorUnreachableError || (!worthWaiting && attempt >= 2)) return;
        if (worthWaiting) await sleep(Math.min(5_000, 500 * 2 ** Math.min(attempt, 4)));
      }
    }
  }

  private async trainBatch(index: number): Promise<void> {
    const model = this.model!;
    const t0 = performance.now();
    const loopBefore = performance.eventLoopUtilization();
    const cpuBefore = process.cpuUsage();
    const waitBefore = this.experts.stats.remoteWaitMs;
    this.experts.step = this.step;
    const result = await this.trainer.trainStep([this.trainer.train.batchAt(index)]);
    if (this.options.stepDelayMs) await sleep(this.options.stepDelayMs);
    const seconds = (performance.now() - t0) / 1e3;
    // The event loop's idle time in the step: this node waiting with nothing to compute (on remote experts, mostly).
    const idleMs = performance.eventLoopUtilization(loopBefore).idle;
    // The CPU time this process used in the step (on a loaded machine, less than its wall time).
    const cpu = process.cpuUsage(cpuBefore);
    const cpuMs = (cpu.user + cpu.system) / 1e3;
    this.tokensPerSecond = result.tokens / seconds;
    this.lastLoss = result.loss;
    this.emit({
      event: 'step', step: this.step, batch: index, loss: result.loss, crossEntropy: result.crossEntropy, tokens: result.tokens, seconds, idleMs, cpuMs,
      // The step's own wait (remoteWaitMs, the running total, also counts the held-out evaluations' calls between steps).
      stepRemoteWaitMs: this.experts.stats.remoteWaitMs - waitBefore,
      bytesSent: this.traffic.sent, bytesReceived: this.traffic.received, localCalls: model.experts.localCalls, ...this.experts.stats,
      droppedAssignments: model.droppedAssignments(), averaging: { ...this.averager.stats, flagged: [...this.averager.stats.flagged] },
    });
  }

  /** Asks the training loop to stop after the current batch; run() then hands its leases back. */
  stop(): void {
    this.stopping = true;
  }

  /** Hands back what the job held: its protocols (the next job serves its own), its timers and its kernels' memory. */
  async close(): Promise<void> {
    this.stopping = true;
    this.gone = true;
    clearTimeout(this.heartbeat);
    for (const name of PROTOCOL_NAMES) await this.rpc.unhandle(name).catch(() => {});
    await this.kernels.close();
  }
}
