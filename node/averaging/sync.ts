// Synchronous averaging: every step, before the optimizer, each group's gradients are averaged
// over its holders in f32, summed in peer-id order, so holders that start equal stay equal.
import { aggregate } from '../../src/averaging/index.ts';
import { f32Codec } from '../../src/compress/index.ts';
import type { Param } from '../../src/model/params.ts';
import { DeltaExchange, KEEP_ROUNDS } from './exchange.ts';
import type { Averager, AveragingComponents, AveragingOptions, AveragingStats } from './index.ts';

export class SyncAveraging implements Averager {
  readonly stats: AveragingStats;
  private readonly exchange: DeltaExchange;
  /** group → round → sender → gradients. */
  private readonly inbox = new Map<string, Map<number, Map<string, Float32Array[]>>>();

  constructor(private readonly components: AveragingComponents, private readonly options: AveragingOptions) {
    this.exchange = new DeltaExchange(components, options, {
      codec: () => f32Codec,
      accept: (group, sender, round, values) => this.accept(group, sender, round, values),
    });
    this.stats = this.exchange.stats;
  }

  serve(): Promise<void> {
    return this.exchange.serve();
  }

  async afterBackward(step: number): Promise<void> {
    this.exchange.round = step;
    // All groups at once: one deadline per round, however many groups wait on a missing holder.
    await Promise.all([...this.components.groups()].map(async ([group, params]) => {
      const mean = await this.averageGradients(group, step, params);
      params.forEach((p, i) => p.grad!.set(mean[i]));
    }));
  }

  async afterUpdate(): Promise<void> {}

  async settle(): Promise<void> {}

  staleness(): number {
    return 0;
  }

  track(group: string): void {
    this.resetGroup(group);
  }

  resetGroup(group: string): void {
    this.inbox.delete(group);
  }

  private async averageGradients(group: string, round: number, params: Param[]): Promise<Float32Array[]> {
    const { self } = this.options;
    const mine = params.map((p) => Float32Array.from(p.grad!));
    const { messages } = this.exchange.encodeGroup(group, f32Codec, mine, this.exchange.partCount(group, 1), () => ({}));
    this.exchange.sendAll(group, round, 1, f32Codec.spec, messages);
    const others = this.exchange.others(group);
    const inRound = () => this.inbox.get(group)?.get(round) ?? new Map<string, Float32Array[]>();
    await this.exchange.wait(group, round, () => others.every((peer) => inRound().has(peer)));
    const arrived = [...inRound()].filter(([peer]) => others.includes(peer));
    this.inbox.get(group)?.delete(round);
    this.stats.rounds++;
    this.stats.received += arrived.length;
    this.stats.missing += others.length - arrived.length;
    const contributions = [{ sender: self, round, values: mine }, ...arrived.map(([sender, values]) => ({ sender, round, values }))];
    return aggregate(contributions, round, { aggregator: 'mean' }, undefined, this.components.passes);
  }

  private accept(group: string, sender: string, round: number, values: Float32Array[]): void {
    let rounds = this.inbox.get(group);
    if (!rounds) this.inbox.set(group, (rounds = new Map()));
    for (const old of rounds.keys()) if (old + KEEP_ROUNDS < this.exchange.round) rounds.delete(old);
    let senders = rounds.get(round);
    if (!senders) rounds.set(round, (senders = new Map()));
    senders.set(sender, values);
  }
}
