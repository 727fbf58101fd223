import { describe, expect, it } from 'vitest';
import { DataLeases, JobLeases } from '../../coordinator/leases.ts';
import { rng } from '../helpers.ts';

function setup(batches = 10, leaseMs = 1000) {
  let clock = 100;
  const leases = new DataLeases({ batches, leaseMs, now: () => clock });
  return { leases, advance: (ms: number) => (clock += ms), time: () => clock };
}

describe('data leases', () => {
  it('hands out the lowest free ids with a deadline, until none are left', () => {
    const { leases, time } = setup(10);
    const a = leases.lease('a', 4);
    expect(a).toMatchObject({ epoch: 0, ids: [0, 1, 2, 3], deadline: time() + 1000 });
    expect(leases.lease('b', 3).ids).toEqual([4, 5, 6]);
    expect(leases.lease('c', 5).ids).toEqual([7, 8, 9]);
    const none = leases.lease('d', 2);
    expect(none.ids).toEqual([]);
    expect(new Set([a.leaseId, none.leaseId]).size).toBe(2);
    expect(leases.stats).toMatchObject({ issued: 10, reissued: 0 });
  });

  it('accepts a report only from the holder, once', () => {
    const { leases } = setup(4);
    leases.lease('a', 2);
    expect(leases.report('a', 0, 0)).toEqual({ accepted: true });
    expect(leases.report('a', 0, 0)).toEqual({ accepted: false, reason: 'batch 0 was already reported' });
    expect(leases.report('b', 0, 1)).toEqual({ accepted: false, reason: 'batch 1 is leased to another node' });
    expect(leases.report('a', 0, 3)).toEqual({ accepted: false, reason: 'batch 3 is not leased to a' });
    expect(leases.report('a', 0, 4)).toMatchObject({ accepted: false, reason: 'no batch 4 (the epoch has 4)' });
    expect(leases.report('a', 0, 1.5)).toMatchObject({ accepted: false });
    expect(leases.report('a', 1, 1)).toEqual({ accepted: false, reason: 'epoch 1 is not the current epoch (0)' });
    expect(leases.stats).toMatchObject({ completed: 1, rejected: 6 });
    expect(leases.remaining).toBe(3);
  });

  it('expires leases after their deadline and re-issues them lowest first; a late report after re-issue is rejected', () => {
    const { leases, advance } = setup(6, 1000);
    leases.lease('a', 3); // 0 1 2
    leases.lease('b', 2); // 3 4
    leases.report('a', 0, 1);
    advance(1000);
    expect(leases.expire()).toEqual([]); // at the deadline a lease still holds
    advance(1);
    expect(leases.expire()).toEqual([
      { nodeId: 'a', leaseId: 0, ids: [0, 2] },
      { nodeId: 'b', leaseId: 1, ids: [3, 4] },
    ]);
    expect(leases.lease('c', 3).ids).toEqual([0, 2, 3]);
    expect(leases.report('a', 0, 0)).toEqual({ accepted: false, reason: 'batch 0 is leased to another node' });
    // Batch 4 lapsed but nobody has it yet: its last holder's late report still counts, and it is not handed out again.
    expect(leases.report('b', 0, 4)).toEqual({ accepted: true });
    expect(leases.lease('c', 3).ids).toEqual([5]);
    expect(leases.stats).toEqual({ issued: 9, reissued: 3, completed: 2, rejected: 1, expired: 4, released: 0 });
  });

  it('release returns every lease of a node; a lease re-issued to the same node is its again', () => {
    const { leases, advance } = setup(8);
    leases.lease('a', 2);
    leases.lease('b', 2);
    leases.lease('a', 2);
    expect(leases.release('a')).toEqual([0, 1, 4, 5]);
    expect(leases.release('a')).toEqual([]);
    expect(leases.lease('a', 1).ids).toEqual([0]);
    expect(leases.report('a', 0, 0)).toEqual({ accepted: true });
    advance(5000);
    expect(leases.expire().map((e) => e.nodeId)).toEqual(['b']);
    expect(leases.stats).toMatchObject({ released: 4, expired: 2, reissued: 1 });
  });

  it('runs epochs in sequence; a report of the previous epoch cannot complete the next', () => {
    const { leases, advance } = setup(3, 1000);
    expect(() => leases.nextEpoch()).toThrow(/epoch 0 is not done \(3 of 3 batches unreported\)/);
    leases.lease('a', 3);
    advance(2000);
    leases.expire();
    leases.lease('b', 3);
    for (const id of [0, 1, 2]) expect(leases.report('b', 0, id).accepted).toBe(true);
    expect(leases.done).toBe(true);
    expect(leases.nextEpoch()).toBe(1);
    expect(leases.done).toBe(false);
    const next = leases.lease('a', 3);
    expect(next).toMatchObject({ epoch: 1, ids: [0, 1, 2] });
    // a's epoch-0 work arrives late: it must not count for epoch 1, where a holds the same ids.
    expect(leases.report('a', 0, 1)).toEqual({ accepted: false, reason: 'epoch 0 is not the current epoch (1)' });
    expect(leases.report('a', 1, 1)).toEqual({ accepted: true });
    expect(leases.stats).toMatchObject({ issued: 9, reissued: 3, completed: 4, rejected: 1 });
  });

  it('refuses bad arguments', () => {
    expect(() => new DataLeases({ batches: 0, leaseMs: 1 })).toThrow(/batches/);
    expect(() => new DataLeases({ batches: 4, leaseMs: 0 })).toThrow(/leaseMs/);
    const { leases } = setup();
    expect(() => leases.lease('a', 0)).toThrow(/count/);
    expect(() => leases.lease('', 1)).toThrow(/nodeId/);
  });

  it('completes every batch of every epoch exactly once whatever nodes do (randomized)', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const random = rng(seed);
      const chance = (p: number) => (random() + 1) / 2 < p;
      const pick = <T,>(items: T[]): T => items[Math.floor(((random() + 1) / 2) * items.length)];
      let clock = 0;
      const batches = 150;
      const epochs = 3;
      const leases = new DataLeases({ batches, leaseMs: 50, now: () => clock });
      // Each node's batches in hand, kept across deaths (a node that comes back reports its old work).
      const nodes = Array.from({ length: 12 }, (_, i) => ({ id: `n${i}`, alive: true, work: [] as { epoch: number; id: number }[] }));
      const accepted = Array.from({ length: epochs }, () => new Array<number>(batches).fill(0));
      let acceptedTotal = 0;
      let rejectedTotal = 0;
      const report = (nodeId: string, epoch: number, id: number) => {
        const result = leases.report(nodeId, epoch, id);
        if (result.accepted) {
          accepted[epoch][id]++;
          acceptedTotal++;
        } else rejectedTotal++;
      };

      let ticks = 0;
      while (leases.epoch < epochs) {
        expect(++ticks).toBeLessThan(100_000); // nothing is lost: every epoch finishes
        clock += Math.floor(((random() + 1) / 2) * 20);
        const node = pick(nodes);
        if (!node.alive) {
          if (chance(0.3)) node.alive = true; // comes back (the same id), work still in hand
        } else if (chance(0.03)) {
          node.alive = false;
          leases.release(node.id);
        } else if (node.work.length > 0 && chance(0.7)) {
          const done = node.work.splice(Math.floor(((random() + 1) / 2) * node.work.length), 1)[0];
          report(node.id, done.epoch, done.id);
          if (chance(0.1)) report(node.id, done.epoch, done.id); // a duplicate (retried message)
        } else if (chance(0.05)) {
          report(node.id, leases.epoch, Math.floor(((random() + 1) / 2) * batches)); // a report for a batch it never got
        } else {
          const grant = leases.lease(node.id, 1 + Math.floor(((random() + 1) / 2) * 4));
          for (const id of grant.ids) node.work.push({ epoch: grant.epoch, id });
        }
        leases.expire();
        if (leases.done) {
          expect(accepted[leases.epoch].every((n) => n === 1)).toBe(true);
          if (leases.epoch + 1 < epochs) leases.nextEpoch();
          else break;
        }
      }
      // Exactly once, in every epoch; the counters agree with what the nodes saw.
      for (const counts of accepted) expect(counts.every((n) => n === 1)).toBe(true);
      const stats = leases.stats;
      expect(stats.completed).toBe(acceptedTotal);
      expect(stats.completed).toBe(batches * epochs);
      expect(stats.rejected).toBe(rejectedTotal);
      expect(stats.issued - stats.reissued).toBe(batches * epochs); // each batch's first issue counted once
      expect(stats.reissued).toBeGreaterThan(0); // the run did exercise expiry and release
      expect(stats.rejected).toBeGreaterThan(0);
      expect(stats.expired + stats.released).toBeGreaterThanOrEqual(stats.reissued);
    }
  });
});

function jobSetup(batchesPerEpoch: number, totalBatches: number, leaseMs = 1000) {
  let clock = 100;
  const leases = new JobLeases({ batchesPerEpoch, totalBatches, leaseMs, now: () => clock });
  return { leases, advance: (ms: number) => (clock += ms), time: () => clock };
}

describe('job leases (global batch ids)', () => {
  it('grants global ids epoch·perEpoch + id, starting the next epoch once one is complete', () => {
    const { leases, time } = jobSetup(4, 10);
    const first = leases.lease('a', 4)!;
    expect(first).toEqual({ leaseId: 0, batchIds: [0, 1, 2, 3], deadline: time() + 1000 });
    expect(leases.lease('b', 1)).toBeUndefined(); // the epoch is all leased
    expect(leases.report('a', first.leaseId, [0, 1, 2])).toEqual({ completed: 3, completedIds: [0, 1, 2], epoch: 0, problems: [] });
    expect(leases.epoch).toBe(0);
    expect(leases.report('a', first.leaseId, [3])).toEqual({ completed: 1, completedIds: [3], epoch: 0, problems: [] }); // completes epoch 0
    expect(leases.epoch).toBe(1);
    expect(leases.completed).toBe(4);
    expect(leases.lease('b', 2)!.batchIds).toEqual([4, 5]);
  });

  it('grants at most totalBatches: the last epoch is partial, and then the job is done', () => {
    const { leases } = jobSetup(4, 6);
    const a = leases.lease('a', 10)!;
    leases.report('a', a.leaseId, a.batchIds);
    const b = leases.lease('b', 10)!;
    expect(b.batchIds).toEqual([4, 5]); // batches 6 and 7 of epoch 1 are beyond the job
    expect(leases.lease('c', 1)).toBeUndefined();
    expect(leases.done).toBe(false);
    expect(leases.report('b', b.leaseId, [4, 5])).toEqual({ completed: 2, completedIds: [4, 5], epoch: 1, problems: [] });
    expect(leases).toMatchObject({ done: true, completed: 6, epoch: 1, leased: 0 });
    expect(leases.lease('c', 1)).toBeUndefined();
  });

  it('a job of no batches is done from the start', () => {
    const { leases } = jobSetup(4, 0);
    expect(leases.done).toBe(true);
    expect(leases.lease('a', 1)).toBeUndefined();
  });

  it('refuses reports of unknown leases, of finished epochs and of ids outside the lease\'s epoch', () => {
    const { leases } = jobSetup(2, 10);
    const a = leases.lease('a', 2)!;
    expect(leases.report('a', 7, [0])).toEqual({ completed: 0, completedIds: [], epoch: 0, problems: ['lease 7 is unknown or of a finished epoch'] });
    expect(leases.report('a', 7, [])).toEqual({ completed: 0, completedIds: [], epoch: 0, problems: [] }); // nothing claimed, nothing wrong
    expect(leases.report('a', a.leaseId, [5, 1, 1])).toEqual({
      completed: 1, completedIds: [1], epoch: 0, problems: ['batch 5: not in epoch 0 of lease 0', 'batch 1: batch 1 was already reported'],
    });
    expect(leases.report('b', a.leaseId, [0]).problems).toEqual(['batch 0: batch 0 is leased to another node']);
    leases.report('a', a.leaseId, [0]); // epoch 0 complete
    const b = leases.lease('a', 2)!;
    expect(b.batchIds).toEqual([2, 3]);
    // A duplicate report of the old lease cannot touch epoch 1, where the same epoch-local ids are leased to a.
    expect(leases.report('a', a.leaseId, [0, 1])).toMatchObject({ completed: 0, problems: ['lease 0 is unknown or of a finished epoch'] });
    expect(leases.completed).toBe(2);
    expect(leases.stats).toMatchObject({ completed: 2, rejected: 2 });
  });

  it('expiry and release return global ids; the batches are granted again', () => {
    const { leases, advance } = jobSetup(3, 9);
    const a = leases.lease('a', 3)!;
    leases.report('a', a.leaseId, [0, 1, 2]);
    leases.lease('a', 2); // 3 4
    leases.lease('b', 1); // 5
    expect(leases.leased).toBe(3);
    expect(leases.release('b')).toEqual([5]);
    advance(1001);
    expect(leases.expire()).toEqual([{ nodeId: 'a', leaseId: 1, batchIds: [3, 4] }]);
    expect(leases.leased).toBe(0);
    expect(leases.lease('c', 5)!.batchIds).toEqual([3, 4, 5]);
    expect(leases.stats).toMatchObject({ issued: 9, reissued: 3, expired: 2, released: 1 });
  });

  it('completes every batch of the job exactly once whatever nodes do; its changes keep a copy of the live leases (randomized)', () => {
    for (const seed of [1, 2, 3]) {
      const random = rng(seed);
      const uniform = () => (random() + 1) / 2;
      const pick = <T,>(items: T[]): T => items[Math.floor(uniform() * items.length)];
      let clock = 0;
      const perEpoch = 40;
      const total = 130; // three full epochs and a partial fourth
      const leases = new JobLeases({ batchesPerEpoch: perEpoch, totalBatches: total, leaseMs: 50, now: () => clock });
      const nodes = Array.from({ length: 8 }, (_, i) => ({ id: `n${i}`, alive: true, work: [] as { leaseId: number; batchId: number }[] }));
      const accepted = new Array<number>(total + perEpoch).fill(0);
      // What a store kept up to date from takeChanges() alone holds: the live leases, whatever happened in between.
      const stored = new Map<number, string>();
      const asStored = (lease: { nodeId: string; batchIds: number[] }) => `${lease.nodeId}: ${lease.batchIds.join(' ')}`;
      for (let ticks = 0; !leases.done; ticks++) {
        expect(ticks).toBeLessThan(100_000); // nothing is lost: the job finishes
        clock += Math.floor(uniform() * 20);
        const node = pick(nodes);
        if (!node.alive) node.alive = uniform() < 0.3; // comes back, work still in hand
        else if (uniform() < 0.03) {
          node.alive = false;
          leases.release(node.id);
        } else if (node.work.length > 0 && uniform() < 0.7) {
          const { leaseId, batchId } = node.work.splice(Math.floor(uniform() * node.work.length), 1)[0];
          const before = leases.completed;
          const times = uniform() < 0.1 ? 2 : 1; // a retried message
          for (let t = 0; t < times; t++) if (leases.report(node.id, leaseId, [batchId]).completed === 1) accepted[batchId]++;
          expect(leases.completed - before).toBeLessThanOrEqual(1);
        } else {
          const grant = leases.lease(node.id, 1 + Math.floor(uniform() * 4));
          for (const batchId of grant?.batchIds ?? []) {
            expect(batchId).toBeLessThan(total);
            node.work.push({ leaseId: grant!.leaseId, batchId });
          }
        }
        leases.expire();
        if (ticks % 3 === 0) {
          for (const change of leases.takeChanges()) {
            if (change.batchIds.length === 0) stored.delete(change.leaseId);
            else stored.set(change.leaseId, asStored(change));
          }
          expect(stored).toEqual(new Map(leases.live().map((lease) => [lease.leaseId, asStored(lease)])));
        }
      }
      expect(accepted.slice(0, total).every((n) => n === 1)).toBe(true);
      expect(accepted.slice(total).every((n) => n === 0)).toBe(true);
      expect(leases).toMatchObject({ completed: total, epoch: 3 });
      expect(leases.stats.completed).toBe(total);
      expect(leases.stats.reissued).toBeGreaterThan(0); // the run did exercise expiry and release
    }
  });
});
