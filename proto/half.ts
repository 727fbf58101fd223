// 16-bit float formats of checkpoints, codecs and expert calls: IEEE half (F16) and bfloat16 (BF16),
// converted to and from f32 with round-to-nearest-even. Node 20 has no Math.f16round, so this is bit work.

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Bits of `x` rounded to the nearest half (ties to even); overflow gives ±Inf, NaN stays NaN. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const bits = u32Scratch[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: value = r · 2^-24. Below 2^-25 everything rounds to zero.
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = full & ((1 << shift) - 1);
    let r = full >>> shift;
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  const rem = mant & 0x1fff;
  let r = (e << 10) | (mant >>> 13);
  // A carry out of the mantissa correctly bumps the exponent (up to Inf).
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++;
  return sign | r;
}

let f16Table: Float32Array | undefined;

/** All 65536 half values as f32 (exact), built once on first use. */
function f16Values(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) bits[h] = sign | 0x7f800000 | (mant << 13);
    else if (exp !== 0) bits[h] = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    else table[h] = (sign ? -1 : 1) * mant * 2 ** -24;
  }
  return (f16Table = table);
}

export function f16BitsToF32(h: number): number {
  return f16Values()[h & 0xffff];
}

/** Bits of `x` rounded to the nearest bfloat16 (ties to even); NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const bits = u32Scratch[0];
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return (bits >>> 16) | 0x40;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

export function bf16BitsToF32(h: number): number {
  u32Scratch[0] = (h & 0xffff) << 16;
  return f32Scratch[0];
}

/** Decodes little-endian 16-bit floats from `bytes` (any alignment) into a new Float32Array. */
export function decodeHalves(bytes: Uint8Array, format: 'F16' | 'BF16'): Float32Array {
  if (bytes.length % 2) throw new RangeError(`${format} data has an odd byte length ${bytes.length}`);
  const n = bytes.length / 2;
  // An odd offset needs an aligned copy (new Uint8Array copies; a Node Buffer's slice() would not).
  const src = bytes.byteOffset % 2 ? new Uint16Array(new Uint8Array(bytes).buffer) : new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Float32Array(n);
  if (format === 'BF16') {
    const outBits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) outBits[i] = src[i] << 16;
  } else {
    const table = f16Values();
    for (let i = 0; i < n; i++) out[i] = table[src[i]];
  }
  return out;
}

/** Encodes f32 values as little-endian 16-bit floats (round to nearest even). */
export function encodeHalves(data: Float32Array, format: 'F16' | 'BF16'): Uint8Array {
  const out = new Uint16Array(data.length);
  const round = format === 'BF16' ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < data.length; i++) out[i] = round(data[i]);
  return new Uint8Array(out.buffer);
}
