// The averaging strategies (node/averaging) among holders in one process, their delta protocol
// replaced by direct calls: sync averages gradients to the f32 mean on every holder, periodic
// applies the mean delta, waits no longer than the deadline, and refuses and flags a bad sender.
import { describe, expect, it } from 'vitest';
import { createAverager, type Averager, type AveragingFault, type AveragingOptions } from '../../node/averaging/index.ts';
import type { RoundPasses } from '../../src/averaging/index.ts';
import { createKernels } from '../../src/kernels/index.ts';
import type { Param } from '../../src/model/params.ts';
import { RefusedError, type DialTarget, type Rpc } from '../../src/p2p/index.ts';
import { bitEqual, rng } from '../helpers.ts';

type Handler = (message: unknown, context: { peer: { toString(): string } }) => unknown;

interface Holder {
  id: string;
  params: Param[];
  averager: Averager;
}

interface Misbehaviour {
  /** Holders that never send. */
  silent?: string[];
  /** Holders that corrupt what they send. */
  faulty?: Record<string, AveragingFault>;
  /** Holders that serve no averaging for this many ms (still joining: the protocol is unsupported). */
  joining?: Record<string, number>;
}

/** Holders of one group ("trunk"), each with a tensor of 6 and one of 3 random values (or `shapes`). */
async function holders(
  ids: string[], options: Partial<AveragingOptions>, misbehaviour: Misbehaviour = {}, passes?: RoundPasses, shapes = [[2, 3], [3]],
): Promise<Holder[]> {
  const { silent = [], faulty = {}, joining = {} } = misbehaviour;
  const started = performance.now();
  const handlers = new Map<string, Handler>();
  const random = rng(11);
  const list = ids.map((id) => {
    const params: Param[] = shapes.map((shape, i) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const values = () => Float32Array.from({ length: n }, () => random());
      return { name: `t${i}`, shape, value: values(), grad: values() };
    });
    const rpc = {
      handle: async (protocol: string, handler: Handler) => void handlers.set(`${id} ${protocol}`, handler),
      request: async (target: string, protocol: string, message: unknown) => {
        if (silent.includes(id)) return new Promise(() => {});
        if (performance.now() - started < (joining[target] ?? 0)) throw new RefusedError(`${target}: protocol not supported`, 'unsupported');
        return handlers.get(`${target} ${protocol}`)!(structuredClone(message), { peer: { toString: () => id } });
      },
    } as unknown as Rpc;
    const directory = { members: () => ids, address: (peer: string) => peer as unknown as DialTarget, admitted: () => true };
    const averager = createAverager({ rpc, directory, groups: () => new Map([['trunk', params]]), ...(passes ? { passes } : {}) }, {
      mode: 'sync', every: 1, deadlineMs: 300, jobId: 'job', self: id, ...options, ...(faulty[id] ? { fault: faulty[id] } : {}),
    });
    return { id, params, averager };
  });
  for (const h of list) {
    await h.averager.serve();
    h.averager.track('trunk', h.params);
  }
  return list;
}

/** The mean of each coordinate over `tensors` (one list per holder), in float64. */
function mean64(tensors: Float32Array[][]): number[][] {
  return tensors[0].map((t, i) => Array.from(t, (_, j) => tensors.reduce((s, h) => s + h[i][j], 0) / tensors.length));
}

describe('sync averaging', () => {
  it('every holder ends the exchange with the f32 mean of all gradients, the same bits everywhere', async () => {
    const list = await holders(['a', 'b', 'c'], { mode: 'sync' });
    const expected = mean64(list.map((h) => h.params.map((p) => Float32Array.from(p.grad!))));
    await Promise.all(list.map((h) => h.averager.afterBackward(0)));
    for (const h of list) {
      h.params.forEach((p, i) => p.grad!.forEach((g, j) => expect(g).toBeCloseTo(expected[i][j], 6)));
      h.params.forEach((p, i) => expect(bitEqual(p.grad!, list[0].params[i].grad!)).toBe(true));
      expect(h.averager.stats).toMatchObject({ rounds: 1, received: 2, missing: 0 });
      expect(h.averager.staleness(7)).toBe(0);
    }
  });
});

describe('a holder still joining', () => {
  it('gets the deltas sent before it served averaging: they are offered again until the deadline', async () => {
    const list = await holders(['a', 'b'], { mode: 'sync', deadlineMs: 5000 }, { joining: { b: 500 } });
    const expected = mean64(list.map((h) => h.params.map((p) => Float32Array.from(p.grad!))));
    const [a, b] = list;
    const sending = a.averager.afterBackward(0); // a's gradients go out while b does not serve yet
    await new Promise((resolve) => setTimeout(resolve, 600));
    await Promise.all([sending, b.averager.afterBackward(0)]);
    for (const h of list) {
      h.params.forEach((p, i) => p.grad!.forEach((g, j) => expect(g).toBeCloseTo(expected[i][j], 6)));
      expect(h.averager.stats).toMatchObject({ rounds: 1, received: 1, missing: 0 });
    }
  });
});

describe('periodic averaging', () => {
  it('each holder moves to the anchor plus the mean delta of all holders (lr 1, no momentum)', async () => {
    const list = await holders(['a', 'b', 'c'], { mode: 'periodic', every: 2 });
    const anchors = list.map((h) => h.params.map((p) => Float32Array.from(p.value)));
    const random = rng(12);
    for (const h of list) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] += 0.1 * random()));
    const deltas = list.map((h, k) => h.params.map((p, i) => p.value.map((v, j) => v - anchors[k][i][j])));
    const mean = mean64(deltas);
    await Promise.all(list.map((h) => h.averager.afterUpdate(0))); // step 1 of 2: no round yet
    expect(list[0].averager.stats.rounds).toBe(0);
    expect(list[0].averager.staleness(1)).toBe(1);
    await Promise.all(list.map((h) => h.averager.afterUpdate(1)));
    list.forEach((h, k) => h.params.forEach((p, i) => {
      p.value.forEach((v, j) => expect(v).toBeCloseTo(anchors[k][i][j] + mean[i][j], 6));
    }));
  });

  it('a holder alone in its group keeps its values bit for bit (no lossy codec pass) and sends nothing', async () => {
    const [solo] = await holders(['a'], { mode: 'periodic', every: 1, codec: 'int8-block' });
    const random = rng(14);
    for (const p of solo.params) p.value.forEach((_, j, v) => (v[j] += 0.1 * random()));
    const before = solo.params.map((p) => Float32Array.from(p.value));
    await solo.averager.afterUpdate(0);
    expect(solo.averager.stats).toMatchObject({ rounds: 1, encodedBytes: 0 });
    solo.params.forEach((p, i) => expect(bitEqual(p.value, before[i])).toBe(true));
  });

  it('overlap: the round lands on top of the steps trained since its boundary; with none, the same bits as waiting', async () => {
    const holdersWith = (overlap: boolean) => holders(['a', 'b', 'c'], { mode: 'periodic', every: 1, overlap });
    const [waiting, overlapped] = await Promise.all([holdersWith(false), holdersWith(true)]);
    const anchors = waiting.map((h) => h.params.map((p) => Float32Array.from(p.value)));
    const random = rng(15);
    const moves = waiting.map((h) => h.params.map((p) => Float32Array.from(p.value, () => 0.1 * random())));
    const move = (list: Holder[], by: Float32Array[][]) =>
      list.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((_, j, v) => (v[j] += by[k][i][j]))));
    for (const list of [waiting, overlapped]) move(list, moves);
    const mean = mean64(moves);
    const boundary = overlapped.map((h) => h.params.map((p) => Float32Array.from(p.value)));
    await Promise.all([...waiting, ...overlapped].map((h) => h.averager.afterUpdate(0)));
    // The round is under way: training goes on from the boundary values.
    overlapped.forEach((h, k) => h.params.forEach((p, i) => expect(bitEqual(p.value, boundary[k][i])).toBe(true)));
    await Promise.all(overlapped.map((h) => h.averager.settle()));
    overlapped.forEach((h, k) => h.params.forEach((p, i) => expect(bitEqual(p.value, waiting[k].params[i].value)).toBe(true)));
    expect(overlapped[0].averager.stats.rounds).toBe(1);

    // Round 2 lands after two more local steps' progress, which stays on top of its result.
    const progress = (scale: number) => overlapped.map((h) => h.params.map((p) => Float32Array.from(p.value, () => scale * random())));
    const before = progress(0.1);
    move(overlapped, before);
    await Promise.all(overlapped.map((h) => h.averager.afterUpdate(1)));
    const after = progress(0.05);
    move(overlapped, after);
    await Promise.all(overlapped.map((h) => h.averager.afterUpdate(2))); // a step between boundaries applies what landed
    const mean2 = mean64(before);
    overlapped.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((v, j) => {
      expect(v).toBeCloseTo(anchors[k][i][j] + mean[i][j] + mean2[i][j] + after[k][i][j], 5);
    })));
    expect(overlapped[0].averager.stats.rounds).toBe(2);
  });

  it.each([
    ['f32', false], ['int8-block', false], ['int8-block', true],
  ])('rounds reuse their arrays (%s, overlap %s) yet each gives the bits of holders that start it fresh', async (codec, overlap) => {
    const options = { mode: 'periodic', every: 1, overlap, codec } as const;
    const kept = await holders(['a', 'b', 'c'], options);
    const random = rng(21);
    for (let round = 0; round < 3; round++) {
      // Fresh holders tracked at the values the kept ones start this round from: no array of an earlier round.
      const fresh = await holders(['a', 'b', 'c'], options);
      fresh.forEach((h, k) => {
        h.params.forEach((p, i) => p.value.set(kept[k].params[i].value));
        h.averager.track('trunk', h.params);
      });
      const moves = kept.map((h) => h.params.map((p) => Float32Array.from(p.value, () => 0.1 * random())));
      for (const list of [kept, fresh]) {
        list.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((_, j, v) => (v[j] += moves[k][i][j]))));
      }
      await Promise.all([...kept, ...fresh].map((h) => h.averager.afterUpdate(round)));
      await Promise.all([...kept, ...fresh].map((h) => h.averager.settle()));
      kept.forEach((h, k) => h.params.forEach((p, i) => expect(bitEqual(p.value, fresh[k].params[i].value), `round ${round}`).toBe(true)));
    }
    expect(kept[0].averager.stats.rounds).toBe(3);
  });

  it.each([
    ['f32', false, ['a', 'b']], ['int8-block', true, ['a', 'b']], ['int8-block', false, ['a', 'b', 'c']],
  ] as const)('the kernels\' passes give the JavaScript passes\' bits round after round (%s, overlap %s, %j)', async (...setting) => {
    const [codec, overlap, ids] = setting;
    const kernels = await createKernels();
    try {
      const options = { mode: 'periodic', every: 1, overlap, codec, outerLr: 0.8, outerMomentum: 0.5 } as const;
      // Tensors past the passes' 16384-value chunks, with tails, and a group split into several delta messages.
      const shapes = [[130, 257], [3]];
      // The kernels' passes, counting the calls: the averager must run them, not fall back to jsPasses.
      const calls = new Map<string, number>();
      const counted = new Proxy(kernels.deltas, {
        get: (target, key: string) => {
          const value = Reflect.get(target, key) as unknown;
          if (typeof value !== 'function') return value;
          return (...args: unknown[]) => (calls.set(key, (calls.get(key) ?? 0) + 1), value.apply(target, args));
        },
      });
      const heapBefore = kernels.heap.allocatedBytes;
      const [js, wasm] = await Promise.all([undefined, counted].map((passes) => holders([...ids], options, {}, passes, shapes)));
      wasm.forEach((h, k) => h.params.forEach((p, i) => p.value.set(js[k].params[i].value)));
      wasm.forEach((h) => h.averager.track('trunk', h.params));
      const random = rng(23);
      const heapAfter: number[] = [];
      for (let round = 0; round < 3; round++) {
        const moves = js.map((h) => h.params.map((p) => Float32Array.from(p.value, () => 0.01 * (random() - 0.5))));
        const move = (h: Holder, k: number) => h.params.forEach((p, i) => p.value.forEach((_, j, v) => (v[j] += moves[k][i][j])));
        for (const list of [js, wasm]) list.forEach(move);
        await Promise.all([...js, ...wasm].map((h) => h.averager.afterUpdate(round)));
        await Promise.all([...js, ...wasm].map((h) => h.averager.settle()));
        js.forEach((h, k) => h.params.forEach((p, i) => expect(bitEqual(p.value, wasm[k].params[i].value), `round ${round}`).toBe(true)));
        heapAfter.push(kernels.heap.allocatedBytes);
      }
      expect(heapAfter[2], 'arrivals decode into the arrays of the round before: the heap does not grow').toBe(heapAfter[1]);
      expect(wasm[0].averager.stats.rounds).toBe(3);
      expect(wasm[0].averager.stats.received).toBe(3 * (ids.length - 1));
      const expected = ['subtract', overlap ? 'applyLate' : 'applyStep', 'l2Norm', 'allocate', ...(ids.length === 2 ? ['meanOfTwo'] : [])];
      if (codec !== 'f32') expected.push('quantizeBlocks', 'dequantizeBlocks');
      for (const pass of expected) expect(calls.get(pass), pass).toBeGreaterThan(0);
      // The outer steps' and the arrivals' arrays live in the kernel heap, and a group forgotten gives them back.
      expect(kernels.heap.allocatedBytes).toBeGreaterThan(heapBefore + 4 * 130 * 257 * 3 * ids.length);
      wasm.forEach((h) => h.averager.resetGroup('trunk'));
      expect(kernels.heap.allocatedBytes).toBe(heapBefore);
    } finally {
      await kernels.close();
    }
  });

  it('on the kernels, the arrays of refused arrivals are freed: the heap stays flat round after round', async () => {
    const kernels = await createKernels();
    try {
      // int8-block decodes into the arrays it is given; c's NaN scales are refused once decoding has one.
      const options = { mode: 'periodic', every: 1, codec: 'int8-block' } as const;
      const list = await holders(['a', 'b', 'c'], options, { faulty: { c: 'nan' } }, kernels.deltas, [[64, 33]]);
      const heap: number[] = [];
      for (let round = 0; round < 4; round++) {
        for (const h of list) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] += 0.01));
        await Promise.all(list.map((h) => h.averager.afterUpdate(round)));
        heap.push(kernels.heap.allocatedBytes);
      }
      expect(list[0].averager.stats.refused).toBeGreaterThanOrEqual(3);
      expect(heap[3], `heap after each round: ${heap.join(', ')}`).toBe(heap[1]);
    } finally {
      await kernels.close();
    }
  });

  it('on the kernels, a group forgotten while its overlapped round is under way frees its arrays once the round lands', async () => {
    const kernels = await createKernels();
    try {
      const heapBefore = kernels.heap.allocatedBytes;
      // c never delivers: a's and b's rounds wait for it until their deadline, so both are under way at the reset.
      const options = { mode: 'periodic', every: 1, codec: 'int8-block', overlap: true, deadlineMs: 300 } as const;
      const [a, b, c] = await holders(['a', 'b', 'c'], options, { silent: ['c'] }, kernels.deltas, [[64, 33]]);
      for (const h of [a, b]) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] += 0.01));
      await Promise.all([a, b].map((h) => h.averager.afterUpdate(0)));
      const during = kernels.heap.allocatedBytes;
      a.averager.resetGroup('trunk');
      // b's delta, decoded into a's array, goes with the group's inbox; the outer step's arrays wait for the round.
      expect(during - kernels.heap.allocatedBytes, 'freed at once: only the arrival').toBe(64 * 33 * 4);
      await b.averager.settle(); // b's round lands at the deadline, and a's old round (the same deadline) with it
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(a.averager.stats, 'the forgotten round counted nothing').toMatchObject({ rounds: 0, missing: 0 });
      await c.averager.settle();
      for (const h of [b, c]) h.averager.resetGroup('trunk');
      expect(kernels.heap.allocatedBytes, `heap before ${heapBefore}, during ${during}`).toBe(heapBefore);
      // Both track the group afresh and average on: a's round lands with b's delta, through arrays apart from those freed.
      for (const h of [a, b]) h.averager.track('trunk', h.params);
      const received = a.averager.stats.received;
      const moved = a.params.map((p) => p.value.map((v) => v + 0.02));
      for (const h of [a, b]) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] += 0.02));
      await Promise.all([a, b].map((h) => h.averager.afterUpdate(1)));
      await Promise.all([a, b].map((h) => h.averager.settle()));
      expect(a.averager.stats).toMatchObject({ rounds: 1, received: received + 1 });
      a.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(moved[i][j], 5)));
    } finally {
      await kernels.close();
    }
  });

  it('overlap: a silent holder costs training nothing at the boundary; its deadline is waited out only at the next one', async () => {
    const list = await holders(['a', 'b', 'c'], { mode: 'periodic', every: 1, deadlineMs: 400, overlap: true }, { silent: ['c'] });
    const [a, b] = list;
    const t0 = performance.now();
    await Promise.all([a, b].map((h) => h.averager.afterUpdate(0)));
    expect(performance.now() - t0).toBeLessThan(390);
    expect(a.averager.stats.rounds).toBe(0);
    await Promise.all([a, b].map((h) => h.averager.afterUpdate(1)));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(390);
    expect(a.averager.stats).toMatchObject({ rounds: 1, missing: 1 });
  });

  it('a holder that never delivers costs one deadline, counts as missing, and is not waited for again', async () => {
    const list = await holders(['a', 'b', 'c'], { mode: 'periodic', every: 1, deadlineMs: 400 }, { silent: ['c'] });
    const [a, b] = list;
    const t0 = performance.now();
    await Promise.all([a, b].map((h) => h.averager.afterUpdate(0)));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(390);
    expect(a.averager.stats).toMatchObject({ rounds: 1, received: 1, missing: 1 });
    const t1 = performance.now();
    await Promise.all([a, b].map((h) => h.averager.afterUpdate(1)));
    expect(performance.now() - t1).toBeLessThan(390);
    expect(a.averager.stats).toMatchObject({ rounds: 2, received: 2, missing: 1 });
  });

  it.each(['nan', 'scale1000'] as const)('one sending %s deltas is refused and flagged; the others average without it', async (fault) => {
    const list = await holders(['a', 'b', 'c', 'd'], { mode: 'periodic', every: 1 }, { faulty: { d: fault } });
    const honest = list.slice(0, 3);
    const anchors = honest.map((h) => h.params.map((p) => Float32Array.from(p.value)));
    const random = rng(13);
    for (const h of list) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] += 0.1 * random()));
    const mean = mean64(honest.map((h, k) => h.params.map((p, i) => p.value.map((v, j) => v - anchors[k][i][j]))));
    await Promise.all(list.map((h) => h.averager.afterUpdate(0)));
    honest.forEach((h, k) => {
      h.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(anchors[k][i][j] + mean[i][j], 6)));
      expect(h.averager.stats.refused).toBeGreaterThanOrEqual(1); // a refused send is tried once more
      expect([...h.averager.stats.flagged]).toEqual(['d']);
    });
  });
});
