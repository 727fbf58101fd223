// Full precision ('f32': the delta itself, wire-compatible with uncompressed averaging) and
// half precision ('f16').
//
// Parameter deltas are small (lr ~1e-4 times a few steps): raw halves would fall below f16's
// normal range (2^-14) and lose most of their bits. So the f16 codec first multiplies by a power
// of two that brings the largest |value| into [2^14, 2^15): the scaling is exact, and every
// value within 2^28 of the largest keeps f16's relative error ≤ 2^-11; smaller ones get an
// absolute error ≤ 2^-25 · scale.
import { f16BitsToF32, f32ToF16Bits } from '../../proto/half.ts';
import { checkDelta, checkFinite, CodecError, partTensor, PartReader, type Codec } from './codec.ts';

export const f32Codec: Codec = {
  spec: 'f32',
  encode(delta, shape) {
    checkDelta('f32', delta, shape);
    checkFinite('f32', delta);
    return [{ suffix: '', tensor: partTensor('F32', [...shape], delta.slice()) }];
  },
  decode(parts, shape) {
    const values = new PartReader('f32', parts, ['']).read('', 'F32', Float32Array, shape);
    checkFiniteParts('f32', values);
    return values.slice();
  },
};

function checkFiniteParts(spec: string, values: Float32Array): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new CodecError(`${spec}: non-finite value ${values[i]} at ${i}`);
  }
}

/** The power of two 2^e with max / 2^e in [2^14, 2^15), kept within f32's range. */
function halfScale(max: number): number {
  if (max === 0) return 1;
  let e = Math.floor(Math.log2(max));
  if (2 ** e > max) e--; // log2 may round across a power of two
  else if (2 ** (e + 1) <= max) e++;
  return 2 ** Math.max(e - 14, -149);
}

const F16_EXPONENT = 0x7c00;

export const f16Codec: Codec = {
  spec: 'f16',
  encode(delta, shape) {
    checkDelta('f16', delta, shape);
    checkFinite('f16', delta);
    let max = 0;
    for (let i = 0; i < delta.length; i++) max = Math.max(max, Math.abs(delta[i]));
    const scale = halfScale(max);
    const inv = 1 / scale; // a power of two: the product is exact
    // Only at the top scale (values ≥ 2^127) can rounding up reach 2^15 · 2^113 = 2^128, past
    // the largest f32: there, clamp below 2^15 (an error ≤ 2^-10 instead of 2^-11).
    const limit = scale === 2 ** 113 ? 0x77ff : 0x7bff;
    const halves = new Uint16Array(delta.length);
    for (let i = 0; i < delta.length; i++) {
      const h = f32ToF16Bits(delta[i] * inv);
      halves[i] = (h & 0x7fff) > limit ? (h & 0x8000) | limit : h;
    }
    return [
      { suffix: ':f16', tensor: partTensor('F16', [...shape], halves) },
      { suffix: ':scale', tensor: partTensor('F32', [1], new Float32Array([scale])) },
    ];
  },
  decode(parts, shape) {
    const reader = new PartReader('f16', parts, [':f16', ':scale']);
    const halves = reader.read(':f16', 'F16', Uint16Array, shape);
    const scale = reader.read(':scale', 'F32', Float32Array, [1])[0];
    let maxBits = 0;
    for (let i = 0; i < halves.length; i++) {
      const h = halves[i];
      if ((h & F16_EXPONENT) === F16_EXPONENT) throw new CodecError(`f16: Inf or NaN at ${i}`);
      maxBits = Math.max(maxBits, h & 0x7fff);
    }
    if (!(scale > 0) || !Number.isFinite(Math.fround(f16BitsToF32(maxBits) * scale))) {
      throw new CodecError(`f16: scale ${scale} is not positive or makes values overflow f32`);
    }
    const out = new Float32Array(halves.length);
    for (let i = 0; i < halves.length; i++) out[i] = f16BitsToF32(halves[i]) * scale;
    return out;
  },
};
