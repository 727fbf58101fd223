// TurnBatches: what one turn adds for a key goes out together once the turn's synchronous code is done.
import { describe, expect, it } from 'vitest';
import { TurnBatches } from '../../src/p2p/index.ts';

describe('turn batches', () => {
  it('gathers a turn per key, opens another batch when one is full, and a new one in a later turn', async () => {
    const sent: { key: string; items: number[] }[] = [];
    const batches = new TurnBatches<{ key: string; items: number[] }>((batch) => sent.push(batch));
    const add = (key: string, item: number) => batches.batch(key, () => ({ key, items: [] }), (b) => b.items.length < 3).items.push(item);
    for (let i = 0; i < 5; i++) add('a', i);
    add('b', 9);
    expect(sent).toEqual([]); // nothing leaves before the turn's synchronous code is done
    await Promise.resolve();
    expect(sent).toEqual([{ key: 'a', items: [0, 1, 2] }, { key: 'a', items: [3, 4] }, { key: 'b', items: [9] }]);
    add('a', 5);
    await Promise.resolve();
    expect(sent.at(-1)).toEqual({ key: 'a', items: [5] });
    expect(sent).toHaveLength(4);
  });
});
