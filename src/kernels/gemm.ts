// fp32 matrix products on the kernel heap, split across threads over output column panels, or
// over rows when there are too few panels to go round (LoRA's rank-r products) or C is tall.
import { checkDims, heapPtr } from './check.ts';
import type { KernelRuntime } from './runtime.ts';

/** Register tile width: thread chunks are whole panels of this many columns. */
export const GEMM_PANEL = 8;
/** Below this many multiply-adds a product runs on one thread (waking workers costs more). */
export const PARALLEL_MIN_MACS = 1 << 18;
/** Row chunks of a product split over rows: whole 4-row register tiles, and not too many chunks. */
export const GEMM_ROW_GRAIN = 32;
/** Products with at least this many rows, and no more columns, split over rows (see Gemm.gemm). */
const TALL_ROWS = 8 * GEMM_ROW_GRAIN;
/** A·Bᵀ with at most this many rows of A runs as dot products (token generation): packing B would cost more. */
export const DOT_MAX_ROWS = 8;

export interface GemmArgs {
  /** op(A) is m×k: A is stored m×k, or k×m with transA. */
  a: Float32Array;
  /** op(B) is k×n: B is stored k×n, or n×k with transB. */
  b: Float32Array;
  /** m×n output, overwritten (or added to with accumulate). */
  c: Float32Array;
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  accumulate?: boolean;
}

export class Gemm {
  constructor(private readonly rt: KernelRuntime) {}

  /** C (=|+=) op(A)·op(B). Covers A·B, A·Bᵀ (transB) and Aᵀ·B (transA). */
  gemm({ a, b, c, m, n, k, transA = false, transB = false, accumulate = false }: GemmArgs): void {
    checkDims('gemm', { m, n, k });
    const { heap } = this.rt;
    const pa = heapPtr(heap, 'gemm', 'a', a, m * k);
    const pb = heapPtr(heap, 'gemm', 'b', b, k * n);
    const pc = heapPtr(heap, 'gemm', 'c', c, m * n);
    if (transB && !transA && m <= DOT_MAX_ROWS) {
      this.rt.parallel('dot_f32_t', [pa, pb, pc, m, n, k, +accumulate], n, GEMM_PANEL, m * n * k < PARALLEL_MIN_MACS);
      return;
    }
    const args = [pa, pb, pc, m, n, k, +transA, +transB, +accumulate];
    const serial = m * n * k < PARALLEL_MIN_MACS;
    // Over rows when the column panels are too few to go round, or when C is tall: each thread
    // then updates whole rows of C. Threads updating interleaved parts of every row ran the
    // accumulating k = 8 LoRA products (512×512, 512×256) at half the speed on 2 threads.
    const tall = m >= n && m >= TALL_ROWS;
    if ((Math.ceil(n / GEMM_PANEL) < 2 * this.rt.info.threads || tall) && m >= 2 * GEMM_ROW_GRAIN) {
      this.rt.parallel('gemm_f32_rows', args, m, GEMM_ROW_GRAIN, serial);
      return;
    }
    this.rt.parallel('gemm_f32', args, n, GEMM_PANEL, serial);
  }
}
