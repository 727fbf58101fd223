// Small shared test utilities: a seeded random source, error measures, and a tiny swarm job.
import { afterAll, beforeAll } from 'vitest';
import type { JobRequest } from '../coordinator/api/service.ts';
import { createKernels, type BuildName, type Kernels } from '../src/kernels/index.ts';
import { uniform } from '../src/model/init.ts';

/** Deterministic uniform random numbers in [-1, 1) (the model's seeded generator, rescaled). */
export function rng(seed: number): () => number {
  const next = uniform(seed);
  return () => next() * 2 - 1;
}

export function fillRandom(view: { length: number; [i: number]: number }, random: () => number, scale = 1): void {
  for (let i = 0; i < view.length; i++) view[i] = random() * scale;
}

/** max |x - y| / (max |y| + tiny): relative error against a reference. */
export function maxRelError(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length) throw new Error(`length ${x.length} vs ${y.length}`);
  let err = 0;
  let mag = 1e-30;
  for (let i = 0; i < y.length; i++) {
    err = Math.max(err, Math.abs(x[i] - y[i]));
    mag = Math.max(mag, Math.abs(y[i]));
  }
  return err / mag;
}

export function bitEqual(x: Float32Array, y: Float32Array): boolean {
  if (x.length !== y.length) return false;
  const a = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const b = new Uint32Array(y.buffer, y.byteOffset, y.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Kernels of `build` on 1 and on 2 threads for the enclosing describe block, closed after it. */
export function kernelsOnOneAndTwoThreads(build: BuildName, use: (one: Kernels, two: Kernels) => void): void {
  let one: Kernels | undefined;
  let two: Kernels | undefined;
  beforeAll(async () => {
    one = await createKernels({ build, threads: 1 });
    two = await createKernels({ build, threads: 2 });
    use(one, two);
  });
  afterAll(async () => {
    await one?.close();
    await two?.close();
  });
}

/** A job request small enough for a swarm of real processes in a test: ~20 micro-batches a second on 2 loaded cores. */
export const TINY_JOB: JobRequest = {
  model: {
    hiddenSize: 64, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 32, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64,
    maxSeqLen: 32, vocabSize: 300,
  },
  corpus: 'moby-dick', documents: { from: 0, to: 60 }, batchSize: 4, seqLen: 32, lr: 3e-3, minLr: 3e-4, warmupSteps: 2,
  averaging: { mode: 'periodic', every: 4, deadlineMs: 10_000, codec: 'int8-block' },
};
