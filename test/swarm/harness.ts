// Real swarms of separate processes on 127.0.0.1 for the integration tests: a coordinator and
// nodes started through their command-line entry points, each printing one JSON event per
// line, which the tests read and wait on.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { JobSpec } from '../../proto/index.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export type SwarmEvent = { event: string } & Record<string, any>;

export class Proc {
  readonly events: SwarmEvent[] = [];
  stderr = '';
  exitCode: number | null = null;
  readonly exited: Promise<number | null>;
  private readonly listeners = new Set<() => void>();

  constructor(readonly name: string, readonly child: ChildProcessWithoutNullStreams) {
    let partial = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
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
    child.stderr.on('data', (chunk: string) => (this.stderr += chunk));
    this.exited = new Promise((resolve) => child.on('exit', (code) => {
      this.exitCode = code;
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
}

export function start(name: string, script: string, args: string[]): Proc {
  const child = spawn(process.execPath, [join(repoRoot, script), ...args], { cwd: repoRoot, env: { ...process.env, FORCE_COLOR: '0' } });
  return new Proc(name, child);
}

export interface Swarm {
  dir: string;
  coordinator: Proc;
  /** The coordinator's multiaddr. */
  address: string;
  nodes: Proc[];
  startNode(extra?: string[]): Proc;
  stop(): Promise<void>;
}

/** Starts a coordinator for `job` and waits until it listens. */
export async function startSwarm(job: JobSpec, coordinatorArgs: string[] = []): Promise<Swarm> {
  const dir = await mkdtemp(join(tmpdir(), 'swarmtrain-swarm-'));
  const jobFile = join(dir, 'job.json');
  await writeFile(jobFile, JSON.stringify(job));
  const coordinator = start('coordinator', 'coordinator/bin.mjs', ['--job', jobFile, ...coordinatorArgs]);
  const listening = await coordinator.waitFor((e) => e.event === 'listening', 120_000, 'listening');
  const address = (listening.addrs as string[])[0];
  const swarm: Swarm = {
    dir, coordinator, address, nodes: [],
    startNode(extra: string[] = []) {
      const node = start(`node${swarm.nodes.length}`, 'node/bin.mjs', ['node', '--join', address, ...extra]);
      swarm.nodes.push(node);
      return node;
    },
    async stop() {
      for (const p of [...swarm.nodes, coordinator]) p.kill('SIGKILL');
      await Promise.all([...swarm.nodes, coordinator].map((p) => p.exited));
      await rm(dir, { recursive: true, force: true });
    },
  };
  return swarm;
}
