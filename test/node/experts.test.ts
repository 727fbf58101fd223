// Expert calls between nodes: rows on the wire (f32 exact, bf16 within half an ulp: 2^-8 relative, ties to even,
// int8 within half a step of its row's scale; what a peer sends is checked), and the transport's failover and precisions.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  expertPrecisions, MAX_ROW_MAGNITUDE, rowsOf, SwarmRemoteExperts, wireRows, type SwarmRemoteExpertsComponents, type WireRows,
} from '../../node/experts.ts';
import type { ExpertCall, ExpertCalls, ExpertReplies } from '../../proto/index.ts';
import type { DialTarget } from '../../src/p2p/index.ts';
import { createKernels, type Kernels, type Rows } from '../../src/kernels/index.ts';
import { rng } from '../helpers.ts';

const ROWS = 5;
const HIDDEN = 24;

let kernels: Kernels;
/** Codes the rows (the kernels' int8 coding). */
let codec: Rows;
beforeAll(async () => {
  kernels = await createKernels({ threads: 1 });
  codec = kernels.rows;
});
afterAll(async () => {
  await kernels?.close();
});

function randomRows(seed: number): Float32Array {
  const random = rng(seed);
  // Spread over many magnitudes, as activations and their gradients are.
  return Float32Array.from({ length: ROWS * HIDDEN }, (_, i) => random() * 10 ** ((i % 9) - 6));
}

describe('expert rows on the wire', () => {
  it('f32: exact, copied out of the caller\'s buffer', () => {
    const values = randomRows(1);
    const { tensor } = wireRows(codec, ROWS, HIDDEN, values, 'f32');
    expect(tensor).toMatchObject({ dtype: 'F32', shape: [ROWS, HIDDEN] });
    expect(tensor.data.byteLength).toBe(4 * ROWS * HIDDEN);
    values[0] += 1; // the tensor does not alias the source (heap views sit on shared memory)
    expect(rowsOf(codec, { tensor }, ROWS, HIDDEN)).toEqual(Float32Array.from(randomRows(1)));
  });

  it('bf16: half the bytes, each value within 2^-8 of its magnitude, zero and signs kept', () => {
    const values = randomRows(2);
    values[3] = 0;
    values[4] = -0;
    const wire = wireRows(codec, ROWS, HIDDEN, values, 'bf16');
    expect(wire).toEqual({ tensor: expect.objectContaining({ dtype: 'BF16', shape: [ROWS, HIDDEN] }) });
    expect(wire.tensor.data.byteLength).toBe(2 * ROWS * HIDDEN);
    const back = rowsOf(codec, wire, ROWS, HIDDEN) as Float32Array;
    for (let i = 0; i < values.length; i++) {
      expect(Math.abs(back[i] - values[i]), `value ${i}`).toBeLessThanOrEqual(Math.abs(values[i]) * 2 ** -8);
      expect(Math.sign(back[i])).toBe(Math.sign(values[i]));
    }
    expect(Object.is(back[4], -0)).toBe(true);
    // Ties go to even: 1 + 2^-8 sits halfway between bf16 neighbours 1 and 1 + 2^-7.
    const tie = rowsOf(codec, wireRows(codec, 1, 1, Float32Array.of(1 + 2 ** -8), 'bf16'), 1, 1) as Float32Array;
    expect(tie[0]).toBe(1);
  });

  it('decodes bf16 rows at an odd offset in a larger Node Buffer, as decoded messages hold them', () => {
    const { tensor } = wireRows(codec, ROWS, HIDDEN, randomRows(5), 'bf16');
    const pool = Buffer.alloc(tensor.data.byteLength + 3); // odd length: a view of it cannot be read as 16-bit words
    pool.set(tensor.data, 1);
    const odd = pool.subarray(1, 1 + tensor.data.byteLength);
    expect(rowsOf(codec, { tensor: { ...tensor, data: odd } }, ROWS, HIDDEN)).toEqual(rowsOf(codec, { tensor }, ROWS, HIDDEN));
  });

  it('refuses another dtype, another shape, non-finite and huge values, saying why', () => {
    const good = wireRows(codec, ROWS, HIDDEN, randomRows(3), 'bf16');
    expect(rowsOf(codec, { tensor: { ...good.tensor, dtype: 'F16' } }, ROWS, HIDDEN)).toBe('expected F32, BF16 or I8 rows, got F16');
    expect(rowsOf(codec, good, ROWS + 1, HIDDEN)).toBe(`expected shape [${ROWS + 1}, ${HIDDEN}], got [${ROWS}, ${HIDDEN}]`);
    const poisoned = randomRows(4);
    poisoned[7] = NaN;
    expect(rowsOf(codec, wireRows(codec, ROWS, HIDDEN, poisoned, 'bf16'), ROWS, HIDDEN)).toBe('non-finite value NaN at 7');
    poisoned[7] = -Infinity;
    expect(rowsOf(codec, wireRows(codec, ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBe('non-finite value -Infinity at 7');
    // Finite but huge: would overflow the holder's gradient sums.
    poisoned[7] = 3e38;
    expect(rowsOf(codec, wireRows(codec, ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toMatch(/^out-of-range value 3\.0*\d*e\+38 at 7$/);
    poisoned[7] = MAX_ROW_MAGNITUDE;
    expect(rowsOf(codec, wireRows(codec, ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBeInstanceOf(Float32Array);
  });
});

describe('int8 expert rows', () => {
  /** Rows of different magnitudes (each row's scale differs), one of them all zeros. */
  function scaledRows(seed: number): Float32Array {
    const random = rng(seed);
    const values = Float32Array.from({ length: ROWS * HIDDEN }, (_, i) => (2 * random() - 1) * 10 ** (Math.floor(i / HIDDEN) - 2));
    values.fill(0, 3 * HIDDEN, 4 * HIDDEN);
    return values;
  }
  const i8 = (codes: number[]) => new Uint8Array(Int8Array.from(codes).buffer);
  const f32 = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);

  it('a byte per value and an f32 scale per row; each value within half a step of its row (float64 reference)', () => {
    const values = scaledRows(9);
    const wire = wireRows(codec, ROWS, HIDDEN, values, 'int8');
    expect(wire.tensor).toMatchObject({ dtype: 'I8', shape: [ROWS, HIDDEN] });
    expect(wire.scales).toMatchObject({ dtype: 'F32', shape: [ROWS, 1] });
    expect(wire.tensor.data.byteLength + wire.scales!.data.byteLength).toBe(ROWS * HIDDEN + 4 * ROWS);
    const back = rowsOf(codec, wire, ROWS, HIDDEN) as Float32Array;
    for (let r = 0; r < ROWS; r++) {
      const row = Array.from(values.subarray(r * HIDDEN, (r + 1) * HIDDEN));
      const step = Math.max(...row.map(Math.abs)) / 127; // float64
      for (let j = 0; j < HIDDEN; j++) {
        const i = r * HIDDEN + j;
        // Half a step, plus the f32 roundings of the scale and of code × scale.
        expect(Math.abs(back[i] - values[i]), `row ${r} value ${j}`).toBeLessThanOrEqual(step * (0.5 + 2 ** -23) + Math.abs(values[i]) * 2 ** -23);
      }
    }
    expect(Array.from(back.subarray(3 * HIDDEN, 4 * HIDDEN))).toEqual(new Array(HIDDEN).fill(0));
    // Decoded into a buffer of the caller's instead (its first rows; the rest untouched): the same values.
    for (const precision of ['int8', 'bf16', 'f32'] as const) {
      const into = new Float32Array(ROWS * HIDDEN + 3).fill(7);
      const wired = wireRows(codec, ROWS, HIDDEN, values, precision);
      const decoded = rowsOf(codec, wired, ROWS, HIDDEN, into) as Float32Array;
      expect([decoded.buffer, decoded.length]).toEqual([into.buffer, ROWS * HIDDEN]);
      expect(decoded).toEqual(rowsOf(codec, wired, ROWS, HIDDEN));
      expect(Array.from(into.subarray(ROWS * HIDDEN))).toEqual([7, 7, 7]);
    }
  });

  it('decodes a peer\'s scales per block of any divisor of the row, hand-computed', () => {
    const codes = Array.from({ length: ROWS * HIDDEN }, (_, i) => (i % 255) - 127);
    const scales = Array.from({ length: ROWS * 3 }, (_, b) => 0.5 * (b + 1)); // blocks of 8
    const wire: WireRows = {
      tensor: { dtype: 'I8', shape: [ROWS, HIDDEN], data: i8(codes) }, scales: { dtype: 'F32', shape: [ROWS, 3], data: f32(scales) },
    };
    const back = rowsOf(codec, wire, ROWS, HIDDEN);
    expect(back).toEqual(Float32Array.from(codes, (code, i) => code * scales[Math.floor(i / 8)]));
  });

  it('refuses malformed int8 rows, saying why', () => {
    const good = wireRows(codec, ROWS, HIDDEN, scaledRows(10), 'int8');
    const scales = (shape: number[], values: number[], dtype: 'F32' | 'BF16' = 'F32') => ({ ...good, scales: { dtype, shape, data: f32(values) } });
    const withScale = (at: number, value: number) => {
      const values = Array.from(new Float32Array(good.scales!.data.slice().buffer));
      values[at] = value;
      return scales([ROWS, 1], values);
    };
    const refusals: [WireRows, string | RegExp][] = [
      [{ tensor: good.tensor }, 'I8 rows need their scales'],
      [scales([ROWS, 1], new Array(ROWS).fill(1), 'BF16'), `expected F32 scales [${ROWS}, a divisor of ${HIDDEN}], got BF16 [${ROWS}, 1]`],
      [scales([ROWS, 5], new Array(ROWS * 5).fill(1)), `expected F32 scales [${ROWS}, a divisor of ${HIDDEN}], got F32 [${ROWS}, 5]`],
      [scales([ROWS + 1, 1], new Array(ROWS + 1).fill(1)), /got F32 \[6, 1\]/],
      [scales([ROWS], new Array(ROWS).fill(1)), /got F32 \[5\]/],
      [scales([ROWS, 1], new Array(ROWS - 1).fill(1)), 'scales: F32 tensor of shape [5, 1] needs 20 bytes, got 16'],
      [withScale(2, NaN), /^non-finite scale NaN at 2/],
      [withScale(2, -1), /^out-of-range scale -1 at 2/],
      [withScale(2, Infinity), /^non-finite scale Infinity at 2/],
      // Finite, but 127 × scale beyond what any activation or gradient reaches.
      [withScale(0, Math.fround(MAX_ROW_MAGNITUDE / 127) * 1.001), /^out-of-range scale 788188.9375 at 0/],
      [{ ...good, tensor: { ...good.tensor, data: good.tensor.data.subarray(1) } }, `I8 tensor of shape [${ROWS}, ${HIDDEN}] needs 120 bytes, got 119`],
      [{ ...good, tensor: { ...good.tensor, data: i8(new Array(ROWS * HIDDEN).fill(-128)) } }, /code -128 at 0/],
      [{ ...good, tensor: { ...good.tensor, data: i8(Array.from({ length: ROWS * HIDDEN }, (_, i) => (i === 20 ? -128 : 1))) } },
        /code -128 at 20/],
      [{ ...wireRows(codec, ROWS, HIDDEN, scaledRows(11), 'bf16'), scales: good.scales }, 'BF16 rows carry no scales'],
    ];
    for (const [rows, reason] of refusals) {
      const result = rowsOf(codec, rows, ROWS, HIDDEN);
      expect(typeof result, String(reason)).toBe('string');
      expect(result).toMatch(reason);
    }
    // The largest scale accepted: 127 of it is the largest magnitude a row may hold.
    const largest = rowsOf(codec, withScale(0, MAX_ROW_MAGNITUDE / 127), ROWS, HIDDEN) as Float32Array;
    expect(Math.max(...largest.subarray(0, HIDDEN).map(Math.abs))).toBeLessThanOrEqual(MAX_ROW_MAGNITUDE);
  });
});

describe('remote expert transport', () => {
  const SELF = 'self';
  /**
   * Holders answering y = 2x (backward: dx = 3·dy) per call, or refusing the experts in `refuses`; one that is down
   * fails every request. A holder keeps its forwards' inputs unless it is `forgetful`. Every request is recorded.
   */
  interface SwarmOptions {
    holders?: (expert: number) => string[];
    refuses?: Map<string, number[]>;
    forgetful?: Set<string>;
  }
  function swarm(down: Set<string>, options: SwarmOptions = {}) {
    const { holders = () => ['a', 'b'], refuses = new Map(), forgetful = new Set() } = options;
    const asked: string[] = [];
    const requests: ExpertCalls[] = [];
    const kept = new Map<string, Float32Array>();
    const rpc = {
      request: async (target: DialTarget, protocol: string, { direction, calls }: ExpertCalls) => {
        const peer = target as unknown as string;
        expect(protocol).toBe('expertCalls');
        asked.push(`${direction} ${peer} ${calls.map((c) => `${c.layer}.${c.expert}`).join(',')}`);
        requests.push({ direction, calls });
        if (down.has(peer)) throw new Error('timed out');
        const replies: ExpertReplies = { answers: [], refusals: [] };
        for (const call of calls) {
          if (refuses.get(peer)?.includes(call.expert)) {
            replies.refusals.push({ call: call.call, reason: `expert ${call.layer}.${call.expert} is not held here` });
            continue;
          }
          const values = rowsOf(codec, call, call.rows, HIDDEN) as Float32Array;
          if (direction === 'forward' && !forgetful.has(peer)) kept.set(`${peer} ${call.call}`, values);
          if (direction === 'backward' && !call.input && !kept.has(`${peer} ${call.forwardCall}`)) {
            replies.refusals.push({ call: call.call, reason: 'not kept', needsInput: true });
            continue;
          }
          const result = values.map((v) => v * (direction === 'forward' ? 2 : 3));
          replies.answers.push({ ...call, ...wireRows(codec, call.rows, HIDDEN, result, 'f32') });
        }
        return replies;
      },
    } as unknown as SwarmRemoteExpertsComponents['rpc'];
    const directory = {
      holders: (_: number, expert: number) => [SELF, ...holders(expert)], address: (peer: string) => peer as unknown as DialTarget,
    };
    const experts = new SwarmRemoteExperts({ rpc, rows: codec, directory }, {
      jobId: 'job', self: SELF, hidden: HIDDEN, timeoutMs: 1000, precision: 'f32', gradientPrecision: 'f32',
    });
    return { experts, asked, requests };
  }
  const rowsFor = () => new Float32Array(ROWS * HIDDEN);

  it('answers from a live holder, failing over past one that does not answer, and never calls itself', async () => {
    const { experts, asked } = swarm(new Set(['a']));
    const x = randomRows(6);
    for (let call = 0; call < 2; call++) {
      const y = rowsFor();
      expect(await experts.forward(0, 1, x, y, ROWS)).toBe(true);
      expect(y).toEqual(x.map((v) => v * 2));
    }
    const dx = rowsFor();
    expect(await experts.backward(0, 1, x, x, dx, ROWS)).toBe(true);
    expect(dx).toEqual(x.map((v) => v * 3));
    // Calls rotate over the holders: the second starts at the one that is down and fails over.
    expect(asked).toEqual(['forward b 0.1', 'forward a 0.1', 'forward b 0.1', 'backward b 0.1']);
    expect(experts.stats).toMatchObject({ remoteCalls: 4, requests: 4, failovers: 1, unanswered: 0 });
  });

  it('sends the calls to one holder issued together as one request; a call refused in it fails over on its own', async () => {
    // Calls 1, 2, 3 start at holders[call % count]: expert 0 at a, 1 at a, 2 at a (its holders listed b, a).
    const holders = (expert: number) => [['a'], ['a', 'b'], ['b', 'a']][expert];
    const { experts, asked } = swarm(new Set(), { holders, refuses: new Map([['a', [2]]]) });
    const xs = [0, 1, 2].map((e) => randomRows(20 + e));
    const ys = xs.map(rowsFor);
    expect(await Promise.all(xs.map((x, e) => experts.forward(3, e, x, ys[e], ROWS)))).toEqual([true, true, true]);
    xs.forEach((x, e) => expect(ys[e]).toEqual(x.map((v) => v * 2)));
    expect(asked).toEqual(['forward a 3.0,3.1,3.2', 'forward b 3.2']);
    expect(experts.stats).toMatchObject({ remoteCalls: 4, requests: 2, failovers: 1, unanswered: 0 });
    // Their backwards go to the forwards' holders, again one request per holder.
    const dxs = xs.map(rowsFor);
    expect(await Promise.all(xs.map((x, e) => experts.backward(3, e, x, x, dxs[e], ROWS)))).toEqual([true, true, true]);
    xs.forEach((x, e) => expect(dxs[e]).toEqual(x.map((v) => v * 3)));
    expect(asked.slice(2)).toEqual(['backward a 3.0,3.1', 'backward b 3.2']);
  });

  it('fails over every call of a request that got no answer, together to their next holder', async () => {
    const { experts, asked } = swarm(new Set(['a']), { holders: () => ['b', 'a'] }); // calls 1 and 3 start at a
    const xs = [randomRows(30), randomRows(31)];
    const ys = xs.map(rowsFor);
    await experts.forward(0, 0, randomRows(32), rowsFor(), ROWS); // call 1
    asked.length = 0;
    expect(await Promise.all([experts.forward(1, 4, xs[0], ys[0], ROWS), experts.forward(1, 5, xs[1], ys[1], ROWS)])).toEqual([true, true]);
    expect(ys).toEqual(xs.map((x) => x.map((v) => v * 2)));
    // Calls 2 and 3 start at b and a: a's request fails, and its call joins no other at b (b's request has gone).
    expect(asked).toEqual(['forward b 1.4', 'forward a 1.5', 'forward b 1.5']);
  });

  it('sends a backward without its input to its forward\'s holder, and again with the input when that holder lost it', async () => {
    const { experts, requests } = swarm(new Set(), { holders: () => ['a'], forgetful: new Set(['a']) });
    const x = randomRows(40);
    await experts.forward(2, 3, x, rowsFor(), ROWS);
    const dx = rowsFor();
    const dy = randomRows(41);
    expect(await experts.backward(2, 3, x, dy, dx, ROWS)).toBe(true);
    expect(dx).toEqual(dy.map((v) => v * 3));
    const [forward, named, resent] = requests.map((r) => r.calls[0]);
    expect([named.forwardCall, named.input]).toEqual([forward.call, undefined]);
    expect([resent.forwardCall, resent.input?.data]).toEqual([undefined, forward.tensor.data]);
    expect(experts.stats).toMatchObject({ remoteCalls: 3, requests: 3, inputsResent: 1, failovers: 0 });
    // A backward on rows no forward was answered for carries its input at once.
    expect(await experts.backward(2, 3, randomRows(42), dy, dx, ROWS)).toBe(true);
    expect(requests.at(-1)!.calls[0].input).toBeDefined();
  });

  it('sends forward rows and gradients in the job\'s precisions; a resent backward\'s input goes as its forward did', async () => {
    expect(expertPrecisions({})).toEqual({ precision: 'int8', gradientPrecision: 'int8' });
    expect(expertPrecisions({ expertPrecision: 'bf16' })).toEqual({ precision: 'bf16', gradientPrecision: 'bf16' });
    const precisions = expertPrecisions({ expertPrecision: 'int8', expertGradientPrecision: 'bf16' });
    const calls: ExpertCall[] = [];
    const rpc = {
      request: async (_: DialTarget, __: string, { direction, calls: batch }: ExpertCalls): Promise<ExpertReplies> => {
        calls.push(...batch);
        // A holder that keeps nothing: a backward naming its forward is refused, and comes again with the input.
        if (direction === 'backward' && !batch[0].input) {
          return { answers: [], refusals: [{ call: batch[0].call, reason: 'not kept', needsInput: true }] };
        }
        const precision = direction === 'forward' ? precisions.precision : precisions.gradientPrecision;
        const echo = (call: ExpertCall) =>
          wireRows(codec, call.rows, HIDDEN, rowsOf(codec, call, call.rows, HIDDEN) as Float32Array, precision);
        const answers = batch.map((call) => ({ ...call, ...echo(call) }));
        return { answers, refusals: [] };
      },
    } as unknown as SwarmRemoteExpertsComponents['rpc'];
    const directory = { holders: () => ['a'], address: (peer: string) => peer as unknown as DialTarget };
    const experts = new SwarmRemoteExperts({ rpc, rows: codec, directory }, {
      jobId: 'job', self: SELF, hidden: HIDDEN, timeoutMs: 1000, ...precisions,
    });
    const x = randomRows(12);
    const y = rowsFor();
    expect(await experts.forward(0, 0, x, y, ROWS)).toBe(true);
    expect(await experts.backward(0, 0, x, x, rowsFor(), ROWS)).toBe(true);
    const [forward, , backward] = calls;
    expect([forward.tensor.dtype, forward.scales?.shape]).toEqual(['I8', [ROWS, 1]]);
    expect([backward.tensor.dtype, backward.scales, backward.input?.dtype, backward.inputScales?.shape]).toEqual(['BF16', undefined, 'I8', [ROWS, 1]]);
    expect(backward.input!.data).toEqual(forward.tensor.data);
    // The reply went int8 twice (there and back): each value within a step of its row's largest.
    for (let r = 0; r < ROWS; r++) {
      const step = Math.max(...Array.from(x.subarray(r * HIDDEN, (r + 1) * HIDDEN), Math.abs)) / 127;
      for (let j = r * HIDDEN; j < (r + 1) * HIDDEN; j++) expect(Math.abs(y[j] - x[j])).toBeLessThanOrEqual(step * 1.0001);
    }
  });

  it('resolves false when no holder answers, so the model drops the expert', async () => {
    const { experts, asked } = swarm(new Set(['a', 'b']));
    expect(await experts.forward(1, 0, randomRows(7), rowsFor(), ROWS)).toBe(false);
    expect(asked).toEqual(['forward b 1.0', 'forward a 1.0']);
    expect(experts.stats).toMatchObject({ remoteCalls: 2, failovers: 1, unanswered: 1 });
  });
});
