// The delta protocol under every averaging strategy: cuts a group's delta into parts that fit a
// message, sends them, reassembles what arrives, checks every message, and lets a round wait for
// them until a deadline. Every message is untrusted: an unadmitted sender, a wrong job, group or
// codec, a part count other than ours, parts that do not decode to the part's shapes, non-finite
// values, or a reduce part larger than the norm its sender states are refused (all but the job,
// group and count flag the sender: those can be a plan change we have not seen yet).
import {
  f32Tensor, MAX_DELTAS_PER_REQUEST, tensorF32, TENSOR_MESSAGE_CAP, truncateReason, type DeltaRefusals, type NamedTensor, type ParameterDelta,
} from '../../proto/index.ts';
import {
  firstNonFinite, isWholeGroup, jsPasses, partCount, partition, slicePart, writePart, type Part, type RoundPasses,
} from '../../src/averaging/index.ts';
import { decodeTensors, encodeTensorsDecoded, type Codec, type CodecState } from '../../src/compress/index.ts';
import type { Param } from '../../src/model/params.ts';
import { RefusedError, TurnBatches, type DialTarget } from '../../src/p2p/index.ts';
import type { AveragingComponents, AveragingOptions, AveragingStats } from './index.ts';

/** Contributions older than this many rounds are refused (and dropped from the inbox). */
export const KEEP_ROUNDS = 4;
/** How often a delta is offered again to a holder that does not serve averaging yet. */
const JOINING_RETRY_MS = 200;

/** A reduce-scatter message, checked, with its part decoded (one array per segment). */
export interface PartArrival {
  sender: string;
  round: number;
  phase: 'reduce' | 'gather';
  index: number;
  count: number;
  /** reduce: the sender's whole-delta norm. */
  norm: number;
  values: Float32Array[];
}

/** A strategy's side of the exchange: how a group travels, and where checked contributions go. */
export interface DeltaInbox {
  codec(group: string): Codec;
  /** A whole contribution (reassembled first when it came in parts). */
  accept(group: string, sender: string, round: number, values: Float32Array[], norm?: number): void;
  /** Arrays of these lengths to decode a contribution in one message into (the strategy's to free); absent: new ones. */
  spare?(group: string, lengths: readonly number[]): Float32Array[] | undefined;
  /** reduce-scatter: parts each holder owns or gathers back; absent, such messages are refused. */
  parts?: {
    /** Parts the group is cut into in round `round` under reduce-scatter: a message of another count is refused. */
    count(group: string, round: number): number;
    /** Takes a part, or returns why it is not ours to take (refused without flagging the sender). */
    accept(group: string, arrival: PartArrival): string | undefined;
  };
}

/** What encodeGroup gives: each part's wire tensors, and the values receivers will decode from them. */
export interface EncodedGroup {
  layout: Part[];
  messages: NamedTensor[][];
  decoded: Float32Array[];
}

/** Messages for one peer posted in the current turn, sent together when it ends. */
interface Outbox {
  peer: string;
  target: DialTarget;
  messages: ParameterDelta[];
  bytes: number;
}

/** A stated norm may exceed the norm a receiver computes by f64 rounding, no more. */
const NORM_SLACK = 1 + 1e-9;

/** A contribution arriving in parts: the parts so far, by index. */
interface Assembly {
  round: number;
  count: number;
  parts: Map<number, Float32Array[]>;
}

export class DeltaExchange {
  readonly stats: AveragingStats = {
    rounds: 0, received: 0, late: 0, missing: 0, refused: 0, flagged: new Set(), resyncs: 0, fallbacks: 0, unaveraged: 0,
    encodedBytes: 0, rawBytes: 0,
  };
  /** The round under way here. */
  round = 0;
  /** Rounds waiting for contributions, by `${group}#${round}`. */
  private readonly waiting = new Map<string, () => void>();
  /** The newest round heard from each peer. */
  private readonly peerRounds = new Map<string, number>();
  /** Parts of contributions not yet complete, by `${group}#${round}#${sender}`. */
  private readonly assemblies = new Map<string, Assembly>();
  /** Messages posted this turn, by peer (see post). */
  private readonly outboxes = new TurnBatches<Outbox>((outbox) => this.send(outbox));
  /** Each group's layouts, by `${group}/${count}`. */
  private readonly layouts = new Map<string, Part[]>();
  /** Values in one part: half the message cap at 4 bytes a value, the rest room for names and framing. */
  readonly maxPartValues: number;
  private readonly passes: RoundPasses;

  constructor(
    private readonly components: AveragingComponents,
    private readonly options: AveragingOptions,
    private readonly inbox: DeltaInbox,
  ) {
    this.maxPartValues = Math.floor((options.messageCap ?? TENSOR_MESSAGE_CAP) / 8);
    this.passes = components.passes ?? jsPasses;
  }

  async serve(): Promise<void> {
    const { rpc } = this.components;
    await rpc.handle('delta', (delta, { peer }) => {
      this.receive(delta, peer.toString());
      return { accepted: true };
    }, { maxConcurrent: 64 });
    await rpc.handle('deltas', ({ deltas }, { peer }) => {
      const refusals: DeltaRefusals['refusals'] = [];
      deltas.forEach((delta, index) => {
        try {
          this.receive(delta, peer.toString());
        } catch (err) {
          if (!(err instanceof RefusedError)) throw err;
          refusals.push({ index, reason: truncateReason(err.message) });
        }
      });
      return { refusals };
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

  /** Parts the group's delta is cut into when `owners` holders each own as many of them. */
  partCount(group: string, owners: number): number {
    return partCount(this.params(group), owners, this.maxPartValues);
  }

  /** The group's parts at `count` (cached: shapes do not change while a group is held). */
  layout(group: string, count: number): Part[] {
    const key = `${group}/${count}`;
    let parts = this.layouts.get(key);
    if (!parts) this.layouts.set(key, (parts = partition(this.params(group), count)));
    return parts;
  }

  /**
   * Encodes the group's values part by part (`state` gives each segment's codec state), and
   * decodes them back: what receivers will decode is what this node averages with. `inPlace`: the
   * caller is done with `values`, and a group in one message may decode into them (see encodeTensorsDecoded).
   */
  encodeGroup(
    group: string, codec: Codec, values: readonly Float32Array[], count: number, state: (key: string) => CodecState, inPlace = false,
  ): EncodedGroup {
    const layout = this.layout(group, count);
    // A group in one message keeps the codec's decoded arrays; parts are copied into place as they are encoded.
    const oneWhole = layout.length === 1 && isWholeGroup(layout[0], values.map((v) => v.length));
    const decoded: Float32Array[] = oneWhole ? [] : values.map((v) => new Float32Array(v.length));
    const messages = layout.map((part) => {
      const encoded = encodePart(codec, part, slicePart(values, part), state, inPlace && oneWhole);
      if (oneWhole) decoded.push(...encoded.decoded);
      else writePart(decoded, part, encoded.decoded);
      return encoded.message;
    });
    this.countEncoded(values.reduce((n, v) => n + v.length, 0), messages.flat());
    return { layout, messages, decoded };
  }

  /** Counts an encoded update of `values` f32 values: the codec's compression, as the node reports it. */
  countEncoded(values: number, message: readonly NamedTensor[]): void {
    this.stats.rawBytes += 4 * values;
    this.stats.encodedBytes += message.reduce((n, t) => n + t.tensor.data.byteLength, 0);
  }

  /** Sends a whole contribution to the group's other holders, a message per part, without waiting for them. */
  sendAll(group: string, round: number, steps: number, codec: string, messages: NamedTensor[][]): void {
    const count = messages.length;
    messages.forEach((parts, index) => {
      this.post(group, this.others(group), { round, steps, codec, parts, ...(count > 1 ? { part: { index, count } } : {}) });
    });
  }

  /**
   * Sends one message to each of `peers`, without waiting for them. Messages posted to a peer in the same turn (a
   * round's groups start together) travel as one `deltas` request: each request costs both ends ~4 ms of CPU beyond
   * its bytes, and a round of the demo job posts 33.
   */
  post(group: string, peers: readonly string[], body: Omit<ParameterDelta, 'jobId' | 'group'>): void {
    const message: ParameterDelta = { jobId: this.options.jobId, group, ...body, parts: this.corrupt(body.parts) };
    const bytes = message.parts.reduce((n, { tensor }) => n + tensor.data.byteLength, 0);
    const batchBytes = (this.options.messageCap ?? TENSOR_MESSAGE_CAP) / 2;
    for (const peer of peers) {
      const target = this.components.directory.address(peer);
      if (!target) continue;
      const outbox = this.outboxes.batch(
        peer, () => ({ peer, target, messages: [], bytes: 0 }),
        (open) => open.bytes + bytes <= batchBytes && open.messages.length < MAX_DELTAS_PER_REQUEST,
      );
      outbox.messages.push(message);
      outbox.bytes += bytes;
    }
  }

  /** One request for an outbox's messages (`delta` for one, `deltas` for several), retried as post() promises. */
  private send({ peer, target, messages }: Outbox): void {
    const { deadlineMs, log } = this.options;
    const what = (m: ParameterDelta) =>
      `${m.phase ?? 'delta'} ${m.group}#${m.round}${m.part ? ` part ${m.part.index}/${m.part.count}` : ''}`;
    const sent = performance.now();
    const request = async (): Promise<void> => {
      if (messages.length === 1) {
        await this.components.rpc.request(target, 'delta', messages[0], { timeout: deadlineMs });
        return;
      }
      const { refusals } = await this.components.rpc.request(target, 'deltas', { deltas: messages }, { timeout: deadlineMs });
      for (const { index, reason } of refusals) log?.(`${what(messages[index])} to ${peer} refused: ${reason}`);
    };
    const attempt = async (): Promise<void> => {
      try {
        await request();
      } catch (err) {
        // A holder still joining (fetching weights or text) serves no averaging yet: ask again until the deadline.
        const joining = err instanceof RefusedError && err.reason === 'unsupported' && performance.now() - sent < deadlineMs;
        if (!joining) throw err;
        await new Promise((resolve) => setTimeout(resolve, JOINING_RETRY_MS));
        return attempt();
      }
    };
    // Once more on failure: two nodes dialing each other at the same moment can reset the first streams.
    attempt().catch(attempt).catch((err: Error) => log?.(`${messages.map(what).join(', ')} to ${peer} failed: ${err.message}`));
  }

  /** Resolves when `complete()` holds (checked again at each arrival for the group) or after `ms` (default: the deadline). */
  async wait(group: string, round: number, complete: () => boolean, ms = this.options.deadlineMs): Promise<void> {
    if (complete()) return;
    const key = `${group}#${round}`;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
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

  private params(group: string): Param[] {
    const params = this.components.groups().get(group);
    if (!params) throw new RangeError(`group ${group} is not held here`);
    return params;
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
    const { group, round, phase } = delta;
    if (!groups().has(group)) throw new RefusedError(`group ${group} is not held here`);
    if (!directory.members(group).includes(peer)) refuse(`peer ${peer} does not hold ${group}`);
    if (round + KEEP_ROUNDS < this.round) throw new RefusedError(`round ${round} of ${group} is over (now ${this.round})`);
    if (round > this.round + KEEP_ROUNDS) {
      // Kept only as the peer's progress (a holder this far behind reloads state): buffering it would let a peer grow our memory.
      this.peerRounds.set(peer, Math.max(this.peerRounds.get(peer) ?? 0, round));
      throw new RefusedError(`round ${round} of ${group} is more than ${KEEP_ROUNDS} rounds ahead of this holder's ${this.round}`);
    }
    const codec = this.inbox.codec(group);
    if (delta.codec !== codec.spec) refuse(`${group} travels as ${codec.spec}, got ${delta.codec}`);
    const { parts } = this.inbox;
    if (phase && !parts) throw new RefusedError(`${group} is averaged all-to-all here, not by reduce-scatter`);
    const count = phase ? parts!.count(group, round) : this.partCount(group, 1);
    const { index } = delta.part ?? { index: 0 };
    if ((delta.part?.count ?? 1) !== count) {
      throw new RefusedError(`${group}${phase ? ` (${phase})` : ''} is cut into ${count} parts here, got ${delta.part?.count ?? 1}`);
    }
    const part = this.layout(group, count)[index];
    let values: Float32Array[] = [];
    // A contribution in one message may reuse arrays of a round that is over (no fresh 15 MB per arrival).
    const spare = phase || count > 1 ? undefined : this.inbox.spare?.(group, part.segments.map((s) => s.length));
    try {
      values = decodeTensors(codec, part.segments, delta.parts, spare);
    } catch (err) {
      refuse(`${group}: ${(err as Error).message}`);
    }
    // One pass for both checks: the norm is non-finite exactly when a value is (f32 squares cannot overflow f64).
    const partNorm = this.passes.l2Norm(values);
    const bad = Number.isFinite(partNorm) ? undefined : firstNonFinite(values);
    if (bad) refuse(`${group}: ${part.segments[bad.tensor].name} has a non-finite value at ${bad.index}`);
    const norm = delta.norm ?? 0;
    if (phase === 'reduce' && partNorm > norm * NORM_SLACK) {
      refuse(`${group}: part ${index} has norm ${partNorm.toExponential(3)}, over the delta's stated norm ${norm.toExponential(3)}`);
    }
    if (phase) {
      const reason = parts!.accept(group, { sender: peer, round, phase, index, count, norm, values });
      if (reason) throw new RefusedError(`${group}: ${reason}`);
    } else {
      const whole = this.assemble(group, peer, round, part, count, values);
      if (whole) this.inbox.accept(group, peer, round, whole, count === 1 ? partNorm : undefined);
    }
    this.peerRounds.set(peer, Math.max(this.peerRounds.get(peer) ?? 0, round));
    // Each waiting round of the group checks whether it now has what it waits for.
    for (const [key, wake] of this.waiting) if (key.startsWith(`${group}#`)) wake();
  }

  /** The whole contribution once its last part is in; undefined before. */
  private assemble(
    group: string, sender: string, round: number, part: Part, count: number, values: Float32Array[],
  ): Float32Array[] | undefined {
    const params = this.params(group);
    if (count === 1 && isWholeGroup(part, params.map((p) => p.value.length))) return values;
    for (const [key, old] of this.assemblies) if (old.round + KEEP_ROUNDS < this.round) this.assemblies.delete(key);
    const key = `${group}#${round}#${sender}`;
    let assembly = this.assemblies.get(key);
    if (!assembly || assembly.count !== count) this.assemblies.set(key, (assembly = { round, count, parts: new Map() }));
    assembly.parts.set(part.index, values);
    if (assembly.parts.size < count) return undefined;
    this.assemblies.delete(key);
    const assembled = params.map((p) => new Float32Array(p.value.length));
    for (const [index, partValues] of assembly.parts) writePart(assembled, this.layout(group, count)[index], partValues);
    return assembled;
  }
}

/**
 * A part's values (one array per segment) as wire tensors, and what a receiver decodes of them (over `values`
 * when `inPlace`). `state` gives each segment's codec state by its tensor's name and rows, so a new layout starts new states.
 */
export function encodePart(
  codec: Codec, part: Part, values: readonly Float32Array[], state: (key: string) => CodecState, inPlace = false,
): { message: NamedTensor[]; decoded: Float32Array[] } {
  const tensors = part.segments.map((s, i) => ({
    name: s.name, shape: s.shape, delta: values[i], state: state(`${s.name}@${s.rowStart}-${s.rowEnd}`),
  }));
  return encodeTensorsDecoded(codec, tensors, inPlace);
}
