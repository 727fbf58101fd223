import type { Stream } from '@libp2p/interface';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  msgpackCodec,
  PROTOCOL_VERSION,
  PROTOCOLS,
  tensorF32,
  type MessageCodec,
} from '../../proto/index.ts';
import { packPlain } from '../../proto/msgpack.ts';
import {
  CancelledError,
  createHost,
  frameStream,
  MalformedError,
  RefusedError,
  RemoteError,
  Rpc,
  TimeoutError,
  TooLargeError,
  type Host,
} from '../../src/p2p/index.ts';
import { samples } from '../proto/samples.ts';
import { deferred, JOIN_TOKEN, misbehaviours, RejectionLog, sendRaw, serveToy, varint } from './peers.ts';

const IO_TIMEOUT_MS = 400;

describe('p2p between two hosts in one process', () => {
  let server: Host;
  let client: Host;
  const serverLog = new RejectionLog();
  const clientLog = new RejectionLog();
  let serverRpc: Rpc;
  let clientRpc: Rpc;
  const all = samples();

  beforeAll(async () => {
    [server, client] = await Promise.all([createHost(), createHost()]);
    serverRpc = new Rpc({ transport: server, codec: msgpackCodec, onReject: serverLog.push }, { ioTimeoutMs: IO_TIMEOUT_MS });
    clientRpc = new Rpc({ transport: client, codec: msgpackCodec, onReject: clientLog.push }, { ioTimeoutMs: IO_TIMEOUT_MS });
    await serveToy(serverRpc);
  });

  afterAll(async () => {
    await Promise.all([server?.stop(), client?.stop()]);
  });

  /** A well-formed request that must still be answered. */
  async function stillServes(): Promise<void> {
    const call = all.expertForward.request;
    const reply = await clientRpc.request(server.peerId, 'expertForward', call);
    const want = Array.from(tensorF32(call.tensor), (x) => 2 * x);
    expect(Array.from(tensorF32(reply.tensor))).toEqual(want);
  }

  it('answers requests: by multiaddr and by peer id, with tensors intact', async () => {
    expect(server.getMultiaddrs().every((a) => a.toString().startsWith('/ip4/127.0.0.1/tcp/'))).toBe(true);
    expect(await clientRpc.request(server.getMultiaddrs(), 'heartbeat', all.heartbeat.request)).toEqual({ accepted: true, stop: false });
    await stillServes();
    const joined = await clientRpc.request(server.peerId, 'join', { ...all.join.request, token: JOIN_TOKEN });
    expect(joined.admitted).toBe(true);
    expect(serverLog.entries).toEqual([]);
  });

  it('passes a handler refusal back as RefusedError with its reason', async () => {
    const err = await clientRpc.request(server.peerId, 'join', all.join.request).catch((e) => e);
    expect(err).toBeInstanceOf(RefusedError);
    expect(err.message).toMatch(/wrong join token/);
  });

  for (const bad of misbehaviours()) {
    it(`cuts off ${bad.name}, logs why, and keeps serving`, async () => {
      const from = serverLog.entries.length;
      const outcome = await sendRaw(client, server.peerId, bad);
      const rejection = await serverLog.waitFor((r) => r.reason === bad.reason, from);
      expect(rejection).toMatchObject({ protocol: PROTOCOLS[bad.protocol].id, peer: client.peerId.toString(), direction: 'request' });
      expect(serverLog.entries.slice(from).map((r) => r.reason)).toEqual([bad.reason]);
      if (bad.replyCode !== undefined) expect(outcome.reply?.error?.code).toBe(bad.replyCode);
      else expect(outcome.error).toBeDefined();
      await stillServes();
    });
  }

  it('refuses a mismatched protocol version with both versions in the message', async () => {
    // A codec that writes whatever it is given, as a peer of another version would.
    const anything: MessageCodec = { ...msgpackCodec, encodeRequest: (_protocol, message) => packPlain(message) };
    const oldPeer = new Rpc({ transport: client, codec: anything });
    const newer = `${Number(PROTOCOL_VERSION.split('.')[0]) + 1}.0.0`;
    const from = serverLog.entries.length;
    const err = await oldPeer.request(server.peerId, 'join', { ...all.join.request, version: newer, token: JOIN_TOKEN }).catch((e) => e);
    expect(err).toBeInstanceOf(RefusedError);
    expect(err.reason).toBe('version');
    expect(err.message).toContain(newer);
    expect(err.message).toContain(PROTOCOL_VERSION);
    expect((await serverLog.waitFor((r) => r.reason === 'version', from)).message).toContain(newer);
  });

  it('reports a schema violation back to the sender as a malformed request', async () => {
    const anything: MessageCodec = { ...msgpackCodec, encodeRequest: (_protocol, message) => packPlain(message) };
    const sloppy = new Rpc({ transport: client, codec: anything });
    const from = serverLog.entries.length;
    const err = await sloppy.request(server.peerId, 'heartbeat', { ...all.heartbeat.request, step: -1 }).catch((e) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.remoteCode).toBe('malformed');
    expect(err.message).toMatch(/\/step/);
    await serverLog.waitFor((r) => r.reason === 'schema', from);
  });

  it('refuses to send a message over the cap', async () => {
    const rows = PROTOCOLS.expertForward.maxRequestBytes / 4096 + 1;
    const call = { ...all.expertForward.request, rows, tensor: { dtype: 'F32' as const, shape: [rows, 1024], data: new Uint8Array(rows * 4096) } };
    await expect(clientRpc.request(server.peerId, 'expertForward', call)).rejects.toBeInstanceOf(TooLargeError);
  });

  it('times out a request whose handler never answers, and tells the handler', async () => {
    let handlerSignal: AbortSignal | undefined;
    const handlerEntered = deferred();
    await serverRpc.handle('lease', async (_request, { signal }) => {
      handlerSignal = signal;
      handlerEntered.resolve();
      await new Promise((resolve) => signal.addEventListener('abort', resolve));
      return { jobId: 'job-1', leaseId: 0, batchIds: [], deadline: 0, done: false, planVersion: 0 };
    });
    const err = await clientRpc.request(server.peerId, 'lease', all.lease.request, { timeout: 300 }).catch((e) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.message).toMatch(/no reply within 300 ms/);
    await handlerEntered.promise;
    await new Promise<void>((resolve) => (handlerSignal!.aborted ? resolve() : handlerSignal!.addEventListener('abort', () => resolve())));
    expect(handlerSignal!.aborted).toBe(true);
    await serverRpc.unhandle('lease');
  });

  it('cancels a request when the caller aborts', async () => {
    const entered = deferred();
    const released = deferred();
    await serverRpc.handle('leaseReport', async (_report, { signal }) => {
      entered.resolve();
      signal.addEventListener('abort', () => released.resolve());
      await released.promise;
      return { accepted: true };
    });
    const controller = new AbortController();
    const pending = clientRpc.request(server.peerId, 'leaseReport', all.leaseReport.request, { signal: controller.signal });
    await entered.promise;
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(CancelledError);
    await released.promise; // the handler saw the requester go
    await expect(clientRpc.request(server.peerId, 'leaseReport', all.leaseReport.request, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(CancelledError);
    await serverRpc.unhandle('leaseReport');
  });

  it('serves at most maxConcurrent requests of a protocol at once and refuses the rest as busy', async () => {
    const gate = deferred();
    const bothEntered = deferred();
    let active = 0;
    let maxActive = 0;
    await serverRpc.handle(
      'state',
      async (request) => {
        maxActive = Math.max(maxActive, ++active);
        if (active === 2) bothEntered.resolve();
        await gate.promise;
        active--;
        return { jobId: request.jobId, group: request.group, round: 1, available: [], parts: [] };
      },
      { maxConcurrent: 2 },
    );
    const from = serverLog.entries.length;
    let refused = 0;
    const allRefused = deferred();
    const requests = Promise.allSettled(
      Array.from({ length: 5 }, () =>
        clientRpc.request(server.peerId, 'state', all.state.request).catch((err) => {
          if (++refused === 3) allRefused.resolve();
          throw err;
        }),
      ),
    );
    await Promise.all([allRefused.promise, bothEntered.promise]); // three refused while two are in the handler
    gate.resolve();
    const results = await requests;
    const rejected = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
    expect(rejected).toHaveLength(3);
    for (const err of rejected) {
      expect(err).toBeInstanceOf(RefusedError);
      expect(err.reason).toBe('busy');
    }
    expect(maxActive).toBe(2);
    expect(serverLog.entries.slice(from).filter((r) => r.reason === 'busy')).toHaveLength(3);
    await serverRpc.unhandle('state');
  });

  it('refuses a protocol the peer does not serve', async () => {
    const err = await clientRpc.request(server.peerId, 'delta', all.delta.request).catch((e) => e);
    expect(err).toBeInstanceOf(RefusedError);
    expect(err.reason).toBe('unsupported');
  });

  describe('a misbehaving responder', () => {
    /** Serves `protocol` on the raw stream with `respond`, bypassing the RPC layer. */
    async function rawResponder(protocol: 'delta', respond: (stream: Stream) => Promise<void>): Promise<void> {
      await server.handle(PROTOCOLS[protocol].id, async (stream) => {
        await frameStream(stream, PROTOCOLS[protocol].maxRequestBytes).read();
        await respond(stream);
      });
    }

    const cases: { name: string; respond: (stream: Stream) => Promise<void>; error: Function; reason: string }[] = [
      {
        name: 'garbage',
        respond: async (stream) => {
          stream.send(new Uint8Array([...varint(3), 0xc1, 0xc1, 0xc1]));
          await stream.close();
        },
        error: MalformedError,
        reason: 'malformed',
      },
      {
        name: 'a reply over the cap',
        respond: async (stream) => {
          stream.send(new Uint8Array(varint(PROTOCOLS.delta.maxResponseBytes + 1)));
        },
        error: TooLargeError,
        reason: 'too-large',
      },
      {
        name: 'a reply of the wrong schema',
        respond: async (stream) => {
          const bytes = packPlain({ ok: { accepted: 'yes' } });
          stream.send(new Uint8Array([...varint(bytes.length), ...bytes]));
          await stream.close();
        },
        error: MalformedError,
        reason: 'schema',
      },
      {
        name: 'a stalled reply',
        respond: async (stream) => {
          stream.send(new Uint8Array([...varint(50), 0x81]));
        },
        error: TimeoutError,
        reason: 'stalled',
      },
      {
        name: 'a reply cut short',
        respond: async (stream) => {
          stream.send(new Uint8Array([...varint(50), 0x81]));
          await stream.close();
        },
        error: MalformedError,
        reason: 'truncated',
      },
    ];

    for (const { name, respond, error, reason } of cases) {
      it(`is refused when it sends ${name}, and logged`, async () => {
        await rawResponder('delta', respond);
        const from = clientLog.entries.length;
        const err = await clientRpc.request(server.peerId, 'delta', all.delta.request).catch((e) => e);
        expect(err).toBeInstanceOf(error);
        const rejection = await clientLog.waitFor(() => true, from);
        expect(rejection).toMatchObject({ protocol: PROTOCOLS.delta.id, direction: 'response', reason });
        await server.unhandle(PROTOCOLS.delta.id);
      });
    }

    it('that hangs up without a byte of reply is a reset, not a malformed reply, and the requester logs no rejection', async () => {
      await rawResponder('delta', (stream) => stream.close());
      const from = clientLog.entries.length;
      const err = await clientRpc.request(server.peerId, 'delta', all.delta.request).catch((e) => e);
      expect(err).toBeInstanceOf(RemoteError);
      expect(err.reason).toBe('reset');
      expect(err.message).toMatch(/closed before a message began/);
      await stillServes(); // a later request on the same connection is answered, and nothing was logged meanwhile
      expect(clientLog.entries.slice(from)).toEqual([]);
      await server.unhandle(PROTOCOLS.delta.id);
    });
  });
});

describe('inbound pace: a slow sender cannot pin a serving slot', () => {
  const PACE = { graceMs: 300, bytesPerSecond: 2000 };
  let server: Host;
  let client: Host;
  const serverLog = new RejectionLog();
  const all = samples();

  beforeAll(async () => {
    [server, client] = await Promise.all([createHost(), createHost()]);
    // A per-read timeout far longer than the test: only the pace can cut a trickling sender off.
    const serverRpc = new Rpc({ transport: server, codec: msgpackCodec, onReject: serverLog.push }, { ioTimeoutMs: 30_000, inboundPace: PACE });
    await serveToy(serverRpc);
  });

  afterAll(async () => {
    await Promise.all([server?.stop(), client?.stop()]);
  });

  /** Sends `bytes` on a fresh expertForward stream in `chunk`-byte pieces every `everyMs`, then reads the reply. */
  async function trickle(bytes: Uint8Array, chunk: number, everyMs: number): Promise<{ ms: number; reply?: unknown; error?: Error }> {
    const stream = await client.dialProtocol(server.getMultiaddrs(), PROTOCOLS.expertForward.id);
    const frames = frameStream(stream, PROTOCOLS.expertForward.maxResponseBytes);
    const t0 = performance.now();
    const sending = (async () => {
      for (let at = 0; at < bytes.length && stream.status === 'open'; at += chunk) {
        stream.send(bytes.subarray(at, at + chunk));
        await new Promise((resolve) => setTimeout(resolve, everyMs));
      }
      if (stream.status === 'open') await stream.close();
    })().catch(() => {});
    try {
      const reply = msgpackCodec.decodeReply('expertForward', (await frames.read({ signal: AbortSignal.timeout(20_000) })).subarray());
      return { ms: performance.now() - t0, reply };
    } catch (err) {
      return { ms: performance.now() - t0, error: err as Error };
    } finally {
      stream.abort(new Error('done'));
      await sending;
    }
  }

  const request = () => {
    const body = msgpackCodec.encodeRequest('expertForward', all.expertForward.request);
    return new Uint8Array([...varint(body.length), ...body]);
  };

  it('cuts off a sender trickling a byte every 50 ms soon after the grace, though no single read stalls', async () => {
    const bytes = request();
    const from = serverLog.entries.length;
    // At 20 B/s the message would take bytes.length / 20 seconds; the pace allows about graceMs plus a few bytes' worth.
    expect(bytes.length / 20).toBeGreaterThan(5);
    const outcome = await trickle(bytes, 1, 50);
    expect(outcome.error).toBeDefined();
    expect(outcome.ms).toBeLessThan(PACE.graceMs + 1500);
    const rejection = await serverLog.waitFor((r) => r.reason === 'stalled', from);
    expect(rejection.message).toMatch(/slower than 2000 B\/s after 300 ms/);
  });

  it('serves a request sent in pieces at above the pace', async () => {
    const bytes = request();
    // ~64 bytes every 10 ms is ~6 kB/s: three times the minimum.
    const outcome = await trickle(bytes, 64, 10);
    expect(outcome.error).toBeUndefined();
    const reply = outcome.reply as { ok: { tensor: Parameters<typeof tensorF32>[0] } };
    expect(Array.from(tensorF32(reply.ok.tensor))).toEqual(Array.from(tensorF32(all.expertForward.request.tensor), (x) => 2 * x));
  });

  it('closes a flood of silent streams after the grace and keeps serving', async () => {
    const from = serverLog.entries.length;
    const streams = await Promise.all(Array.from({ length: 40 }, () => client.dialProtocol(server.getMultiaddrs(), PROTOCOLS.heartbeat.id)));
    const t0 = performance.now();
    await Promise.all(streams.map((stream) => new Promise((resolve) => {
      if (stream.status !== 'open') resolve(undefined);
      else stream.addEventListener('close', resolve, { once: true });
    })));
    expect(performance.now() - t0).toBeLessThan(PACE.graceMs + 2000);
    // serveToy takes the default 16 heartbeats at once: those took a slot and were cut as stalled; the
    // rest were told they are busy or reset by libp2p's stream limit.
    const reasons = serverLog.entries.slice(from).map((r) => r.reason);
    expect(reasons.filter((r) => r === 'stalled')).toHaveLength(16);
    const rpc = new Rpc({ transport: client, codec: msgpackCodec });
    expect(await rpc.request(server.getMultiaddrs(), 'heartbeat', all.heartbeat.request)).toEqual({ accepted: true, stop: false });
  });
});
