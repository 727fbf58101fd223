// Activation rows on the wire between nodes (node/experts.ts), coded on the kernel heap: int8 with
// one scale per row (format in assembly/rows.ts), the checked decoding of int8 rows with a scale per
// row or per block, and a fingerprint of rows' bits. Rows outside the heap (a test's, a bench's)
// are copied in first; the codes come out in arrays of their own, ready for the wire.
import { checkDims } from './check.ts';
import { alignedBytes } from './heap.ts';
import { SCRATCH_BYTES, type KernelRuntime } from './runtime.ts';

export class Rows {
  constructor(private readonly rt: KernelRuntime) {}

  /** rows × k values to int8 codes and one scale per row (amax / 127). */
  quantizeI8(values: Float32Array, rows: number, k: number): { codes: Int8Array; scales: Float32Array } {
    checkDims('quantizeI8', { rows, k });
    const n = rows * k;
    if (values.length < n) throw new RangeError(`quantizeI8: ${values.length} values for ${rows} rows of ${k}`);
    const inHeap = this.rt.heap.contains(values);
    const input = inHeap ? 0 : alignedBytes(n * 4);
    return this.withTemp(input + alignedBytes(n) + rows * 4, (ptr) => {
      const x = inHeap ? values.byteOffset : ptr;
      if (!inHeap) new Float32Array(this.rt.memory.buffer, ptr, n).set(values.subarray(0, n));
      const q = ptr + input;
      const s = q + alignedBytes(n);
      this.rt.fn('quantize_rows_i8')(x, q, s, k, 0, rows);
      const { buffer } = this.rt.memory;
      return { codes: new Int8Array(buffer, q, n).slice(), scales: new Float32Array(buffer, s, rows).slice() };
    });
  }

  /**
   * Writes codes × their block's scale into `out` (rows × k; `scales` holds `blocks` per row, each for
   * k / blocks codes). Returns the index of the first code −128 (never sent), or −1.
   */
  dequantizeI8(codes: Int8Array, scales: Float32Array, rows: number, k: number, blocks: number, out: Float32Array): number {
    checkDims('dequantizeI8', { rows, k, blocks });
    const n = rows * k;
    if (!(blocks > 0 && k % blocks === 0) || codes.length !== n || scales.length !== rows * blocks || out.length < n) {
      const have = `${codes.length} codes, ${scales.length} scales, ${out.length} outputs`;
      throw new RangeError(`dequantizeI8: ${have} for ${rows} × ${k} in ${blocks} blocks`);
    }
    const inHeap = this.rt.heap.contains(out);
    const output = inHeap ? 0 : alignedBytes(n * 4);
    return this.withTemp(output + alignedBytes(n) + scales.byteLength, (ptr) => {
      const { buffer } = this.rt.memory;
      const q = ptr + output;
      const s = q + alignedBytes(n);
      new Int8Array(buffer, q, n).set(codes);
      new Float32Array(buffer, s, scales.length).set(scales);
      const y = inHeap ? out.byteOffset : ptr;
      const bad = this.rt.fn('dequantize_rows_i8')(q, s, y, k, blocks, 0, rows);
      if (!inHeap) out.set(new Float32Array(buffer, ptr, n));
      return bad;
    });
  }

  /** A 52-bit hash of the values' bits: equal rows give equal prints, different rows almost surely not. */
  fingerprint(values: Float32Array): number {
    if (this.rt.heap.contains(values)) return this.rt.fn('fingerprint_words')(values.byteOffset, values.length);
    return this.withTemp(values.byteLength, (ptr) => {
      new Float32Array(this.rt.memory.buffer, ptr, values.length).set(values);
      return this.rt.fn('fingerprint_words')(ptr, values.length);
    });
  }

  /** Runs `use` on `bytes` of the main thread's scratch (free between kernels), or on a heap block when they do not fit. */
  private withTemp<T>(bytes: number, use: (ptr: number) => T): T {
    if (bytes <= SCRATCH_BYTES) return use(this.rt.mainScratch);
    const ptr = this.rt.heap.allocBytes(bytes, false); // every byte is written before it is read
    try {
      return use(ptr);
    } finally {
      this.rt.heap.freeBytes(ptr);
    }
  }
}
