// Integer path of the quantized products: activations quantized on the fly to int8 per row and
// block, multiplied with q8/q4 weights by integer SIMD dot products, one f32 scale per block.
// Exact and deterministic (see assembly/qint.ts): the same bits on every CPU, engine, build
// and thread count, as test/reference/quant64.ts integerProduct.
import { checkDims, heapPtr } from './check.ts';
import { PARALLEL_MIN_MACS } from './gemm.ts';
import { allocQuantized, QBLOCK, quantizedPtrs, type QuantBits, type QuantizedTensor } from './quantized.ts';
import type { KernelRuntime } from './runtime.ts';

/** Register tile width: thread chunks are whole panels of this many output columns. */
const QINT_PANEL = 8;

export interface QIntOptions {
  /** Add the product into the output instead of overwriting it: y = y + P. */
  accumulate?: boolean;
}

export class QInt {
  /** Largest reduction length (W's cols) the kernel's scratch holds. */
  readonly maxK: number;

  constructor(private readonly rt: KernelRuntime) {
    this.maxK = rt.fn('qint_max_k')();
  }

  /** y (=|+=) quant8(x)·Wᵀ: x is m×w.cols, y is m×w.rows (W's rows are the output features). */
  forward(x: Float32Array, w: QuantizedTensor, y: Float32Array, m: number, options: QIntOptions = {}): void {
    this.product('qint.forward', ['x', 'w', 'y'], x, w, y, m, options);
  }

  /**
   * Backward through a frozen weight: dx (=|+=) dy·W, computed as the same integer product with
   * wT = transposeQuantized(W), so dy is m×wT.cols (W's rows) and dx is m×wT.rows (W's cols).
   */
  backward(dy: Float32Array, wT: QuantizedTensor, dx: Float32Array, m: number, options: QIntOptions = {}): void {
    this.product('qint.backward', ['dy', 'wT', 'dx'], dy, wT, dx, m, options);
  }

  /**
   * Wᵀ quantized in blocks of QBLOCK along W's rows, for backward. W's scales run along its
   * columns, but dx = dy·W reduces over W's rows, so an integer dot product cannot take W's
   * scales out of its sum; the transposed copy has them along the reduction. Each value is
   * dequantized and re-quantized (once, at load: the base weight is frozen).
   * Memory: the copy takes rows·cols·(1 + 4/32) bytes in q8 (default; 1.125 B per weight,
   * as much again as a q8 W, nearly 3x a q4 W's 0.625 B) or rows·cols·(1/2 + 4/32) in q4.
   * q8 is the default: re-rounding a q4 weight on a new 4-bit grid adds half the first
   * rounding's error again (relative RMS 3.4e-2 on top of 6.8e-2 for uniform weights), an
   * 8-bit grid adds 3.6e-3.
   */
  transposeQuantized(w: QuantizedTensor, { bits = 8 }: { bits?: QuantBits } = {}): QuantizedTensor {
    const what = 'qint.transposeQuantized';
    const src = quantizedPtrs(this.rt.heap, what, 'w', w);
    if (w.rows % QBLOCK) throw new RangeError(`${what}: w.rows (${w.rows}) must be a multiple of ${QBLOCK} to be blocked along rows`);
    const t = allocQuantized(this.rt.heap, bits, w.cols, w.rows);
    const dst = quantizedPtrs(this.rt.heap, what, 'result', t);
    const args = [src.q, src.scales, w.bits, w.rows, w.cols, dst.q, dst.scales, bits];
    this.rt.parallel('qint_transpose_quantized', args, w.cols, QBLOCK, w.rows * w.cols < PARALLEL_MIN_MACS);
    return t;
  }

  private product(what: string, [xName, wName, yName]: [string, string, string], x: Float32Array, w: QuantizedTensor,
    y: Float32Array, m: number, { accumulate = false }: QIntOptions): void {
    checkDims(what, { m });
    const { heap } = this.rt;
    const n = w.rows;
    const k = w.cols;
    if (k > this.maxK) throw new RangeError(`${what}: ${wName}.cols (${k}) exceeds the largest supported reduction length ${this.maxK}`);
    const wp = quantizedPtrs(heap, what, wName, w);
    const px = heapPtr(heap, what, xName, x, m * k);
    const py = heapPtr(heap, what, yName, y, m * n);
    const args = [px, wp.q, wp.scales, w.bits, py, m, n, k, +accumulate];
    this.rt.parallel('qint_gemm', args, n, QINT_PANEL, m * n * k < PARALLEL_MIN_MACS);
  }
}
