// The coordinator's keeping of a job's state: every N averaging rounds and at the end it gathers
// each parameter group from one holder over the `state` protocol, writes a checkpoint, and serves
// the newest one back to nodes left with an expert nobody alive holds; the end also writes result/.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { JobSpec } from '../proto/index.ts';
import type { ModelConfig } from '../src/model/config.ts';
import { fetchGroup, type DialTarget, type Rpc } from '../src/p2p/index.ts';
import { latestCheckpoint, pruneCheckpoints, writeCheckpoint, type GroupStates, type StoredCheckpoint } from './checkpoints.ts';
import { writeResult } from './result.ts';

export type CheckpointEvent =
  /** A checkpoint was written; `carried` groups had no holder that answered and come from the previous one. */
  | { event: 'checkpoint'; round: number; completed: number; groups: number; carried: string[]; bytes: number; seconds: number; dir: string }
  | { event: 'checkpoint-failed'; round: number; reason: string }
  /** Checkpoints passed over on reading (no valid manifest, a checksum that does not match). */
  | { event: 'checkpoint-skipped'; reason: string }
  /** A node fetched a group's state from the coordinator's newest checkpoint. */
  | { event: 'restored'; group: string; node: string; round: number }
  | { event: 'result'; dir: string; round: number; mode: JobSpec['mode'] };

export interface CheckpointerOptions {
  rpc: Rpc;
  /** The coordinator's data directory: the job's files go to <dataDir>/jobs/<jobId>/. */
  dataDir: string;
  job: JobSpec;
  config: ModelConfig;
  tokenizerJson: string;
  /** Checkpoint every this many averaging rounds. */
  every: number;
  /** Checkpoints kept on disk. */
  keep: number;
  /** The pretrained base a LoRA job adapts (its folder), named in the adapter instead of writing a seeded base/. */
  baseModel?: string;
  /** Every group of the current plan with the live nodes holding it. */
  holders: () => { group: string; holders: string[] }[];
  address: (peer: string) => DialTarget | undefined;
  emit: (event: CheckpointEvent) => void;
  timeoutMs?: number;
}

/** Micro-batches the whole swarm completes in one averaging round (sync: one step of every node). */
export function batchesPerRound(job: JobSpec): number {
  return job.expectedNodes * (job.averaging.mode === 'periodic' ? job.averaging.every : 1);
}

export class JobCheckpoints {
  private latest?: StoredCheckpoint;
  private work: Promise<void> = Promise.resolve();
  private lastRound = 0;

  private constructor(private readonly options: CheckpointerOptions) {}

  /** Opens the job's checkpoint folder; a checkpoint already there (a restarted coordinator) is the one served. */
  static async open(options: CheckpointerOptions): Promise<JobCheckpoints> {
    const checkpoints = new JobCheckpoints(options);
    // A data directory that cannot be written fails now, not at the first checkpoint.
    await mkdir(checkpoints.dir, { recursive: true });
    const { checkpoint, skipped } = await latestCheckpoint(checkpoints.dir);
    for (const reason of skipped) options.emit({ event: 'checkpoint-skipped', reason });
    checkpoints.latest = checkpoint;
    checkpoints.lastRound = checkpoint?.manifest.round ?? 0;
    return checkpoints;
  }

  get dir(): string {
    return join(this.options.dataDir, 'jobs', this.options.job.jobId, 'checkpoints');
  }

  get resultDir(): string {
    return join(this.options.dataDir, 'jobs', this.options.job.jobId, 'result');
  }

  /** The newest checkpoint's round (0: none yet). */
  get round(): number {
    return this.latest?.manifest.round ?? 0;
  }

  /** A group's tensors in the newest checkpoint. */
  lookup(group: string) {
    return this.latest?.groups.get(group);
  }

  /** After completions: a checkpoint when N more rounds have passed since the last one. */
  progressed(completed: number): void {
    const round = Math.floor(completed / batchesPerRound(this.options.job));
    if (round < this.lastRound + this.options.every) return;
    this.lastRound = round;
    this.enqueue(() => this.checkpoint(round, completed));
  }

  /** A checkpoint now, whatever the round (the job is being paused); resolves once it is written or has failed. */
  now(completed: number): Promise<void> {
    const round = Math.max(this.lastRound, Math.ceil(completed / batchesPerRound(this.options.job)));
    this.lastRound = round;
    return this.enqueue(() => this.checkpoint(round, completed));
  }

  /** At the end of the job: a last checkpoint, then result/ from it. */
  finish(completed: number): Promise<void> {
    const round = Math.ceil(completed / batchesPerRound(this.options.job));
    this.lastRound = round;
    return this.enqueue(async () => {
      if (!(await this.checkpoint(round, completed))) return;
      const { job, config, tokenizerJson } = this.options;
      try {
        const { baseModel } = this.options;
        await writeResult(this.resultDir, { job, config, groups: this.latest!.groups, tokenizerJson, ...(baseModel ? { baseModel } : {}) });
        this.options.emit({ event: 'result', dir: this.resultDir, round, mode: job.mode });
      } catch (err) {
        this.options.emit({ event: 'checkpoint-failed', round, reason: `result: ${(err as Error).message}` });
      }
    });
  }

  /** Resolves once the checkpoints under way are written. */
  idle(): Promise<void> {
    return this.work;
  }

  /** One at a time, in order. */
  private enqueue(task: () => Promise<unknown>): Promise<void> {
    this.work = this.work.then(task).then(() => undefined);
    return this.work;
  }

  private async checkpoint(round: number, completed: number): Promise<boolean> {
    const t0 = performance.now();
    try {
      const { groups, carried } = await this.gather();
      const info = { jobId: this.options.job.jobId, round, completedBatches: completed };
      const { dir, bytes, manifest } = await writeCheckpoint(this.dir, info, groups);
      this.latest = { dir, manifest, groups };
      await pruneCheckpoints(this.dir, this.options.keep);
      const seconds = (performance.now() - t0) / 1e3;
      this.options.emit({ event: 'checkpoint', round, completed, groups: groups.size, carried, bytes, seconds, dir });
      return true;
    } catch (err) {
      this.options.emit({ event: 'checkpoint-failed', round, reason: (err as Error).message });
      return false;
    }
  }

  /** Every group from the first holder that serves it, else from the previous checkpoint. */
  private async gather(): Promise<{ groups: GroupStates; carried: string[] }> {
    const { rpc, job, address, timeoutMs = 30_000 } = this.options;
    const groups: GroupStates = new Map();
    const carried: string[] = [];
    for (const { group, holders } of this.options.holders()) {
      for (const peer of holders) {
        const target = address(peer);
        if (!target) continue;
        try {
          groups.set(group, await fetchGroup(rpc, target, job.jobId, group, timeoutMs));
          break;
        } catch {
          // The next holder, or the previous checkpoint.
        }
      }
      if (groups.has(group)) continue;
      const previous = this.lookup(group);
      if (!previous) throw new Error(`no holder of ${group} served its state and no earlier checkpoint has it`);
      groups.set(group, previous);
      carried.push(group);
    }
    return { groups, carried };
  }
}
