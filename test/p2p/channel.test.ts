// The channel: heartbeats, leases and lease reports on one long-lived stream per peer (CHANNEL in proto/protocols.ts).
import type { Connection } from '@libp2p/interface';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHANNEL, msgpackCodec, PROTOCOLS, type MessageCodec } from '../../proto/index.ts';
import { packPlain, unpackPlain } from '../../proto/msgpack.ts';
import {
  createHost, frameStream, RefusedError, RemoteError, Rpc, TimeoutError, type Host, type RpcTransport,
} from '../../src/p2p/index.ts';
import { randomF32, samples } from '../proto/samples.ts';
import { deferred, RejectionLog, varint } from './peers.ts';

const all = samples();

/** The client's transport, recording the protocol of every stream it opens. */
function counting(host: Host, opened: string[]): RpcTransport {
  const wrap = (connection: Connection): Connection => new Proxy(connection, {
    get(target, key) {
      if (key === 'newStream') {
        return (protocol: string, options: unknown) => {
          opened.push(protocol);
          return target.newStream(protocol, options as never);
        };
      }
      const value = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return {
    handle: (...args) => host.handle(...args),
    unhandle: (...args) => host.unhandle(...args),
    dial: async (peer, options) => wrap(await host.dial(peer, options)),
  };
}

describe('the channel', () => {
  let server: Host;
  let client: Host;
  let oldServer: Host;
  const serverLog = new RejectionLog();
  let leaseEntered = deferred<AbortSignal>();
  /** maxBatches of every lease request the servers got. */
  const leasesAsked: number[] = [];

  beforeAll(async () => {
    [server, client, oldServer] = await Promise.all([createHost(), createHost(), createHost()]);
    for (const [host, channel] of [[server, true], [oldServer, false]] as const) {
      const rpc = new Rpc({ transport: host, codec: msgpackCodec, onReject: serverLog.push }, { ioTimeoutMs: 1000 });
      // Each reply names its request; leases wait longer the fewer batches they ask for, so a later one could finish first.
      await rpc.handle('heartbeat', (beat) => ({ accepted: true, reason: `step ${beat.step}`, stop: false }));
      await rpc.handle('lease', async (request, { signal }) => {
        leasesAsked.push(request.maxBatches);
        if (request.maxBatches === 99) {
          leaseEntered.resolve(signal);
          await new Promise((resolve) => signal.addEventListener('abort', resolve));
        }
        await new Promise((resolve) => setTimeout(resolve, 20 - request.maxBatches));
        const { jobId, maxBatches } = request;
        return { jobId, leaseId: maxBatches, batchIds: [maxBatches], deadline: 0, done: false, planVersion: 0 };
      });
      await rpc.handle('leaseReport', (report) => ({ accepted: report.completedBatchIds.length > 0 }));
      if (channel) await rpc.handleChannel(['heartbeat', 'lease', 'leaseReport']);
    }
  });

  afterAll(async () => {
    await Promise.all([server?.stop(), client?.stop(), oldServer?.stop()]);
  });

  it('never sends a request cancelled while the channel was opening', async () => {
    const rpc = new Rpc({ transport: client, codec: msgpackCodec });
    const to = server.getMultiaddrs();
    const cancel = new AbortController();
    const opening = rpc.request(to, 'heartbeat', all.heartbeat.request);
    const cancelled = rpc.request(to, 'lease', { jobId: 'job-1', maxBatches: 77 }, { signal: cancel.signal });
    cancel.abort();
    await expect(cancelled).rejects.toThrow(/cancel|abandon/i);
    expect(await opening).toMatchObject({ accepted: true });
    // The channel is in step: the next request gets its own reply.
    expect(await rpc.request(to, 'lease', { jobId: 'job-1', maxBatches: 5 })).toMatchObject({ batchIds: [5] });
    expect(leasesAsked).not.toContain(77);
  });

  it('carries heartbeats, leases and reports sent at once on one stream, each reply to its own request', async () => {
    const opened: string[] = [];
    const rpc = new Rpc({ transport: counting(client, opened), codec: msgpackCodec });
    const to = server.getMultiaddrs();
    const beats = Array.from({ length: 20 }, (_, step) => rpc.request(to, 'heartbeat', { ...all.heartbeat.request, step }));
    const leases = Array.from({ length: 10 }, (_, i) => rpc.request(to, 'lease', { jobId: 'job-1', maxBatches: i + 1 }));
    const reports = [[], [3]].map((ids) => rpc.request(to, 'leaseReport', { ...all.leaseReport.request, completedBatchIds: ids }));
    expect((await Promise.all(beats)).map((reply) => reply.reason)).toEqual(Array.from({ length: 20 }, (_, step) => `step ${step}`));
    expect((await Promise.all(leases)).map((grant) => grant.batchIds)).toEqual(Array.from({ length: 10 }, (_, i) => [i + 1]));
    expect((await Promise.all(reports)).map((ack) => ack.accepted)).toEqual([false, true]);
    expect(await rpc.request(to, 'heartbeat', { ...all.heartbeat.request, step: 7 })).toMatchObject({ reason: 'step 7' });
    expect(opened).toEqual([CHANNEL.id]);
    // The protocols' own streams are still served, and other protocols never travel on the channel.
    expect(await rpc.request(to, 'heartbeat', all.heartbeat.request, { channel: false })).toMatchObject({ accepted: true });
    await rpc.request(to, 'join', all.join.request).catch(() => {}); // not served here: refused as unsupported
    expect(opened.slice(0, 3)).toEqual([CHANNEL.id, PROTOCOLS.heartbeat.id, PROTOCOLS.join.id]);
    expect(opened.filter((id) => id === CHANNEL.id)).toHaveLength(1);
  });

  it('carries expert calls to a peer that serves them, frames of megabytes among small ones; refuses them while unserved', async () => {
    const holder = await createHost();
    try {
      const served = new Rpc({ transport: holder, codec: msgpackCodec });
      await served.handleChannel(['expertCalls']);
      const opened: string[] = [];
      const rpc = new Rpc({ transport: counting(client, opened), codec: msgpackCodec });
      const { forwardCall: _, input: __, ...call } = all.expertCalls.request.calls[1];
      // A node between jobs: no handler yet. The call is refused and the channel carries on.
      const early = await rpc.request(holder.getMultiaddrs(), 'expertCalls', { direction: 'forward', calls: [call] }).catch((e) => e);
      expect(early).toBeInstanceOf(RefusedError);
      expect(early.message).toMatch(/not served here now/);
      // Each request's call comes back as its answer.
      await served.handle('expertCalls', ({ calls }) => ({ answers: calls, refusals: [] }));
      const big = { ...call, rows: 4096, tensor: randomF32([4096, 128], 1) }; // 2 MiB
      const requests = [1, 2, 3].map((i) => ({ direction: 'forward' as const, calls: [{ ...(i === 2 ? big : call), call: i }] }));
      const replies = await Promise.all(requests.map((message) => rpc.request(holder.getMultiaddrs(), 'expertCalls', message)));
      expect(replies.map((reply) => reply.answers[0].call)).toEqual([1, 2, 3]);
      expect(replies[1].answers[0].tensor).toEqual(big.tensor);
      expect(opened).toEqual([CHANNEL.id]);
    } finally {
      await holder.stop();
    }
  });

  it('refuses a malformed request with its reason, and carries on', async () => {
    const opened: string[] = [];
    const anything: MessageCodec = { ...msgpackCodec, encodeRequest: (_protocol, message) => packPlain(message) };
    const sloppy = new Rpc({ transport: counting(client, opened), codec: anything });
    const from = serverLog.entries.length;
    const err = await sloppy.request(server.getMultiaddrs(), 'heartbeat', { ...all.heartbeat.request, step: -1 }).catch((e) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.remoteCode).toBe('malformed');
    expect(err.message).toMatch(/\/step/);
    expect((await serverLog.waitFor((r) => r.reason === 'schema', from)).protocol).toBe(PROTOCOLS.heartbeat.id);
    const beat = { ...all.heartbeat.request, step: 2 };
    expect(await sloppy.request(server.getMultiaddrs(), 'heartbeat', beat)).toMatchObject({ reason: 'step 2' });
    expect(opened).toEqual([CHANNEL.id]);
  });

  it("closes the channel when a request's deadline passes (its handler is told), and the next request opens another", async () => {
    const opened: string[] = [];
    const rpc = new Rpc({ transport: counting(client, opened), codec: msgpackCodec });
    leaseEntered = deferred<AbortSignal>();
    const err = await rpc.request(server.getMultiaddrs(), 'lease', { jobId: 'job-1', maxBatches: 99 }, { timeout: 300 }).catch((e) => e);
    expect(err, err.message).toBeInstanceOf(TimeoutError);
    const signal = await leaseEntered.promise;
    await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve())));
    const beat = { ...all.heartbeat.request, step: 5 };
    expect(await rpc.request(server.getMultiaddrs(), 'heartbeat', beat)).toMatchObject({ reason: 'step 5' });
    expect(opened).toEqual([CHANNEL.id, CHANNEL.id]);
  });

  it('ends a channel whose frame names no protocol served on it, or is over the cap, and logs why', async () => {
    // The server's cap: the index byte and its largest request served on the channel (a heartbeat; no expert calls here).
    const overCap = varint(2 + PROTOCOLS.heartbeat.maxRequestBytes);
    for (const [bytes, reason] of [[[1, 200, 0], 'malformed'], [overCap, 'too-large']] as const) {
      const from = serverLog.entries.length;
      const stream = await client.dialProtocol(server.peerId, CHANNEL.id);
      stream.send(new Uint8Array(bytes));
      const rejection = await serverLog.waitFor((r) => r.reason === reason, from);
      expect(rejection).toMatchObject({ protocol: CHANNEL.id, direction: 'request', peer: client.peerId.toString() });
      await expect(frameStream(stream, 1024).read({ signal: AbortSignal.timeout(5000) })).rejects.toThrow();
    }
    // A request over its own protocol's cap (a lease request is at most 1 KiB) gets a too-large reply; the channel goes on.
    const stream = await client.dialProtocol(server.peerId, CHANNEL.id);
    const frames = frameStream(stream, CHANNEL.maxReplyFrameBytes);
    const lease = new Uint8Array(2 + PROTOCOLS.lease.maxRequestBytes).fill(0xc0);
    lease[0] = CHANNEL.protocols.indexOf('lease');
    await frames.write(lease);
    expect(unpackPlain((await frames.read()).subarray())).toMatchObject({ error: { code: 'too-large' } });
    await frames.write(new Uint8Array([0, ...msgpackCodec.encodeRequest('heartbeat', { ...all.heartbeat.request, step: 3 })]));
    expect(unpackPlain((await frames.read()).subarray())).toMatchObject({ ok: { reason: 'step 3' } });
    stream.abort(new Error('done'));
  });

  it('falls back to a stream per request with a peer that does not speak it, asking it only once', async () => {
    const opened: string[] = [];
    const rpc = new Rpc({ transport: counting(client, opened), codec: msgpackCodec });
    for (const step of [1, 2]) {
      const beat = { ...all.heartbeat.request, step };
      expect(await rpc.request(oldServer.getMultiaddrs(), 'heartbeat', beat)).toMatchObject({ reason: `step ${step}` });
    }
    expect(opened.filter((id) => id === CHANNEL.id).length).toBeLessThanOrEqual(2); // one try, dialed again once on failure
    expect(opened.filter((id) => id !== CHANNEL.id)).toEqual([PROTOCOLS.heartbeat.id, PROTOCOLS.heartbeat.id]);
  });
});
