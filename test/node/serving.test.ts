// Serve while computing: a holder in the middle of a long training step answers a peer's expert calls between its
// own kernels (the model lets peers in between its stages), so a call waits a stage, not the holder's step.
import '../../src/p2p/polyfill.ts';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { serveExperts } from '../../node/expert-server.ts';
import { newExpertStats, SwarmRemoteExperts } from '../../node/experts.ts';
import { msgpackCodec } from '../../proto/index.ts';
import { createKernels, type Kernels } from '../../src/kernels/index.ts';
import { createConfig } from '../../src/model/config.ts';
import { initParameters } from '../../src/model/init.ts';
import { Model } from '../../src/model/model.ts';
import { createHost, Rpc, type Host } from '../../src/p2p/index.ts';
import { rng } from '../helpers.ts';

// A step made long by its head (vocabulary 4096 over 2048 rows, in chunks of 256): when only the experts let peers
// in, a call that comes during the head waits for all of it (seen: 459 ms of a 1014 ms step); with every stage
// letting them in, at most 164 ms of 2609 (the machine loaded: the bound is a share of the step, not a time).
const CONFIG = createConfig({
  vocabSize: 4096, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64, maxSeqLen: 256,
});
const [BATCH, SEQ] = [8, 256];

let kernels: Kernels;
let hosts: Host[] = [];
beforeAll(async () => {
  kernels = await createKernels({ threads: 1 });
  hosts = await Promise.all([createHost(), createHost()]);
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await kernels?.close();
});

it('a holder busy with a long step answers expert calls within a fraction of the step, not after it', async () => {
  const [holderHost, callerHost] = hosts;
  const stats = newExpertStats();
  // The holder holds every expert; in a swarm it also has a port to other holders, which it never needs here.
  const holder = new Model(kernels, CONFIG, { mode: 'full', remote: { forward: async () => false, backward: async () => false } }, initParameters(CONFIG, 1));
  const holderId = holderHost.peerId.toString();
  const callerId = callerHost.peerId.toString();
  const directory = {
    holders: () => [holderId], address: () => holderHost.getMultiaddrs(), admitted: (peer: string) => peer === callerId,
  };
  await serveExperts({ rpc: new Rpc({ transport: holderHost, codec: msgpackCodec }), kernels, experts: holder.experts, directory, stats },
    { jobId: 'job', hidden: CONFIG.hiddenSize });
  const caller = new SwarmRemoteExperts({ rpc: new Rpc({ transport: callerHost, codec: msgpackCodec }), rows: kernels.rows, directory }, {
    jobId: 'job', self: callerId, hidden: CONFIG.hiddenSize, timeoutMs: 60_000, precision: 'f32', gradientPrecision: 'f32',
  });
  const random = rng(2);
  const rows = 64;
  const x = Float32Array.from({ length: rows * CONFIG.hiddenSize }, () => random());
  // What the call must answer: the expert's forward here (f32 rows travel exactly).
  const [heapX, heapY] = [kernels.heap.f32(x.length), kernels.heap.f32(x.length)];
  heapX.set(x);
  holder.experts.servingExpert(1, 3)!.forward(heapX, heapY, rows);
  const want = Float32Array.from(heapY);
  const tokens = Array.from({ length: BATCH * SEQ + 1 }, () => Math.floor(((random() + 1) / 2) * CONFIG.vocabSize));
  const step = () => holder.trainStep(tokens.slice(0, -1), tokens.slice(1), BATCH, SEQ);
  const call = async () => {
    const y = new Float32Array(rows * CONFIG.hiddenSize);
    const t0 = performance.now();
    expect(await caller.forward(1, 3, x, y, rows)).toBe(true);
    expect(y).toEqual(want);
    return performance.now() - t0;
  };
  await call(); // connected
  await step(); // buffers grown

  // Calls back to back for as long as the step runs.
  const t0 = performance.now();
  let stepMs = Infinity;
  const training = step().then(() => (stepMs = performance.now() - t0));
  const waits: number[] = [];
  while (stepMs === Infinity) waits.push(await call());
  await training;
  const answeredInStep = waits.length - 1; // the last may have been answered after the step
  expect(answeredInStep, `${waits.length} calls in a ${stepMs.toFixed(0)} ms step`).toBeGreaterThanOrEqual(4);
  expect(Math.max(...waits), `waits ${waits.map((w) => w.toFixed(0)).join(', ')} ms in a ${stepMs.toFixed(0)} ms step`)
    .toBeLessThan(0.25 * stepMs);
});
