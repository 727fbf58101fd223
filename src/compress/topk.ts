// Top-k sparsification: keep the ceil(fraction·n) largest |values|, as int8 with one scale per
// VALUE_BLOCK kept values, at positions coded by indices.ts. With error feedback (default) the
// sender adds last rounds' residual before selecting and keeps everything not sent (the dropped
// values and the int8 error of the kept ones) for the next round, so every coordinate's updates
// eventually get through; without it, small coordinates may never be sent.
// Parts: ':q' I8 [kept], ':scale' F32 [ceil(kept / 32)], ':gaps' or ':bitmap' U8, and ':shape'
// I32 [rank] (the dense shape, which no other part reveals, so a mismatch is caught).
import { elementCount } from '../../proto/index.ts';
import { accumulateResidual, checkDelta, checkFinite, CodecError, partTensor, PartReader, type Codec } from './codec.ts';
import { decodeIndices, encodeIndices, INDEX_SUFFIXES } from './indices.ts';
import { blockCount, decodeBlocks, jsBlockCoder, type BlockCoder } from './int8-block.ts';
import { topKIndices } from './select.ts';

const VALUE_BLOCK = 32;

export function topkInt8Codec(fraction: number, { errorFeedback = true } = {}, coder: BlockCoder = jsBlockCoder): Codec {
  const spec = `topk-int8:${fraction}`;
  const keptCount = (n: number) => Math.min(n, Math.ceil(fraction * n));
  return {
    spec,
    encode(delta, shape, state) {
      checkDelta(spec, delta, shape);
      const n = delta.length;
      const acc = errorFeedback ? accumulateResidual(spec, state, delta) : (checkFinite(spec, delta), delta);
      const indices = topKIndices(acc, keptCount(n));
      const k = indices.length;
      const values = new Float32Array(k);
      for (let j = 0; j < k; j++) values[j] = acc[indices[j]];
      const q = new Int8Array(k);
      const scales = new Float32Array(blockCount(k, VALUE_BLOCK));
      coder.quantizeBlocks(values, VALUE_BLOCK, q, scales);
      if (errorFeedback) {
        // The residual loses exactly what the receiver decodes (same f32 product as decodeBlocks).
        for (let j = 0; j < k; j++) acc[indices[j]] -= Math.fround(q[j] * scales[(j / VALUE_BLOCK) | 0]);
      }
      return [
        { suffix: ':q', tensor: partTensor('I8', [k], q) },
        { suffix: ':scale', tensor: partTensor('F32', [scales.length], scales) },
        encodeIndices(indices, n),
        { suffix: ':shape', tensor: partTensor('I32', [shape.length], Int32Array.from(shape)) },
      ];
    },
    decode(parts, shape) {
      const n = elementCount(shape);
      const reader = new PartReader(spec, parts, [':q', ':scale', ':shape'], INDEX_SUFFIXES);
      const sent = reader.read(':shape', 'I32', Int32Array, [shape.length]);
      if (sent.some((d, i) => d !== shape[i])) throw new CodecError(`${spec}: delta of shape [${sent.join(', ')}], expected [${shape.join(', ')}]`);
      const q = reader.read(':q', 'I8', Int8Array, { maxLength: keptCount(n) });
      const scales = reader.read(':scale', 'F32', Float32Array, [blockCount(q.length, VALUE_BLOCK)]);
      const indices = decodeIndices(spec, reader, q.length, n);
      const values = new Float32Array(q.length);
      decodeBlocks(spec, coder, q, scales, VALUE_BLOCK, values);
      const out = new Float32Array(n);
      for (let j = 0; j < indices.length; j++) out[indices[j]] = values[j];
      return out;
    },
  };
}
