// Plain-JS reference of the blockwise quantization formats and the integer product, used only
// by tests. Every step is rounded to f32 exactly as the kernels do, so the kernels must match
// these bit for bit.
//
// Formats (blocks of QBLOCK consecutive values along a row; rows are multiples of QBLOCK long):
//   q8: int8 q in [-127, 127], scale = amax / 127;  x ≈ q · scale
//   q4: 4-bit q in [-8, 7] (in practice [-7, 7]), scale = amax / 7, stored as the nibble q + 8,
//       two per byte, the even element in the low nibble
// with inv = scale ? 1 / scale : 0 and q = roundTiesToEven(x · inv), clamped to the range.
// Activations on the integer path are quantized per row and block exactly like q8.

export const QBLOCK = 32;
const f = Math.fround;

/** IEEE round-half-to-even, as f32x4.nearest does. */
export function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface Quantized {
  bits: 8 | 4;
  /** q8: one int8 per value; q4: one byte per two values. */
  q: Int8Array | Uint8Array;
  /** One f32 scale per block of QBLOCK values. */
  scales: Float32Array;
}

/** Quantizes `x` (a whole number of blocks of `block` values) to q8 or q4 values (unpacked) and scales. */
export function quantizeBlocks(x: ArrayLike<number>, bits: 8 | 4, block = QBLOCK): { values: Int8Array; scales: Float32Array } {
  if (x.length % block) throw new Error(`length ${x.length} is not a multiple of ${block}`);
  const qmax = bits === 8 ? 127 : 7;
  const qmin = bits === 8 ? -127 : -8;
  const values = new Int8Array(x.length);
  const scales = new Float32Array(x.length / block);
  for (let b = 0; b < scales.length; b++) {
    let amax = 0;
    for (let i = 0; i < block; i++) amax = Math.max(amax, Math.abs(f(x[b * block + i])));
    const scale = f(amax / qmax);
    const inv = scale === 0 ? 0 : f(1 / scale);
    scales[b] = scale;
    for (let i = 0; i < block; i++) {
      values[b * block + i] = Math.min(qmax, Math.max(qmin, roundEven(f(f(x[b * block + i]) * inv))));
    }
  }
  return { values, scales };
}

export function quantize(x: ArrayLike<number>, bits: 8 | 4): Quantized {
  const { values, scales } = quantizeBlocks(x, bits);
  if (bits === 8) return { bits, q: values, scales };
  const packed = new Uint8Array(values.length / 2);
  for (let i = 0; i < packed.length; i++) packed[i] = (values[2 * i] + 8) | ((values[2 * i + 1] + 8) << 4);
  return { bits, q: packed, scales };
}

/** The integer value of element i. */
export function quantValue(w: Quantized, i: number): number {
  if (w.bits === 8) return w.q[i];
  const byte = w.q[i >> 1];
  return ((i & 1 ? byte >> 4 : byte & 15) - 8);
}

export function dequantize(w: Quantized, length: number): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = f(quantValue(w, i) * w.scales[Math.floor(i / QBLOCK)]);
  return out;
}

/**
 * The integer path's product, exactly: y[i,j] = Σ_b f32(int32 Σ_{p in block b} xq[i,p]·wq[j,p])
 * · f32(sx[i,b]·sw[j,b]), summed over blocks b in order in f32, with x (m×k) quantized per
 * row and block like q8 and w an n×k quantized matrix (rows of W are the output features).
 */
export function integerProduct(x: ArrayLike<number>, w: Quantized, m: number, n: number, k: number): Float32Array {
  const blocks = k / QBLOCK;
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    const row = quantizeBlocks(Array.from({ length: k }, (_, p) => x[i * k + p]), 8);
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let b = 0; b < blocks; b++) {
        let isum = 0;
        for (let p = b * QBLOCK; p < (b + 1) * QBLOCK; p++) isum += row.values[p] * quantValue(w, j * k + p);
        acc = f(acc + f(f(isum) * f(row.scales[b] * w.scales[j * blocks + b])));
      }
      y[i * n + j] = acc;
    }
  }
  return y;
}
