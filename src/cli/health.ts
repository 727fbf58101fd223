// Health of a running node or coordinator, for Docker's HEALTHCHECK: the process rewrites a small
// JSON status file each time it shows it is working, and `swarmtrain health` checks that file is fresh.
// A node writes on joining, on every heartbeat the coordinator answers and on every step; the
// coordinator (which has no HTTP server, so no /healthz yet) writes from a timer while it serves.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { integer, text } from './args.ts';
import { command } from './command.ts';
import { EXIT } from './usage.ts';

/** What a status file holds: who wrote it, when, and a few facts worth reading in `docker inspect`. */
export interface Status {
  role: 'node' | 'coordinator';
  peerId: string;
  /** Milliseconds since the epoch of the last sign of work. */
  updatedAt: number;
  [detail: string]: unknown;
}

/** Writes a status file whole: a reader never sees half of one (written beside it, then renamed). */
export function writeStatus(path: string, status: Status): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(status)}\n`);
  renameSync(temporary, path);
}

/**
 * A writer of the status file at `path`. A failed write is told once through `warn` and otherwise
 * ignored: the process keeps working, and health checks see the file go stale.
 */
export function statusWriter(path: string, warn: (message: string) => void): (status: Status) => void {
  let warned = false;
  return (status) => {
    try {
      writeStatus(path, status);
    } catch (err) {
      if (!warned) warn(`status file ${path}: ${(err as Error).message}`);
      warned = true;
    }
  };
}

export type Health = { healthy: true; status: Status } | { healthy: false; reason: string };

/** Whether the status file at `path` exists, is well formed and was written at most `maxAgeMs` before `now`. */
export function checkHealth(path: string, maxAgeMs: number, now = Date.now()): Health {
  let json: string;
  try {
    json = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { healthy: false, reason: code === 'ENOENT' ? `no status file ${path} (not joined or not listening yet)` : `${path}: ${code}` };
  }
  let status: Partial<Status>;
  try {
    status = JSON.parse(json) as Partial<Status>;
  } catch {
    return { healthy: false, reason: `${path}: not JSON` };
  }
  if (typeof status !== 'object' || status === null || typeof status.updatedAt !== 'number' || typeof status.peerId !== 'string') {
    return { healthy: false, reason: `${path}: no updatedAt or peerId` };
  }
  const age = now - status.updatedAt;
  if (age > maxAgeMs) {
    return { healthy: false, reason: `${status.role} ${status.peerId}: last sign of work ${Math.round(age / 1000)} s ago` };
  }
  return { healthy: true, status: status as Status };
}

export const HEALTH_COMMAND = command({
  program: 'swarmtrain health',
  usage: '--status <file> [options]',
  about: `Exits 0 when the node or coordinator that writes <file> (its --status-file) showed a sign of
work recently: a heartbeat answered or a step for a node, a running server for the coordinator.
Otherwise prints why on stderr and exits 1. Docker's HEALTHCHECK runs it.`,
  options: {
    status: text('<file>', 'the status file', { required: true }),
    'max-age-s': integer('<n>', 'how old the last sign of work may be, in seconds', { min: 1 }, { default: '60' }),
  },
  async run(values, io) {
    const health = checkHealth(values.status, values['max-age-s'] * 1000);
    if (!health.healthy) {
      io.stderr.write(`unhealthy: ${health.reason}\n`);
      return EXIT.failure;
    }
    io.stdout.write(`healthy: ${health.status.role} ${health.status.peerId}\n`);
    return EXIT.ok;
  },
});
