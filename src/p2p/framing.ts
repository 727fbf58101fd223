// Length-prefixed frames over a libp2p stream (an unsigned varint length, then that many bytes, as lpStream
// frames them), with the protections lpStream leaves to its caller: a length prefix longer than the cap needs
// is refused as it arrives (a prefix that never ends would grow forever), the read buffer is bounded by the
// cap, and every read and write has a timeout.
import type { AbortOptions, Stream } from '@libp2p/interface';
import { byteStream } from '@libp2p/utils';
import { Uint8ArrayList } from 'uint8arraylist';
import { varintLength, writeVarint } from '../../proto/varint.ts';
import { CancelledError, MalformedError, RefusedError, RemoteError, RpcError, TimeoutError, TooLargeError } from './errors.ts';

/** The stream ended before the first byte of a frame: the peer hung up without a message (a reset, a lost connection), not a cut one. */
class ClosedBeforeFrameError extends Error {
  override name = 'ClosedBeforeFrameError';
}

/** The stream ended inside a frame (named as @libp2p/utils names it, for toRpcError). */
class UnexpectedEOFError extends Error {
  override name = 'UnexpectedEOFError';
}

/** A frame as read: its bytes, in one or more chunks (subarray() joins them). */
export interface Frame {
  readonly byteLength: number;
  subarray(): Uint8Array;
}

/** Length-prefixed frames read and written on a stream. */
export interface FrameStream {
  /** The next frame; throws when the stream ends before it or inside it, or when its length is over the cap. */
  read(options?: AbortOptions): Promise<Frame>;
  /** Writes one frame: `data`, or the parts given joined. */
  write(data: Uint8Array | readonly Uint8Array[], options?: AbortOptions): Promise<void>;
}

/**
 * Frames of at most maxDataLength bytes; `slackBytes`: how many more may wait unread beyond one largest frame
 * (a channel's pipelined requests and replies). The length prefix is decoded as its bytes come, with no error thrown
 * for an incomplete one (lpStream's decoder contract: a RangeError and its stack trace per byte, a large part of a small
 * request's cost).
 */
export function frameStream(stream: Stream, maxDataLength: number, slackBytes = 0): FrameStream {
  const maxLengthLength = varintLength(maxDataLength);
  const bytes = byteStream(stream, { maxBufferSize: maxDataLength + maxLengthLength + slackBytes });
  /** The next byte of a length prefix, or undefined when the stream ended first. */
  const nextByte = async (options?: AbortOptions): Promise<number | undefined> => {
    try {
      return (await bytes.read({ ...options, bytes: 1 }))?.get(0);
    } catch (err) {
      if (err instanceof Error && err.name === 'UnexpectedEOFError') return undefined;
      throw err;
    }
  };
  return {
    async read(options) {
      let length = 0;
      for (let i = 0; ; i++) {
        const byte = await nextByte(options);
        if (byte === undefined) {
          if (i === 0) throw new ClosedBeforeFrameError('the stream closed before a message began');
          throw new UnexpectedEOFError('the stream closed inside a message\'s length prefix');
        }
        length += (byte & 0x7f) * 2 ** (7 * i);
        if (byte < 0x80) break;
        if (i + 1 >= maxLengthLength) {
          throw new TooLargeError(`length prefix runs past ${maxLengthLength} bytes: more than the ${maxDataLength}-byte cap`, 'too-large');
        }
      }
      if (length > maxDataLength) {
        throw new TooLargeError(`a message of ${length} bytes is over the ${maxDataLength}-byte cap`, 'too-large');
      }
      if (length === 0) return new Uint8Array(0);
      const frame = await bytes.read({ ...options, bytes: length });
      if (frame === null || frame.byteLength !== length) {
        throw new UnexpectedEOFError(`the stream closed after ${frame?.byteLength ?? 0} of a message's ${length} bytes`);
      }
      return frame;
    },
    async write(data, options) {
      // One list (no copy), so the prefix and the parts go out in the same muxer frames.
      const parts = data instanceof Uint8Array ? [data] : data;
      const length = parts.reduce((total, part) => total + part.byteLength, 0);
      const prefix = new Uint8Array(varintLength(length));
      writeVarint(prefix, 0, length);
      await bytes.write(new Uint8ArrayList(prefix, ...parts), options);
    },
  };
}

/** The deadlines an operation runs under; the first to abort names the error. */
export interface Deadlines {
  /** The caller's own signal: its abort is a cancellation. */
  caller?: AbortSignal;
  /** The whole request's deadline. */
  request?: { signal: AbortSignal; ms: number };
  /** The peer fell behind the minimum pace (see paceGuard). */
  pace?: PaceGuard;
  /** Per read or write. */
  ioMs: number;
}

/** The slowest an inbound message may arrive: graceMs for free, then bytesPerSecond on average. */
export interface Pace {
  graceMs: number;
  bytesPerSecond: number;
}

export interface PaceGuard {
  /** Aborts when the peer falls behind the pace. */
  signal: AbortSignal;
  /** Why it aborted. */
  reason(): string;
  stop(): void;
}

/**
 * A whole-message deadline that scales with what the peer sends: by time t after the stream opened
 * it must have sent bytesPerSecond · (t − graceMs) bytes. A peer trickling a byte a second, which
 * no per-read timeout catches, is cut off soon after the grace; since a message is at most its
 * cap, no stream outlives graceMs + cap / bytesPerSecond. Attach after the stream's reader, which
 * must see every 'message' event first.
 */
export function paceGuard(stream: Stream, pace: Pace): PaceGuard {
  const start = performance.now();
  let received = 0;
  const controller = new AbortController();
  const dueAt = () => start + pace.graceMs + (received / pace.bytesPerSecond) * 1000;
  const onMessage = (event: { data: { byteLength: number } }) => (received += event.data.byteLength);
  let timer: NodeJS.Timeout | undefined;
  const check = () => {
    const wait = dueAt() - performance.now();
    if (wait > 0) timer = setTimeout(check, wait);
    else controller.abort();
  };
  stream.addEventListener('message', onMessage);
  timer = setTimeout(check, pace.graceMs);
  const stop = () => {
    clearTimeout(timer);
    stream.removeEventListener('message', onMessage);
  };
  controller.signal.addEventListener('abort', stop, { once: true });
  return {
    signal: controller.signal,
    reason: () => `${received} bytes in ${Math.round(performance.now() - start)} ms, slower than ${pace.bytesPerSecond} B/s after ${pace.graceMs} ms`,
    stop,
  };
}

/** The longest a Node timer waits. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Runs one read or write under the io timeout and the outer signals, mapping failures to RpcErrors. One controller and
 * one timer per call (AbortSignal.timeout and AbortSignal.any cost more: signals of their own, weak references for GC).
 */
export async function withDeadlines<T>(what: string, deadlines: Deadlines, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  // setTimeout would take NaN, a negative or an overlong time for 1 ms, and every read would stall.
  if (!(deadlines.ioMs >= 0 && deadlines.ioMs <= MAX_TIMEOUT_MS)) throw new RangeError(`${what}: an io timeout of ${deadlines.ioMs} ms`);
  const controller = new AbortController();
  const abort = () => controller.abort();
  let ioExpired = false;
  const timer = setTimeout(() => {
    ioExpired = true;
    abort();
  }, deadlines.ioMs).unref();
  const outer = [deadlines.request?.signal, deadlines.pace?.signal, deadlines.caller].filter((s) => s !== undefined);
  for (const signal of outer) {
    if (signal.aborted) abort();
    else signal.addEventListener('abort', abort, { once: true });
  }
  try {
    return await run(controller.signal);
  } catch (err) {
    if (deadlines.caller?.aborted) throw new CancelledError(`${what}: cancelled`);
    if (deadlines.request?.signal.aborted) throw new TimeoutError(`${what}: no reply within ${deadlines.request.ms} ms`, 'deadline');
    if (deadlines.pace?.signal.aborted) throw new TimeoutError(`${what}: stalled: ${deadlines.pace.reason()}`, 'stalled');
    if (ioExpired) throw new TimeoutError(`${what}: stalled: not done within ${deadlines.ioMs} ms`, 'stalled');
    throw toRpcError(err, what);
  } finally {
    clearTimeout(timer);
    for (const signal of outer) signal.removeEventListener('abort', abort);
  }
}

/** Maps a libp2p or stream error to the RpcError a caller can act on. */
export function toRpcError(err: unknown, what: string): RpcError {
  if (err instanceof RpcError) return err;
  const name = err instanceof Error ? err.name : '';
  const message = `${what}: ${err instanceof Error ? err.message : String(err)}`;
  switch (name) {
    case 'InvalidDataLengthError':
    case 'InvalidDataLengthLengthError':
    case 'StreamBufferError':
      return new TooLargeError(message);
    case 'InvalidMessageLengthError':
      return new MalformedError(message);
    case 'UnexpectedEOFError':
      return new MalformedError(message, 'truncated');
    case 'ClosedBeforeFrameError':
      return new RemoteError('reset', message);
    case 'UnsupportedProtocolError':
      return new RefusedError(message, 'unsupported');
    default:
      return new RemoteError('reset', message);
  }
}
