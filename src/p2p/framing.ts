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

export function frameStream(stream: Stream, maxDataLength: number): LengthPrefixedStream<Stream> {
  const maxLengthLength = varintLength(maxDataLength);
  return lpStream(stream, {
    maxDataLength,
    maxLengthLength,
    maxBufferSize: maxDataLength + maxLengthLength,
    lengthDecoder: cappedLengthDecoder(maxDataLength),
  });
}

/** The deadlines an operation runs under; the first to abort names the error. */
export interface Deadlines {
  /** The caller's own signal: its abort is a cancellation. */
  caller?: AbortSignal;
  /** The whole request's deadline. */
  request?: { signal: AbortSignal; ms: number };
  /** Per read or write. */
  ioMs: number;
}

/** Runs one read or write under the io timeout and the outer signals, mapping failures to RpcErrors. */
export async function withDeadlines<T>(what: string, deadlines: Deadlines, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const io = AbortSignal.timeout(deadlines.ioMs);
  const signals = [io, deadlines.request?.signal, deadlines.caller].filter((s) => s !== undefined);
  try {
    return await run(AbortSignal.any(signals));
  } catch (err) {
    if (deadlines.caller?.aborted) throw new CancelledError(`${what}: cancelled`);
    if (deadlines.request?.signal.aborted) throw new TimeoutError(`${what}: no reply within ${deadlines.request.ms} ms`, 'deadline');
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
    case 'UnsupportedProtocolError':
      return new RefusedError(message, 'unsupported');
    default:
      return new RemoteError('reset', message);
  }
}
