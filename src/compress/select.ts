// Top-k selection by magnitude without sorting all n values (n reaches ~16M): a random sample
// gives a threshold a bit below the k-th largest |x|, one pass collects the candidates above it
// (~1.3k of them), and nth_element (quickselect) on the candidates finds the exact k-th value.
// Expected O(n) with a small constant; deterministic (fixed sampling seed), ties go to the
// lowest indices.

const SAMPLES = 16384;

/** Indices (ascending) of the k largest |x[i]|, leaving out zeros (so fewer when x is sparse). */
export function topKIndices(x: Float32Array, k: number): Uint32Array {
  const n = x.length;
  if (k <= 0) return new Uint32Array(0);
  let candidates: Uint32Array;
  if (n > SAMPLES && k < n / 4) {
    const sample = sampleMagnitudes(x);
    // Expect ~1.3k + 4 standard deviations above the threshold; too few (rare): go 4x lower.
    const expected = (SAMPLES * k) / n;
    for (let rank = Math.ceil(1.3 * expected + 4 * Math.sqrt(expected) + 1); ; rank *= 4) {
      const threshold = rank >= SAMPLES ? Number.MIN_VALUE : Math.max(sample[SAMPLES - rank], Number.MIN_VALUE);
      candidates = collectAtLeast(x, threshold, 2 * rank * (n / SAMPLES));
      if (candidates.length >= k || threshold === Number.MIN_VALUE) break;
    }
  } else {
    candidates = collectAtLeast(x, Number.MIN_VALUE, n);
  }
  if (candidates.length <= k) return candidates;

  const magnitudes = new Float32Array(candidates.length);
  for (let j = 0; j < candidates.length; j++) magnitudes[j] = Math.abs(x[candidates[j]]);
  const kth = nthLargest(magnitudes, k - 1);
  let ties = k;
  for (let j = 0; j < candidates.length; j++) if (Math.abs(x[candidates[j]]) > kth) ties--;
  const kept = new Uint32Array(k);
  let count = 0;
  for (let j = 0; j < candidates.length; j++) {
    const i = candidates[j];
    const a = Math.abs(x[i]);
    if (a > kth || (a === kth && ties-- > 0)) kept[count++] = i;
  }
  return kept;
}

/** SAMPLES magnitudes at pseudo-random positions (xorshift32, fixed seed), sorted ascending. */
function sampleMagnitudes(x: Float32Array): Float32Array {
  const sample = new Float32Array(SAMPLES);
  let s = 0x9e3779b9;
  for (let j = 0; j < SAMPLES; j++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    sample[j] = Math.abs(x[(s >>> 0) % x.length]);
  }
  return sample.sort();
}

/** Ascending indices of |x[i]| ≥ threshold, in a buffer grown from `capacity` as needed. */
function collectAtLeast(x: Float32Array, threshold: number, capacity: number): Uint32Array {
  let out = new Uint32Array(Math.max(16, Math.min(x.length, Math.ceil(capacity))));
  let count = 0;
  for (let i = 0; i < x.length; i++) {
    if (Math.abs(x[i]) >= threshold) {
      if (count === out.length) {
        const grown = new Uint32Array(Math.min(x.length, out.length * 2));
        grown.set(out);
        out = grown;
      }
      out[count++] = i;
    }
  }
  return out.subarray(0, count);
}

/** nth_element: the value of rank `rank` in descending order, reordering `a` (Hoare quickselect). */
export function nthLargest(a: Float32Array, rank: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    // Median of three as the pivot keeps sorted or constant runs linear.
    const mid = (lo + hi) >>> 1;
    const pivot = median(a[lo], a[mid], a[hi]);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (rank <= j) hi = j;
    else if (rank >= i) lo = i;
    else return a[rank];
  }
  return a[rank];
}

function median(a: number, b: number, c: number): number {
  return a < b ? (b < c ? b : a < c ? c : a) : a < c ? a : b < c ? c : b;
}
