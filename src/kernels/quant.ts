// Blockwise-quantized weights on the kernel heap (q8, q4; formats in assembly/quant.ts and
// test/reference/quant64.ts) and their fp32-path products: the forward y = x·Wᵀ and the
// backward dx = dy·W, with W dequantized while its panels are packed (never materialized in
// fp32), and dot products instead of packing when x has few rows (token generation).
import { checkDims, heapPtr } from './check.ts';
import { DOT_MAX_ROWS, GEMM_PANEL, PARALLEL_MIN_MACS } from './gemm.ts';
import { allocQuantized, quantizedPtrs, type QuantBits, type QuantizedTensor } from './quantized.ts';
import { SCRATCH_BYTES, type KernelRuntime } from './runtime.ts';

export interface QuantMatmulOptions {
  /** Add into the output instead of overwriting it. */
  accumulate?: boolean;
}

export class Quant {
  /** Largest k the quantized dot kernels' scratch holds (beyond it the GEMM path runs). */
  private readonly dotMaxK: number;

  constructor(private readonly rt: KernelRuntime) {
    this.dotMaxK = Math.floor(SCRATCH_BYTES / rt.fn('dot_scratch_bytes_per_k')());
  }

  /** Quantizes w (rows × cols fp32) into a new heap tensor, parallel over rows. */
  quantize(w: Float32Array, rows: number, cols: number, bits: QuantBits): QuantizedTensor {
    checkDims('quantize', { rows, cols });
    const { heap } = this.rt;
    const pw = heapPtr(heap, 'quantize', 'w', w, rows * cols);
    const t = allocQuantized(heap, bits, rows, cols); // checks bits and cols % QBLOCK
    this.rt.parallel(`quantize_q${bits}`, [pw, t.q.byteOffset, t.scales.byteOffset, cols], rows, 1, rows * cols < PARALLEL_MIN_MACS);
    return t;
  }

  /** Writes W's values, exactly f32(q · scale), to `out` (rows × cols fp32; a new heap array by default). */
  dequantize(w: QuantizedTensor, out?: Float32Array): Float32Array {
    const { heap } = this.rt;
    const { q: pq, scales: ps } = quantizedPtrs(heap, 'dequantize', 'w', w);
    const { rows, cols } = w;
    const result = out ?? heap.f32(rows * cols);
    const px = heapPtr(heap, 'dequantize', 'out', result, rows * cols);
    this.rt.parallel(`dequantize_q${w.bits}`, [pq, ps, px, cols], rows, 1, rows * cols < PARALLEL_MIN_MACS);
    return result;
  }

  /**
   * Forward: y (m × n) (=|+=) x (m × k) · Wᵀ, W = `w` (n × k). Dot products for m ≤
   * DOT_MAX_ROWS, otherwise the packed GEMM; either way parallel over the n outputs.
   */
  matmulT(x: Float32Array, w: QuantizedTensor, y: Float32Array, m: number, { accumulate = false }: QuantMatmulOptions = {}): void {
    checkDims('matmulT', { m });
    const { heap } = this.rt;
    const { q: pq, scales: ps } = quantizedPtrs(heap, 'matmulT', 'w', w);
    const { rows: n, cols: k, bits } = w;
    const px = heapPtr(heap, 'matmulT', 'x', x, m * k);
    const py = heapPtr(heap, 'matmulT', 'y', y, m * n);
    const args = [px, pq, ps, py, m, n, k, +accumulate];
    const serial = m * n * k < PARALLEL_MIN_MACS;
    const kernel = m <= DOT_MAX_ROWS && k <= this.dotMaxK ? `dot_q${bits}_t` : `gemm_q${bits}_t`;
    this.rt.parallel(kernel, args, n, GEMM_PANEL, serial);
  }

  /** Backward through W: dx (m × k) (=|+=) dy (m × n) · W, W = `w` (n × k), parallel over k. */
  matmulBackward(dy: Float32Array, w: QuantizedTensor, dx: Float32Array, m: number, { accumulate = false }: QuantMatmulOptions = {}): void {
    checkDims('matmulBackward', { m });
    const { heap } = this.rt;
    const { q: pq, scales: ps } = quantizedPtrs(heap, 'matmulBackward', 'w', w);
    const { rows: n, cols: k, bits } = w;
    const pdy = heapPtr(heap, 'matmulBackward', 'dy', dy, m * n);
    const pdx = heapPtr(heap, 'matmulBackward', 'dx', dx, m * k);
    const args = [pdy, pq, ps, pdx, m, n, k, +accumulate];
    // Column chunks must be whole panels (the packing reads 8 columns of a row at a time).
    this.rt.parallel(`gemm_q${bits}_n`, args, k, GEMM_PANEL, m * n * k < PARALLEL_MIN_MACS);
  }
}
