// Small shared test utilities: a seeded random source and error measures.
import { afterAll, beforeAll } from 'vitest';
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
