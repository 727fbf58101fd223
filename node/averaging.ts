// Averaging between the holders of each parameter group ("trunk": every node; "expert.L.E":
// that expert's replicas), over the delta protocol. Nobody waits for a vanished or slow holder
// longer than a deadline. Two modes:
//   sync      every step, before the optimizer: gradients are averaged in f32, so holders that
//             start equal stay equal (a data-parallel step; used to check the swarm against one
//             process). Contributions are summed in peer-id order: the same bits everywhere.
//   periodic  every `every` local steps (DiLoCo-style): each holder sends its pseudo-gradient
//             (parameter delta since the last round) through the group's codec (error feedback
//             kept here, per tensor), then applies an outer step with whatever arrived: the mean
//             (or trimmed mean) of the deltas, late ones weighted by staleness 1/(1 + rounds
//             late), through Nesterov momentum. Only holders at most a round behind that kept
//             the last deadline are waited for (a slower one's deltas count when they come); a
//             holder that finds itself rounds behind fetches fresh state instead of sending.
// Every contribution is untrusted: wrong names or shapes, a codec that is not the group's,
// non-finite values, or a norm far above the group's recent median are refused and the
// sender flagged.
import { f32Tensor, tensorF32, type Averaging, type NamedTensor, type ParameterDelta } from '../proto/index.ts';
import { codecsForGroups, decodeTensors, encodeTensors, f32Codec, type Codec, type CodecState } from '../src/compress/index.ts';
import type { F32Tensor } from '../src/model/config.ts';
import type { Param } from '../src/model/params.ts';
import { RefusedError, type DialTarget, type Rpc } from '../src/p2p/index.ts';

export interface GroupDirectory {
  /** Peer ids holding the group (this node included when it does). */
  members(group: string): readonly string[];
  address(peerId: string): DialTarget | undefined;
  admitted(peerId: string): boolean;
}

/** Test hooks that make this node a bad peer. */
export type AveragingFault = 'nan' | 'scale1000';

export interface AveragingOptions extends Averaging {
  jobId: string;
  self: string;
  /** Fetches a group's current state from a peer (for a holder that fell behind). */
  fetchState?: (group: string, peer: string) => Promise<Map<string, F32Tensor> | undefined>;
  fault?: AveragingFault;
  log?: (message: string) => void;
}

export interface AveragingStats {
  rounds: number;
  /** Contributions from other holders used in rounds (late ones included). */
  received: number;
  /** Of those, contributions from an earlier round (weighted down by staleness). */
  late: number;
  /** Awaited holders (in step and keeping pace) whose contribution was not there by the deadline. */
  missing: number;
  /** Contributions refused (see the header); their senders are flagged. */
  refused: number;
  flagged: Set<string>;
  /** Groups reloaded from a peer after falling behind. */
  resyncs: number;
}

interface Contribution {
  sender: string;
  round: number;
  values: Float32Array[];
}

/** Contributions older than this many rounds are refused (and dropped from the inbox). */
const KEEP_ROUNDS = 4;
/** A holder this many rounds behind a peer reloads the group instead of sending. */
const MAX_LAG = 3;
/** Recent accepted delta norms kept per group for the outlier test. */
const NORM_HISTORY = 32;
const DEFAULT_MAX_NORM_RATIO = 10;

export class Averager {
  readonly stats: AveragingStats = { rounds: 0, received: 0, late: 0, missing: 0, refused: 0, flagged: new Set(), resyncs: 0 };
  private readonly codecFor: (group: string) => Codec;
  /** sync: group → round → sender → gradients. */
  private readonly syncInbox = new Map<string, Map<number, Map<string, Float32Array[]>>>();
  /** periodic: group → contributions not yet used. */
  private readonly pending = new Map<string, Contribution[]>();
  private readonly waiting = new Map<string, () => void>();
  /** The newest round heard from each peer. */
  private readonly peerRound = new Map<string, number>();
  /** periodic: when this node started each recent round, to tell how far behind a peer delivers. */
  private readonly roundStarts = new Map<number, number>();
  /**
   * periodic: peers whose last contribution came later than the deadline after this node
   * started that round, or not at all: slower than this node, so not waited for (what they
   * send still counts when it comes, weighted by staleness) until they deliver in time again.
   */
  private readonly slowPeers = new Set<string>();
  /** periodic: each group's parameters at its last round, the outer momentum, and codec states. */
  private readonly anchors = new Map<string, Float32Array[]>();
  private readonly momentum = new Map<string, Float32Array[]>();
  private readonly codecStates = new Map<string, CodecState>();
  private readonly norms = new Map<string, number[]>();
  private round = 0;

  constructor(
    private readonly rpc: Rpc,
    private readonly directory: GroupDirectory,
    /** The trainable parameters of each group held here, in a fixed order. */
    private readonly groups: () => Map<string, Param[]>,
    private readonly options: AveragingOptions,
  ) {
    this.codecFor = codecsForGroups({ default: options.codec ?? 'f32', groups: options.expertCodec ? { expert: options.expertCodec } : {} });
  }

  async serve(): Promise<void> {
    await this.rpc.handle('delta', (delta, { peer }) => {
      this.receive(delta, peer.toString());
      return { accepted: true };
    }, { maxConcurrent: 64 });
  }

  /** Called after the local backward of step `step` (0-based), before the optimizer. */
  async afterBackward(step: number): Promise<void> {
    if (this.options.mode !== 'sync') return;
    this.round = step;
    // All groups at once: one deadline per round, however many groups wait on a missing holder.
    await Promise.all([...this.groups()].map(async ([group, params]) => {
      const mean = await this.syncExchange(group, step, params);
      params.forEach((p, i) => p.grad!.set(mean[i]));
    }));
  }

  /** Called after the optimizer update that ends local step `step` (0-based). */
  async afterUpdate(step: number): Promise<void> {
    if (this.options.mode !== 'periodic' || (step + 1) % this.options.every !== 0) return;
    this.round = (step + 1) / this.options.every;
    this.roundStarts.set(this.round, performance.now());
    this.roundStarts.delete(this.round - KEEP_ROUNDS - 1);
    await Promise.all([...this.groups()].map(([group, params]) => this.outerRound(group, params, this.round)));
  }

  /**
   * Starts a group's rounds from its current parameters (at the start of training, and when the
   * node takes the group on): the first delta is measured from here.
   */
  track(group: string, params: Param[]): void {
    this.resetGroup(group);
    this.anchorOf(group, params);
  }

  /** Forgets a group's round state (the node gave it up, or took it on with fresh state). */
  resetGroup(group: string): void {
    this.anchors.delete(group);
    this.momentum.delete(group);
    this.syncInbox.delete(group);
    this.pending.delete(group);
    this.norms.delete(group);
    for (const key of this.codecStates.keys()) if (key.startsWith(`${group}/`)) this.codecStates.delete(key);
  }

  private send(group: string, round: number, parts: NamedTensor[], codec: string): void {
    const { jobId, self, deadlineMs, log } = this.options;
    const message: ParameterDelta = { jobId, group, round, steps: this.options.mode === 'sync' ? 1 : this.options.every, codec, parts };
    for (const peer of this.directory.members(group)) {
      if (peer === self) continue;
      const target = this.directory.address(peer);
      if (!target) continue;
      // Once more on failure: two nodes dialing each other at the same moment can reset the first streams.
      const attempt = () => this.rpc.request(target, 'delta', message, { timeout: deadlineMs });
      attempt().catch(attempt).catch((err: Error) => log?.(`delta ${group}#${round} to ${peer} failed: ${err.message}`));
    }
  }

  // --- sync ------------------------------------------------------------------------------

  private async syncExchange(group: string, round: number, params: Param[]): Promise<Float32Array[]> {
    const mine = params.map((p) => Float32Array.from(p.grad!));
    this.send(group, round, this.corrupt(params.map((p, i) => ({ name: p.name, tensor: f32Tensor([...p.shape], mine[i]) }))), 'f32');
    const others = this.directory.members(group).filter((peer) => peer !== this.options.self);
    const inRound = () => this.syncInbox.get(group)?.get(round) ?? new Map<string, Float32Array[]>();
    await this.wait(group, round, () => others.every((peer) => inRound().has(peer)));
    const arrived = new Map([...inRound()].filter(([peer]) => others.includes(peer)));
    this.syncInbox.get(group)?.delete(round);
    this.stats.rounds++;
    this.stats.received += arrived.size;
    this.stats.missing += others.length - arrived.size;
    arrived.set(this.options.self, mine);
    const senders = [...arrived.keys()].sort();
    const mean = mine.map((m) => new Float32Array(m.length));
    for (const sender of senders) {
      arrived.get(sender)!.forEach((values, i) => {
        const out = mean[i];
        for (let j = 0; j < out.length; j++) out[j] += values[j];
      });
    }
    for (const out of mean) for (let j = 0; j < out.length; j++) out[j] /= senders.length;
    return mean;
  }

  // --- periodic --------------------------------------------------------------------------

  private async outerRound(group: string, params: Param[], round: number): Promise<void> {
    const ahead = this.peerAhead(group, round);
    if (ahead && (await this.resync(group, params, ahead))) return;
    const anchor = this.anchorOf(group, params);
    const codec = this.codecFor(group);
    const tensors = params.map((p, i) => ({
      name: p.name, shape: p.shape, delta: p.value.map((v, j) => v - anchor[i][j]), state: this.codecState(group, p.name),
    }));
    const parts = encodeTensors(codec, tensors);
    // What the others will decode of ours is what we average with: everyone uses the same numbers.
    const mine = decodeTensors(codec, tensors, parts);
    this.send(group, round, this.corrupt(parts), codec.spec);

    // Waited for: holders at most a round behind that keep pace with this node.
    const awaited = this.directory.members(group).filter((peer) => peer !== this.options.self
      && (this.peerRound.get(peer) ?? round) >= round - 1 && !this.slowPeers.has(peer));
    const has = (peer: string) => (this.pending.get(group) ?? []).some((c) => c.sender === peer && c.round >= round);
    await this.wait(group, round, () => awaited.every(has));
    const missed = awaited.filter((peer) => !has(peer));
    for (const peer of missed) this.slowPeers.add(peer);
    const arrived = this.pending.get(group) ?? [];
    this.pending.set(group, []);
    this.stats.rounds++;
    this.stats.missing += missed.length;

    const accepted = this.dropOutliers(group, arrived, mine);
    this.stats.received += accepted.length;
    this.stats.late += accepted.filter((c) => c.round < round).length;
    const contributions = [{ sender: this.options.self, round, values: mine }, ...accepted].sort((a, b) => a.round - b.round || (a.sender < b.sender ? -1 : 1));
    const mean = this.aggregate(contributions, round);

    // Outer step (Nesterov): m ← μ·m + Δ̄; θ ← anchor + lr·(μ·m + Δ̄). lr 1, μ 0: plain averaging.
    const lr = this.options.outerLr ?? 1;
    const mu = this.options.outerMomentum ?? 0;
    const momentum = this.momentumOf(group, params);
    params.forEach((p, i) => {
      const m = momentum[i];
      for (let j = 0; j < p.value.length; j++) {
        m[j] = mu * m[j] + mean[i][j];
        p.value[j] = anchor[i][j] + lr * (mu * m[j] + mean[i][j]);
      }
      anchor[i].set(p.value);
    });
  }

  /** Weighted mean (weight 1 / (1 + rounds late)), or the unweighted coordinate-wise trimmed mean. */
  private aggregate(contributions: Contribution[], round: number): Float32Array[] {
    const out = contributions[0].values.map((v) => new Float32Array(v.length));
    if (this.options.aggregator === 'trimmed-mean' && contributions.length > 2) {
      const cut = Math.floor((this.options.trim ?? 0.2) * contributions.length);
      const column = new Float64Array(contributions.length);
      out.forEach((o, i) => {
        for (let j = 0; j < o.length; j++) {
          contributions.forEach((c, k) => (column[k] = c.values[i][j]));
          column.sort();
          let sum = 0;
          for (let k = cut; k < column.length - cut; k++) sum += column[k];
          o[j] = sum / (column.length - 2 * cut);
        }
      });
      return out;
    }
    let total = 0;
    for (const c of contributions) {
      const weight = 1 / (1 + Math.max(0, round - c.round));
      total += weight;
      c.values.forEach((values, i) => {
        const o = out[i];
        for (let j = 0; j < o.length; j++) o[j] += weight * values[j];
      });
    }
    for (const o of out) for (let j = 0; j < o.length; j++) o[j] /= total;
    return out;
  }

  /**
   * Refuses contributions whose norm is far above the median of the group's recent norms and
   * this round's (ours and the arrivals: while most holders are honest, the median is theirs).
   */
  private dropOutliers(group: string, arrived: Contribution[], mine: Float32Array[]): Contribution[] {
    const norm = (values: Float32Array[]) => Math.sqrt(values.reduce((s, v) => s + v.reduce((t, x) => t + x * x, 0), 0));
    const history = this.norms.get(group) ?? [];
    const myNorm = norm(mine);
    const norms = arrived.map((c) => norm(c.values));
    const sorted = [...history, myNorm, ...norms].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    const limit = (this.options.maxNormRatio ?? DEFAULT_MAX_NORM_RATIO) * median;
    const accepted: Contribution[] = [];
    for (const [k, c] of arrived.entries()) {
      const n = norms[k];
      if (n > limit) {
        this.flag(c.sender);
        this.options.log?.(`delta ${group}#${c.round} from ${c.sender} refused: norm ${n.toExponential(2)} is over ${limit.toExponential(2)}`);
        continue;
      }
      accepted.push(c);
      history.push(n);
    }
    history.push(myNorm);
    this.norms.set(group, history.slice(-NORM_HISTORY));
    return accepted;
  }

  /** A peer of the group at least MAX_LAG rounds ahead of us, if any. */
  private peerAhead(group: string, round: number): string | undefined {
    return this.directory.members(group).find((peer) => peer !== this.options.self && (this.peerRound.get(peer) ?? 0) >= round + MAX_LAG);
  }

  private async resync(group: string, params: Param[], peer: string): Promise<boolean> {
    const state = await this.options.fetchState?.(group, peer);
    if (!state) return false;
    for (const p of params) {
      const t = state.get(p.name);
      if (t && t.data.length === p.value.length) p.value.set(t.data);
    }
    this.track(group, params);
    this.stats.resyncs++;
    this.options.log?.(`group ${group} was ${MAX_LAG}+ rounds behind ${peer}: reloaded its state`);
    return true;
  }

  private anchorOf(group: string, params: Param[]): Float32Array[] {
    let anchor = this.anchors.get(group);
    if (!anchor) this.anchors.set(group, (anchor = params.map((p) => Float32Array.from(p.value))));
    return anchor;
  }

  private momentumOf(group: string, params: Param[]): Float32Array[] {
    let m = this.momentum.get(group);
    if (!m) this.momentum.set(group, (m = params.map((p) => new Float32Array(p.value.length))));
    return m;
  }

  private codecState(group: string, name: string): CodecState {
    const key = `${group}/${name}`;
    let state = this.codecStates.get(key);
    if (!state) this.codecStates.set(key, (state = {}));
    return state;
  }

  private async wait(group: string, round: number, complete: () => boolean): Promise<void> {
    if (complete()) return;
    const key = `${group}#${round}`;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.options.deadlineMs);
      this.waiting.set(key, () => {
        if (!complete()) return;
        clearTimeout(timer);
        resolve();
      });
    });
    this.waiting.delete(key);
  }

  /** Test hook: a faulty node corrupts what it sends. */
  private corrupt(parts: NamedTensor[]): NamedTensor[] {
    const { fault } = this.options;
    if (!fault) return parts;
    return parts.map(({ name, tensor }) => {
      if (tensor.dtype !== 'F32') return { name, tensor };
      const values = Float32Array.from(tensorF32(tensor)).map((v) => (fault === 'nan' ? NaN : v * 1000));
      return { name, tensor: f32Tensor(tensor.shape, values) };
    });
  }

  private flag(peer: string): void {
    this.stats.refused++;
    this.stats.flagged.add(peer);
  }

  private receive(delta: ParameterDelta, peer: string): void {
    const refuse = (reason: string): never => {
      this.flag(peer);
      throw new RefusedError(reason);
    };
    const { jobId, mode } = this.options;
    if (!this.directory.admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (delta.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${delta.jobId}`);
    const params = this.groups().get(delta.group);
    if (!params) throw new RefusedError(`group ${delta.group} is not held here`);
    if (!this.directory.members(delta.group).includes(peer)) refuse(`peer ${peer} does not hold ${delta.group}`);
    if (delta.round + KEEP_ROUNDS < this.round) throw new RefusedError(`round ${delta.round} of ${delta.group} is over (now ${this.round})`);
    const codec = mode === 'sync' ? f32Codec : this.codecFor(delta.group);
    if (delta.codec !== codec.spec) refuse(`${delta.group} travels as ${codec.spec}, got ${delta.codec}`);
    let values: Float32Array[] = [];
    try {
      values = decodeTensors(codec, params.map((p) => ({ name: p.name, shape: p.shape })), delta.parts);
    } catch (err) {
      refuse(`${delta.group}: ${(err as Error).message}`);
    }
    values.forEach((v, i) => {
      for (let j = 0; j < v.length; j++) if (!Number.isFinite(v[j])) refuse(`${delta.group}: ${params[i].name} has a non-finite value at ${j}`);
    });
    this.peerRound.set(peer, Math.max(this.peerRound.get(peer) ?? 0, delta.round));
    if (mode === 'sync') {
      let rounds = this.syncInbox.get(delta.group);
      if (!rounds) this.syncInbox.set(delta.group, (rounds = new Map()));
      for (const old of rounds.keys()) if (old + KEEP_ROUNDS < this.round) rounds.delete(old);
      let senders = rounds.get(delta.round);
      if (!senders) rounds.set(delta.round, (senders = new Map()));
      senders.set(peer, values);
    } else {
      const started = this.roundStarts.get(delta.round);
      if (started === undefined || performance.now() - started <= this.options.deadlineMs) this.slowPeers.delete(peer);
      else this.slowPeers.add(peer);
      const list = (this.pending.get(delta.group) ?? []).filter((c) => c.round + KEEP_ROUNDS >= this.round && !(c.sender === peer && c.round === delta.round));
      list.push({ sender: peer, round: delta.round, values });
      this.pending.set(delta.group, list);
    }
    // sync waits for this round's gradients; a periodic round also takes late contributions.
    for (const [key, wake] of this.waiting) if (mode === 'periodic' ? key.startsWith(`${delta.group}#`) : key === `${delta.group}#${delta.round}`) wake();
  }
}
