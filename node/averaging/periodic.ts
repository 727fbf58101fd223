// Periodic averaging (DiLoCo-style): every `every` local steps each holder sends its pseudo-gradient
// (parameter delta since the last round) through the group's codec, error feedback kept here per
// tensor, then applies an outer step with whatever arrived by the deadline: the mean (or trimmed
// mean) of the deltas, late ones weighted by staleness. Only holders at most a round behind that
// kept the last deadline are waited for (a slower one's deltas count when they come); a holder
// that finds itself rounds behind fetches fresh state instead of sending. Arrivals whose norm is
// far above the group's recent median are refused and their sender flagged. How the deltas travel
// is the job's `topology`: all-to-all (here), reduce-scatter (reduce-scatter.ts), or small groups per
// round that reduce-scatter among themselves (src/averaging/groups.ts). Groups average parameters, not
// deltas: holders of different groups drift apart, and averaging deltas would never bring them back
// together (each applies its group's mean delta to its own anchor). With outer lr 1 and no momentum a
// holder ends the round at its group's mean parameters; the outer step takes mean − anchor as its delta.
import { sparseCodecOf } from '../../proto/index.ts';
import {
  aggregate, groupOf, jsPasses, NormScreen, OuterStep, type Contribution, type RoundPasses,
} from '../../src/averaging/index.ts';
import { codecsForGroups, type Codec, type CodecState } from '../../src/compress/index.ts';
import type { Param } from '../../src/model/params.ts';
import { DeltaExchange, KEEP_ROUNDS } from './exchange.ts';
import type { Averager, AveragingComponents, AveragingOptions, AveragingStats } from './index.ts';
import { ReduceScatter } from './reduce-scatter.ts';

/** A holder this many rounds behind a peer reloads the group instead of sending. */
const MAX_LAG = 3;
/** topology groups: the most holders in a round's group when the job does not say. */
const DEFAULT_GROUP_SIZE = 4;

/** overlap: a group's round under way while training goes on. */
interface RoundInFlight {
  outer: OuterStep;
  params: Param[];
  /** The values at the round's boundary: training since then is kept on top of the round's result. */
  boundary: Float32Array[];
  /** Resolves once the mean is set (at the latest by the round's deadline). */
  landing: Promise<void>;
  mean?: Float32Array[];
  failure?: unknown;
}

export class PeriodicAveraging implements Averager {
  readonly stats: AveragingStats;
  private readonly exchange: DeltaExchange;
  private readonly codecFor: (group: string) => Codec;
  /** group → contributions not yet used. */
  private readonly pending = new Map<string, Contribution[]>();
  /** When this node started each recent round, to tell how far behind a peer delivers. */
  private readonly roundStarts = new Map<number, number>();
  /**
   * Peers whose last contribution came later than the deadline after this node started that
   * round, or not at all: slower than this node, so not waited for (what they send still counts
   * when it comes, weighted by staleness) until they deliver in time again.
   */
  private readonly slowPeers = new Set<string>();
  private readonly outer = new Map<string, OuterStep>();
  private readonly screens = new Map<string, NormScreen>();
  /** Error-feedback state, by `${group}/${segment}` (see exchange.ts's encodePart). */
  private readonly codecStates = new Map<string, CodecState>();
  /** The part count each group's codec states belong to: another count drops them. */
  private readonly stateCounts = new Map<string, number>();
  private readonly scatter?: ReduceScatter;
  /** overlap: each group's round that started at a boundary and lands at a later step. */
  private readonly inFlight = new Map<string, RoundInFlight>();
  /** Arrays of arrivals a round has used, by group: the next arrivals decode into them (see DeltaInbox.spare). */
  private readonly spares = new Map<string, Float32Array[][]>();
  /** By group, the arrays spare() made (in a node's kernel heap, where the round's passes use them in place), until freed. */
  private readonly arrivalArrays = new Map<string, Set<Float32Array>>();
  /** topology groups: each round averages parameters within this node's small group of the round. */
  private readonly grouped: boolean;
  private readonly passes: RoundPasses;

  constructor(private readonly components: AveragingComponents, private readonly options: AveragingOptions) {
    const groups: Record<string, string> = options.expertCodec ? { expert: options.expertCodec } : {};
    this.passes = components.passes ?? jsPasses;
    this.codecFor = codecsForGroups({ default: options.codec ?? 'f32', groups }, this.passes);
    this.grouped = options.topology === 'groups';
    const sparse = sparseCodecOf(options);
    if (this.grouped && sparse) throw new RangeError(`topology groups averages parameters: codec ${sparse} would mostly zero them`);
    const scatter = options.topology === 'reduce-scatter' || this.grouped;
    this.exchange = new DeltaExchange(components, options, {
      codec: (group) => this.codecFor(group),
      accept: (group, sender, round, values, norm) => this.accept(group, sender, round, values, norm),
      spare: (group, lengths) => this.spare(group, lengths),
      ...(scatter ? {
        parts: { count: (group, round) => this.scatter!.count(group, round), accept: (group, a) => this.scatter!.accept(group, a) },
      } : {}),
    });
    this.stats = this.exchange.stats;
    if (scatter) {
      this.scatter = new ReduceScatter({
        exchange: this.exchange, options, stats: this.stats, codecFor: this.codecFor,
        passes: this.passes, codecStates: (group, count) => this.codecStatesOf(group, count),
        screen: (group) => this.screenOf(group),
        heard: (peer, round) => this.heard(peer, round),
        missed: (peers) => peers.forEach((peer) => this.slowPeers.add(peer)),
        ...(this.grouped ? { roundMembers: (group: string, round: number) => this.roundMembers(group, round) } : {}),
      });
    }
  }

  serve(): Promise<void> {
    return this.exchange.serve();
  }

  async afterBackward(): Promise<void> {}

  async afterUpdate(step: number): Promise<void> {
    this.applyLanded();
    if ((step + 1) % this.options.every !== 0) return;
    // overlap: at most one round in flight, so the previous one lands (within its deadline) before the next starts.
    await this.settle();
    const round = (step + 1) / this.options.every;
    this.exchange.round = round;
    this.roundStarts.set(round, performance.now());
    this.roundStarts.delete(round - KEEP_ROUNDS - 1);
    await Promise.all([...this.components.groups()].map(([group, params]) => this.outerRound(group, params, round)));
  }

  async settle(): Promise<void> {
    await Promise.all([...this.inFlight.values()].map((flight) => flight.landing));
    this.applyLanded();
  }

  /** overlap: applies the rounds whose mean has come, to parameters that trained on since their boundary. */
  private applyLanded(): void {
    for (const [group, flight] of this.inFlight) {
      if (flight.failure !== undefined) {
        this.inFlight.delete(group);
        throw flight.failure;
      }
      if (!flight.mean) continue;
      this.inFlight.delete(group);
      this.stats.rounds++;
      flight.outer.applyLate(flight.params.map((p) => p.value), flight.mean, flight.boundary);
    }
  }

  staleness(steps: number): number {
    return steps % this.options.every;
  }

  track(group: string, params: Param[]): void {
    this.resetGroup(group);
    this.outerOf(group, params);
  }

  resetGroup(group: string): void {
    this.inFlight.delete(group);
    this.spares.delete(group);
    this.pending.delete(group);
    this.freeUnheld(group); // with no spare or pending contribution left, all of the arrivals' arrays
    this.arrivalArrays.delete(group);
    this.outer.get(group)?.retire();
    this.outer.delete(group);
    this.screens.delete(group);
    for (const key of this.codecStates.keys()) if (key.startsWith(`${group}/`)) this.codecStates.delete(key);
    this.stateCounts.delete(group);
    this.scatter?.resetGroup(group);
  }

  private async outerRound(group: string, params: Param[], round: number): Promise<void> {
    const ahead = this.peerAhead(group, round);
    if (ahead && (await this.resync(group, params, ahead))) return;
    const outer = this.outerOf(group, params);
    const values = params.map((p) => p.value);
    // Alone in the group (an expert held once, a one-node swarm): nothing to encode, send or wait for.
    if (this.exchange.others(group).length === 0) {
      this.stats.rounds++;
      outer.applyOwn(values);
      return;
    }
    // Reads `values` only before its first await: under overlap, training moves them on meanwhile.
    const mean = this.roundMean(group, round, outer, values);
    if (!this.options.overlap) {
      await outer.during(mean.then((landed) => {
        if (outer.retired) return; // the group was forgotten meanwhile: its parameters are no longer this round's
        this.stats.rounds++;
        outer.apply(values, landed);
      }));
      return;
    }
    const flight: RoundInFlight = { outer, params, boundary: outer.boundary(values), landing: Promise.resolve() };
    // A failed round surfaces at the next step, as a waited-for one would at its boundary, not as an unhandled rejection.
    flight.landing = outer.during(mean).then((landed) => void (flight.mean = landed), (err: unknown) => void (flight.failure = err));
    this.inFlight.set(group, flight);
  }

  /** The round's mean delta of the group's holders (the outer step's input), by the job's topology. */
  private async roundMean(group: string, round: number, outer: OuterStep, values: Float32Array[]): Promise<Float32Array[]> {
    // Waited for: holders at most a round behind that keep pace with this node. Under groups a holder outside this
    // node's recent groups sent it nothing since: its last round heard says nothing about its pace.
    const recent = (peer: string) => this.grouped || (this.exchange.peerRound(peer) ?? round) >= round - 1;
    const keepsPace = (peer: string) => recent(peer) && !this.slowPeers.has(peer);
    const awaited = this.exchange.others(group).filter(keepsPace);
    if (this.grouped) return outer.delta(await this.scatter!.average(group, round, values.map((v) => Float32Array.from(v)), awaited));
    const deltas = outer.delta(values);
    return this.scatter ? this.scatter.average(group, round, deltas, awaited) : this.allToAll(group, round, outer, deltas, awaited);
  }

  /** topology groups: this node's group of round `round` among the group's holders. */
  private roundMembers(group: string, round: number): string[] {
    const { self, groupSize } = this.options;
    return groupOf(self, [self, ...this.exchange.others(group)], round, groupSize ?? DEFAULT_GROUP_SIZE);
  }

  /** Every holder sends its whole delta to every other and averages what it receives. */
  private async allToAll(group: string, round: number, outer: OuterStep, deltas: Float32Array[], awaited: string[]): Promise<Float32Array[]> {
    const { self, log } = this.options;
    const codec = this.codecFor(group);
    const count = this.exchange.partCount(group, 1);
    // What the others will decode of ours is what we average with: everyone uses the same numbers. It may
    // overwrite the deltas (the outer step's arrays, not read again this round).
    const { messages, decoded: mine } = this.exchange.encodeGroup(group, codec, deltas, count, this.codecStatesOf(group, count), true);
    const myNorm = this.passes.l2Norm(mine); // now, while the group's values are in cache
    this.exchange.sendAll(group, round, this.options.every, codec.spec, messages);
    const has = (peer: string) => (this.pending.get(group) ?? []).some((c) => c.sender === peer && c.round >= round);
    await this.exchange.wait(group, round, () => awaited.every(has));
    // Forgotten meanwhile (given up, or reloaded): what arrived since is a later round's, and no peer was late to this one.
    if (outer.retired) return mine;
    const missed = awaited.filter((peer) => !has(peer));
    for (const peer of missed) this.slowPeers.add(peer);
    const arrived = this.pending.get(group) ?? [];
    this.pending.set(group, []);
    this.stats.missing += missed.length;

    const { accepted, refused } = this.screenOf(group).screen(myNorm, arrived);
    for (const { contribution: c, norm, limit } of refused) {
      this.exchange.flag(c.sender);
      log?.(`delta ${group}#${c.round} from ${c.sender} refused: norm ${norm.toExponential(2)} is over ${limit.toExponential(2)}`);
    }
    this.stats.received += accepted.length;
    this.stats.late += accepted.filter((c) => c.round < round).length;
    // Into our decoded delta, not read after: the mean needs no 15 MB of its own.
    const mean = aggregate([{ sender: self, round, values: mine }, ...accepted], round, this.options, mine, this.passes);
    this.recycle(group, arrived);
    return mean;
  }

  /** A peer of the group at least MAX_LAG rounds ahead of us, if any. */
  private peerAhead(group: string, round: number): string | undefined {
    return this.exchange.others(group).find((peer) => (this.exchange.peerRound(peer) ?? 0) >= round + MAX_LAG);
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

  private outerOf(group: string, params: Param[]): OuterStep {
    let outer = this.outer.get(group);
    if (!outer) {
      const { outerLr, outerMomentum } = this.options;
      outer = new OuterStep(params.map((p) => p.value), { lr: outerLr, momentum: outerMomentum, passes: this.passes });
      this.outer.set(group, outer);
    }
    return outer;
  }

  private screenOf(group: string): NormScreen {
    let screen = this.screens.get(group);
    if (!screen) this.screens.set(group, (screen = new NormScreen(this.options.maxNormRatio)));
    return screen;
  }

  private codecStatesOf(group: string, count: number): (key: string) => CodecState {
    if (this.stateCounts.get(group) !== count) {
      for (const key of this.codecStates.keys()) if (key.startsWith(`${group}/`)) this.codecStates.delete(key);
      this.stateCounts.set(group, count);
    }
    return (name) => {
      const key = `${group}/${name}`;
      let state = this.codecStates.get(key);
      if (!state) this.codecStates.set(key, (state = {}));
      return state;
    };
  }

  /**
   * Keeps the arrays of contributions a round is done with (nothing else holds them), as many as the group has other
   * holders, and frees the arrays spare() made that neither a spare nor a pending contribution holds any longer: those
   * the spares had no room for, and those of arrivals dropped (stale, replaced, refused) since the last round.
   */
  private recycle(group: string, used: readonly Contribution[]): void {
    const spares = this.spares.get(group) ?? [];
    for (const c of used) if (spares.length < this.exchange.others(group).length) spares.push(c.values);
    this.spares.set(group, spares);
    this.freeUnheld(group);
  }

  /** Frees the arrays spare() made that neither a spare nor a pending contribution holds (used, dropped or refused since). */
  private freeUnheld(group: string): void {
    const made = this.arrivalArrays.get(group);
    if (!made) return;
    const held = new Set([...(this.spares.get(group) ?? []), ...(this.pending.get(group) ?? []).map((c) => c.values)].flat());
    for (const array of made) {
      if (held.has(array)) continue;
      made.delete(array);
      this.passes.free(array);
    }
  }

  /**
   * Arrays of these lengths for an arrival to decode into: kept ones, or new ones from the passes (those of arrivals
   * refused or dropped since are freed first, so a peer sending many bad messages cannot grow the heap); none when the
   * group's codec makes its own (or the topology reduce-scatters, whose inbox holds no whole contributions).
   */
  private spare(group: string, lengths: readonly number[]): Float32Array[] | undefined {
    if (this.scatter || !this.codecFor(group).decodesInto) return undefined;
    const spares = this.spares.get(group);
    const k = spares?.findIndex((arrays) => arrays.length === lengths.length && arrays.every((a, i) => a.length === lengths[i])) ?? -1;
    if (k >= 0) return spares!.splice(k, 1)[0];
    this.freeUnheld(group);
    let made = this.arrivalArrays.get(group);
    if (!made) this.arrivalArrays.set(group, (made = new Set()));
    const arrays = lengths.map((length) => this.passes.allocate(length));
    for (const array of arrays) made.add(array);
    return arrays;
  }

  /** A peer's contribution to round `round` arrived now: it keeps pace if within the deadline of our start of that round. */
  private heard(sender: string, round: number): void {
    const started = this.roundStarts.get(round);
    if (started === undefined || performance.now() - started <= this.options.deadlineMs) this.slowPeers.delete(sender);
    else this.slowPeers.add(sender);
  }

  private accept(group: string, sender: string, round: number, values: Float32Array[], norm?: number): void {
    this.heard(sender, round);
    const now = this.exchange.round;
    const kept = (this.pending.get(group) ?? []).filter((c) => c.round + KEEP_ROUNDS >= now && !(c.sender === sender && c.round === round));
    kept.push({ sender, round, values, ...(norm === undefined ? {} : { norm }) });
    this.pending.set(group, kept);
  }
}
