// The delta protocol under both averaging strategies: sends a group's contribution to its other
// holders, checks every contribution that arrives, and lets a round wait for them until a deadline.
// Every contribution is untrusted: an unadmitted sender, a wrong job, group or codec, parts that do
// not decode to the group's shapes, or non-finite values are refused (the last three flag the sender).
import { f32Tensor, tensorF32, type NamedTensor, type ParameterDelta } from '../../proto/index.ts';
import { firstNonFinite } from '../../src/averaging/index.ts';
import { decodeTensors, type Codec } from '../../src/compress/index.ts';
import { RefusedError } from '../../src/p2p/index.ts';
import type { AveragingComponents, AveragingOptions, AveragingStats } from './index.ts';

/** Contributions older than this many rounds are refused (and dropped from the inbox). */
export const KEEP_ROUNDS = 4;

/** A strategy's side of the exchange: how a group travels, and where checked contributions go. */
export interface DeltaInbox {
  codec(group: string): Codec;
  accept(group: string, sender: string, round: number, values: Float32Array[]): void;
}

export class DeltaExchange {
  readonly stats: AveragingStats = { rounds: 0, received: 0, late: 0, missing: 0, refused: 0, flagged: new Set(), resyncs: 0 };
  /** The round under way here. */
  round = 0;
  /** Rounds waiting for contributions, by `${group}#${round}`. */
  private readonly waiting = new Map<string, () => void>();
  /** The newest round heard from each peer. */
  private readonly peerRounds = new Map<string, number>();

  constructor(
    private readonly components: AveragingComponents,
    private readonly options: AveragingOptions,
    private readonly inbox: DeltaInbox,
  ) {}

  async serve(): Promise<void> {
    await this.components.rpc.handle('delta', (delta, { peer }) => {
      this.receive(delta, peer.toString());
      return { accepted: true };
    }, { maxConcurrent: 64 });
  }

  /** The group's holders other than this node. */
  others(group: string): string[] {
    return this.components.directory.members(group).filter((peer) => peer !== this.options.self);
  }

  /** The newest round a peer has sent, if it has. */
  peerRound(peer: string): number | undefined {
    return this.peerRounds.get(peer);
  }

  /** Sends a contribution to the group's other holders, without waiting for them. */
  send(group: string, round: number, steps: number, codec: string, parts: NamedTensor[]): void {
    const { jobId, deadlineMs, log } = this.options;
    const message: ParameterDelta = { jobId, group, round, steps, codec, parts: this.corrupt(parts) };
    for (const peer of this.others(group)) {
      const target = this.components.directory.address(peer);
      if (!target) continue;
      // Once more on failure: two nodes dialing each other at the same moment can reset the first streams.
      const attempt = () => this.components.rpc.request(target, 'delta', message, { timeout: deadlineMs });
      attempt().catch(attempt).catch((err: Error) => log?.(`delta ${group}#${round} to ${peer} failed: ${err.message}`));
    }
  }

  /** Resolves when `complete()` holds (checked again at each arrival for the group) or at the deadline. */
  async wait(group: string, round: number, complete: () => boolean): Promise<void> {
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

  flag(peer: string): void {
    this.stats.refused++;
    this.stats.flagged.add(peer);
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

  private receive(delta: ParameterDelta, peer: string): void {
    const refuse = (reason: string): never => {
      this.flag(peer);
      throw new RefusedError(reason);
    };
    const { jobId } = this.options;
    const { directory, groups } = this.components;
    if (!directory.admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (delta.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${delta.jobId}`);
    const params = groups().get(delta.group);
    if (!params) throw new RefusedError(`group ${delta.group} is not held here`);
    if (!directory.members(delta.group).includes(peer)) refuse(`peer ${peer} does not hold ${delta.group}`);
    if (delta.round + KEEP_ROUNDS < this.round) {
      throw new RefusedError(`round ${delta.round} of ${delta.group} is over (now ${this.round})`);
    }
    const codec = this.inbox.codec(delta.group);
    if (delta.codec !== codec.spec) refuse(`${delta.group} travels as ${codec.spec}, got ${delta.codec}`);
    let values: Float32Array[] = [];
    try {
      values = decodeTensors(codec, params.map((p) => ({ name: p.name, shape: p.shape })), delta.parts);
    } catch (err) {
      refuse(`${delta.group}: ${(err as Error).message}`);
    }
    const bad = firstNonFinite(values);
    if (bad) refuse(`${delta.group}: ${params[bad.tensor].name} has a non-finite value at ${bad.index}`);
    this.peerRounds.set(peer, Math.max(this.peerRounds.get(peer) ?? 0, delta.round));
    this.inbox.accept(delta.group, peer, delta.round, values);
    // Each waiting round of the group checks whether it now has what it waits for.
    for (const [key, wake] of this.waiting) if (key.startsWith(`${delta.group}#`)) wake();
  }
}
