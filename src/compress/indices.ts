// Coding of the ascending positions a sparse delta keeps, whichever is smaller:
//   ':gaps'    LEB128 varints of the first index, then of each difference to the previous one
//              (≥ 1): ~1 byte per index while the mean gap stays under 128;
//   ':bitmap'  one bit per element (bit i in byte i >> 3, least significant first): n/8 bytes,
//              smaller once more than ~1 element in 8-16 is kept.
// Decoders check every index is in range and strictly after the previous one.
import { varintLength, writeVarint } from '../../proto/varint.ts';
import { CodecError, partTensor, PartReader, type CodecPart } from './codec.ts';

export const INDEX_SUFFIXES = [':gaps', ':bitmap'] as const;

function gapBytes(indices: Uint32Array): number {
  let bytes = 0;
  for (let j = 0, prev = 0; j < indices.length; prev = indices[j++]) bytes += varintLength(indices[j] - prev);
  return bytes;
}

export function encodeIndices(indices: Uint32Array, n: number): CodecPart {
  const bytes = gapBytes(indices);
  if (bytes <= Math.ceil(n / 8)) {
    const out = new Uint8Array(bytes);
    let at = 0;
    for (let j = 0, prev = 0; j < indices.length; prev = indices[j++]) at = writeVarint(out, at, indices[j] - prev);
    return { suffix: ':gaps', tensor: partTensor('U8', [bytes], out) };
  }
  const bitmap = new Uint8Array(Math.ceil(n / 8));
  for (let j = 0; j < indices.length; j++) bitmap[indices[j] >>> 3] |= 1 << (indices[j] & 7);
  return { suffix: ':bitmap', tensor: partTensor('U8', [bitmap.length], bitmap) };
}

/** The `count` ascending indices below `n` from whichever index part `reader` holds. Throws CodecError. */
export function decodeIndices(spec: string, reader: PartReader, count: number, n: number): Uint32Array {
  if (reader.has(':gaps') === reader.has(':bitmap')) throw new CodecError(`${spec}: needs exactly one of the parts ":gaps" and ":bitmap"`);
  const out = new Uint32Array(count);
  if (reader.has(':bitmap')) {
    const bitmap = reader.read(':bitmap', 'U8', Uint8Array, [Math.ceil(n / 8)]);
    if (n % 8 && bitmap[bitmap.length - 1] >>> n % 8) throw new CodecError(`${spec}: bitmap has bits set past element ${n}`);
    let found = 0;
    for (let b = 0; b < bitmap.length; b++) {
      for (let bits = bitmap[b]; bits; bits &= bits - 1) {
        if (found === count) throw new CodecError(`${spec}: bitmap marks more than the ${count} values sent`);
        out[found++] = b * 8 + 31 - Math.clz32(bits & -bits);
      }
    }
    if (found !== count) throw new CodecError(`${spec}: bitmap marks ${found} positions for ${count} values`);
    return out;
  }
  const gaps = reader.read(':gaps', 'U8', Uint8Array, { maxLength: 5 * count });
  let at = 0;
  let index = -1;
  for (let j = 0; j < count; j++) {
    let v = 0;
    for (let shift = 0; ; shift++) {
      if (at === gaps.length) throw new CodecError(`${spec}: index data ends after ${j} of ${count} indices`);
      if (shift === 5) throw new CodecError(`${spec}: varint longer than 5 bytes at byte ${at}`);
      const byte = gaps[at++];
      v += (byte & 0x7f) * 2 ** (7 * shift);
      if (byte < 0x80) {
        if (byte === 0 && shift > 0) throw new CodecError(`${spec}: over-long varint ending at byte ${at - 1}`);
        break;
      }
    }
    if (j > 0 && v === 0) throw new CodecError(`${spec}: index ${j} repeats the previous one (indices must increase)`);
    index = j === 0 ? v : index + v;
    if (index >= n) throw new CodecError(`${spec}: index ${index} out of range for ${n} elements`);
    out[j] = index;
  }
  if (at !== gaps.length) throw new CodecError(`${spec}: ${gaps.length - at} bytes left after ${count} indices`);
  return out;
}
