// Real swarms of separate processes on 127.0.0.1: a coordinator and nodes started through their
// command-line entry points, each printing one JSON event per line, which the caller reads and
// waits on. Used by the integration tests, `npm run bench:swarm` and the demo (`npm start`).
// Each process's stdout and stderr are also written to <dir>/<name>.jsonl and <name>.stderr.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { JobSpec } from '../../proto/index.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export type SwarmEvent = { event: string } & Record<string, any>;

export class Proc {
  readonly events: SwarmEvent[] = [];
  stderr = '';
  /** null while running; -1 when ended by a signal. */
  exitCode: number | null = null;
  /** Resolves with the exit code once the process has exited and its output is read and logged. */
  readonly exited: Promise<number | null>;
  private readonly listeners = new Set<() => void>();

  constructor(readonly name: string, readonly child: ChildProcessWithoutNullStreams, logDir: string) {
    const stdoutLog = createWriteStream(join(logDir, `${name}.jsonl`));
    const stderrLog = createWriteStream(join(logDir, `${name}.stderr`));
    let partial = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      stdoutLog.write(chunk);
      const lines = (partial + chunk).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        if (!line.trim()) continue;
        try {
          this.events.push(JSON.parse(line));
        } catch {
          this.events.push({ event: 'text', text: line });
        }
      }
      for (const listener of this.listeners) listener();
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderrLog.write(chunk);
      this.stderr += chunk;
    });
    // 'close', not 'exit': by then every line the process printed has been read.
    this.exited = new Promise((resolve) => child.on('close', async (code) => {
      stdoutLog.end();
      stderrLog.end();
      await Promise.all([once(stdoutLog, 'close'), once(stderrLog, 'close')]);
      this.exitCode = code ?? -1;
      for (const listener of this.listeners) listener();
      resolve(code);
    }));
  }

  /** The first event (from the start) matching `match`, waiting up to `timeoutMs` for it. */
  waitFor(match: (e: SwarmEvent) => boolean, timeoutMs = 60_000, what = 'event'): Promise<SwarmEvent> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events.find(match);
        if (found) return done(() => resolve(found));
        if (this.exitCode !== null) done(() => reject(new Error(`${this.name} exited (${this.exitCode}) before ${what}; stderr: ${this.stderr.slice(-2000)}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`))), timeoutMs);
      const done = (finish: () => void) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        finish();
      };
      this.listeners.add(check);
      check();
    });
  }

  count(match: (e: SwarmEvent) => boolean): number {
    return this.events.filter(match).length;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.exitCode === null) this.child.kill(signal);
  }

  /** SIGINT (a clean stop), then SIGKILL if the process has not exited within `graceMs`. */
  async interrupt(graceMs = 30_000): Promise<number | null> {
    this.kill('SIGINT');
    const timer = setTimeout(() => this.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

export interface StartOptions {
  /** Where the process's output is logged. */
  logDir: string;
  /** In a process group of its own, so a terminal's Ctrl-C reaches only the caller, which stops it in order. */
  detached?: boolean;
}

export function start(name: string, script: string, args: string[], options: StartOptions): Proc {
  const child = spawn(process.execPath, [join(repoRoot, script), ...args], {
    cwd: repoRoot, env: { ...process.env, FORCE_COLOR: '0' }, detached: options.detached ?? false,
  });
  return new Proc(name, child, options.logDir);
}

export interface Swarm {
  /** Holds job.json and the processes' logs. */
  dir: string;
  coordinator: Proc;
  /** The coordinator's multiaddr. */
  address: string;
  nodes: Proc[];
  startNode(extra?: string[]): Proc;
  /** Kills every process at once (SIGKILL); removes a temporary dir. */
  stop(): Promise<void>;
  /** Stops cleanly: SIGINT to the nodes (they hand their leases back), then to the coordinator; removes a temporary dir. */
  shutdown(graceMs?: number): Promise<void>;
}

export interface SwarmOptions {
  /** Keep job.json and the logs in this folder (default: a temporary one, removed on stop). */
  dir?: string;
  detached?: boolean;
}

/** Starts a coordinator for `job` and waits until it listens. */
export async function startSwarm(job: JobSpec, coordinatorArgs: string[] = [], options: SwarmOptions = {}): Promise<Swarm> {
  const dir = options.dir ?? await mkdtemp(join(tmpdir(), 'swarmtrain-swarm-'));
  await mkdir(dir, { recursive: true });
  const removeTemporary = () => (options.dir === undefined ? rm(dir, { recursive: true, force: true }) : Promise.resolve());
  const jobFile = join(dir, 'job.json');
  await writeFile(jobFile, `${JSON.stringify(job, null, 2)}\n`);
  const startOptions = { logDir: dir, detached: options.detached };
  const coordinator = start('coordinator', 'coordinator/bin.mjs', ['--job', jobFile, ...coordinatorArgs], startOptions);
  const listening = await coordinator.waitFor((e) => e.event === 'listening', 120_000, 'listening');
  const address = (listening.addrs as string[])[0];
  const swarm: Swarm = {
    dir, coordinator, address, nodes: [],
    startNode(extra: string[] = []) {
      const node = start(`node${swarm.nodes.length}`, 'node/bin.mjs', ['node', '--join', address, ...extra], startOptions);
      swarm.nodes.push(node);
      return node;
    },
    async stop() {
      for (const p of [...swarm.nodes, coordinator]) p.kill('SIGKILL');
      await Promise.all([...swarm.nodes, coordinator].map((p) => p.exited));
      await removeTemporary();
    },
    async shutdown(graceMs) {
      await Promise.all(swarm.nodes.map((n) => n.interrupt(graceMs)));
      await coordinator.interrupt(graceMs);
      await removeTemporary();
    },
  };
  return swarm;
}

/** A coordinator service (`swarmtrain coordinator --data`) and its nodes; the coordinator can be killed and started again. */
export interface ServiceSwarm {
  dir: string;
  dataDir: string;
  coordinator: Proc;
  /** The coordinator's multiaddr: the same after a restart (fixed port, key in the data directory). */
  address: string;
  /** The HTTP API's base URL, and its token. */
  url: string;
  token: string;
  nodes: Proc[];
  startNode(extra?: string[]): Proc;
  /** Starts the coordinator again on the same data directory and port (after a kill); waits until its API answers. */
  restartCoordinator(): Promise<Proc>;
  /** Kills every process (SIGKILL); removes a temporary dir. */
  stop(): Promise<void>;
  /** Stops cleanly: SIGINT to the nodes (they hand their leases back and leave), then to the coordinator. */
  shutdown(graceMs?: number): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface ServiceOptions extends SwarmOptions {
  /** The coordinator's data directory (default <dir>/data). */
  dataDir?: string;
  /** Where its HTTP API listens (default 127.0.0.1 on a free port). */
  http?: string;
}

/** Starts a coordinator service and waits until its API listens. */
export async function startService(coordinatorArgs: string[] = [], options: ServiceOptions = {}): Promise<ServiceSwarm> {
  const dir = options.dir ?? await mkdtemp(join(tmpdir(), 'swarmtrain-service-'));
  await mkdir(dir, { recursive: true });
  const dataDir = options.dataDir ?? join(dir, 'data');
  const port = await freePort();
  const startOptions = { logDir: dir, detached: options.detached };
  let starts = 0;
  const launch = async () => {
    const name = starts++ === 0 ? 'coordinator' : `coordinator-${starts}`;
    const proc = start(name, 'coordinator/bin.mjs', [
      '--data', dataDir, '--http', options.http ?? '127.0.0.1:0', '--listen', `/ip4/127.0.0.1/tcp/${port}`, ...coordinatorArgs,
    ], startOptions);
    const listening = await proc.waitFor((e) => e.event === 'listening', 120_000, 'listening');
    const http = await proc.waitFor((e) => e.event === 'http', 60_000, 'http');
    return { proc, address: (listening.addrs as string[])[0], url: http.url as string };
  };
  const first = await launch();
  const token = (first.proc.events.find((e) => e.event === 'api-token')?.token as string | undefined)
    ?? readFileSync(join(dataDir, 'api-token'), 'utf8').trim();
  const swarm: ServiceSwarm = {
    dir, dataDir, coordinator: first.proc, address: first.address, url: first.url, token, nodes: [],
    startNode(extra: string[] = []) {
      const node = start(`node${swarm.nodes.length}`, 'node/bin.mjs', ['node', '--join', swarm.address, ...extra], startOptions);
      swarm.nodes.push(node);
      return node;
    },
    async restartCoordinator() {
      const next = await launch();
      Object.assign(swarm, { coordinator: next.proc, url: next.url });
      return next.proc;
    },
    async stop() {
      for (const p of [...swarm.nodes, swarm.coordinator]) p.kill('SIGKILL');
      await Promise.all([...swarm.nodes, swarm.coordinator].map((p) => p.exited));
      if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
    },
    async shutdown(graceMs) {
      await Promise.all(swarm.nodes.map((n) => n.interrupt(graceMs)));
      await swarm.coordinator.interrupt(graceMs);
      if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
    },
  };
  return swarm;
}
