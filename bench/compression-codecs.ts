// Update codecs on a 4M-value delta (a 2048×2048 matrix): bytes per value on the wire (tensor
// data), compression against f32, relative error ‖decoded − delta‖₂ / ‖delta‖₂ of one round from
// a fresh state (error feedback sends the rest in later rounds), and encode / decode time (best
// of REPS, encode with the state of earlier rounds as in training). Two deltas: i.i.d. values
// (no structure: the worst case for top-k and low rank) and a rank-16 matrix with decaying
// singular values plus noise holding ~10% of the energy (closer to real updates).
// Run: npx tsx bench/compression-codecs.ts
import { encodedBytes, parseCodecSpec, type CodecPart, type CodecState } from '../src/compress/index.ts';
import { printTable } from './table.ts';

const M = 2048;
const N = 2048;
const REPS = 3;
const SPECS = ['f32', 'f16', 'int8-block:32', 'int8-block:128', 'topk-int8:0.001', 'topk-int8:0.01', 'topk-int8:0.1', 'powersgd:4', 'powersgd:16'];

/** Deterministic standard normal values (xorshift32 + Box-Muller). */
function normals(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const uniform = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 1) / 2 ** 32;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

function iidDelta(): Float32Array {
  return normals(M * N, 1).map((v) => v * 1e-4);
}

function lowRankDelta(rank: number): Float32Array {
  const u = normals(M * rank, 2);
  const v = normals(N * rank, 3);
  const out = normals(M * N, 4);
  // Rank-one terms of weights 1, 1/2, ..., 1/rank (each of Frobenius norm ~√(MN)/c), noise scaled to ~10% of the energy.
  let signal = 0;
  for (let c = 0; c < rank; c++) signal += 1 / (c + 1) ** 2;
  const noise = Math.sqrt(signal / 9);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let sum = 0;
      for (let c = 0; c < rank; c++) sum += (u[i * rank + c] * v[j * rank + c]) / (c + 1);
      out[i * N + j] = (sum + noise * out[i * N + j]) * 1e-4;
    }
  }
  return out;
}

function relativeError(decoded: Float32Array, delta: Float32Array): number {
  let err = 0;
  let norm = 0;
  for (let i = 0; i < delta.length; i++) {
    err += (decoded[i] - delta[i]) ** 2;
    norm += delta[i] ** 2;
  }
  return Math.sqrt(err / norm);
}

function best(run: () => void): number {
  let ms = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    run();
    ms = Math.min(ms, performance.now() - t0);
  }
  return ms;
}

function indexNote(parts: CodecPart[], n: number): string {
  const kept = parts.find((p) => p.suffix === ':q')!.tensor.data.length;
  const index = parts.find((p) => p.suffix === ':gaps' || p.suffix === ':bitmap')!;
  return `${(index.tensor.data.length / kept).toFixed(2)} index B/kept (${index.suffix.slice(1)}, ${((100 * kept) / n).toFixed(1)}% kept)`;
}

for (const [name, delta] of [['i.i.d. normal', iidDelta()], ['rank 16 + 10% noise', lowRankDelta(16)]] as const) {
  const shape = [M, N];
  const rows: string[][] = [];
  for (const spec of SPECS) {
    const codec = parseCodecSpec(spec);
    const parts = codec.encode(delta, shape, {});
    const bytesPerValue = encodedBytes(parts) / delta.length;
    const error = relativeError(codec.decode(parts, shape), delta);
    const state: CodecState = {};
    const encodeMs = best(() => codec.encode(delta, shape, state));
    const decodeMs = best(() => codec.decode(parts, shape));
    rows.push([
      spec, bytesPerValue.toFixed(4), `${(4 / bytesPerValue).toFixed(1)}x`, error.toExponential(2),
      encodeMs.toFixed(0), decodeMs.toFixed(0), spec.startsWith('topk') ? indexNote(parts, delta.length) : '',
    ]);
  }
  console.log(`\n${name}, ${M}x${N} = ${M * N} values`);
  printTable(['codec', 'bytes/value', 'vs f32', 'rel. error', 'encode ms', 'decode ms', 'note'], rows);
}
