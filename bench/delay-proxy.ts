// A forwarding TCP proxy that adds a fixed one-way delay (this kernel has no netem): it accepts on
// --listen, opens a connection to --target for each, and hands every chunk read from one side to the
// other --delay-ms later, in the order read, in both directions; an end or error on one side ends the
// other after what was read before it. Above 8 MiB waiting in one direction it stops reading that side
// until the queue drains, so a fast sender still meets the link's rate and the target's flow control.
// Prints {"event":"ready"} once it listens. Run inside a namespace by bench/scaling.ts --links.
// Run: npx tsx bench/delay-proxy.ts --listen 11.0.1.2:4001 --target 11.1.1.1:4001 --delay-ms 25
import { connect, createServer, type Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const MAX_QUEUED_BYTES = 8 * 2 ** 20;

/** host:port → its parts; throws on anything else. */
function hostPort(flag: string, value: string | undefined): { host: string; port: number } {
  const match = /^([^:]+):(\d+)$/.exec(value ?? '');
  if (!match) throw new RangeError(`--${flag} takes host:port, got ${value}`);
  return { host: match[1], port: Number(match[2]) };
}

/** Copies `from` to `to`, each chunk `delayMs` after it was read; timers of one duration fire in the order set, so order holds. */
function delayedPipe(from: Socket, to: Socket, delayMs: number): void {
  let queued = 0;
  from.on('data', (chunk: Buffer) => {
    queued += chunk.length;
    if (queued > MAX_QUEUED_BYTES) from.pause();
    setTimeout(() => {
      queued -= chunk.length;
      if (!to.destroyed) to.write(chunk);
      if (queued <= MAX_QUEUED_BYTES && from.isPaused()) from.resume();
    }, delayMs);
  });
  // Half-open sockets: an end passes on after the data before it; a reset passes on as one.
  from.on('end', () => setTimeout(() => to.end(), delayMs));
  from.on('error', () => setTimeout(() => to.destroy(), delayMs));
}

/** Listens on `listen` (port 0: any) and forwards each connection to `target` with `delayMs` each way; resolves once listening. */
export async function delayProxy(listen: { host: string; port: number }, target: { host: string; port: number }, delayMs: number) {
  const server = createServer({ noDelay: true, allowHalfOpen: true }, (client) => {
    const upstream = connect({ ...target, noDelay: true, allowHalfOpen: true });
    delayedPipe(client, upstream, delayMs);
    delayedPipe(upstream, client, delayMs);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, resolve);
  });
  return server;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { listen: { type: 'string' }, target: { type: 'string' }, 'delay-ms': { type: 'string' } } });
  const delayMs = Number(values['delay-ms']);
  if (!Number.isFinite(delayMs) || delayMs < 0) throw new RangeError(`--delay-ms takes a number ≥ 0, got ${values['delay-ms']}`);
  await delayProxy(hostPort('listen', values.listen), hostPort('target', values.target), delayMs);
  console.log(JSON.stringify({ event: 'ready' }));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
