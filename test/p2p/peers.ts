// Shared by the p2p tests and the peer process: toy handlers, a rejection log to wait on, and
// a misbehaving client that writes raw bytes where a request belongs.
import type { PeerId, Stream } from '@libp2p/interface';
import { decodeReply, f32Tensor, PROTOCOL_VERSION, PROTOCOLS, tensorF32, type JobSpec, type ProtocolName, type Reply, type ResponseOf } from '../../proto/index.ts';
import { frameStream, RefusedError, type DialTarget, type Host, type Rejection, type Rpc } from '../../src/p2p/index.ts';

export const JOIN_TOKEN = 'let-me-in';

export const JOB: JobSpec = {
  jobId: 'job-1', model: { hiddenSize: 64 }, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 1, corpus: 'moby-dick',
  batchSize: 4, seqLen: 32, heldOutFraction: 0.05, totalBatches: 10, expectedNodes: 1, lr: 0.01, minLr: 0.001, warmupSteps: 2,
  averaging: { mode: 'sync', every: 1, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};

/** A promise with its resolve function (Promise.withResolvers is not in the ES2023 lib we type-check against). */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** heartbeat: ack; expertForward: the "expert" doubles its input; join: admits the right token. */
export async function serveToy(rpc: Rpc): Promise<void> {
  await rpc.handle('heartbeat', (beat) => ({ accepted: beat.step >= 0, stop: false }));
  await rpc.handle('expertForward', (call) => {
    const output = tensorF32(call.tensor).map((x) => 2 * x);
    return { ...call, tensor: f32Tensor(call.tensor.shape, output) };
  });
  await rpc.handle('join', (join) => {
    if (join.token !== JOIN_TOKEN) throw new RefusedError('wrong join token');
    return { admitted: true, version: PROTOCOL_VERSION, job: JOB, tokenizer: '{}', plan: { version: 1, experts: [{ layer: 0, expert: 1, holders: [] }], peers: [] }, planSignature: new Uint8Array(64), heartbeatMs: 1000, completedBatches: 0 };
  });
}

/** Rejections as they are logged, with a way to wait for the next one that matches. */
export class RejectionLog {
  readonly entries: Rejection[] = [];
  private waiters: { match: (r: Rejection) => boolean; resolve: (r: Rejection) => void }[] = [];

  readonly push = (rejection: Rejection): void => {
    this.entries.push(rejection);
    for (const waiter of this.waiters.filter((w) => w.match(rejection))) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(rejection);
    }
  };

  /** The first rejection from `index` on that matches (already logged or still to come). */
  waitFor(match: (r: Rejection) => boolean, index = 0): Promise<Rejection> {
    const logged = this.entries.slice(index).find(match);
    if (logged) return Promise.resolve(logged);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }
}

/** Unsigned LEB128, written out here rather than borrowed from the code under test. */
export function varint(value: number): number[] {
  const out: number[] = [];
  for (; value >= 0x80; value = Math.floor(value / 0x80)) out.push((value % 0x80) | 0x80);
  out.push(value);
  return out;
}

export interface Misbehaviour {
  name: string;
  protocol: ProtocolName;
  bytes: number[];
  /** Close our side after writing (else stall with the stream open). */
  close: boolean;
  /** The reason the responder must log. */
  reason: string;
  /** The error reply the responder sends first, if it sends one. */
  replyCode?: string;
}

export function misbehaviours(): Misbehaviour[] {
  const heartbeatCap = PROTOCOLS.heartbeat.maxRequestBytes;
  const expertCap = PROTOCOLS.expertForward.maxRequestBytes;
  const garbage = Array.from({ length: 40 }, (_, i) => (i * 37 + 0xc1) & 0xff);
  return [
    { name: 'garbage bytes', protocol: 'heartbeat', bytes: [...varint(garbage.length), ...garbage], close: true, reason: 'malformed', replyCode: 'malformed' },
    { name: 'a message over the cap', protocol: 'heartbeat', bytes: [...varint(heartbeatCap + 1), 1, 2, 3], close: false, reason: 'too-large', replyCode: 'too-large' },
    { name: 'a tensor message over the cap', protocol: 'expertForward', bytes: [...varint(expertCap + 1), 1, 2, 3], close: false, reason: 'too-large', replyCode: 'too-large' },
    { name: 'a 4 GB length prefix', protocol: 'expertForward', bytes: varint(2 ** 32), close: false, reason: 'too-large', replyCode: 'too-large' },
    { name: 'a length prefix that never ends', protocol: 'heartbeat', bytes: Array(64).fill(0xff), close: false, reason: 'too-large', replyCode: 'too-large' },
    { name: 'a truncated message', protocol: 'heartbeat', bytes: [...varint(100), ...garbage.slice(0, 10)], close: true, reason: 'truncated' },
    { name: 'a stalled sender', protocol: 'heartbeat', bytes: [...varint(100), ...garbage.slice(0, 10)], close: false, reason: 'stalled' },
  ];
}

export interface RawOutcome {
  /** The responder's reply, if it sent one before ending the stream. */
  reply?: Reply<unknown>;
  /** Why reading a reply failed, if it did. */
  error?: Error;
}

/** Writes raw bytes on a fresh stream and reads whatever comes back. */
export async function sendRaw(client: Host, server: PeerId | DialTarget, bad: Misbehaviour): Promise<RawOutcome> {
  const stream: Stream = await client.dialProtocol(server, PROTOCOLS[bad.protocol].id);
  const frames = frameStream(stream, PROTOCOLS[bad.protocol].maxResponseBytes);
  try {
    stream.send(new Uint8Array(bad.bytes));
    if (bad.close) await stream.close();
    const reply = decodeReply(bad.protocol, (await frames.read({ signal: AbortSignal.timeout(30_000) })).subarray());
    return { reply: reply as Reply<ResponseOf<typeof bad.protocol>> };
  } catch (err) {
    return { error: err as Error };
  } finally {
    stream.abort(new Error('done'));
  }
}
