// Circuit relay v2 on loopback: a relay serving only admitted peers, a node reachable only through
// it, requests over the relayed connection within the relay's limits, and a large one over a slow uplink.
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { byteStream } from '@libp2p/utils';
import { multiaddr } from '@multiformats/multiaddr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { f32Tensor, msgpackCodec, PROTOCOLS, tensorF32 } from '../../proto/index.ts';
import { createHost, RefusedError, Rpc, type Host, type Rejection } from '../../src/p2p/index.ts';
import { samples } from '../proto/samples.ts';
import { serveToy } from './peers.ts';
import { tcpWith, throttle } from './slow-link.ts';

const DATA_LIMIT = 64 * 1024;

describe('a circuit relay for admitted peers', () => {
  const admitted = new Set<string>();
  let relay: Host;
  let hidden: Host; // listens only through the relay, as a node behind a NAT does
  let dialer: Host;
  let relayedAddress: string;
  const all = samples();

  beforeAll(async () => {
    relay = await createHost({ relayServer: { mayReserve: (peer) => admitted.has(peer), dataLimitBytes: BigInt(DATA_LIMIT) } });
    const key = await generateKeyPair('Ed25519');
    admitted.add(peerIdFromPrivateKey(key).toString());
    hidden = await createHost({ privateKey: key, relayClient: true, listen: [`${relay.getMultiaddrs()[0]}/p2p-circuit`] });
    await serveToy(new Rpc({ transport: hidden, codec: msgpackCodec }));
    dialer = await createHost({ relayClient: true });
    relayedAddress = hidden.getMultiaddrs().map(String).find((a) => a.includes('/p2p-circuit/'))!;
  });

  afterAll(async () => {
    await Promise.all([dialer?.stop(), hidden?.stop(), relay?.stop()]);
  });

  it('an admitted peer reserves a slot, advertises the relayed address and is reached through it', async () => {
    expect(relayedAddress).toBe(`${relay.getMultiaddrs()[0]}/p2p-circuit/p2p/${hidden.peerId}`);
    expect([...relay.services.relay!.reservations.keys()].map(String)).toEqual([hidden.peerId.toString()]);
    const rpc = new Rpc({ transport: dialer, codec: msgpackCodec });
    const call = all.expertForward.request;
    const reply = await rpc.request(relayedAddress, 'expertForward', call);
    expect(Array.from(tensorF32(reply.tensor))).toEqual(Array.from(tensorF32(call.tensor), (x) => 2 * x));
    // The connection is the relayed one, carrying what is left of the relay's data limit.
    const connections = dialer.getConnections(hidden.peerId);
    expect(connections.length).toBeGreaterThan(0);
    expect(connections.every((c) => c.remoteAddr.toString().includes('/p2p-circuit') && (c.limits?.bytes ?? Infinity) < DATA_LIMIT)).toBe(true);
  });

  it("refuses an unadmitted peer's reservation", async () => {
    const outsider = createHost({ relayClient: true, listen: [`${relay.getMultiaddrs()[0]}/p2p-circuit`] });
    await expect(outsider).rejects.toThrow(/PERMISSION_DENIED/);
    expect([...relay.services.relay!.reservations.keys()].map(String)).toEqual([hidden.peerId.toString()]);
  });

  it('refuses, with the reason, a message larger than the relayed connection may carry, and still serves small ones', async () => {
    const rpc = new Rpc({ transport: dialer, codec: msgpackCodec });
    const rows = 64;
    const hiddenSize = 512; // 64 x 512 floats: 128 KiB, twice the relay's data limit
    const call = { ...all.expertForward.request, rows, tensor: f32Tensor([rows, hiddenSize], new Float32Array(rows * hiddenSize).fill(1)) };
    const err = await rpc.request(relayedAddress, 'expertForward', call).catch((e) => e);
    expect(err).toBeInstanceOf(RefusedError);
    expect(err.reason).toBe('relay-limit');
    expect(err.message).toMatch(/131\d{3} bytes do not fit the \d+ bytes the relay allows this connection/);
    expect(await rpc.request(relayedAddress, 'heartbeat', all.heartbeat.request)).toEqual({ accepted: true, stop: false });
  });

  it('refuses, with the reason, a reply larger than the relayed connection may carry, instead of being cut off mid-way', async () => {
    const rejections: Rejection[] = [];
    const server = new Rpc({ transport: hidden, codec: msgpackCodec, onReject: (r) => rejections.push(r) });
    const blob = 'ab'.repeat(32);
    await server.handle('blobChunk', (request) => ({ blob, offset: request.offset, data: new Uint8Array(request.length).fill(7) }));
    const rpc = new Rpc({ transport: dialer, codec: msgpackCodec });
    const err = await rpc.request(relayedAddress, 'blobChunk', { blob, offset: 0, length: 2 * DATA_LIMIT }).catch((e) => e);
    expect(err).toBeInstanceOf(RefusedError);
    expect(err.reason).toBe('relay-limit');
    expect(err.message).toMatch(/the 131\d{3}-byte reply does not fit the \d+ bytes the relay allows this connection/);
    expect(rejections.map((r) => r.reason)).toEqual(['relay-limit']);
    // A reply that fits travels on the same relayed connection: no second circuit is opened.
    const circuits = dialer.getConnections(hidden.peerId).map((c) => c.id);
    const small = await rpc.request(relayedAddress, 'blobChunk', { blob, offset: 5, length: 1024 });
    expect(Array.from(small.data)).toEqual(Array(1024).fill(7));
    expect(dialer.getConnections(hidden.peerId).map((c) => c.id)).toEqual(circuits);
    await server.unhandle('blobChunk');
  });

  it('holds its data limit against a peer that writes past it', async () => {
    let received = 0;
    const ended = new Promise<void>((resolve) => {
      void hidden.handle('/swarmtrain-test/sink/1', (stream) => {
        stream.addEventListener('message', (event) => (received += event.data.byteLength));
        stream.addEventListener('close', () => resolve(), { once: true });
      }, { runOnLimitedConnection: true });
    });
    const connection = await dialer.dial(hidden.peerId);
    const stream = await connection.newStream('/swarmtrain-test/sink/1', { runOnLimitedConnection: true });
    const chunk = new Uint8Array(8 * 1024);
    for (let sent = 0; sent < 4 * DATA_LIMIT && stream.status === 'open'; sent += chunk.length) {
      if (!stream.send(chunk)) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    expect(received).toBeLessThanOrEqual(DATA_LIMIT);
    expect(PROTOCOLS.expertForward.maxRequestBytes).toBeGreaterThan(DATA_LIMIT); // the cap alone would not stop it
  });
});

describe('a large message through a relay, over a slow uplink', () => {
  const UPLINK = { bytesPerSecond: 4 * 1024 * 1024, delayMs: 20 };
  const ECHO = '/swarmtrain-test/echo/1';
  let relay: Host;
  let hidden: Host; // behind a NAT on a slow uplink: reached only through the relay
  let dialer: Host;
  let relayedAddress: string;
  let dialerReceived = 0; // bytes the dialer's sockets received

  beforeAll(async () => {
    relay = await createHost({ relayServer: { mayReserve: () => true } });
    hidden = await createHost({
      relayClient: true, listen: [`${relay.getMultiaddrs()[0]}/p2p-circuit`], transports: [tcpWith((socket) => throttle(socket, UPLINK))],
    });
    await serveToy(new Rpc({ transport: hidden, codec: msgpackCodec }));
    await hidden.handle(ECHO, async (stream) => {
      const bytes = byteStream(stream);
      for (;;) await bytes.write(await bytes.read({ bytes: 1 }));
    }, { runOnLimitedConnection: true });
    const counted = tcpWith((socket) => socket.on('data', (data: Buffer) => (dialerReceived += data.length)));
    dialer = await createHost({ relayClient: true, transports: [counted] });
    relayedAddress = hidden.getMultiaddrs().map(String).find((a) => a.includes('/p2p-circuit/'))!;
  });

  afterAll(async () => {
    await Promise.all([dialer?.stop(), hidden?.stop(), relay?.stop()]);
  });

  it('arrives whole, and other streams on the connection wait behind at most a window of it, not all of it', async () => {
    const connection = await dialer.dial(multiaddr(relayedAddress));
    const echo = byteStream(await connection.newStream(ECHO, { runOnLimitedConnection: true }));
    const rpc = new Rpc({ transport: dialer, codec: msgpackCodec });
    const [rows, hiddenSize] = [2048, 1024]; // 8 MiB each way: the reply crawls up the slow uplink for 2 s or more
    const input = Float32Array.from({ length: rows * hiddenSize }, (_, i) => (i % 1000) - 500);
    const call = { ...samples().expertForward.request, rows, tensor: f32Tensor([rows, hiddenSize], input) };
    const request = rpc.request(relayedAddress, 'expertForward', call);
    let answered = false;
    void request.finally(() => (answered = true)).catch(() => {});
    // While the reply comes in, echo a byte: what arrives before the echo was queued ahead of it on the uplink.
    const ahead: number[] = [];
    while (!answered) {
      const before = dialerReceived;
      await echo.write(new Uint8Array([1]));
      await echo.read({ bytes: 1 });
      ahead.push(dialerReceived - before);
    }
    const reply = await request;
    expect(Buffer.from(tensorF32(reply.tensor).buffer).equals(Buffer.from(input.map((x) => 2 * x).buffer))).toBe(true);
    expect(dialer.getConnections(hidden.peerId).map((c) => c.id)).toEqual([connection.id]); // relayed, and never cut
    // libp2p's pings queue the same way, and it cuts a connection whose ping is late. (Uncapped: 4 MiB and growing.)
    expect(Math.max(...ahead)).toBeGreaterThan(0); // some echoes did wait behind the reply
    expect(Math.max(...ahead)).toBeLessThan(2 * 1024 * 1024);
  });
});
