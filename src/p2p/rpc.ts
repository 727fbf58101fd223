// Request/response over libp2p streams: one length-prefixed request, one length-prefixed reply
// (an { ok } or { error } envelope, see proto/codec.ts), then both sides close. Everything a peer
// sends is untrusted: frames are capped per protocol, reads and writes time out, inbound streams
// are bounded per protocol, and every refused peer message is logged with its reason. Nothing a
// peer sends escapes a handler as an exception: the host keeps serving.
//
// Components style (as in js-libp2p): the transport (a libp2p host, or anything with the same
// three methods) and the codec are passed in, so a test can swap either.
import type { AbortOptions, Connection, Libp2p, PeerId, Stream, StreamHandlerOptions } from '@libp2p/interface';
import { isMultiaddr, multiaddr } from '@multiformats/multiaddr';
import {
  CHANNEL,
  channelIndex,
  PROTOCOLS,
  ProtocolError,
  truncateReason,
  type ChannelProtocol,
  type ErrorReply,
  type MessageCodec,
  type ProtocolName,
  type ProtocolSpec,
  type Reply,
  type RequestOf,
  type ResponseOf,
} from '../../proto/index.ts';
import { isRelayed } from './addresses.ts';
import { Channel, CHANNEL_SLACK_BYTES } from './channel.ts';
import { CancelledError, MalformedError, RefusedError, RemoteError, RpcError, TooLargeError } from './errors.ts';
import { frameStream, paceGuard, toRpcError, withDeadlines, type Deadlines, type Pace } from './framing.ts';

export type DialTarget = Parameters<Libp2p['dialProtocol']>[0];

/** What the RPC layer needs of an inbound stream's connection: the peer, and a relayed connection's limits. */
export type InboundConnection = Pick<Connection, 'remotePeer'> & Partial<Pick<Connection, 'limits'>>;

/** The part of a libp2p host the RPC layer uses. */
export interface RpcTransport {
  handle(
    protocol: string, handler: (stream: Stream, connection: InboundConnection) => void | Promise<void>, options?: StreamHandlerOptions,
  ): Promise<void>;
  unhandle(protocol: string, options?: AbortOptions): Promise<void>;
  dial(peer: DialTarget, options?: AbortOptions): Promise<Connection>;
  /** Open connections (a libp2p host's): lets a request reuse a relayed one that has room, which dial() never hands out. */
  getConnections?(): Connection[];
}

/** A bulk request (delta, state, base weights) and the connection it travelled on: direct, or through a relay. */
export interface Transfer {
  protocol: string;
  peer: string;
  via: 'direct' | 'relay';
  sent: number;
  received: number;
}

/** A peer message that was refused. */
export interface Rejection {
  protocol: string;
  peer: string;
  /** request: refused by the responder; response: a reply refused by the requester. */
  direction: 'request' | 'response';
  /** too-large, malformed, schema, tensor, version, truncated, stalled, busy, reset, ... */
  reason: string;
  message: string;
}

export interface RpcComponents {
  transport: RpcTransport;
  codec: MessageCodec;
  /** Called for every refused peer message; defaults to a console warning. */
  onReject?: (rejection: Rejection) => void;
  /** Called after every answered bulk request (see ProtocolSpec.bulk), saying which kind of connection it used. */
  onTransfer?: (transfer: Transfer) => void;
}

export interface RpcInit {
  /** Time allowed for one read or write of a message: a peer stalling longer is cut off. Default 30 s. */
  ioTimeoutMs?: number;
  /** Default deadline of a request, dial to reply. Default 60 s. */
  requestTimeoutMs?: number;
  /**
   * The slowest an inbound request may arrive, however large (a relayed link is a slow link, and a
   * slow peer must not pin a serving slot). Default: 5 s grace, then 32 KiB/s.
   */
  inboundPace?: Pace;
}

export interface HandleOptions {
  /** Requests of this protocol served at once, from all peers together; more are refused as busy. Default 16. */
  maxConcurrent?: number;
}

export interface RequestOptions {
  /** Deadline of this request in ms, dial to reply. */
  timeout?: number;
  signal?: AbortSignal;
  /** A request of a channel protocol (CHANNEL in proto/protocols.ts) travels on the peer's channel unless this is false. */
  channel?: boolean;
}

/**
 * The pause before asking again after `attempt` unanswered tries (0: the first): doubling from baseMs up to maxMs,
 * half of it random, so a crowd that failed together (a coordinator restarting, a swarm joining at once) spreads out.
 */
export function backoffMs(attempt: number, baseMs = 1000, maxMs = 30_000): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export interface HandlerContext {
  peer: PeerId;
  /** Aborts when the requester goes away. */
  signal: AbortSignal;
}

/** Serves one request; throw RefusedError to refuse it with a reason. */
export type Handler<P extends ProtocolName> = (message: RequestOf<P>, context: HandlerContext) => ResponseOf<P> | Promise<ResponseOf<P>>;

export function logRejection(rejection: Rejection): void {
  const { direction, protocol, peer, reason, message } = rejection;
  console.warn(`[p2p] refused ${direction} on ${protocol} from ${peer}: ${reason}: ${message}`);
}

const ERROR_REPLY_GRACE_MS = 1000;
/** Streams per connection beyond maxConcurrent that still get a busy reply rather than a reset. */
const BUSY_REPLY_STREAMS = 8;
/** A channel silent this long is closed (its node opens another with its next request). */
const CHANNEL_IDLE_MS = 300_000;
/** Channels one connection may hold at once: one per Rpc of the peer, and room for replacements while broken ones close. */
const CHANNELS_PER_CONNECTION = 8;

/** A protocol's handler (decoding, running and encoding one request) and its count of requests being served. */
interface Served {
  answer(bytes: Uint8Array, context: HandlerContext, reject: RejectRequest): Promise<Answer>;
  slots: { active: number; max: number };
}

/** Logs a refused request with its reason. */
type RejectRequest = (reason: string, message: string) => void;

/** A request's outcome: its encoded reply, or the error to send back. */
type Answer = { reply: Uint8Array; error?: undefined } | { error: ErrorReply };

export class Rpc {
  private readonly transport: RpcTransport;
  private readonly codec: MessageCodec;
  private readonly onReject: (rejection: Rejection) => void;
  private readonly onTransfer?: (transfer: Transfer) => void;
  private readonly ioTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly inboundPace: Pace;
  /** The handlers given to handle(), which the channel serves too. */
  private readonly served = new Map<ProtocolName, Served>();
  /** Channels to peers (by peer id), opened by the first request that needs one; undefined: the peer does not speak it. */
  private readonly channels = new Map<string, Promise<Channel | undefined>>();

  constructor(components: RpcComponents, init: RpcInit = {}) {
    this.transport = components.transport;
    this.codec = components.codec;
    this.onReject = components.onReject ?? logRejection;
    this.onTransfer = components.onTransfer;
    this.ioTimeoutMs = init.ioTimeoutMs ?? 30_000;
    this.requestTimeoutMs = init.requestTimeoutMs ?? 60_000;
    this.inboundPace = init.inboundPace ?? { graceMs: 5_000, bytesPerSecond: 32 * 1024 };
  }

  async handle<P extends ProtocolName>(protocol: P, handler: Handler<P>, options: HandleOptions = {}): Promise<void> {
    const maxConcurrent = options.maxConcurrent ?? 16;
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) throw new RangeError(`maxConcurrent must be a positive integer, got ${maxConcurrent}`);
    const slots = { active: 0, max: maxConcurrent };
    const served: Served = { answer: (bytes, context, reject) => this.answer(protocol, handler, bytes, context, reject), slots };
    this.served.set(protocol, served);
    // libp2p's own per-connection limit resets streams without a word; keep it a little above
    // ours so a few more can be told they are busy, while still bounding the streams (each
    // buffering up to the cap) that one connection may hold open.
    // Relayed connections carry limits (data, time) set by the relay: requests run over them too,
    // since a node behind a NAT may have no other way in; a sender checks a message fits first.
    await this.transport.handle(PROTOCOLS[protocol].id, (stream, connection) => this.serve(protocol, served, stream, connection), {
      maxInboundStreams: maxConcurrent + BUSY_REPLY_STREAMS,
      runOnLimitedConnection: true,
    });
  }

  async unhandle(protocol: ProtocolName): Promise<void> {
    this.served.delete(protocol);
    await this.transport.unhandle(PROTOCOLS[protocol].id);
  }

  /**
   * Serves the channel (see CHANNEL) for `protocols`: their requests go to the handlers handle() was given, as on
   * their own streams; while one of them has no handler (a node between jobs) its requests are refused.
   */
  async handleChannel(protocols: readonly ChannelProtocol[]): Promise<void> {
    // The largest request frame a channel here takes: the index byte and the largest request of these protocols.
    const frameCap = 1 + Math.max(...protocols.map((name) => PROTOCOLS[name].maxRequestBytes));
    await this.transport.handle(CHANNEL.id, (stream, connection) => this.serveChannel(stream, connection, protocols, frameCap), {
      maxInboundStreams: CHANNELS_PER_CONNECTION,
    });
  }

  /**
   * Sends `message` to `peer` (a peer id, multiaddrs, or a multiaddr string such as
   * /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...) and returns its response; throws an RpcError subclass
   * on any failure.
   */
  async request<P extends ProtocolName>(target: DialTarget | string, protocol: P, message: RequestOf<P>, options: RequestOptions = {}): Promise<ResponseOf<P>> {
    const peer = typeof target === 'string' ? multiaddr(target) : target;
    const spec = PROTOCOLS[protocol];
    const what = `${spec.id} request to ${peerName(peer)}`;
    if (options.signal?.aborted) throw new CancelledError(`${what}: cancelled`);
    let bytes: Uint8Array;
    try {
      bytes = this.codec.encodeRequest(protocol, message);
    } catch (err) {
      if (err instanceof ProtocolError && err.reason === 'too-large') throw new TooLargeError(`${what}: ${err.message}`);
      throw err; // an invalid message of our own is a bug here, not a peer's fault
    }
    const ms = options.timeout ?? this.requestTimeoutMs;
    const deadlines: Deadlines = { caller: options.signal, request: { signal: AbortSignal.timeout(ms), ms }, ioMs: ms };
    const rpcDeadlines = { ...deadlines, ioMs: this.ioTimeoutMs };
    const index = options.channel === false ? undefined : channelIndex(protocol);
    const channel = index === undefined ? undefined : await this.channelTo(peer, deadlines, what);
    const opened = channel ? undefined : await this.openRequestStream(peer, spec, bytes.length, deadlines, what);
    const stream = opened?.stream;
    const abort = () => stream?.abort(new CancelledError(`${what}: abandoned`));
    deadlines.caller?.addEventListener('abort', abort);
    deadlines.request!.signal.addEventListener('abort', abort);
    try {
      let replyBytes: Uint8Array;
      if (channel) {
        replyBytes = await withDeadlines(what, rpcDeadlines, (signal) => channel.request([Uint8Array.of(index!), bytes], signal));
        // The channel's frames are capped by its largest reply: each protocol's own cap holds too.
        if (replyBytes.length > spec.maxResponseBytes) {
          throw new TooLargeError(`${what}: a reply of ${replyBytes.length} bytes is over the ${spec.maxResponseBytes}-byte cap`);
        }
      } else {
        const frames = frameStream(stream!, spec.maxResponseBytes);
        await withDeadlines(what, rpcDeadlines, async (signal) => {
          await frames.write(bytes, { signal });
          await stream!.close({ signal }); // our side is done: the responder sees the end of the request
        });
        replyBytes = await withDeadlines(what, rpcDeadlines, async (signal) => (await frames.read({ signal })).subarray());
      }
      const reply = this.decodeReply(protocol, replyBytes, what);
      if (reply.error !== undefined) throw errorFromReply(reply.error, what);
      if (spec.bulk) {
        const via = opened?.relayed ? 'relay' : 'direct';
        const received = replyBytes.length;
        const transfer = { protocol: spec.id, peer: peerIdOf(peer) ?? peerName(peer), via, sent: bytes.length, received } as const;
        this.onTransfer?.(transfer);
      }
      return reply.ok;
    } catch (err) {
      const error = toRpcError(err, what);
      if (error instanceof TooLargeError || error instanceof MalformedError || error.reason === 'stalled') {
        this.reject({ protocol: spec.id, peer: peerName(peer), direction: 'response', reason: error.reason, message: error.message });
      }
      stream?.abort(error); // a channel stays in step (one reply per request); one whose request was abandoned closed itself
      throw error;
    } finally {
      deadlines.caller?.removeEventListener('abort', abort);
      deadlines.request!.signal.removeEventListener('abort', abort);
    }
  }

  /** A new stream for one request, and whether it goes through a relay. */
  private async openRequestStream(
    peer: DialTarget, spec: ProtocolSpec, size: number, deadlines: Deadlines, what: string,
  ): Promise<{ stream: Stream; relayed: boolean }> {
    let relayed = false;
    const openStream = async (signal: AbortSignal) => {
      const connection = this.openConnection(peer, size, spec.bulk === true) ?? await this.transport.dial(peer, { signal });
      const room = connection.limits?.bytes;
      if (room !== undefined && BigInt(size) > room) {
        throw new RefusedError(`${what}: ${size} bytes do not fit the ${room} bytes the relay allows this connection`, 'relay-limit');
      }
      relayed = connection.limits !== undefined || connection.remoteAddr.getComponents().some((c) => c.name === 'p2p-circuit');
      try {
        // The protocol's name goes out with the request (no round trip): a busy peer answers a call after one turn of its event loop, not two.
        return await connection.newStream(spec.id, { signal, runOnLimitedConnection: true, negotiateFully: false });
      } catch (err) {
        // A connection whose muxer has closed can still be the one dial() hands out: drop it so the retry dials anew.
        if (connection.status !== 'open' || /muxer/i.test((err as Error).message)) connection.abort(err as Error);
        throw err;
      }
    };
    const stream = await this.withDial(what, deadlines, openStream);
    return { stream, relayed };
  }

  /**
   * Runs `open` (once more if it fails but for a refusal) under the request's deadlines; a peer that cannot be
   * reached is refused as unreachable.
   */
  private withDial<T>(what: string, deadlines: Deadlines, open: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return withDeadlines(`${what}: could not open a stream`, deadlines, async (signal) => {
      try {
        return await open(signal);
      } catch (err) {
        if (err instanceof RefusedError || signal.aborted) throw err;
        return open(signal);
      }
    }).catch((err: RpcError) => {
      throw err instanceof RemoteError ? new RefusedError(err.message, 'unreachable') : err;
    });
  }

  /**
   * The channel to a peer named by id, opened by the first request that needs it (the others wait for it);
   * undefined when the peer does not speak it, or is reached only through a relay: its requests then go on their own streams.
   */
  private channelTo(peer: DialTarget, deadlines: Deadlines, what: string): Promise<Channel | undefined> {
    const peerId = peerIdOf(peer);
    if (peerId === undefined || this.onlyRelayed(peerId)) return Promise.resolve(undefined);
    const known = this.channels.get(peerId);
    if (known) return known;
    // A channel that closes, or fails to open, is forgotten: the next request opens another.
    const forget = () => {
      if (this.channels.get(peerId) === opening) this.channels.delete(peerId);
    };
    const opening = this.withDial(what, deadlines, async (signal) => {
      const connection = await this.transport.dial(peer, { signal });
      // A relayed connection carries a limited amount of data: requests over it take streams of their own, each checked to fit.
      return connection.limits === undefined ? connection.newStream(CHANNEL.id, { signal }) : undefined;
    }).then(
      (stream) => {
        if (stream) return new Channel(stream, CHANNEL.maxReplyFrameBytes, forget);
        forget(); // a direct connection may come later
        return undefined;
      },
      (err: RpcError) => {
        if (err instanceof RefusedError && err.reason === 'unsupported') return undefined;
        forget();
        throw err;
      },
    );
    this.channels.set(peerId, opening);
    return opening;
  }

  /**
   * An open connection to the target a request may use without dialing: libp2p's dial() hands out only
   * unlimited ones, so each request to a peer reached through a relay would open another circuit. A bulk
   * request to a target with a direct address dials instead (libp2p tries direct addresses first): it
   * goes through a relay only when no direct connection can be had.
   */
  private openConnection(target: DialTarget, size: number, bulk: boolean): Connection | undefined {
    const peer = peerIdOf(target);
    if (peer === undefined) return undefined;
    const open = this.openConnectionsTo(peer);
    const unlimited = open.find((c) => c.limits === undefined);
    if (unlimited || (bulk && hasDirectAddress(target))) return unlimited;
    return open.find((c) => (c.limits?.bytes === undefined || c.limits.bytes > BigInt(size)) && (c.limits?.seconds ?? Infinity) > 1);
  }

  /** Whether every open connection to the peer is limited (relayed): dialing would open another circuit, not a direct link. */
  private onlyRelayed(peerId: string): boolean {
    const open = this.openConnectionsTo(peerId);
    return open.length > 0 && open.every((c) => c.limits !== undefined);
  }

  /** The open connections to a peer (none when the transport cannot list them). */
  private openConnectionsTo(peerId: string): Connection[] {
    return this.transport.getConnections?.().filter((c) => c.status === 'open' && c.remotePeer.toString() === peerId) ?? [];
  }

  private decodeReply<P extends ProtocolName>(protocol: P, bytes: Uint8Array, what: string): Reply<ResponseOf<P>> {
    try {
      return this.codec.decodeReply(protocol, bytes);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      const message = `${what}: ${err.message}`;
      throw err.reason === 'too-large' ? new TooLargeError(message) : new MalformedError(message, err.reason);
    }
  }

  /** Serves one inbound stream. Never throws: a failing peer is logged and cut off. */
  private async serve<P extends ProtocolName>(protocol: P, served: Served, stream: Stream, connection: InboundConnection): Promise<void> {
    const spec = PROTOCOLS[protocol];
    const peer = connection.remotePeer;
    const what = `${spec.id} request from ${peer}`;
    const reject = this.requestRejecter(spec.id, peer.toString());
    const frames = frameStream(stream, spec.maxRequestBytes);
    const pace = paceGuard(stream, this.inboundPace);
    const { slots } = served;
    if (slots.active >= slots.max) {
      pace.stop();
      await this.replyError(protocol, frames, stream, this.busy(spec.id, slots.max, reject));
      return;
    }
    slots.active++;
    const gone = new AbortController(); // the requester reset or closed the stream
    const onClose = () => gone.abort();
    stream.addEventListener('close', onClose);
    try {
      const deadlines: Deadlines = { ioMs: this.ioTimeoutMs };
      let bytes: Uint8Array;
      try {
        bytes = await withDeadlines(what, { ...deadlines, pace }, async (signal) => (await frames.read({ signal })).subarray());
      } catch (err) {
        const error = toRpcError(err, what);
        reject(error.reason, error.message);
        if (error instanceof TooLargeError) await this.replyError(protocol, frames, stream, { code: 'too-large', message: error.message });
        else stream.abort(error);
        return;
      } finally {
        pace.stop(); // the request is in: from here the handler's time is not the peer's
      }
      const answer = await served.answer(bytes, { peer, signal: gone.signal }, reject);
      // The handler is done: the close that follows our reply must not abort its signal (an AbortError, with its stack, per request).
      stream.removeEventListener('close', onClose);
      if (answer.error) {
        await this.replyError(protocol, frames, stream, answer.error);
        return;
      }
      const { reply } = answer;
      // A relay resets a connection past its data limit: a reply that cannot fit is refused whole, with the reason.
      const room = connection.limits?.bytes;
      if (room !== undefined && BigInt(reply.length) > room) {
        const message = `${spec.id}: the ${reply.length}-byte reply does not fit the ${room} bytes the relay allows this connection`;
        reject('relay-limit', message);
        await this.replyError(protocol, frames, stream, { code: 'relay-limit', message });
        return;
      }
      await withDeadlines(what, deadlines, async (signal) => {
        await frames.write(reply, { signal });
        await stream.close({ signal });
      }).catch((err) => {
        const error = toRpcError(err, what);
        reject(error.reason, `while replying: ${error.message}`);
        stream.abort(error);
      });
    } finally {
      stream.removeEventListener('close', onClose);
      slots.active--;
    }
  }

  /**
   * Serves one channel: its requests one after another, each answered as on its own stream (busy, refused and
   * malformed requests get their error reply and the channel goes on). A frame that cannot be read (over the cap,
   * cut, naming no protocol the channel carries), a reply that cannot be written or a channel silent for CHANNEL_IDLE_MS
   * ends it. Never throws.
   */
  private async serveChannel(
    stream: Stream, connection: InboundConnection, protocols: readonly ChannelProtocol[], frameCap: number,
  ): Promise<void> {
    const peer = connection.remotePeer;
    const what = `${CHANNEL.id} from ${peer}`;
    const rejectFrame = this.requestRejecter(CHANNEL.id, peer.toString());
    const frames = frameStream(stream, frameCap, CHANNEL_SLACK_BYTES);
    const gone = new AbortController();
    stream.addEventListener('close', () => gone.abort(), { once: true });
    for (;;) {
      let frame: Uint8Array;
      try {
        frame = await withDeadlines(what, { ioMs: CHANNEL_IDLE_MS }, async (signal) => (await frames.read({ signal })).subarray());
      } catch (err) {
        const error = toRpcError(err, what);
        // The requester closing its channel (or going away) between requests is its end, not a fault.
        if (error instanceof TooLargeError || error instanceof MalformedError) rejectFrame(error.reason, error.message);
        stream.abort(error);
        return;
      }
      const protocol = CHANNEL.protocols[frame[0]!];
      if (!protocol || !protocols.includes(protocol)) {
        const message = `${what}: frame names protocol ${frame[0]}, not one served on the channel`;
        rejectFrame('malformed', message);
        stream.abort(new MalformedError(message));
        return;
      }
      const spec = PROTOCOLS[protocol];
      const reject = this.requestRejecter(spec.id, peer.toString());
      const bytes = frame.subarray(1);
      const served = this.served.get(protocol);
      let answer: Answer;
      if (!served) {
        answer = { error: { code: 'refused', message: `${spec.id} is not served here now` } };
      } else if (bytes.length > spec.maxRequestBytes) {
        const message = `${spec.id} request of ${bytes.length} bytes is over the ${spec.maxRequestBytes}-byte cap`;
        reject('too-large', message);
        answer = { error: { code: 'too-large', message } };
      } else if (served.slots.active >= served.slots.max) {
        answer = { error: this.busy(spec.id, served.slots.max, reject) };
      } else {
        served.slots.active++;
        try {
          answer = await served.answer(bytes, { peer, signal: gone.signal }, reject);
        } finally {
          served.slots.active--;
        }
      }
      const reply = answer.error
        ? this.codec.encodeReply(protocol, { error: { ...answer.error, message: truncateReason(answer.error.message) } })
        : answer.reply;
      try {
        await withDeadlines(what, { ioMs: this.ioTimeoutMs }, (signal) => frames.write(reply, { signal }));
      } catch (err) {
        const error = toRpcError(err, what);
        reject(error.reason, `while replying: ${error.message}`);
        stream.abort(error);
        return;
      }
    }
  }

  /** Decodes a request, runs its handler and encodes its reply; a request refused (undecodable, or by the handler) gets an error. */
  private async answer<P extends ProtocolName>(
    protocol: P, handler: Handler<P>, bytes: Uint8Array, context: HandlerContext, reject: RejectRequest,
  ): Promise<Answer> {
    let message: RequestOf<P>;
    try {
      message = this.codec.decodeRequest(protocol, bytes);
    } catch (err) {
      const error = err instanceof ProtocolError ? err : new ProtocolError('malformed', String(err));
      reject(error.reason, error.message);
      const code = error.reason === 'version' || error.reason === 'too-large' ? error.reason : 'malformed';
      return { error: { code, message: error.message } };
    }
    try {
      const response = await handler(message, context);
      return { reply: this.codec.encodeReply(protocol, { ok: response }) };
    } catch (err) {
      // A handler's refusal goes back as such; anything else is our failure, reported as internal.
      const refused = err instanceof RefusedError;
      if (!refused) console.error(`[p2p] handler for ${PROTOCOLS[protocol].id} failed:`, err);
      return { error: { code: refused ? 'refused' : 'internal', message: err instanceof Error ? err.message : String(err) } };
    }
  }

  private busy(protocolId: string, max: number, reject: RejectRequest): ErrorReply {
    const message = `${protocolId}: busy, ${max} requests in progress`;
    reject('busy', message);
    return { code: 'busy', message };
  }

  private requestRejecter(protocolId: string, peer: string): RejectRequest {
    return (reason, message) => this.reject({ protocol: protocolId, peer, direction: 'request', reason, message });
  }

  /**
   * Best effort: the peer may already be gone. After the reply nothing more is read (a peer still
   * sending is ignored) and the peer gets a moment to read the reply and close before being reset:
   * resetting at once could destroy the reply before the peer has read it.
   */
  private async replyError(protocol: ProtocolName, frames: ReturnType<typeof frameStream>, stream: Stream, error: ErrorReply): Promise<void> {
    const cutOff = () => stream.abort(new Error(`refused: ${error.code}`));
    try {
      const signal = AbortSignal.timeout(ERROR_REPLY_GRACE_MS);
      await frames.write(this.codec.encodeReply(protocol, { error: { ...error, message: truncateReason(error.message) } }), { signal });
      await stream.close({ signal });
      await stream.closeRead({ signal });
    } catch {
      cutOff(); // nothing more to tell a peer that cannot be written to
      return;
    }
    if (stream.status === 'closed') return;
    const timer = setTimeout(cutOff, ERROR_REPLY_GRACE_MS);
    timer.unref();
    stream.addEventListener('close', () => clearTimeout(timer), { once: true });
  }

  private reject(rejection: Rejection): void {
    try {
      this.onReject(rejection);
    } catch (err) {
      console.error('[p2p] rejection logger failed:', err);
    }
  }
}

function errorFromReply(error: ErrorReply, what: string): RpcError {
  const message = `${what}: peer replied ${error.code}: ${error.message}`;
  if (error.code === 'refused' || error.code === 'busy' || error.code === 'version' || error.code === 'relay-limit') {
    return new RefusedError(message, error.code);
  }
  return new RemoteError(error.code, message);
}

/** The peer id a dial target names: itself, or the last /p2p/ of its (first) multiaddr. */
function peerIdOf(target: DialTarget): string | undefined {
  const first = Array.isArray(target) ? target[0] : target;
  if (first === undefined) return undefined;
  if (!isMultiaddr(first)) return first.toString();
  return first.getComponents().findLast((c) => c.name === 'p2p')?.value;
}

/** Whether dialing `target` may give a direct connection: it names a non-relayed address (or only a peer id). */
function hasDirectAddress(target: DialTarget): boolean {
  const addrs = Array.isArray(target) ? target : [target];
  return addrs.some((addr) => !isMultiaddr(addr) || !isRelayed(addr));
}

function peerName(peer: DialTarget): string {
  return Array.isArray(peer) ? peer.map(String).join(',') : peer.toString();
}

