// The delay proxy of bench:scaling --links (bench/delay-proxy.ts): bytes arrive whole and in order both
// ways, each direction at least the delay later, and a half-close passes through after the data before it.
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { delayProxy } from '../../bench/delay-proxy.ts';

const DELAY_MS = 40;
const servers: Server[] = [];
afterEach(() => servers.splice(0).forEach((s) => s.close()));

/** An upstream that echoes everything and, when the client half-closes, answers "bye" and ends. */
async function echoThroughProxy(): Promise<number> {
  const upstream = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('end', () => socket.end('bye'));
  });
  servers.push(upstream);
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const target = { host: '127.0.0.1', port: (upstream.address() as AddressInfo).port };
  const proxy = await delayProxy({ host: '127.0.0.1', port: 0 }, target, DELAY_MS);
  servers.push(proxy);
  return (proxy.address() as AddressInfo).port;
}

describe('delay proxy', () => {
  it('echoes 3 MiB in 300 writes whole and in order, the first byte back after twice the delay or more, then the end', async () => {
    const socket = connect({ host: '127.0.0.1', port: await echoThroughProxy(), allowHalfOpen: true });
    await once(socket, 'connect');
    const sent = Buffer.from(Array.from({ length: 3 * 2 ** 20 }, (_, i) => (i * 7 + (i >> 11)) & 0xff));
    const received: Buffer[] = [];
    const firstByte = new Promise<number>((resolve) => socket.once('data', () => resolve(performance.now())));
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const ended = once(socket, 'end');
    const t0 = performance.now();
    for (let i = 0; i < 300; i++) socket.write(sent.subarray((i * sent.length) / 300, ((i + 1) * sent.length) / 300));
    // Half-close: the upstream sees it only after every byte before it, then answers and ends.
    socket.end();
    expect((await firstByte) - t0).toBeGreaterThanOrEqual(2 * DELAY_MS - 1);
    await ended;
    const all = Buffer.concat(received);
    expect(all.subarray(0, sent.length).equals(sent)).toBe(true);
    expect(all.subarray(sent.length).toString()).toBe('bye');
  });
});
