// Reduce-scatter averaging (node/averaging/reduce-scatter.ts), alone and within small groups per
// round (topology groups), and deltas in parts, among 2–8 holders in one process over the real delta
// protocol: every message is encoded and decoded with the wire codec (its bytes counted, the message
// cap enforced), only the transport is direct calls.
// Results are checked against float64 means computed here.
import { describe, expect, it } from 'vitest';
import { f32Tensor, msgpackCodec, ProtocolError, type ParameterDelta, type ParameterDeltas } from '../../proto/index.ts';
import { createAverager, type Averager, type AveragingFault, type AveragingOptions } from '../../node/averaging/index.ts';
import { holderOrder, ownerOf, partCount, partition, roundGroups, type Part } from '../../src/averaging/index.ts';
import type { Param } from '../../src/model/params.ts';
import type { DialTarget, Rpc } from '../../src/p2p/index.ts';
import { bitEqual, rng } from '../helpers.ts';

type Handler = (message: ParameterDelta | ParameterDeltas, context: { peer: { toString(): string } }) => unknown;

interface Holder {
  id: string;
  params: Param[];
  averager: Averager;
  /** Wire bytes of every message this holder sent. */
  sent: number[];
}

interface Network {
  holders: Holder[];
  /** Holders cut off: they neither send nor receive from now on. */
  dead: Set<string>;
  /** Called with each message before it is sent. */
  onSend?: (from: string, message: ParameterDelta) => void;
  /** Hands a message to a holder's delta handler as if `from` sent it (no wire checks). */
  deliver(from: string, to: string, message: ParameterDelta): unknown;
}

const SHAPES = [[64, 32], [32], [40, 17]];
const VALUES = SHAPES.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0); // 2048 + 32 + 680 = 2760

/** Holders of "trunk" starting from the same random parameters, connected through the wire codec. */
async function network(ids: string[], options: Partial<AveragingOptions>, faulty: Record<string, AveragingFault> = {}): Promise<Network> {
  const handlers = new Map<string, Handler>();
  const net: Network = {
    holders: [], dead: new Set(), deliver: (from, to, message) => handlers.get(`${to} delta`)!(message, { peer: { toString: () => from } }),
  };
  net.holders = ids.map((id) => {
    const random = rng(21);
    const params: Param[] = SHAPES.map((shape, i) => ({
      name: `t${i}`, shape, value: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => random()),
    }));
    const sent: number[] = [];
    const rpc = {
      handle: async (protocol: string, handler: Handler) => void handlers.set(`${id} ${protocol}`, handler),
      request: async (target: string, protocol: 'delta' | 'deltas', message: ParameterDelta | ParameterDeltas) => {
        for (const delta of 'deltas' in message ? message.deltas : [message]) net.onSend?.(id, delta);
        if (net.dead.has(id) || net.dead.has(target)) return new Promise(() => {});
        const bytes = msgpackCodec.encodeRequest(protocol, message as never); // throws over the protocol's cap
        sent.push(bytes.length);
        return handlers.get(`${target} ${protocol}`)!(msgpackCodec.decodeRequest(protocol, bytes), { peer: { toString: () => id } });
      },
    } as unknown as Rpc;
    const directory = { members: () => ids, address: (peer: string) => peer as unknown as DialTarget, admitted: () => true };
    const averager = createAverager({ rpc, directory, groups: () => new Map([['trunk', params]]) }, {
      mode: 'periodic', every: 1, deadlineMs: 300, jobId: 'job', self: id, topology: 'reduce-scatter', ...options,
      ...(faulty[id] ? { fault: faulty[id] } : {}),
    });
    return { id, params, averager, sent };
  });
  for (const h of net.holders) {
    await h.averager.serve();
    h.averager.track('trunk', h.params);
  }
  return net;
}

/** Moves each holder's parameters by a random delta; returns the anchors and the deltas. */
function step(holders: Holder[], seed: number): { anchors: Float32Array[][]; deltas: Float32Array[][] } {
  const random = rng(seed);
  const anchors = holders.map((h) => h.params.map((p) => Float32Array.from(p.value)));
  const deltas = holders.map((h) => h.params.map((p) => Float32Array.from(p.value, () => 0.1 * random())));
  holders.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((_, j, v) => (v[j] += deltas[k][i][j]))));
  return { anchors, deltas };
}

/** Per coordinate, in float64, the mean of `which(part)` holders' deltas over the part the coordinate is in. */
function expectedMean(deltas: Float32Array[][], parts: Part[], which: (part: Part) => number[]): number[][] {
  const out = SHAPES.map((s) => new Array<number>(s.reduce((a, b) => a * b, 1)).fill(0));
  for (const part of parts) {
    const holders = which(part);
    for (const s of part.segments) {
      for (let j = s.offset; j < s.offset + s.length; j++) {
        out[s.tensor][j] = holders.reduce((sum, k) => sum + deltas[k][s.tensor][j], 0) / holders.length;
      }
    }
  }
  return out;
}

function expectMovedBy(holder: Holder, anchors: Float32Array[], mean: number[][]): void {
  holder.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(anchors[i][j] + mean[i][j], 6)));
}

const partsOf = (n: number, maxPartValues = Infinity) => partition(SHAPES.map((shape, i) => ({ name: `t${i}`, shape })), partCount(
  SHAPES.map((shape, i) => ({ name: `t${i}`, shape })), n, Math.min(maxPartValues, 2 ** 30)));

describe('reduce-scatter averaging', () => {
  it.each([2, 3, 4, 5, 6])('%i holders: each ends at its anchor plus the f32 mean of all deltas, the same bits everywhere', async (n) => {
    const ids = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6'].slice(0, n);
    const net = await network(ids, {});
    const { anchors, deltas } = step(net.holders, n);
    const mean = expectedMean(deltas, partsOf(n), () => [...ids.keys()]);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    net.holders.forEach((h, k) => {
      expectMovedBy(h, anchors[k], mean);
      h.params.forEach((p, i) => expect(bitEqual(p.value, net.holders[0].params[i].value)).toBe(true));
      expect(h.averager.stats).toMatchObject({ rounds: 1, received: n - 1, missing: 0, fallbacks: 0, unaveraged: 0 });
    });
  });

  const dropping = '%i holders, one drops after sending its parts: its own parts go to the fallback owner, the survivors agree';
  it.each([2, 3, 4, 6])(dropping, async (n) => {
    const ids = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6'].slice(0, n);
    const net = await network(ids, { deadlineMs: 200 });
    const dropped = ids[1];
    // It dies when it would send its first result: every part of its delta is out, none of its results.
    net.onSend = (from, message) => void (from === dropped && message.phase === 'gather' && net.dead.add(dropped));
    const { anchors, deltas } = step(net.holders, 30 + n);
    const parts = partsOf(n);
    const ordered = holderOrder(ids);
    const survivors = [...ids.keys()].filter((k) => ids[k] !== dropped);
    // Parts it owned: the survivors' mean (its part never left it). The others: everyone's.
    const mean = expectedMean(deltas, parts, (part) => (ownerOf(part.index, ordered) === dropped ? survivors : [...ids.keys()]));
    const alive = net.holders.filter((h) => h.id !== dropped);
    void net.holders[1].averager.afterUpdate(0); // never finishes in time: nobody waits for it
    await Promise.all(alive.map((h) => h.averager.afterUpdate(0)));
    const ownedByDropped = parts.filter((p) => ownerOf(p.index, ordered) === dropped).length;
    for (const h of alive) {
      expectMovedBy(h, anchors[ids.indexOf(h.id)], mean);
      expect(h.averager.stats).toMatchObject({ rounds: 1, fallbacks: ownedByDropped, unaveraged: 0 });
    }
  });

  it('a holder silent from the start costs a deadline per phase; the result is the mean of the others on every part', async () => {
    const ids = ['p1', 'p2', 'p3', 'p4'];
    const net = await network(ids, { deadlineMs: 200 });
    net.dead.add('p3');
    const { anchors, deltas } = step(net.holders, 40);
    const mean = expectedMean(deltas, partsOf(4), () => [0, 1, 3]);
    const alive = net.holders.filter((h) => h.id !== 'p3');
    await Promise.all(alive.map((h) => h.averager.afterUpdate(0)));
    alive.forEach((h) => expectMovedBy(h, anchors[ids.indexOf(h.id)], mean));
    expect(alive[0].averager.stats).toMatchObject({ missing: 1, fallbacks: 1, unaveraged: 0 });
  });

  it('with the trimmed mean, each part is trimmed per coordinate as the whole would be', async () => {
    const ids = ['p1', 'p2', 'p3', 'p4', 'p5'];
    const net = await network(ids, { aggregator: 'trimmed-mean', trim: 0.2 });
    const { anchors, deltas } = step(net.holders, 50);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    net.holders.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((v, j) => {
      const column = deltas.map((d) => d[i][j]).sort((a, b) => a - b).slice(1, 4); // 5 values: one dropped at each end
      expect(v).toBeCloseTo(anchors[k][i][j] + column.reduce((a, b) => a + b, 0) / 3, 6);
    })));
  });

  const faulty = 'a holder sending %s deltas and results is refused and flagged; the others average without it';
  it.each(['nan', 'scale1000'] as const)(faulty, async (fault) => {
    const ids = ['p1', 'p2', 'p3', 'p4'];
    const net = await network(ids, { deadlineMs: 200 }, { p2: fault });
    const { anchors, deltas } = step(net.holders, 60);
    const honest = [0, 2, 3];
    const mean = expectedMean(deltas, partsOf(4), () => honest);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    for (const k of honest) {
      expectMovedBy(net.holders[k], anchors[k], mean);
      expect([...net.holders[k].averager.stats.flagged]).toEqual(['p2']);
    }
  });

  it('a lossy codec: results are the codec\'s encoding of the mean, equal on every holder', async () => {
    const ids = ['p1', 'p2', 'p3'];
    const net = await network(ids, { codec: 'int8-block:16' });
    const { anchors, deltas } = step(net.holders, 70);
    const mean = expectedMean(deltas, partsOf(3), () => [0, 1, 2]);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    net.holders.forEach((h, k) => h.params.forEach((p, i) => p.value.forEach((v, j) => {
      // int8 with a scale per 16 values, twice (the deltas, then the result): within 2 × 0.1/127 of the mean.
      expect(Math.abs(v - anchors[k][i][j] - mean[i][j])).toBeLessThan(2 * (0.1 / 127) + 1e-6);
      expect(v).toBe(net.holders[0].params[i].value[j]);
    })));
  });
});

describe('small groups per round (topology groups)', () => {
  const IDS = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8'];
  const SIZE = 3;
  /** afterUpdate(0) is round 1: its groups. */
  const groupsOfRound = (ids: string[], round = 1) => roundGroups(ids, round, SIZE);
  /** Per coordinate, in float64, the mean of holders `members`' values over each part (`which` picks them per part). */
  const meanOfValues = (net: Network, ids: string[], group: string[], which: (part: Part) => string[]) =>
    expectedMean(net.holders.map((h) => h.params.map((p) => p.value)), partsOf(group.length),
      (part) => which(part).map((m) => ids.indexOf(m)));

  const groupMean = '%i holders: each ends at the f64 mean of its round group\'s parameters, the same bits in the group';
  it.each([2, 3, 4, 5, 6, 7, 8])(groupMean, async (n) => {
    const ids = IDS.slice(0, n);
    const net = await network(ids, { topology: 'groups', groupSize: SIZE });
    step(net.holders, 200 + n);
    const groups = groupsOfRound(ids);
    const expected = new Map(groups.flatMap((g) => g.map((m) => [m, meanOfValues(net, ids, g, () => g)] as const)));
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    for (const group of groups) {
      const first = net.holders[ids.indexOf(group[0])];
      for (const m of group) {
        const h = net.holders[ids.indexOf(m)];
        h.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(expected.get(m)![i][j], 6)));
        h.params.forEach((p, i) => expect(bitEqual(p.value, first.params[i].value)).toBe(true));
        expect(h.averager.stats).toMatchObject({ rounds: 1, received: group.length - 1, missing: 0, fallbacks: 0, unaveraged: 0 });
      }
    }
  });

  it('one drops after sending its parts: its group\'s survivors agree, its parts averaged without it; other groups unaffected', async () => {
    const ids = IDS.slice(0, 6);
    const net = await network(ids, { topology: 'groups', groupSize: SIZE, deadlineMs: 200 });
    const groups = groupsOfRound(ids);
    const hit = groups.find((g) => g.length === SIZE)!;
    const dropped = hit[1];
    net.onSend = (from, message) => void (from === dropped && message.phase === 'gather' && net.dead.add(dropped));
    step(net.holders, 300);
    const ordered = holderOrder(hit);
    const survivors = hit.filter((m) => m !== dropped);
    const expected = new Map(groups.flatMap((g) => g.map((m) => [m, meanOfValues(net, ids, g, (part) =>
      (g === hit && ownerOf(part.index, ordered) === dropped ? survivors : g))] as const)));
    void net.holders[ids.indexOf(dropped)].averager.afterUpdate(0);
    const alive = net.holders.filter((h) => h.id !== dropped);
    await Promise.all(alive.map((h) => h.averager.afterUpdate(0)));
    for (const h of alive) h.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(expected.get(h.id)![i][j], 6)));
    for (const m of survivors) expect(net.holders[ids.indexOf(m)].averager.stats).toMatchObject({ fallbacks: 1, unaveraged: 0 });
  });

  it('a holder sending 1000x-scaled parameters is refused and flagged by its group; the rest average without it', async () => {
    const ids = IDS.slice(0, 6);
    const groups = groupsOfRound(ids);
    const bad = groups.find((g) => g.length === SIZE)![0];
    const net = await network(ids, { topology: 'groups', groupSize: SIZE, deadlineMs: 200 }, { [bad]: 'scale1000' });
    step(net.holders, 400);
    const honest = (g: string[]) => g.filter((x) => x !== bad);
    const expected = new Map(groups.flatMap((g) => g.map((m) => [m, meanOfValues(net, ids, g, () => honest(g))] as const)));
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    for (const h of net.holders.filter((h) => h.id !== bad)) {
      h.params.forEach((p, i) => p.value.forEach((v, j) => expect(v).toBeCloseTo(expected.get(h.id)![i][j], 6)));
      const inItsGroup = groups.some((g) => g.includes(bad) && g.includes(h.id));
      expect([...h.averager.stats.flagged]).toEqual(inItsGroup ? [bad] : []);
    }
  });

  it('over rounds with no training, holders that start apart all reach the global mean', async () => {
    const ids = IDS.slice(0, 7);
    const net = await network(ids, { topology: 'groups', groupSize: SIZE });
    const random = rng(500);
    for (const h of net.holders) for (const p of h.params) p.value.forEach((_, j, v) => (v[j] = random()));
    const global = expectedMean(net.holders.map((h) => h.params.map((p) => p.value)), partsOf(1), () => [...ids.keys()]);
    const spread = () => Math.max(...net.holders.flatMap((h) => h.params.flatMap((p, i) => [...p.value].map((v, j) => Math.abs(v - global[i][j])))));
    const before = spread();
    for (let step = 0; step < 16; step++) await Promise.all(net.holders.map((h) => h.averager.afterUpdate(step)));
    expect(spread()).toBeLessThan(1e-3 * before);
    expect(net.holders[0].averager.stats).toMatchObject({ rounds: 16, missing: 0, unaveraged: 0 });
  });

  it('a job refuses a sparse codec with groups: parameters would travel mostly as zeros', async () => {
    const sparse = network(['p1', 'p2'], { topology: 'groups', codec: 'topk-int8:0.1' });
    await expect(sparse).rejects.toThrow(/codec topk-int8:0.1 would mostly zero/);
  });
});

describe('bytes per round', () => {
  /** Wire bytes each holder sends in one round, and the bytes of one whole f32 delta message. */
  async function bytesPerHolder(n: number, topology: 'all-to-all' | 'reduce-scatter' | 'groups'): Promise<number[]> {
    const net = await network(['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8'].slice(0, n), { topology });
    step(net.holders, 80);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    return net.holders.map((h) => h.sent.reduce((a, b) => a + b, 0));
  }

  it('reduce-scatter: about 2 × (N−1)/N deltas per holder whatever N; all-to-all: N−1 deltas', async () => {
    const delta = (await bytesPerHolder(2, 'all-to-all'))[0]; // one whole delta message
    expect(delta).toBeGreaterThan(VALUES * 4);
    for (const n of [2, 4, 8]) {
      const scattered = await bytesPerHolder(n, 'reduce-scatter');
      const all = await bytesPerHolder(n, 'all-to-all');
      for (const bytes of all) expect(bytes).toBe((n - 1) * delta);
      // Per message a few dozen bytes of names and fields come on top of each part.
      for (const bytes of scattered) expect(bytes).toBeLessThan(2 * ((n - 1) / n) * delta * 1.3);
      for (const bytes of scattered) expect(bytes).toBeGreaterThan(2 * ((n - 1) / n) * VALUES * 4 * 0.7);
    }
  });

  it('groups of at most 4: at most 2 × 3/4 deltas per holder at 2, 4 and 8 holders', async () => {
    const delta = (await bytesPerHolder(2, 'all-to-all'))[0];
    for (const n of [2, 4, 8]) {
      for (const bytes of await bytesPerHolder(n, 'groups')) expect(bytes).toBeLessThan(2 * (3 / 4) * delta * 1.3);
    }
  });
});

describe('deltas larger than one message', () => {
  const CAP = 4096; // 512 values per part: the group's 2760 values travel in parts

  const fits = '%s: every message fits the cap and the result is still the mean';
  it.each(['all-to-all', 'reduce-scatter'] as const)(fits, async (topology) => {
    const ids = ['p1', 'p2', 'p3'];
    const net = await network(ids, { topology, messageCap: CAP });
    const counts: number[] = [];
    net.onSend = (_from, message) => void counts.push(message.part?.count ?? 1);
    const { anchors, deltas } = step(net.holders, 90);
    const mean = expectedMean(deltas, partsOf(1), () => [0, 1, 2]);
    await Promise.all(net.holders.map((h) => h.averager.afterUpdate(0)));
    net.holders.forEach((h, k) => expectMovedBy(h, anchors[k], mean));
    for (const h of net.holders) for (const bytes of h.sent) expect(bytes).toBeLessThanOrEqual(CAP);
    expect(Math.min(...counts)).toBeGreaterThan(3);
  });

  it('sync averaging splits f32 gradients the same way', async () => {
    const ids = ['p1', 'p2'];
    const net = await network(ids, { mode: 'sync', messageCap: CAP });
    const random = rng(91);
    for (const h of net.holders) for (const p of h.params) p.grad = Float32Array.from(p.value, () => random());
    const grads = net.holders.map((h) => h.params.map((p) => Float32Array.from(p.grad!)));
    await Promise.all(net.holders.map((h) => h.averager.afterBackward(0)));
    for (const h of net.holders) {
      h.params.forEach((p, i) => p.grad!.forEach((g, j) => expect(g).toBeCloseTo((grads[0][i][j] + grads[1][i][j]) / 2, 6)));
      for (const bytes of h.sent) expect(bytes).toBeLessThanOrEqual(CAP);
    }
  });
});

describe('bad reduce-scatter messages', () => {
  const parts = partsOf(3); // holders p1, p2, p3 own parts 0, 1, 2; the fallbacks are p2, p3, p1
  const partTensors = (index: number) => parts[index].segments.map((s) => ({
    name: s.name, tensor: f32Tensor(s.shape, new Float32Array(s.length).fill(0.01)),
  }));
  const message = (index: number, extra: Partial<ParameterDelta> = {}): ParameterDelta => ({
    jobId: 'job', group: 'trunk', round: 1, steps: 1, codec: 'f32', parts: partTensors(index), part: { index, count: 3 },
    phase: 'reduce', norm: 100, ...extra,
  });

  it('the wire refuses a part index not below its count, a phase without a part, a reduce without a norm', () => {
    const { norm: _, ...noNorm } = message(1);
    const { part: __, ...noPart } = message(1);
    const cases = [
      [message(1, { part: { index: 3, count: 3 } }), /index 3 is not below count 3/],
      [noPart, /names its part/],
      [noNorm, /states its delta's norm/],
    ] as const;
    for (const [bad, why] of cases) {
      expect(() => msgpackCodec.encodeRequest('delta', bad as ParameterDelta)).toThrow(ProtocolError);
      expect(() => msgpackCodec.encodeRequest('delta', bad as ParameterDelta)).toThrow(why);
    }
  });

  it('a holder refuses parts it cannot use, flags only a sender at fault, and still averages correctly', async () => {
    const ids = ['p1', 'p2', 'p3'];
    const net = await network(ids, {});
    const p2 = net.holders[1].averager;
    const refusals: [ParameterDelta, RegExp, boolean][] = [
      [message(1, { part: { index: 1, count: 5 } }), /cut into 3 parts here, got 5/, false],
      [message(2), /neither owned here nor fallen back on here/, false],
      [message(1, { phase: 'gather', norm: undefined }), /p1 neither owns part 1/, false],
      // A round far ahead is not buffered (a peer could grow our memory with made-up rounds), and not a fault by itself.
      [message(1, { round: 1_000_000 }), /more than 4 rounds ahead/, false],
      [message(1, { norm: 0.01 }), /over the delta's stated norm/, true],
      [message(1, { parts: [{ name: 't0', tensor: f32Tensor([1, 32], new Float32Array(32)) }, ...partTensors(1).slice(1)] }), /shape/, true],
    ];
    for (const [bad, why, flags] of refusals) {
      expect(() => net.deliver('p1', 'p2', bad), String(why)).toThrow(why);
      expect(p2.stats.flagged.has('p1')).toBe(flags);
    }
    // An all-to-all holder takes no reduce-scatter message.
    const plain = await network(ids, { topology: 'all-to-all' });
    expect(() => plain.deliver('p1', 'p2', message(1))).toThrow(/averaged all-to-all here/);

    // The refused messages left nothing behind: the next round is the plain mean of the three.
    const honest = await network(ids, {});
    const { anchors, deltas } = step(honest.holders, 100);
    for (const [bad] of refusals.slice(0, 3)) expect(() => honest.deliver('p1', 'p2', bad)).toThrow();
    await Promise.all(honest.holders.map((h) => h.averager.afterUpdate(0)));
    honest.holders.forEach((h, k) => expectMovedBy(h, anchors[k], expectedMean(deltas, parts, () => [0, 1, 2])));
  });
});
