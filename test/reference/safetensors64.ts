// A minimal safetensors reader for tests, written independently of src/io: DataView reads and
// the textbook definitions of half and bfloat16, every value widened to float64.
import { readFileSync } from 'node:fs';

/** Value of IEEE half bits from the definition. */
export function halfValue(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return exp === 0 ? sign * mant * 2 ** -24 : sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Value of bfloat16 bits from the definition (8 exponent bits, bias 127, 7 mantissa bits). */
export function bf16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 7) & 0xff;
  const mant = h & 0x7f;
  if (exp === 0xff) return mant ? NaN : sign * Infinity;
  return exp === 0 ? sign * mant * 2 ** -133 : sign * (1 + mant / 128) * 2 ** (exp - 127);
}

export interface RawTensor {
  dtype: string;
  shape: number[];
  values: Float64Array;
}

/** Every tensor of a safetensors file (float dtypes only), as float64 values. */
export function readRawSafetensors(path: string): Map<string, RawTensor> {
  const bytes = readFileSync(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const headerJson = bytes.subarray(8, 8 + n).toString('utf8');
  const header = JSON.parse(headerJson) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, RawTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets: [begin, end] } = entry;
    const at = 8 + n + begin;
    const size = dtype === 'F32' ? 4 : 2;
    const values = new Float64Array((end - begin) / size);
    for (let i = 0; i < values.length; i++) {
      if (dtype === 'F32') values[i] = view.getFloat32(at + 4 * i, true);
      else if (dtype === 'F16') values[i] = halfValue(view.getUint16(at + 2 * i, true));
      else if (dtype === 'BF16') values[i] = bf16Value(view.getUint16(at + 2 * i, true));
      else throw new Error(`reference reader: dtype ${dtype} not handled`);
    }
    out.set(name, { dtype, shape, values });
  }
  return out;
}
