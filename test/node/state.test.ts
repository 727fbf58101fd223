// What a node keeps of the experts it gave up: served to their new holder for a while, then forgotten.
import { describe, expect, it } from 'vitest';
import { ReleasedGroups } from '../../node/state.ts';

describe('released groups', () => {
  it('are served until their time is up, a group released again starting over', () => {
    let now = 0;
    const released = new ReleasedGroups(1000, () => now);
    const state = (value: number) => new Map([['w', { shape: [1], data: Float32Array.of(value) }]]);
    released.keep('expert.0.1', state(1));
    now = 600;
    released.keep('expert.0.2', state(2));
    expect(released.get('expert.0.1')?.get('w')?.data[0]).toBe(1);
    now = 1000;
    expect(released.get('expert.0.1')).toBeUndefined();
    expect(released.get('expert.0.2')?.get('w')?.data[0]).toBe(2);
    released.keep('expert.0.2', state(3));
    now = 1599;
    expect(released.get('expert.0.2')?.get('w')?.data[0]).toBe(3);
    now = 2600;
    expect(released.get('expert.0.2')).toBeUndefined();
    expect(released.get('expert.9.9')).toBeUndefined();
  });
});
