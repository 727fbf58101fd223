// The job store on a real SQLite file: migrations, the job state machine, a report's completions and
// lease change in one transaction, metrics downsampling against a brute-force reference, and
// everything read back by a fresh process-like reopen. JobLeases.restore takes the saved state back.
import Database from 'better-sqlite3';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MetricPoint } from '../../coordinator/api/service.ts';
import { JobLeases } from '../../coordinator/leases.ts';
import { JobStore, StateConflictError } from '../../coordinator/store.ts';
import { demoJob } from '../../src/harness/demo-job.ts';

let dir: string;
let path: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-store-'));
  path = join(dir, 'coordinator.db');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const spec = (jobId: string) => ({ ...demoJob(40, 2), jobId });
const point = (at: number, completed: number): MetricPoint => ({
  at, completed, loss: 5 - completed / 100, tokensPerSecond: 1000, nodes: 2, bytesSent: at, bytesReceived: at, refusedUpdates: 0,
  droppedExpertCalls: 0, staleness: 1,
});

describe('the job store', () => {
  it('creates its schema in WAL mode, and refuses a file of a newer schema', async () => {
    JobStore.open(path).close();
    const db = new Database(path);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('user_version', { simple: true })).toBe(1);
    db.pragma('user_version = 7');
    db.close();
    expect(() => JobStore.open(path)).toThrow(/schema version 7, newer than this coordinator's 1/);
    await writeFile(join(dir, 'garbage.db'), 'not a database at all, just text'.repeat(100));
    expect(() => JobStore.open(join(dir, 'garbage.db'))).toThrow(/not a database/);
  });

  it('keeps the queue in order and moves jobs only along allowed transitions, recording each', () => {
    const store = JobStore.open(path);
    store.addJob({ id: 'a', name: 'first', spec: spec('a'), createdAt: 1 });
    store.addJob({ id: 'b', name: 'second', spec: spec('b'), base: 'tiny', createdAt: 2 });
    expect(store.nextQueued()?.id).toBe('a');
    expect(store.activeJob()).toBeUndefined();
    store.transition('a', 'running', 10);
    expect(() => store.transition('a', 'queued', 11)).toThrow(StateConflictError);
    expect(() => store.transition('b', 'paused', 11)).toThrow(/job b is queued: it cannot become paused/);
    store.transition('a', 'paused', 12);
    expect(store.activeJob()?.id).toBe('a');
    store.transition('a', 'running', 13);
    store.transition('a', 'failed', 14, 'the corpus vanished');
    expect(() => store.transition('a', 'running', 15)).toThrow(StateConflictError);
    expect(store.job('a')).toMatchObject({ state: 'failed', startedAt: 10, endedAt: 14, error: 'the corpus vanished' });
    expect(store.transitions('a').map((t) => t.to)).toEqual(['queued', 'running', 'paused', 'running', 'failed']);
    expect(store.nextQueued()).toMatchObject({ id: 'b', base: 'tiny', spec: spec('b') });
    store.close();
  });

  it('writes completions and the lease change together, and a reopened store reads back everything', () => {
    let store = JobStore.open(path);
    store.addJob({ id: 'a', name: 'a', spec: spec('a'), createdAt: 1 });
    store.updateLeases('a', { leases: [{ leaseId: 3, nodeId: 'n1', batchIds: [0, 1, 2] }], nextLeaseId: 4 });
    // A failing transaction (a batch completed twice) leaves no trace: neither its completions nor its lease change.
    store.updateLeases('a', { completed: { nodeId: 'n1', batchIds: [0], at: 5 }, leases: [{ leaseId: 3, nodeId: 'n1', batchIds: [1, 2] }] });
    expect(() => store.updateLeases('a', {
      completed: { nodeId: 'n1', batchIds: [1, 0], at: 6 }, leases: [{ leaseId: 3, nodeId: 'n1', batchIds: [] }], nextLeaseId: 9,
    })).toThrow(/UNIQUE/);
    store.savePlan('a', { version: 7, plan: { any: 'thing' }, members: ['n1', 'n2'] });
    store.saveNode({ nodeId: 'n1', lastSeen: 5, cores: 2, gemmGflops: 40, memoryBytes: 2 ** 30, addrs: ['/ip4/127.0.0.1/tcp/1/p2p/n1'] });
    store.saveNode({ nodeId: 'n1', lastSeen: 9, cores: 2, gemmGflops: 41, memoryBytes: 2 ** 30, addrs: [] });
    store.addCheckpoint('a', { round: 2, completed: 8, createdAt: 20, bytes: 1000 });
    store.setMeta('planFloor', '7');
    store.close();

    store = JobStore.open(path);
    expect(store.completed('a')).toEqual([0]);
    expect(store.leases('a')).toEqual([{ leaseId: 3, nodeId: 'n1', batchIds: [1, 2] }]);
    expect(store.job('a')!.nextLeaseId).toBe(4);
    expect(store.plan('a')).toEqual({ version: 7, plan: { any: 'thing' }, members: ['n1', 'n2'] });
    expect(store.nodes()).toEqual([{ nodeId: 'n1', firstSeen: 5, lastSeen: 9, cores: 2, gemmGflops: 41, memoryBytes: 2 ** 30, addrs: [] }]);
    expect(store.checkpoints('a')).toEqual([{ round: 2, completed: 8, createdAt: 20, bytes: 1000 }]);
    expect(store.meta('planFloor')).toBe('7');
    // An ended job's live leases are dropped; deleting a job removes every row of it.
    store.transition('a', 'running', 30);
    store.transition('a', 'cancelled', 31);
    expect(store.leases('a')).toEqual([]);
    store.deleteJob('a');
    const leftovers = [store.job('a'), store.completed('a'), store.plan('a'), store.checkpoints('a'), store.transitions('a')];
    expect(leftovers).toEqual([undefined, [], undefined, [], []]);
    store.close();
  });

  it('downsamples metrics to at most N evenly spaced points ending with the latest', () => {
    const store = JobStore.open(path);
    store.addJob({ id: 'a', name: 'a', spec: spec('a'), createdAt: 1 });
    const all = Array.from({ length: 1003 }, (_, i) => point(1000 + i, i));
    for (const p of all) store.addMetric('a', p);
    expect(store.metrics('a', 5000)).toEqual(all);
    for (const n of [1, 2, 7, 100, 1002]) {
      const stride = Math.ceil(all.length / n);
      const reference = all.filter((_, i) => (all.length - 1 - i) % stride === 0);
      const got = store.metrics('a', n);
      expect(got).toEqual(reference);
      expect(got.length).toBeLessThanOrEqual(n);
      expect(got.at(-1)).toEqual(all.at(-1));
    }
    expect(store.metrics('other', 10)).toEqual([]);
    store.close();
  });
});

describe('JobLeases.restore', () => {
  it('takes back completions and live leases: nothing completed is granted again, the live leases report, the rest is free', () => {
    const before = new JobLeases({ batchesPerEpoch: 6, totalBatches: 12, leaseMs: 1000, now: () => 0 });
    const a = before.lease('a', 4)!;
    before.report('a', a.leaseId, [a.batchIds[0], a.batchIds[2]]);
    const b = before.lease('b', 1)!;
    const completed = [a.batchIds[0], a.batchIds[2]];
    const after = new JobLeases({ batchesPerEpoch: 6, totalBatches: 12, leaseMs: 1000, now: () => 5000 });
    after.restore(completed, before.live(), before.nextLeaseId);
    expect(after.completed).toBe(2);
    expect(after.live()).toEqual(before.live());
    // A report for a lease granted before the restart counts.
    expect(after.report('b', b.leaseId, b.batchIds)).toMatchObject({ completedIds: b.batchIds, problems: [] });
    // New grants take only what is neither completed nor leased, with a new lease id.
    const next = after.lease('c', 6)!;
    expect(next.leaseId).toBeGreaterThan(b.leaseId);
    expect(next.batchIds).toEqual([5]);
    expect(after.report('a', a.leaseId, [a.batchIds[1], a.batchIds[3]]).completedIds).toEqual([a.batchIds[1], a.batchIds[3]]);
    after.report('c', next.leaseId, next.batchIds);
    // Epoch 0 is complete: the next grant starts epoch 1.
    expect(after.lease('c', 2)!.batchIds).toEqual([6, 7]);

    const second = new JobLeases({ batchesPerEpoch: 6, totalBatches: 12, leaseMs: 1000 });
    second.restore([0, 1, 2, 3, 4, 5, 6], [], 9);
    expect([second.epoch, second.completed]).toEqual([1, 7]);
    expect(second.lease('x', 12)!.batchIds).toEqual([7, 8, 9, 10, 11]);
  });
});
