// Reduce-scatter + all-gather for periodic averaging: a node's bytes per round stay about twice its
// compressed delta whatever the group's size, instead of (N−1)× under all-to-all.
//   reduce   the holders, in peer-id order, own the delta's parts in turn (src/averaging/partition.ts);
//            each sends part k of its delta, with its whole delta's norm, to part k's owner.
//   owner    aggregates its parts from what arrived by the deadline, as all-to-all would the whole
//            delta: the outlier screen judges each sender by its stated whole-delta norm (the exchange
//            refuses a part larger than that norm, so a sender cannot understate it), late parts
//            count by staleness, the trimmed mean trims per coordinate. The result is encoded with
//            the group's codec (error feedback kept by the owner) and sent to every holder (gather).
//   holder   applies each part's result as decoded, the owner too, so holders that start equal stay
//            equal. A result larger than the screen's limit is refused and its sender flagged.
// A part whose result has not come a deadline after the owner's phase (its owner dropped): every
// holder sends its part to the fallback owner (the next holder in order), which aggregates what
// comes within a deadline and gathers it. A part for which nothing comes after two more deadlines
// (the fallback dropped too, or only some holders missed the owner's result) keeps this holder's
// own delta for the round ("unaveraged" in the stats): nothing waits longer.
// Under small groups (topology "groups") the holders of a round are this node's group of that round
// only (src/averaging/groups.ts): parts, owners and gathers are the group's, and only parts of the
// round itself are used, since an earlier round's went to another group.
import {
  aggregate, fallbackOf, holderOrder, ownerOf, slicePart, writePart,
  type Contribution, type NormScreen, type Part, type RoundPasses,
} from '../../src/averaging/index.ts';
import type { Codec, CodecState } from '../../src/compress/index.ts';
import { encodePart, KEEP_ROUNDS, type DeltaExchange, type PartArrival } from './exchange.ts';
import type { AveragingOptions, AveragingStats } from './index.ts';

/** What reduce-scatter shares with the periodic strategy that runs it. */
export interface ScatterContext {
  exchange: DeltaExchange;
  options: AveragingOptions;
  stats: AveragingStats;
  codecFor(group: string): Codec;
  /** Who runs the mean's per-value passes. */
  passes: RoundPasses;
  /** The group's codec states for a layout of `count` parts (all dropped when the count changes). */
  codecStates(group: string, count: number): (key: string) => CodecState;
  screen(group: string): NormScreen;
  /** A peer's part of round `round` arrived now (for the pace bookkeeping). */
  heard(peer: string, round: number): void;
  /** Awaited peers that did not deliver by the deadline. */
  missed(peers: readonly string[]): void;
  /** The holders averaging together in round `round`, this node included; absent: every holder of the group. */
  roundMembers?(group: string, round: number): string[];
}

/** One round of one group at this node. */
interface Round {
  group: string;
  round: number;
  ordered: string[];
  layout: Part[];
  codec: Codec;
  mine: Float32Array[];
  myNorm: number;
  reduceMessage(index: number): Parameters<DeltaExchange['post']>[2];
  /** Each part's result as this node applies it. */
  results: Map<number, Float32Array[]>;
}

export class ReduceScatter {
  /** group → reduce parts sent to this node (as owner or fallback), not yet used. */
  private readonly reduces = new Map<string, PartArrival[]>();
  /** group → results gathered from owners, by `${round}#${index}` (the first to come is kept). */
  private readonly gathers = new Map<string, Map<string, PartArrival>>();

  constructor(private readonly context: ScatterContext) {}

  /** Parts the group is cut into: as many per holder, enough that each fits a message. */
  count(group: string, round: number): number {
    return this.context.exchange.partCount(group, this.ordered(group, round).length);
  }

  accept(group: string, arrival: PartArrival): string | undefined {
    const { exchange, options } = this.context;
    const { sender, round, index } = arrival;
    const ordered = this.ordered(group, round);
    const roles = [ownerOf(index, ordered), fallbackOf(index, ordered)];
    const forget = (r: number) => r + KEEP_ROUNDS < exchange.round;
    if (arrival.phase === 'reduce') {
      if (!roles.includes(options.self)) return `part ${index} is neither owned here nor fallen back on here`;
      const same = (a: PartArrival) => a.sender === sender && a.round === round && a.index === index;
      const kept = (this.reduces.get(group) ?? []).filter((a) => !forget(a.round) && !same(a));
      kept.push(arrival);
      this.reduces.set(group, kept);
      this.context.heard(sender, round);
      return undefined;
    }
    if (!roles.includes(sender)) return `peer ${sender} neither owns part ${index} nor falls back on it`;
    let gathered = this.gathers.get(group);
    if (!gathered) this.gathers.set(group, (gathered = new Map()));
    for (const [key, old] of gathered) if (forget(old.round)) gathered.delete(key);
    const key = `${round}#${index}`;
    if (!gathered.has(key)) gathered.set(key, arrival);
    return undefined;
  }

  resetGroup(group: string): void {
    this.reduces.delete(group);
    this.gathers.delete(group);
  }

  /** The round's mean delta of the group; `awaited` are the other holders worth waiting for. */
  async average(group: string, round: number, deltas: readonly Float32Array[], awaited: readonly string[]): Promise<Float32Array[]> {
    const { exchange, options, stats } = this.context;
    const ordered = this.ordered(group, round);
    const count = exchange.partCount(group, ordered.length);
    const codec = this.context.codecFor(group);
    // The deltas are the outer step's arrays (or a copy), not read again but for their lengths: decoded over them.
    const states = this.context.codecStates(group, count);
    const { layout, messages, decoded: mine } = exchange.encodeGroup(group, codec, deltas, count, states, true);
    const myNorm = this.context.passes.l2Norm(mine);
    const r: Round = {
      group, round, ordered, layout, codec, mine, myNorm, results: new Map(),
      reduceMessage: (index) => ({
        round, steps: options.every, codec: codec.spec, part: { index, count }, phase: 'reduce', norm: myNorm, parts: messages[index],
      }),
    };
    for (const part of layout) {
      const owner = ownerOf(part.index, ordered);
      if (owner !== options.self) exchange.post(group, [owner], r.reduceMessage(part.index));
    }
    const owned = layout.filter((p) => ownerOf(p.index, ordered) === options.self).map((p) => p.index);
    const others = awaited.filter((peer) => ordered.includes(peer));
    await this.reduceParts(r, owned, others);
    await this.collect(r, options.deadlineMs);

    const lost = layout.map((p) => p.index).filter((k) => !r.results.has(k));
    if (lost.length) {
      // Their owners dropped: the fallback owners take them, waiting for no owner that dropped.
      for (const k of lost) {
        const fallback = fallbackOf(k, ordered);
        if (fallback !== options.self) exchange.post(group, [fallback], r.reduceMessage(k));
      }
      const owners = new Set(lost.map((k) => ownerOf(k, ordered)));
      const mineToTake = lost.filter((k) => fallbackOf(k, ordered) === options.self);
      await this.reduceParts(r, mineToTake, others.filter((peer) => !owners.has(peer)));
      await this.collect(r, 2 * options.deadlineMs);
      stats.fallbacks += lost.filter((k) => r.results.has(k)).length;
    }
    const mean = deltas.map((d) => new Float32Array(d.length));
    for (const part of layout) {
      let result = r.results.get(part.index);
      if (!result) {
        stats.unaveraged++;
        result = slicePart(mine, part);
      }
      writePart(mean, part, result);
    }
    return mean;
  }

  private ordered(group: string, round: number): string[] {
    const { options, exchange, roundMembers } = this.context;
    return holderOrder(roundMembers?.(group, round) ?? [options.self, ...exchange.others(group)]);
  }

  /** Aggregates parts `indices` from `awaited` (by the deadline) and this node, and gathers the results to every holder. */
  private async reduceParts(r: Round, indices: readonly number[], awaited: readonly string[]): Promise<void> {
    if (!indices.length) return;
    const { exchange, options, stats } = this.context;
    const { group, round, layout, codec } = r;
    const count = layout.length;
    const sameRound = this.context.roundMembers !== undefined;
    const arrivals = () => (this.reduces.get(group) ?? [])
      .filter((a) => a.count === count && indices.includes(a.index) && (!sameRound || a.round === round));
    const has = (peer: string) => indices.every((k) => arrivals().some((a) => a.sender === peer && a.index === k && a.round >= round));
    await exchange.wait(group, round, () => awaited.every(has));
    const missed = awaited.filter((peer) => !has(peer));
    this.context.missed(missed);
    stats.missing += missed.length;
    const taken = arrivals();
    this.reduces.set(group, (this.reduces.get(group) ?? []).filter((a) => !taken.includes(a)));

    // Each (sender, round) is judged once, by the whole-delta norm it states.
    const senders = [...new Map(taken.map((a) => [`${a.sender}#${a.round}`, a])).values()];
    const { accepted, refused } = this.context.screen(group).screenNorms(r.myNorm, senders, senders.map((a) => a.norm));
    for (const { contribution: a, norm, limit } of refused) {
      exchange.flag(a.sender);
      options.log?.(`delta ${group}#${a.round} from ${a.sender} refused: norm ${norm.toExponential(2)} is over ${limit.toExponential(2)}`);
    }
    stats.received += accepted.length;
    stats.late += accepted.filter((a) => a.round < round).length;
    const ok = new Set(accepted.map((a) => `${a.sender}#${a.round}`));
    const states = this.context.codecStates(group, count);
    for (const k of indices) {
      const part = layout[k];
      const contributions: Contribution[] = [{ sender: options.self, round, values: slicePart(r.mine, part) }];
      for (const a of taken) if (a.index === k && ok.has(`${a.sender}#${a.round}`)) contributions.push(a);
      // The result travels in the group's codec; what the owner applies is what the others decode.
      const mean = aggregate(contributions, round, options, undefined, this.context.passes);
      const { message, decoded } = encodePart(codec, part, mean, (key) => states(`gather/${key}`));
      r.results.set(k, decoded);
      exchange.countEncoded(decoded.reduce((n, v) => n + v.length, 0), message);
      const gather = { round, steps: options.every, codec: codec.spec, part: { index: k, count }, phase: 'gather' as const, parts: message };
      exchange.post(group, r.ordered.filter((peer) => peer !== options.self), gather);
    }
  }

  /** Waits up to `ms` for the results of the parts not yet in, and takes those that pass the screen's limit. */
  private async collect(r: Round, ms: number): Promise<void> {
    const { exchange } = this.context;
    const { group, round, layout } = r;
    const gathered = (k: number) => this.gathers.get(group)?.get(`${round}#${k}`);
    const pending = () => layout.filter((p) => !r.results.has(p.index));
    await exchange.wait(group, round, () => pending().every((p) => gathered(p.index)), ms);
    const limit = this.context.screen(group).limit(r.myNorm);
    for (const part of pending()) {
      const arrival = gathered(part.index);
      if (!arrival || arrival.count !== layout.length) continue;
      this.gathers.get(group)!.delete(`${round}#${part.index}`);
      const norm = this.context.passes.l2Norm(arrival.values);
      if (norm > limit) {
        exchange.flag(arrival.sender);
        const why = `norm ${norm.toExponential(2)} is over ${limit.toExponential(2)}`;
        this.context.options.log?.(`result of ${group}#${round} part ${part.index} from ${arrival.sender} refused: ${why}`);
        continue;
      }
      r.results.set(part.index, arrival.values);
    }
  }
}
