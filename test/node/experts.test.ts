// Expert calls between nodes: rows on the wire (f32 exact, bf16 within half an ulp: 2^-8 relative, ties
// to even; what a peer sends is checked), and the transport's failover across holders with its counters.
import { describe, expect, it } from 'vitest';
import { MAX_ROW_MAGNITUDE, rowsOf, SwarmRemoteExperts, wireRows, type SwarmRemoteExpertsComponents } from '../../node/experts.ts';
import type { ExpertCall } from '../../proto/index.ts';
import type { DialTarget } from '../../src/p2p/index.ts';
import { rng } from '../helpers.ts';

const ROWS = 5;
const HIDDEN = 24;

function randomRows(seed: number): Float32Array {
  const random = rng(seed);
  // Spread over many magnitudes, as activations and their gradients are.
  return Float32Array.from({ length: ROWS * HIDDEN }, (_, i) => random() * 10 ** ((i % 9) - 6));
}

describe('expert rows on the wire', () => {
  it('f32: exact, copied out of the caller\'s buffer', () => {
    const values = randomRows(1);
    const tensor = wireRows(ROWS, HIDDEN, values, 'f32');
    expect(tensor).toMatchObject({ dtype: 'F32', shape: [ROWS, HIDDEN] });
    expect(tensor.data.byteLength).toBe(4 * ROWS * HIDDEN);
    values[0] += 1; // the tensor does not alias the source (heap views sit on shared memory)
    expect(rowsOf(tensor, ROWS, HIDDEN)).toEqual(Float32Array.from(randomRows(1)));
  });

  it('bf16: half the bytes, each value within 2^-8 of its magnitude, zero and signs kept', () => {
    const values = randomRows(2);
    values[3] = 0;
    values[4] = -0;
    const tensor = wireRows(ROWS, HIDDEN, values, 'bf16');
    expect(tensor).toMatchObject({ dtype: 'BF16', shape: [ROWS, HIDDEN] });
    expect(tensor.data.byteLength).toBe(2 * ROWS * HIDDEN);
    const back = rowsOf(tensor, ROWS, HIDDEN) as Float32Array;
    for (let i = 0; i < values.length; i++) {
      expect(Math.abs(back[i] - values[i]), `value ${i}`).toBeLessThanOrEqual(Math.abs(values[i]) * 2 ** -8);
      expect(Math.sign(back[i])).toBe(Math.sign(values[i]));
    }
    expect(Object.is(back[4], -0)).toBe(true);
    // Ties go to even: 1 + 2^-8 sits halfway between bf16 neighbours 1 and 1 + 2^-7.
    const tie = rowsOf(wireRows(1, 1, Float32Array.of(1 + 2 ** -8), 'bf16'), 1, 1) as Float32Array;
    expect(tie[0]).toBe(1);
  });

  it('decodes bf16 rows at an odd offset in a larger Node Buffer, as decoded messages hold them', () => {
    const tensor = wireRows(ROWS, HIDDEN, randomRows(5), 'bf16');
    const pool = Buffer.alloc(tensor.data.byteLength + 3); // odd length: a view of it cannot be read as 16-bit words
    pool.set(tensor.data, 1);
    const odd = pool.subarray(1, 1 + tensor.data.byteLength);
    expect(rowsOf({ ...tensor, data: odd }, ROWS, HIDDEN)).toEqual(rowsOf(tensor, ROWS, HIDDEN));
  });

  it('refuses another dtype, another shape, non-finite and huge values, saying why', () => {
    const good = wireRows(ROWS, HIDDEN, randomRows(3), 'bf16');
    expect(rowsOf({ ...good, dtype: 'F16' }, ROWS, HIDDEN)).toBe('expected F32 or BF16 rows, got F16');
    expect(rowsOf(good, ROWS + 1, HIDDEN)).toBe(`expected shape [${ROWS + 1}, ${HIDDEN}], got [${ROWS}, ${HIDDEN}]`);
    const poisoned = randomRows(4);
    poisoned[7] = NaN;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'bf16'), ROWS, HIDDEN)).toBe('non-finite value NaN at 7');
    poisoned[7] = -Infinity;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBe('non-finite value -Infinity at 7');
    // Finite but huge: would overflow the holder's gradient sums.
    poisoned[7] = 3e38;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toMatch(/^out-of-range value 3\.0*\d*e\+38 at 7$/);
    poisoned[7] = MAX_ROW_MAGNITUDE;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBeInstanceOf(Float32Array);
  });
});

describe('remote expert transport', () => {
  const SELF = 'self';
  /** Holders that answer y = 2x (backward: dx = 3·dy) unless they are down; every request is recorded. */
  function swarm(down: Set<string>) {
    const asked: string[] = [];
    const rpc = {
      request: async (target: DialTarget, protocol: string, call: ExpertCall) => {
        const peer = target as unknown as string;
        asked.push(`${protocol} ${peer}`);
        if (down.has(peer)) throw new Error('timed out');
        const rows = rowsOf(call.tensor, call.rows, HIDDEN) as Float32Array;
        return { ...call, tensor: wireRows(call.rows, HIDDEN, rows.map((v) => v * (protocol === 'expertForward' ? 2 : 3)), 'f32') };
      },
    } as unknown as SwarmRemoteExpertsComponents['rpc'];
    const directory = { holders: () => [SELF, 'a', 'b'], address: (peer: string) => peer as unknown as DialTarget };
    const experts = new SwarmRemoteExperts({ rpc, directory }, { jobId: 'job', self: SELF, hidden: HIDDEN, timeoutMs: 1000, precision: 'f32' });
    return { experts, asked };
  }

  it('answers from a live holder, failing over past one that does not answer, and never calls itself', async () => {
    const { experts, asked } = swarm(new Set(['a']));
    const x = randomRows(6);
    for (let call = 0; call < 2; call++) {
      const y = new Float32Array(ROWS * HIDDEN);
      expect(await experts.forward(0, 1, x, y, ROWS)).toBe(true);
      expect(y).toEqual(x.map((v) => v * 2));
    }
    const dx = new Float32Array(ROWS * HIDDEN);
    expect(await experts.backward(0, 1, x, x, dx, ROWS)).toBe(true);
    expect(dx).toEqual(x.map((v) => v * 3));
    // Calls rotate over the holders: the second starts at the one that is down and fails over.
    expect(asked).toEqual(['expertForward b', 'expertForward a', 'expertForward b', 'expertBackward b']);
    expect(experts.stats).toMatchObject({ remoteCalls: 4, failovers: 1, unanswered: 0 });
  });

  it('resolves false when no holder answers, so the model drops the expert', async () => {
    const { experts, asked } = swarm(new Set(['a', 'b']));
    expect(await experts.forward(1, 0, randomRows(7), new Float32Array(ROWS * HIDDEN), ROWS)).toBe(false);
    expect(asked).toEqual(['expertForward b', 'expertForward a']);
    expect(experts.stats).toMatchObject({ remoteCalls: 2, failovers: 1, unanswered: 1 });
  });
});
