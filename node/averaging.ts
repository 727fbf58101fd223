// Averaging between the holders of each parameter group ("trunk": every node; "expert.L.E":
// that expert's replicas), over the delta protocol, with a deadline so nobody waits for a
// vanished or slow holder. Two modes:
//   sync      every step, before the optimizer: gradients are averaged, so holders that start
//             equal stay equal (a data-parallel step; used to check the swarm against one process);
//   periodic  every `every` local steps: each holder sends its parameter delta since the last
//             round and applies the mean of the deltas that arrived (full precision; the
//             compressed, staleness-weighted exchange plugs in here).
// Contributions are summed in peer-id order, so holders that receive the same set compute the
// same bits. A contribution with the wrong names or shapes, or NaN/Inf, is refused and counted.
import { f32Tensor, tensorF32, type ParameterDelta } from '../proto/index.ts';
import type { Param } from '../src/model/params.ts';
import { RefusedError, type DialTarget, type Rpc } from '../src/p2p/index.ts';

export interface GroupDirectory {
  /** Peer ids holding the group (this node included when it does). */
  members(group: string): readonly string[];
  address(peerId: string): DialTarget | undefined;
  admitted(peerId: string): boolean;
}

export interface AveragingOptions {
  jobId: string;
  self: string;
  mode: 'sync' | 'periodic';
  every: number;
  deadlineMs: number;
  log?: (message: string) => void;
}

export interface AveragingStats {
  rounds: number;
  /** Contributions from other holders used in rounds. */
  received: number;
  /** Contributions expected but not there by the deadline. */
  missing: number;
  /** Contributions refused (wrong group, shapes or non-finite values); their senders are flagged. */
  refused: number;
  flagged: Set<string>;
}

/** Rounds this far behind the current one are dropped from the inbox (late contributions). */
const KEEP_ROUNDS = 2;

export class Averager {
  readonly stats: AveragingStats = { rounds: 0, received: 0, missing: 0, refused: 0, flagged: new Set() };
  /** group → round → sender → values in the group's parameter order. */
  private readonly inbox = new Map<string, Map<number, Map<string, Float32Array[]>>>();
  private readonly waiting = new Map<string, () => void>();
  /** periodic: each group's parameters at its last round. */
  private readonly anchors = new Map<string, Float32Array[]>();
  private round = 0;

  constructor(
    private readonly rpc: Rpc,
    private readonly directory: GroupDirectory,
    /** The trainable parameters of each group held here, in a fixed order. */
    private readonly groups: () => Map<string, Param[]>,
    private readonly options: AveragingOptions,
  ) {}

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
      const mean = await this.exchange(group, step, params.map((p) => p.grad!));
      params.forEach((p, i) => p.grad!.set(mean[i]));
    }));
  }

  /** Called after the optimizer update that ends local step `step` (0-based). */
  async afterUpdate(step: number): Promise<void> {
    if (this.options.mode !== 'periodic' || (step + 1) % this.options.every !== 0) return;
    const round = (step + 1) / this.options.every;
    this.round = round;
    await Promise.all([...this.groups()].map(async ([group, params]) => {
      const anchor = this.anchorOf(group, params);
      const deltas = params.map((p, i) => p.value.map((v, j) => v - anchor[i][j]));
      const mean = await this.exchange(group, round, deltas);
      params.forEach((p, i) => {
        for (let j = 0; j < p.value.length; j++) p.value[j] = anchor[i][j] + mean[i][j];
        anchor[i].set(p.value);
      });
    }));
  }

  /** Forgets a group's anchor (the node gave it up, or took it on with fresh state). */
  resetGroup(group: string): void {
    this.anchors.delete(group);
    this.inbox.delete(group);
  }

  private anchorOf(group: string, params: Param[]): Float32Array[] {
    let anchor = this.anchors.get(group);
    if (!anchor) this.anchors.set(group, (anchor = params.map((p) => Float32Array.from(p.value))));
    return anchor;
  }

  /**
   * Sends `mine` to the group's other holders and returns the mean of what arrived by the
   * deadline (mine included), summed in peer-id order.
   */
  private async exchange(group: string, round: number, mine: Float32Array[]): Promise<Float32Array[]> {
    const { jobId, self, deadlineMs, log } = this.options;
    const params = this.groups().get(group)!;
    const others = this.directory.members(group).filter((peer) => peer !== self);
    const parts = params.map((p, i) => ({ name: p.name, tensor: f32Tensor([...p.shape], Float32Array.from(mine[i])) }));
    const message: ParameterDelta = { jobId, group, round, steps: this.options.mode === 'sync' ? 1 : this.options.every, codec: 'f32', parts };
    for (const peer of others) {
      const target = this.directory.address(peer);
      if (!target) continue;
      this.rpc.request(target, 'delta', message, { timeout: deadlineMs }).catch((err: Error) => log?.(`delta ${group}#${round} to ${peer} failed: ${err.message}`));
    }
    const arrived = await this.waitFor(group, round, others, deadlineMs);
    this.stats.rounds++;
    this.stats.received += arrived.size;
    this.stats.missing += others.length - arrived.size;
    const contributions = new Map(arrived);
    contributions.set(self, mine);
    const senders = [...contributions.keys()].sort();
    const mean = mine.map((m) => new Float32Array(m.length));
    for (const sender of senders) {
      contributions.get(sender)!.forEach((values, i) => {
        const out = mean[i];
        for (let j = 0; j < out.length; j++) out[j] += values[j];
      });
    }
    for (const out of mean) for (let j = 0; j < out.length; j++) out[j] /= senders.length;
    this.inbox.get(group)?.delete(round);
    return mean;
  }

  private async waitFor(group: string, round: number, senders: readonly string[], deadlineMs: number): Promise<Map<string, Float32Array[]>> {
    const key = `${group}#${round}`;
    const inRound = () => this.inbox.get(group)?.get(round) ?? new Map<string, Float32Array[]>();
    const complete = () => senders.every((peer) => inRound().has(peer));
    if (!complete()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadlineMs);
        this.waiting.set(key, () => {
          if (!complete()) return;
          clearTimeout(timer);
          resolve();
        });
      });
      this.waiting.delete(key);
    }
    return new Map([...inRound()].filter(([peer]) => senders.includes(peer)));
  }

  private receive(delta: ParameterDelta, peer: string): void {
    const refuse = (reason: string): never => {
      this.stats.refused++;
      this.stats.flagged.add(peer);
      throw new RefusedError(reason);
    };
    if (!this.directory.admitted(peer)) refuse(`peer ${peer} is not admitted to job ${this.options.jobId}`);
    if (delta.jobId !== this.options.jobId) refuse(`this node trains job ${this.options.jobId}, not ${delta.jobId}`);
    const params = this.groups().get(delta.group);
    if (!params) refuse(`group ${delta.group} is not held here`);
    if (!this.directory.members(delta.group).includes(peer)) refuse(`peer ${peer} does not hold ${delta.group}`);
    if (delta.round + KEEP_ROUNDS < this.round) refuse(`round ${delta.round} of ${delta.group} is over (now ${this.round})`);
    if (delta.codec !== 'f32') refuse(`codec ${delta.codec} is not supported here`);
    if (delta.parts.length !== params!.length) refuse(`${delta.group} has ${params!.length} tensors, got ${delta.parts.length}`);
    const values = params!.map((p, i) => {
      const part = delta.parts[i];
      if (part.name !== p.name || part.tensor.dtype !== 'F32' || part.tensor.shape.join('x') !== p.shape.join('x')) {
        refuse(`${delta.group}: part ${i} is ${part.name} [${part.tensor.shape}] ${part.tensor.dtype}, expected ${p.name} [${p.shape}] F32`);
      }
      const v = tensorF32(part.tensor);
      for (let j = 0; j < v.length; j++) if (!Number.isFinite(v[j])) refuse(`${delta.group}: ${p.name} has a non-finite value at ${j}`);
      return Float32Array.from(v);
    });
    let rounds = this.inbox.get(delta.group);
    if (!rounds) this.inbox.set(delta.group, (rounds = new Map()));
    for (const old of rounds.keys()) if (old + KEEP_ROUNDS < this.round) rounds.delete(old);
    let senders = rounds.get(delta.round);
    if (!senders) rounds.set(delta.round, (senders = new Map()));
    senders.set(peer, values);
    this.waiting.get(`${delta.group}#${delta.round}`)?.();
  }
}
