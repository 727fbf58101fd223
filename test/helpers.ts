// Small shared test utilities: a seeded random source and error measures.

/** Deterministic uniform random numbers in [-1, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  };
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
