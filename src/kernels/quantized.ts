// Blockwise-quantized weight matrices on the kernel heap, the type shared by the quantized
// kernels (fp32-path GEMM and integer path). Formats, as in test/reference/quant64.ts:
// each row is cut into blocks of QBLOCK consecutive values with one f32 scale per block;
//   q8: one int8 per value in [-127, 127], scale = amax / 127;
//   q4: the nibble q + 8 (q in [-8, 7]), two per byte, the even element in the low nibble,
//       scale = amax / 7.
import { checkDims, heapPtr } from './check.ts';
import type { KernelHeap } from './heap.ts';

export const QBLOCK = 32;

export type QuantBits = 8 | 4;

export interface QuantizedTensor {
  bits: QuantBits;
  rows: number;
  /** Values per row, a multiple of QBLOCK: blocks run along a row. */
  cols: number;
  /** q8: Int8Array of rows·cols values; q4: Uint8Array of rows·cols/2 packed nibbles. */
  q: Int8Array | Uint8Array;
  /** rows · cols/QBLOCK scales, row-major. */
  scales: Float32Array;
}

/** Allocates a zeroed rows×cols quantized matrix in the heap. */
export function allocQuantized(heap: KernelHeap, bits: QuantBits, rows: number, cols: number): QuantizedTensor {
  checkShape('allocQuantized', bits, rows, cols);
  const q = bits === 8 ? heap.i8(rows * cols) : heap.u8((rows * cols) / 2);
  return { bits, rows, cols, q, scales: heap.f32((rows * cols) / QBLOCK) };
}

export function releaseQuantized(heap: KernelHeap, w: QuantizedTensor): void {
  heap.release(w.q);
  heap.release(w.scales);
}

/** Checks a quantized matrix's shape and arrays and returns the pointers of q and scales. */
export function quantizedPtrs(heap: KernelHeap, what: string, name: string, w: QuantizedTensor): { q: number; scales: number } {
  checkShape(`${what}: ${name}`, w.bits, w.rows, w.cols);
  if (w.bits === 8 && !(w.q instanceof Int8Array)) throw new TypeError(`${what}: ${name}.q must be an Int8Array for q8`);
  if (w.bits === 4 && !(w.q instanceof Uint8Array)) throw new TypeError(`${what}: ${name}.q must be a Uint8Array for q4`);
  const values = w.rows * w.cols;
  return {
    q: heapPtr(heap, what, `${name}.q`, w.q, w.bits === 8 ? values : values / 2),
    scales: heapPtr(heap, what, `${name}.scales`, w.scales, values / QBLOCK),
  };
}

function checkShape(what: string, bits: number, rows: number, cols: number): void {
  if (bits !== 8 && bits !== 4) throw new RangeError(`${what}: bits must be 8 or 4, got ${bits}`);
  checkDims(what, { rows, cols });
  if (cols % QBLOCK) throw new RangeError(`${what}: cols (${cols}) must be a multiple of ${QBLOCK}`);
}
