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
/** Register tile height: X is packed in panels of this many rows. */
const QINT_ROWS = 4;
/**
 * Cap of the packed X kept between calls: 4 MiB holds m·k ≤ ~1.97M values (2.125 bytes each:
 * int16 plus a scale per 32). A training step's largest, 2048×256 and 256×4096, take 1.1 and
 * 2.2 MiB; larger products go in row chunks.
 */
export const PACKED_X_MAX_BYTES = 4 << 20;

export interface QIntOptions {
  /** Add the product into the output instead of overwriting it: y = y + P. */
  accumulate?: boolean;
}

export class QInt {
  /** Largest reduction length (W's cols) the kernel's scratch holds. */
  readonly maxK: number;
  /** Heap buffer for the packed X, grown on demand up to about PACKED_X_MAX_BYTES (0: none yet). */
  private packedX = 0;
  private packedXBytes = 0;

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
    // Two phases, so that X is quantized once rather than by every thread: the threads split
    // X's rows to pack them into a shared buffer, then the output's column panels.
    const serial = m * n * k < PARALLEL_MIN_MACS;
    const panelBytes = this.rt.fn('qint_a_panel_bytes')(k);
    const chunkRows = Math.max(1, Math.floor(PACKED_X_MAX_BYTES / Math.max(panelBytes, 1))) * QINT_ROWS;
    const packed = this.packedBuffer(Math.ceil(Math.min(m, chunkRows) / QINT_ROWS) * panelBytes);
    for (let i = 0; i < m; i += chunkRows) {
      const rows = Math.min(chunkRows, m - i);
      this.rt.parallel('qint_pack_x', [px + i * k * 4, rows, k, packed], rows, QINT_ROWS, serial);
      const args = [packed, wp.q, wp.scales, w.bits, py + i * n * 4, rows, n, k, +accumulate];
      this.rt.parallel('qint_gemm', args, n, QINT_PANEL, serial);
    }
  }

  /** The packed-X buffer with at least `bytes`, reallocated when a larger one is needed. */
  private packedBuffer(bytes: number): number {
    if (bytes > this.packedXBytes) {
      if (this.packedX) this.rt.heap.freeBytes(this.packedX);
      this.packedX = this.rt.heap.allocBytes(bytes);
      this.packedXBytes = bytes;
    }
    return this.packedX;
  }
}
