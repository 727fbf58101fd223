// Links with a shape, in one process: TCP whose sockets a test can watch or slow down. A slow uplink
// sends at a set rate after a set delay, with a bounded send buffer that pushes back as a kernel's does
// (write() returns false, 'drain' follows), as a home uplink or a tbf-shaped veth would. Only the dialing
// side's sockets are reached: enough for hosts that reach the swarm by dialing out (a node behind a NAT).
import type { Transport, Upgrader } from '@libp2p/interface';
import { tcp } from '@libp2p/tcp';
import type { Socket } from 'node:net';

/** Bytes a slowed socket holds before write() asks its writer to wait. */
const SEND_BUFFER_BYTES = 256 * 1024;
const TICK_MS = 5;

export interface Uplink {
  bytesPerSecond: number;
  /** One-way delay of every byte. */
  delayMs: number;
}

type TcpComponents = Parameters<ReturnType<typeof tcp>>[0];
type MaConn = Parameters<Upgrader['upgradeOutbound']>[0] & { socket?: Socket };

/** tcp() that hands each outbound connection's socket to `onSocket` before libp2p uses it. */
export function tcpWith(onSocket: (socket: Socket) => void): (components: TcpComponents) => Transport {
  return (components) => {
    const transport = tcp()(components);
    const dial = transport.dial.bind(transport);
    transport.dial = (addr, options) => dial(addr, { ...options, upgrader: withSockets(options.upgrader, onSocket) });
    return transport;
  };
}

function withSockets(upgrader: Upgrader, onSocket: (socket: Socket) => void): Upgrader {
  return new Proxy(upgrader, {
    get(target, property) {
      if (property === 'upgradeOutbound') {
        return (maConn: MaConn, options: Parameters<Upgrader['upgradeOutbound']>[1]) => {
          if (!maConn.socket) throw new Error('tcpWith: the TCP connection no longer exposes its socket');
          onSocket(maConn.socket);
          return target.upgradeOutbound(maConn, options);
        };
      }
      const value = Reflect.get(target, property);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** Sends what is written to `socket` through `uplink`: at its rate (a debt carries over, so the average holds), after its delay. */
export function throttle(socket: Socket, { bytesPerSecond, delayMs }: Uplink): void {
  const write = socket.write.bind(socket) as (chunk: Uint8Array) => boolean;
  const queue: { chunk: Uint8Array; due: number }[] = [];
  let queued = 0;
  let budget = 0;
  let last = performance.now();
  let full = false;
  let timer: NodeJS.Timeout | undefined;
  const release = () => {
    timer = undefined;
    if (socket.destroyed) return;
    const now = performance.now();
    budget += (bytesPerSecond * (now - last)) / 1000;
    last = now;
    while (queue.length > 0 && budget > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      queued -= chunk.byteLength;
      budget -= chunk.byteLength;
      write(chunk);
    }
    if (queue.length > 0) timer = setTimeout(release, TICK_MS);
    else budget = Math.min(budget, 0); // an idle link saves up no burst
    if (full && queued < SEND_BUFFER_BYTES) {
      full = false;
      socket.emit('drain');
    }
  };
  socket.write = ((chunk: Uint8Array) => {
    queue.push({ chunk: new Uint8Array(chunk), due: performance.now() + delayMs }); // a copy: the writer may reuse its buffer
    queued += chunk.byteLength;
    if (timer === undefined) {
      last = performance.now();
      timer = setTimeout(release, TICK_MS);
    }
    full = queued >= SEND_BUFFER_BYTES;
    return !full;
  }) as Socket['write'];
  socket.once('close', () => clearTimeout(timer));
}
