// The job `npm start` runs (coordinator/demo.ts), also measured by bench/scaling.ts: the demo config
// shrunk so a few processes train visibly on 2 cores, on Moby-Dick, int8 deltas averaged every 8 steps
// while the next steps train.
import type { JobSpec } from '../../proto/index.ts';

export const AVERAGE_EVERY = 8;

export function demoJob(totalBatches: number, nodes: number): JobSpec {
  return {
    jobId: 'demo',
    // The demo config shrunk so 3 processes train visibly on 2 cores.
    model: {
      hiddenSize: 128, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 32, numExperts: 8, expertsPerToken: 2,
      expertHiddenSize: 256, maxSeqLen: 128,
    },
    mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 1, corpus: 'moby-dick',
    batchSize: 8, seqLen: 128, heldOutFraction: 0.02, totalBatches, expectedNodes: nodes,
    lr: 3e-3, minLr: 3e-4, warmupSteps: 10,
    // overlap: a round's transfer and a slower peer's lag hide behind the next steps (held-out loss as waiting: bench/averaging.ts).
    averaging: { mode: 'periodic', every: AVERAGE_EVERY, deadlineMs: 10_000, codec: 'int8-block', overlap: true },
    expertTimeoutMs: 10_000,
  };
}
