// The per-value passes of an averaging round behind one interface: a node runs them on its kernels
// (kernels.deltas, WASM SIMD), everything else in the JavaScript here (jsPasses). Both compute in
// f64 and store in f32 in the same order, so they give the same bits (test/kernels/deltas.test.ts).
import { jsBlockCoder, type BlockCoder } from '../compress/index.ts';
import { l2Norm } from './screen.ts';

export interface RoundPasses extends BlockCoder {
  /**
   * A zeroed array for a round's own values (an anchor, a delta), where the passes use it without a copy (a node's
   * kernel heap); free() it when done.
   */
  allocate(length: number): Float32Array;
  free(array: Float32Array): void;
  /** The L2 norm over all of the tensors, in f64 (screen.ts's l2Norm: the order of the sums may differ). */
  l2Norm(values: readonly Float32Array[]): number;
  /** out = a − b. */
  subtract(a: Float32Array, b: Float32Array, out: Float32Array): void;
  /** out = fround(fround(0 + w0·x0) + w1·x1) / total per value (out may be x0 or x1). */
  meanOfTwo(out: Float32Array, x0: Float32Array, x1: Float32Array, w0: number, w1: number, total: number): void;
  /** values = anchor = fround(anchor + lr·update). */
  applyStep(values: Float32Array, anchor: Float32Array, update: Float32Array, lr: number): void;
  /** anchor = moved = fround(anchor + lr·update); values = moved + (values − boundary), in f64. */
  applyLate(values: Float32Array, anchor: Float32Array, update: Float32Array, boundary: Float32Array, lr: number): void;
}

export const jsPasses: RoundPasses = {
  ...jsBlockCoder,
  allocate: (length) => new Float32Array(length),
  free() {}, // garbage-collected
  l2Norm,
  subtract(a, b, out) {
    for (let j = 0; j < out.length; j++) out[j] = a[j] - b[j];
  },
  meanOfTwo(out, x0, x1, w0, w1, total) {
    // 0 + w·x: the sum starts at +0, so a −0 product sums to +0 as the mean of any number of parts does.
    for (let j = 0; j < out.length; j++) out[j] = Math.fround(Math.fround(0 + w0 * x0[j]) + w1 * x1[j]) / total;
  },
  applyStep(values, anchor, update, lr) {
    for (let j = 0; j < values.length; j++) values[j] = anchor[j] = Math.fround(anchor[j] + lr * update[j]);
  },
  applyLate(values, anchor, update, boundary, lr) {
    for (let j = 0; j < values.length; j++) {
      const moved = Math.fround(anchor[j] + lr * update[j]); // the f32 the anchor holds, without reading it back
      anchor[j] = moved;
      values[j] = moved + (values[j] - boundary[j]);
    }
  },
};
