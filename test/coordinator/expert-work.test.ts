import { describe, expect, it } from 'vitest';
import { ExpertWork } from '../../coordinator/expert-work.ts';

describe('expert work', () => {
  it('gives the counts once a window of new rows is in and the interval has passed, older windows counting half', () => {
    let clock = 0;
    const work = new ExpertWork({ groups: 3, windowRows: 100, intervalMs: 1000, now: () => clock });
    work.add([10, 20, 30]);
    clock = 1000;
    expect(work.take()).toBeUndefined(); // 60 rows: not a window
    work.add([0, 0, 40]);
    expect([...work.take()!]).toEqual([10, 20, 70]);
    work.add([100, 0, 0]);
    clock = 1999;
    expect(work.take()).toBeUndefined(); // a window, but too soon
    clock = 2000;
    expect([...work.take()!]).toEqual([105, 10, 35]);
    clock = 5000;
    expect(work.take()).toBeUndefined(); // nothing new since
  });

  it('refuses counts of the wrong length or kind, taking none of them', () => {
    const work = new ExpertWork({ groups: 3, windowRows: 10, intervalMs: 0, now: () => 0 });
    expect(() => work.add([1, 2])).toThrow(/expertRows has 2 counts, the job 3 experts/);
    expect(() => work.add([1, 2, 0.5])).toThrow(/non-negative integers/);
    expect(() => work.add([1, -2, 30])).toThrow(/non-negative integers/);
    expect(work.take()).toBeUndefined();
    work.add([4, 4, 4]);
    expect([...work.take()!]).toEqual([4, 4, 4]);
  });
});
