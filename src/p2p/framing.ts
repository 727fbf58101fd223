// Length-prefixed frames over a libp2p stream, with the protections lpStream leaves to its
// caller: a length prefix longer than the cap needs is refused as it arrives (lpStream's own
// check comes only after a varint completes, and a prefix that never ends would grow forever),
// the read buffer is bounded by the cap, and every read and write has a timeout.
import type { Stream } from '@libp2p/interface';
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import { CancelledError, MalformedError, RefusedError, RemoteError, RpcError, TimeoutError, TooLargeError } from './errors.ts';

/** Bytes of the unsigned varint encoding of `value`. */
export function varintLength(value: number): number {
  let bytes = 1;
  for (let v = value; v >= 128; v = Math.floor(v / 128)) bytes++;
  return bytes;
}

/** A length decoder for lpStream that refuses a prefix longer than the varint of `maxDataLength`. */
export function cappedLengthDecoder(maxDataLength: number): (data: { byteLength: number; get(index: number): number }) => number {
  const maxLengthLength = varintLength(maxDataLength);
  return (data) => {
    let value = 0;
    for (let i = 0; i < Math.min(data.byteLength, maxLengthLength); i++) {
      const byte = data.get(i);
      value += (byte & 0x7f) * 2 ** (7 * i);
      if (byte < 0x80) return value;
    }
    if (data.byteLength >= maxLengthLength) {
      throw new TooLargeError(`length prefix runs past ${maxLengthLength} bytes: more than the ${maxDataLength}-byte cap`, 'too-large');
    }
    throw new RangeError('length prefix incomplete'); // lpStream reads another byte
  };
}

/** The stream ended before the first byte of a frame: the peer hung up without a message (a reset, a lost connection), not a cut one. */
class ClosedBeforeFrameError extends Error {
  override name = 'ClosedBeforeFrameError';
}

/**
 * Frames of at most maxDataLength bytes; `slackBytes`: how many more may wait unread beyond one largest frame
 * (a channel's pipelined requests and replies).
 */
export function frameStream(stream: Stream, maxDataLength: number, slackBytes = 0): LengthPrefixedStream<Stream> {
  const maxLengthLength = varintLength(maxDataLength);
  const frames = lpStream(stream, {
    maxDataLength,
    maxLengthLength,
    maxBufferSize: maxDataLength + maxLengthLength + slackBytes,
    lengthDecoder: cappedLengthDecoder(maxDataLength),
  });
  // lpStream reports an end before any byte of a frame and one inside it alike (UnexpectedEOFError): told apart by bytes received.
  let received = 0;
  let consumed = 0;
  stream.addEventListener('message', (event) => (received += event.data.byteLength));
  return {
    ...frames,
    async read(options) {
      try {
        const frame = await frames.read(options);
        consumed += varintLength(frame.byteLength) + frame.byteLength;
        return frame;
      } catch (err) {
        if (err instanceof Error && err.name === 'UnexpectedEOFError' && received === consumed) {
          throw new ClosedBeforeFrameError('the stream closed before a message began');
        }
        throw err;
      }
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

/** Runs one read or write under the io timeout and the outer signals, mapping failures to RpcErrors. */
export async function withDeadlines<T>(what: string, deadlines: Deadlines, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const io = AbortSignal.timeout(deadlines.ioMs);
  const signals = [io, deadlines.request?.signal, deadlines.pace?.signal, deadlines.caller].filter((s) => s !== undefined);
  try {
    return await run(AbortSignal.any(signals));
  } catch (err) {
    if (deadlines.caller?.aborted) throw new CancelledError(`${what}: cancelled`);
    if (deadlines.request?.signal.aborted) throw new TimeoutError(`${what}: no reply within ${deadlines.request.ms} ms`, 'deadline');
    if (deadlines.pace?.signal.aborted) throw new TimeoutError(`${what}: stalled: ${deadlines.pace.reason()}`, 'stalled');
    if (io.aborted) throw new TimeoutError(`${what}: stalled: not done within ${deadlines.ioMs} ms`, 'stalled');
    throw toRpcError(err, what);
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
