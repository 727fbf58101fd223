// Linear layers y = x·Wᵀ (+ b), W stored [out, in] like PyTorch, each with its backward beside
// the forward. Three kinds behind one interface:
//   DenseLinear  fp32 weight, trainable (full mode) or frozen;
//   QuantLinear  frozen q8/q4 weight, on the fp32 path (dequantized while packing) or the
//                integer path (int8 activations, exact integer dot products);
//   LoraLinear   any frozen base plus a trainable low-rank update (alpha / r)·B·A.
// The caller keeps the forward input x alive and passes it to backward.
import type { Kernels, QuantizedTensor } from '../kernels/index.ts';
import type { Param } from './params.ts';

export interface Linear {
  readonly inDim: number;
  readonly outDim: number;
  /** y = x·Wᵀ (+ b) over `rows` rows (y is overwritten). */
  forward(x: Float32Array, y: Float32Array, rows: number): void;
  /**
   * dx (= or += with accumulateDx) dy·W, skipped when dx is undefined; adds the gradients of
   * the trainable parameters, from the forward's input x.
   */
  backward(x: Float32Array, dy: Float32Array, dx: Float32Array | undefined, rows: number, accumulateDx?: boolean): void;
  /** Frees what it keeps between calls (a LoRA linear's x·Aᵀ); it may not be called afterwards. */
  release?(): void;
  /** A copy, in the kernel heap, of what the forward over `rows` rows kept for the backward (a LoRA linear's x·Aᵀ). */
  saveKept?(rows: number): Float32Array;
  /** Puts back what saveKept copied, for the backward of that forward. */
  restoreKept?(kept: Float32Array): void;
}

function addBias(kernels: Kernels, bias: Param | undefined, y: Float32Array, rows: number, out: number): void {
  if (bias) kernels.ops.addBias(y, bias.value, rows, out);
}

function biasBackward(kernels: Kernels, bias: Param | undefined, dy: Float32Array, rows: number, out: number): void {
  if (bias?.grad) kernels.ops.biasGrad(dy, bias.grad, rows, out);
}

export class DenseLinear implements Linear {
  readonly inDim: number;
  readonly outDim: number;

  constructor(private readonly kernels: Kernels, readonly weight: Param, readonly bias?: Param) {
    [this.outDim, this.inDim] = weight.shape;
  }

  forward(x: Float32Array, y: Float32Array, rows: number): void {
    this.kernels.gemm.gemm({ a: x, b: this.weight.value, c: y, m: rows, n: this.outDim, k: this.inDim, transB: true });
    addBias(this.kernels, this.bias, y, rows, this.outDim);
  }

  backward(x: Float32Array, dy: Float32Array, dx: Float32Array | undefined, rows: number, accumulateDx = false): void {
    const { gemm } = this.kernels;
    if (dx) gemm.gemm({ a: dy, b: this.weight.value, c: dx, m: rows, n: this.inDim, k: this.outDim, accumulate: accumulateDx });
    if (this.weight.grad) {
      gemm.gemm({ a: dy, b: x, c: this.weight.grad, m: this.outDim, n: this.inDim, k: rows, transA: true, accumulate: true });
    }
    biasBackward(this.kernels, this.bias, dy, rows, this.outDim);
  }
}

export type BasePath = 'fp32' | 'int';

export class QuantLinear implements Linear {
  readonly inDim: number;
  readonly outDim: number;

  /**
   * `transposed` is required on the integer path: its backward needs Wᵀ quantized along W's
   * rows (see QInt.transposeQuantized), made once since the base is frozen.
   */
  constructor(
    private readonly kernels: Kernels,
    readonly weight: QuantizedTensor,
    readonly path: BasePath,
    readonly bias?: Param,
    private readonly transposed?: QuantizedTensor,
  ) {
    this.outDim = weight.rows;
    this.inDim = weight.cols;
    if (path === 'int' && !transposed) throw new Error('QuantLinear: the integer path needs the transposed weight');
  }

  forward(x: Float32Array, y: Float32Array, rows: number): void {
    if (this.path === 'int') this.kernels.qint.forward(x, this.weight, y, rows);
    else this.kernels.quant.matmulT(x, this.weight, y, rows);
    addBias(this.kernels, this.bias, y, rows, this.outDim);
  }

  backward(x: Float32Array, dy: Float32Array, dx: Float32Array | undefined, rows: number, accumulateDx = false): void {
    if (dx && this.transposed) this.kernels.qint.backward(dy, this.transposed, dx, rows, { accumulate: accumulateDx });
    else if (dx) this.kernels.quant.matmulBackward(dy, this.weight, dx, rows, { accumulate: accumulateDx });
    biasBackward(this.kernels, this.bias, dy, rows, this.outDim);
  }
}

/** Rows of a growable scratch matrix: reallocated (larger) only when a call needs more rows. */
export class GrowableBuffer {
  private view?: Float32Array;

  constructor(private readonly kernels: Kernels, private readonly cols: number) {}

  rows(rows: number): Float32Array {
    const need = Math.max(1, rows * this.cols);
    if (!this.view || this.view.length < need) {
      // A quarter more than the previous size at least: an expert's share of the rows drifts up
      // a little from step to step, and growing by exactly that each time would reallocate
      // (and leave a hole in the heap) on nearly every step.
      const length = this.view ? Math.max(need, Math.ceil(this.view.length * 1.25)) : need;
      if (this.view) this.kernels.heap.release(this.view);
      this.view = this.kernels.heap.f32(length);
    }
    return this.view;
  }

  /** Frees the buffer (a later rows() allocates again). */
  release(): void {
    if (this.view) this.kernels.heap.release(this.view);
    this.view = undefined;
  }
}

/**
 * Named temporaries of a backward pass, shared by all layers (backward runs one layer at a
 * time) and kept between steps instead of reallocated. Contents are garbage on return: every
 * user overwrites what it reads.
 */
export class ScratchBuffers {
  private readonly f32s = new Map<string, GrowableBuffer>();

  constructor(private readonly kernels: Kernels) {}

  f32(name: string, length: number): Float32Array {
    let buffer = this.f32s.get(name);
    if (!buffer) this.f32s.set(name, (buffer = new GrowableBuffer(this.kernels, 1)));
    return buffer.rows(length).subarray(0, length);
  }

  /** Allocates room for `length` floats in the named buffer now rather than at its first use. */
  reserve(name: string, length: number): void {
    this.f32(name, length);
  }

  /**
   * Consecutive views of the given lengths in one named buffer: temporaries that different
   * layers need at different times (attention's backward, then the MoE's) take the same memory.
   */
  parts(name: string, lengths: number[]): Float32Array[] {
    const whole = this.f32(name, lengths.reduce((a, b) => a + b, 0));
    let at = 0;
    return lengths.map((length) => whole.subarray(at, (at += length)));
  }
}

/** The ScratchBuffers name of the temporaries of one layer's forward or backward (attention, MoE). */
export const LAYER_SCRATCH = 'layer';
/** The ScratchBuffers name of a LoRA linear's backward temporary (used inside layers' backward: not LAYER_SCRATCH). */
export const LORA_SCRATCH = 'lora';

export class LoraLinear implements Linear {
  readonly inDim: number;
  readonly outDim: number;
  readonly rank: number;
  private readonly scale: number;
  /** (alpha / r)·x·Aᵀ from the forward, [rows, r]. */
  private readonly xa: GrowableBuffer;

  constructor(
    private readonly kernels: Kernels,
    readonly base: Linear,
    readonly a: Param,
    readonly b: Param,
    alpha: number,
    /** Holds the backward's ∂L/∂(x·Aᵀ): a temporary, so all LoRA linears share it. */
    private readonly scratch: ScratchBuffers,
  ) {
    this.inDim = base.inDim;
    this.outDim = base.outDim;
    this.rank = a.shape[0];
    this.scale = alpha / this.rank;
    this.xa = new GrowableBuffer(kernels, this.rank);
  }

  forward(x: Float32Array, y: Float32Array, rows: number): void {
    const { gemm, ops } = this.kernels;
    const r = this.rank;
    this.base.forward(x, y, rows);
    const xa = this.xa.rows(rows);
    gemm.gemm({ a: x, b: this.a.value, c: xa, m: rows, n: r, k: this.inDim, transB: true });
    ops.scale(xa, this.scale, rows * r);
    gemm.gemm({ a: xa, b: this.b.value, c: y, m: rows, n: this.outDim, k: r, transB: true, accumulate: true });
  }

  backward(x: Float32Array, dy: Float32Array, dx: Float32Array | undefined, rows: number, accumulateDx = false): void {
    const { gemm, ops } = this.kernels;
    const r = this.rank;
    this.base.backward(x, dy, dx, rows, accumulateDx);
    const xa = this.xa.rows(rows);
    const dxa = this.scratch.f32(LORA_SCRATCH, rows * r);
    gemm.gemm({ a: dy, b: xa, c: this.b.grad!, m: this.outDim, n: r, k: rows, transA: true, accumulate: true });
    gemm.gemm({ a: dy, b: this.b.value, c: dxa, m: rows, n: r, k: this.outDim });
    ops.scale(dxa, this.scale, rows * r);
    // A frozen (LoRA-FA) has no gradient to accumulate.
    if (this.a.grad) gemm.gemm({ a: dxa, b: x, c: this.a.grad, m: r, n: this.inDim, k: rows, transA: true, accumulate: true });
    if (dx) gemm.gemm({ a: dxa, b: this.a.value, c: dx, m: rows, n: this.inDim, k: r, accumulate: true });
  }

  release(): void {
    this.xa.release();
  }

  saveKept(rows: number): Float32Array {
    return this.kernels.heap.copyOf(this.xa.rows(rows).subarray(0, rows * this.rank));
  }

  restoreKept(kept: Float32Array): void {
    this.xa.rows(kept.length / this.rank).set(kept);
  }
}
