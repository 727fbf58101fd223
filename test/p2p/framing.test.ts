// Length-prefixed frames (src/p2p/framing.ts) on an in-process stream pair: the same bytes on the wire as
// @libp2p/utils' lpStream (the reference, and what older peers speak) both ways, however the bytes arrive,
// and each way a frame can go wrong refused as the RPC layer maps it; and the deadlines every read and write
// runs under.
import type { Stream } from '@libp2p/interface';
import { lpStream, streamPair } from '@libp2p/utils';
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { CancelledError, frameStream, MalformedError, RemoteError, TimeoutError, TooLargeError } from '../../src/p2p/index.ts';
import { toRpcError, withDeadlines } from '../../src/p2p/framing.ts';

const SIZES = [0, 1, 127, 128, 300, 16_383, 16_384, 70_000];
const payload = (size: number, seed: number) => Uint8Array.from({ length: size }, (_, i) => (i * 31 + seed) & 0xff);

/** Sends `bytes` one at a time, each in a message of its own, yielding between them. */
async function trickle(stream: Stream, bytes: Uint8Array): Promise<void> {
  for (const byte of bytes) {
    stream.send(Uint8Array.of(byte));
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The error a read ends with, as the RPC layer reports it. */
const readError = async (stream: Stream, cap: number) => toRpcError(await frameStream(stream, cap).read().catch((e) => e), 'read');

describe('frameStream', () => {
  it('writes what lpStream reads, and reads what lpStream writes, for lengths on both sides of each prefix size', async () => {
    // One reader per end: each buffers every message its end receives.
    const [a, b] = await streamPair();
    const ours = frameStream(a, 100_000);
    const reference = lpStream(b, { maxDataLength: 100_000 });
    for (const [i, size] of SIZES.entries()) {
      await ours.write(payload(size, i));
      expect((await reference.read()).subarray()).toEqual(payload(size, i));
      await reference.write(payload(size, i + 1));
      expect((await ours.read()).subarray()).toEqual(payload(size, i + 1));
    }
  });

  it('joins the parts of a write into one frame', async () => {
    const [a, b] = await streamPair();
    await frameStream(a, 1000).write([Uint8Array.of(7), payload(200, 1), payload(0, 0), payload(5, 2)]);
    expect((await frameStream(b, 1000).read()).subarray()).toEqual(Uint8Array.from([7, ...payload(200, 1), ...payload(5, 2)]));
  });

  it('reads a frame whose prefix and bytes arrive one at a time, and frames that arrive together one by one', async () => {
    const [a, b] = await streamPair();
    const frames = frameStream(b, 100_000);
    // A 3-byte prefix (70,000) split over three messages, then its bytes one by one.
    const big = payload(70_000, 3);
    const encoded = new Uint8Array(3 + big.length);
    encoded.set([0xf0, 0xa2, 0x04]); // 70,000 = 0x70 + 0x22·128 + 0x04·128²
    encoded.set(big, 3);
    a.send(Uint8Array.from([1, ...payload(1, 0)])); // a frame first, so the trickled one starts mid-stream
    const trickled = trickle(a, encoded.subarray(0, 1000));
    expect((await frames.read()).subarray()).toEqual(payload(1, 0));
    await trickled;
    a.send(encoded.subarray(1000));
    expect((await frames.read()).subarray()).toEqual(big);
    // Three frames in one message.
    const three = [payload(10, 4), payload(130, 5), payload(0, 0)];
    a.send(Uint8Array.from([10, ...three[0], 0x82, 0x01, ...three[1], 0]));
    for (const frame of three) expect((await frames.read()).subarray()).toEqual(frame);
  });

  it('refuses a length over the cap, and a prefix longer than the cap needs before it ends', async () => {
    const [a, b] = await streamPair();
    a.send(Uint8Array.of(0xe9, 0x07)); // 1001 > 1000
    const over = await readError(b, 1000);
    expect(over).toBeInstanceOf(TooLargeError);
    expect(over.message).toMatch(/1001 bytes is over the 1000-byte cap/);
    const [c, d] = await streamPair();
    c.send(Uint8Array.of(0x80, 0x80, 0x80)); // 1000 needs 2 prefix bytes: the third with a continuation bit is refused
    const long = await readError(d, 1000);
    expect(long).toBeInstanceOf(TooLargeError);
    expect(long.message).toMatch(/length prefix runs past 2 bytes/);
  });

  it('tells a stream closed before a frame from one closed inside its prefix or its bytes', async () => {
    const cases: [Uint8Array, Function, RegExp][] = [
      [new Uint8Array(0), RemoteError, /closed before a message began/],
      [Uint8Array.of(0x80), MalformedError, /inside a message's length prefix/],
      [Uint8Array.of(50, 1, 2, 3), MalformedError, /Unexpected EOF/],
    ];
    for (const [bytes, error, message] of cases) {
      const [a, b] = await streamPair();
      if (bytes.length > 0) a.send(bytes);
      await a.close();
      const err = await readError(b, 1000);
      expect(err).toBeInstanceOf(error);
      expect(err.message).toMatch(message);
      if (error === MalformedError) expect(err.reason).toBe('truncated');
    }
  });
});

describe('withDeadlines', () => {
  /** Fails when `signal` aborts (at once if it has): an operation that waits for its deadline. */
  const untilAborted = (signal: AbortSignal) => new Promise<never>((_, reject) => {
    if (signal.aborted) reject(new Error('aborted'));
    signal.addEventListener('abort', () => reject(new Error('aborted')));
  });

  it('names the deadline that ended an operation, and maps other failures', async () => {
    const caller = new AbortController();
    caller.abort();
    await expect(withDeadlines('op', { caller: caller.signal, ioMs: 10_000 }, untilAborted)).rejects.toBeInstanceOf(CancelledError);
    const request = { signal: AbortSignal.timeout(20), ms: 20 };
    const deadline = await withDeadlines('op', { request, ioMs: 10_000 }, untilAborted).catch((e) => e);
    expect(deadline).toBeInstanceOf(TimeoutError);
    expect(deadline).toMatchObject({ reason: 'deadline', message: 'op: no reply within 20 ms' });
    const open = { signal: new AbortController().signal, ms: 9000 };
    const io = await withDeadlines('op', { request: open, ioMs: 20 }, untilAborted).catch((e) => e);
    expect(io).toBeInstanceOf(TimeoutError);
    expect(io).toMatchObject({ reason: 'stalled', message: 'op: stalled: not done within 20 ms' });
    const eof = Object.assign(new Error('cut'), { name: 'UnexpectedEOFError' });
    const cut = await withDeadlines('op', { ioMs: 10_000 }, () => Promise.reject(eof)).catch((e) => e);
    expect(cut).toBeInstanceOf(MalformedError);
    expect(cut.reason).toBe('truncated');
    await expect(withDeadlines('op', { ioMs: Number('no') }, untilAborted)).rejects.toBeInstanceOf(RangeError);
  });

  it('leaves no listener behind on the signals that outlive each read and write', async () => {
    const caller = new AbortController();
    const request = { signal: new AbortController().signal, ms: 60_000 };
    for (let i = 0; i < 200; i++) {
      expect(await withDeadlines('op', { caller: caller.signal, request, ioMs: 60_000 }, async () => i)).toBe(i);
      await withDeadlines('op', { caller: caller.signal, request, ioMs: 60_000 }, () => Promise.reject(new Error('x'))).catch(() => {});
    }
    expect(getEventListeners(caller.signal, 'abort')).toHaveLength(0);
    expect(getEventListeners(request.signal, 'abort')).toHaveLength(0);
  });
});
