// A holder serving batches of expert calls over libp2p: each call of a batch answered or refused on its own, and a
// backward answered from what its forward left at the holder, bit for bit what a backward carrying its input gives.
import '../../src/p2p/polyfill.ts';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KeptForwards, serveExperts, type ExpertServer } from '../../node/expert-server.ts';
import { newExpertStats, rowsOf, SwarmRemoteExperts, wireRows } from '../../node/experts.ts';
import { f32Tensor, msgpackCodec, type ExpertPrecision } from '../../proto/index.ts';
import { createKernels, type Kernels } from '../../src/kernels/index.ts';
import { createConfig } from '../../src/model/config.ts';
import { initParameters } from '../../src/model/init.ts';
import { Model } from '../../src/model/model.ts';
import { createHost, Rpc, type Host } from '../../src/p2p/index.ts';
import { rng } from '../helpers.ts';

const CONFIG = createConfig({
  vocabSize: 64, hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 16,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 48, maxSeqLen: 16,
});
const H = CONFIG.hiddenSize;
const ROWS = 6;
/** The calls of one test: [layer, expert]; two to expert 0.1 (two lanes' rows), answered before either's backward. */
const EXPERTS = [[0, 1], [0, 2], [1, 3], [0, 1]] as const;

let kernels: Kernels;
let hosts: Host[] = [];
beforeAll(async () => {
  kernels = await createKernels({ threads: 1 });
  hosts = await Promise.all([createHost(), createHost(), createHost(), createHost()]);
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await kernels?.close();
});

type Mode = 'full' | 'lora';
/** A model holding every expert, with the same initial weights each time (lora: adapters on gate, up and down). */
const holderModel = (mode: Mode) =>
  new Model(kernels, CONFIG, mode === 'full' ? { mode } : { mode, lora: { rank: 4, alpha: 8 } }, initParameters(CONFIG, 1));

/** A holder serving on `host` to the caller on `callerHost`, and that caller's transport. */
async function pair(host: Host, callerHost: Host, precision: ExpertPrecision, mode: Mode, keptForwardBytes?: number) {
  const model = holderModel(mode);
  const directory = {
    holders: () => [host.peerId.toString()], address: () => host.getMultiaddrs(),
    admitted: (peer: string) => peer === callerHost.peerId.toString(),
  };
  const server: ExpertServer = await serveExperts(
    { rpc: new Rpc({ transport: host, codec: msgpackCodec }), kernels, experts: model.experts, directory, stats: newExpertStats() },
    { jobId: 'job', hidden: H, keptForwardBytes },
  );
  const callerRpc = new Rpc({ transport: callerHost, codec: msgpackCodec });
  const caller = new SwarmRemoteExperts({ rpc: callerRpc, rows: kernels.rows, directory }, {
    jobId: 'job', self: callerHost.peerId.toString(), hidden: H, timeoutMs: 30_000, precision, gradientPrecision: precision,
  });
  return { model, server, caller, callerRpc, holder: host.peerId.toString() };
}

const randomRows = (seed: number) => {
  const random = rng(seed);
  return Float32Array.from({ length: ROWS * H }, () => random());
};

/**
 * What the holder answered before it kept forwards: the forward on the decoded input, then a backward that carries the
 * input again, refilling the activations from it. Returns each call's dx as the caller decodes it, and the weight gradients.
 */
function reference(precision: ExpertPrecision, mode: Mode, xs: Float32Array[], dys: Float32Array[]) {
  const model = holderModel(mode);
  const onWire = (values: Float32Array) =>
    rowsOf(kernels.rows, wireRows(kernels.rows, ROWS, H, values, precision), ROWS, H) as Float32Array;
  const [x, y, dy, dx] = [0, 1, 2, 3].map(() => kernels.heap.f32(ROWS * H));
  const dxs = EXPERTS.map(([layer, expert], i) => {
    const served = model.experts.servingExpert(layer, expert)!;
    x.set(onWire(xs[i]));
    served.forward(x, y, ROWS);
    return () => {
      x.set(onWire(xs[i]));
      dy.set(onWire(dys[i]));
      served.keepInputsOf(x, ROWS);
      served.backward(x, dy, dx, ROWS);
      return onWire(dx);
    };
  }).map((backward) => backward());
  return { dxs, grads: gradients(model) };
}

const gradients = (model: Model) =>
  model.params.trainable().filter((p) => p.name.includes('expert')).map((p) => [p.name, Float32Array.from(p.grad!)]);

/** The EXPERTS' forwards, all at once as a MoE layer starts them, then their backwards likewise. */
async function forwardsThenBackwards(caller: SwarmRemoteExperts, xs: Float32Array[], dys: Float32Array[]) {
  const out = () => EXPERTS.map(() => new Float32Array(ROWS * H));
  const [ys, dxs] = [out(), out()];
  const all = EXPERTS.map(() => true);
  expect(await Promise.all(EXPERTS.map(([l, e], i) => caller.forward(l, e, xs[i], ys[i], ROWS)))).toEqual(all);
  expect(await Promise.all(EXPERTS.map(([l, e], i) => caller.backward(l, e, xs[i], dys[i], dxs[i], ROWS)))).toEqual(all);
  return dxs;
}

describe('expert calls in batches', () => {
  it.each(['full', 'lora'] as const)('%s: answers a backward from its forward\'s kept input and activations, bit for bit as one carrying '
    + 'the input', async (mode) => {
    const { model, server, caller } = await pair(hosts[mode === 'full' ? 0 : 1], hosts[2], 'int8', mode);
    const xs = EXPERTS.map((_, i) => randomRows(10 + i));
    const dys = EXPERTS.map((_, i) => randomRows(20 + i));
    const dxs = await forwardsThenBackwards(caller, xs, dys);
    const want = reference('int8', mode, xs, dys);
    expect(dxs).toEqual(want.dxs);
    expect(gradients(model)).toEqual(want.grads);
    // One request per direction to the one holder; no input sent again, nothing left kept.
    expect(caller.stats).toMatchObject({ remoteCalls: 8, requests: 2, inputsResent: 0, failovers: 0, unanswered: 0 });
    expect([server.kept.size, server.kept.bytes]).toEqual([0, 0]);
    // The kept copies live in the kernel heap, freed once their backward ran: another round leaves it as it was.
    const heapBytes = kernels.heap.allocatedBytes;
    await forwardsThenBackwards(caller, xs, dys);
    expect(kernels.heap.allocatedBytes).toBe(heapBytes);
  });

  it('has a backward sent again with its input when the holder kept no room for its forward, with the same results', async () => {
    const { model, server, caller } = await pair(hosts[3], hosts[2], 'bf16', 'full', 1); // every kept forward evicted at once
    const xs = EXPERTS.map((_, i) => randomRows(30 + i));
    const dys = EXPERTS.map((_, i) => randomRows(40 + i));
    const dxs = await forwardsThenBackwards(caller, xs, dys);
    const want = reference('bf16', 'full', xs, dys);
    expect(dxs).toEqual(want.dxs);
    expect(gradients(model)).toEqual(want.grads);
    expect(caller.stats).toMatchObject({ remoteCalls: 12, requests: 3, inputsResent: 4, unanswered: 0 });
    expect(server.kept.size).toBe(0);
    // Evicted forwards are freed too.
    const heapBytes = kernels.heap.allocatedBytes;
    await forwardsThenBackwards(caller, xs, dys);
    expect(kernels.heap.allocatedBytes).toBe(heapBytes);
  });

  it('refuses a call of a batch on its own: bad values, another job, no rows, an unknown forward; the others are answered', async () => {
    const [holderHost, callerHost] = [hosts[0], hosts[2]];
    const rpc = new Rpc({ transport: callerHost, codec: msgpackCodec });
    const call = (id: number, expert: number, values: Float32Array) => ({
      jobId: 'job', step: 1, call: id, layer: 1, expert, rows: ROWS, tensor: f32Tensor([ROWS, H], values),
    });
    const poisoned = randomRows(50);
    poisoned[9] = NaN;
    const empty = { ...call(6, 3, randomRows(56)), rows: 0, tensor: f32Tensor([0, H], new Float32Array(0)) };
    const forward = await rpc.request(holderHost.getMultiaddrs(), 'expertCalls', {
      direction: 'forward',
      calls: [call(1, 0, randomRows(51)), call(2, 1, poisoned), { ...call(3, 2, randomRows(52)), jobId: 'other' }, empty],
    });
    expect(forward.answers.map((a) => a.call)).toEqual([1]);
    expect(forward.refusals).toEqual([
      { call: 2, reason: 'non-finite value NaN at 9' }, { call: 3, reason: 'this node trains job job, not other' },
      { call: 6, reason: 'a call of no rows' },
    ]);
    const backward = await rpc.request(holderHost.getMultiaddrs(), 'expertCalls', {
      direction: 'backward', calls: [{ ...call(4, 0, randomRows(53)), forwardCall: 1 }, { ...call(5, 1, randomRows(54)), forwardCall: 99 }],
    });
    expect(backward.answers.map((a) => a.call)).toEqual([4]);
    expect(backward.refusals).toEqual([{ call: 5, reason: 'expert 1.1: the input of forward call 99 is not kept here', needsInput: true }]);
    // Not admitted: the whole request is refused.
    const stranger = new Rpc({ transport: hosts[1], codec: msgpackCodec });
    await expect(stranger.request(holderHost.getMultiaddrs(), 'expertCalls', { direction: 'forward', calls: [call(1, 0, randomRows(55))] }))
      .rejects.toThrow(/not admitted to job job/);
  });
});

describe('kept forwards', () => {
  // Entries of 100 bytes standing for a forward's kept rows (their layer and expert tell them apart); the replica is any
  // object (compared by identity).
  const entry = (layer: number, expert: number, step = 1) => ({
    step, layer, expert, rows: ROWS, replica: {} as never, input: new Float32Array(0), kept: {} as never, bytes: 100,
  });
  /** The entries released, as "layer.expert". */
  let released: string[];
  const release = ({ layer, expert }: { layer: number; expert: number }) => released.push(`${layer}.${expert}`);
  beforeEach(() => (released = []));
  const backward = (forwardCall: number, layer: number, expert: number, step = 1) =>
    ({ jobId: 'job', step, call: 99, layer, expert, rows: ROWS, tensor: f32Tensor([0], new Float32Array(0)), forwardCall });

  it('drops the oldest beyond the cap, gives a forward once and only to a backward on the same expert, step and rows', () => {
    const kept = new KeptForwards(250, release);
    kept.keep('p', 1, entry(0, 0));
    kept.keep('p', 2, entry(0, 1));
    kept.keep('q', 2, entry(0, 2));
    expect([kept.size, kept.bytes]).toEqual([2, 200]); // p's call 1 went first
    expect(released).toEqual(['0.0']);
    expect(kept.take('p', backward(1, 0, 0))).toBeUndefined();
    expect(kept.take('q', backward(2, 0, 2, 2))).toBeUndefined(); // another step: not that forward (and it is gone)
    expect(released).toEqual(['0.0', '0.2']);
    expect(kept.take('p', backward(2, 0, 1))).toMatchObject({ layer: 0, expert: 1 });
    expect(released).toEqual(['0.0', '0.2']); // taken: the taker releases it
    expect(kept.take('p', backward(2, 0, 1))).toBeUndefined();
    expect([kept.size, kept.bytes]).toEqual([0, 0]);
  });

  it('forgets the forwards of an expert given up', () => {
    const kept = new KeptForwards(1000, release);
    [[0, 0], [1, 2], [0, 0]].forEach(([layer, expert], call) => kept.keep('p', call, entry(layer, expert)));
    kept.forget(0, 0);
    expect([kept.size, kept.bytes]).toEqual([1, 100]);
    expect(released).toEqual(['0.0', '0.0']);
    expect(kept.take('p', backward(1, 1, 2))).toBeDefined();
  });
});
