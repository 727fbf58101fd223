// Low-rank compression of matrices (PowerSGD, Vogels et al. 2019): one power iteration per
// round, M ≈ P·Qᵀ with P = orth(M·Q₀) [m×r] and Q = Mᵀ·P [n×r], warm-started from the last
// round's Q (kept in the sender's state) so the factors track the top singular subspace over
// rounds (a first round, from a random start, iterates three times). Each sender compresses its own delta (receivers decode each one; no all-reduce of P
// and Q as in the paper). Error feedback as in top-k. Tensors of rank ≥ 2 are viewed as
// [shape[0], rest]; 1-D tensors, and matrices where the factors would not be smaller than
// int8-block:32, use int8-block:32 (receivers decide the same way from the shape).
// Parts: ':p' F32 [m, r], ':q' F32 [n, r] with r = min(rank, m, n); or int8-block's.
import { elementCount } from '../../proto/index.ts';
import { accumulateResidual, checkDelta, checkFinite, CodecError, partTensor, PartReader, type Codec, type CodecState } from './codec.ts';
import { blockCount, int8BlockCodec, jsBlockCoder, type BlockCoder } from './int8-block.ts';

const FALLBACK_BLOCK = 32;
/** Power iterations of a first round: one from a random start can miss the top subspace badly. */
const COLD_START_ITERATIONS = 3;

interface Layout {
  m: number;
  n: number;
  r: number;
}

export function powerSgdCodec(rank: number, { errorFeedback = true } = {}, coder: BlockCoder = jsBlockCoder): Codec {
  const spec = `powersgd:${rank}`;
  const fallback = int8BlockCodec(FALLBACK_BLOCK, coder);
  const layoutOf = (shape: readonly number[]): Layout | undefined => {
    if (shape.length < 2) return undefined;
    const m = shape[0];
    const n = elementCount(shape.slice(1));
    const r = Math.min(rank, m, n);
    const int8Bytes = m * n + 4 * blockCount(m * n, FALLBACK_BLOCK);
    return 4 * (m + n) * r < int8Bytes ? { m, n, r } : undefined;
  };
  return {
    spec,
    encode(delta, shape, state) {
      checkDelta(spec, delta, shape);
      const layout = layoutOf(shape);
      if (!layout) return fallback.encode(delta, shape, state);
      const { m, n, r } = layout;
      const matrix = errorFeedback ? accumulateResidual(spec, state, delta) : (checkFinite(spec, delta), delta);
      const iterations = state.lowRankQ ? 1 : COLD_START_ITERATIONS;
      let q = startOf(spec, state, n, r);
      let p = q;
      for (let it = 0; it < iterations; it++) {
        p = new Float32Array(orthonormalColumns(multiply(matrix, q, m, n, r), m, r));
        q = new Float32Array(multiplyTransposed(matrix, p, m, n, r));
      }
      state.lowRankQ = q.slice();
      if (errorFeedback) lowRankProduct(p, q, m, n, r, matrix, true);
      return [
        { suffix: ':p', tensor: partTensor('F32', [m, r], p) },
        { suffix: ':q', tensor: partTensor('F32', [n, r], q) },
      ];
    },
    decode(parts, shape) {
      const layout = layoutOf(shape);
      if (!layout) {
        try {
          return fallback.decode(parts, shape);
        } catch (err) {
          if (err instanceof CodecError) err.message = `${spec} (1-D or small, as int8-block): ${err.message}`;
          throw err;
        }
      }
      const { m, n, r } = layout;
      const reader = new PartReader(spec, parts, [':p', ':q']);
      const p = reader.read(':p', 'F32', Float32Array, [m, r]);
      const q = reader.read(':q', 'F32', Float32Array, [n, r]);
      // Each output is a sum of r products: bounding it by r·max|p|·max|q| rules out overflow.
      const bound = r * maxAbs(spec, ':p', p) * maxAbs(spec, ':q', q);
      if (!Number.isFinite(Math.fround(bound))) throw new CodecError(`${spec}: factors large enough to overflow f32 (bound ${bound})`);
      const out = new Float32Array(m * n);
      lowRankProduct(p, q, m, n, r, out, false);
      return out;
    },
  };
}

function maxAbs(spec: string, suffix: string, values: Float32Array): number {
  let max = 0;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]);
    if (!Number.isFinite(a)) throw new CodecError(`${spec}: part "${suffix}" has a non-finite value at ${i}`);
    if (a > max) max = a;
  }
  return max;
}

/** The power iteration's start [n×r]: the last round's Q, with any all-zero column (which would stay zero) made random. */
function startOf(spec: string, state: CodecState, n: number, r: number): Float32Array {
  const start = state.lowRankQ ?? new Float32Array(n * r);
  if (start.length !== n * r) throw new RangeError(`${spec}: warm start of ${start.length} values, needs ${n}x${r}: state of another tensor`);
  let seed = 0x2545f491;
  for (let c = 0; c < r; c++) {
    let zero = true;
    for (let j = 0; j < n && zero; j++) zero = start[j * r + c] === 0;
    if (!zero) continue;
    for (let j = 0; j < n; j++) {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      start[j * r + c] = (seed >>> 0) / 2 ** 31 - 1;
    }
  }
  return start;
}

/** M·B for M [m×n] and B [n×r], in float64. */
function multiply(matrix: Float32Array, b: Float32Array, m: number, n: number, r: number): Float64Array {
  const out = new Float64Array(m * r);
  for (let i = 0; i < m; i++) {
    const row = i * n;
    for (let j = 0; j < n; j++) {
      const v = matrix[row + j];
      for (let c = 0; c < r; c++) out[i * r + c] += v * b[j * r + c];
    }
  }
  return out;
}

/** Mᵀ·A for M [m×n] and A [m×r], in float64. */
function multiplyTransposed(matrix: Float32Array, a: Float32Array, m: number, n: number, r: number): Float64Array {
  const out = new Float64Array(n * r);
  for (let i = 0; i < m; i++) {
    const row = i * n;
    for (let j = 0; j < n; j++) {
      const v = matrix[row + j];
      for (let c = 0; c < r; c++) out[j * r + c] += v * a[i * r + c];
    }
  }
  return out;
}

/**
 * Gram-Schmidt on the columns of A [m×r] in place, each projection done twice (one pass loses
 * orthogonality when columns are nearly dependent); a column with nothing left becomes zero.
 */
function orthonormalColumns(a: Float64Array, m: number, r: number): Float64Array {
  for (let c = 0; c < r; c++) {
    let before = 0;
    for (let i = 0; i < m; i++) before += a[i * r + c] ** 2;
    for (let pass = 0; pass < 2; pass++) {
      for (let prev = 0; prev < c; prev++) {
        let dot = 0;
        for (let i = 0; i < m; i++) dot += a[i * r + c] * a[i * r + prev];
        for (let i = 0; i < m; i++) a[i * r + c] -= dot * a[i * r + prev];
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += a[i * r + c] ** 2;
    const scale = norm > 1e-24 * before && norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let i = 0; i < m; i++) a[i * r + c] *= scale;
  }
  return a;
}

/** out = P·Qᵀ (or out -= P·Qᵀ), each entry a float64 sum rounded once to f32: encoder and decoder agree bit for bit. */
function lowRankProduct(p: Float32Array, q: Float32Array, m: number, n: number, r: number, out: Float32Array, subtract: boolean): void {
  for (let i = 0; i < m; i++) {
    const pRow = i * r;
    const row = i * n;
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let c = 0; c < r; c++) sum += p[pRow + c] * q[j * r + c];
      out[row + j] = subtract ? out[row + j] - Math.fround(sum) : sum;
    }
  }
}
