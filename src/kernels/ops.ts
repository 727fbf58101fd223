// The transformer's non-GEMM kernels on the kernel heap, each forward beside its backward:
// RMSNorm, rotary embeddings, softmax, SwiGLU, causal grouped-query attention, fused softmax
// cross-entropy, top-k routing, AdamW, and elementwise / row helpers. All tensors are
// row-major f32 heap views unless noted (positions, targets and indices are Int32Array).
// Results are bit-identical for every thread count.
import { checkDims, heapPtr } from './check.ts';
import type { HeapView } from './heap.ts';
import { SCRATCH_BYTES, type KernelRuntime } from './runtime.ts';

/** Below this many elements touched a kernel runs on one thread (waking workers costs more). */
const PARALLEL_MIN_ELEMENTS = 1 << 15;
/** Below this many attention multiply-adds (T²·D·H) attention runs on one thread. */
const PARALLEL_MIN_ATTENTION_MACS = 1 << 15;
/** Elementwise chunks are multiples of this many elements (whole SIMD vectors, cache lines). */
const ELEMENT_GRAIN = 256;
/** Column-parallel reductions split columns in multiples of the kernel's 16-wide block. */
const COLUMN_GRAIN = 16;
/** Elements per partial sum in sumSquares (fixed, so the total does not depend on threads). */
const SUM_BLOCK = 1024;

/** Cos/sin of the rotary angles: table[pos·headDim + i] = cos(pos·θ_i), [.. + headDim/2 + i] = sin. */
export interface RopeTable {
  table: Float32Array;
  headDim: number;
  maxPositions: number;
}

export interface RmsNormArgs {
  /** [rows, dim] input. */
  x: Float32Array;
  /** [dim] gain. */
  weight: Float32Array;
  /** [rows, dim] output (may be x). */
  y: Float32Array;
  /** [rows] 1/sqrt(mean(x²)+eps), written for the backward. */
  rstd: Float32Array;
  rows: number;
  dim: number;
  eps: number;
}

export interface RmsNormBackwardArgs {
  /** The forward's input, weight and rstd. */
  x: Float32Array;
  weight: Float32Array;
  rstd: Float32Array;
  dy: Float32Array;
  /** [rows, dim] input gradient, overwritten (or added to with accumulate); may be dy. */
  dx: Float32Array;
  /** [dim] weight gradient, always added to. */
  dWeight: Float32Array;
  rows: number;
  dim: number;
  accumulate?: boolean;
}

export interface RopeArgs {
  /** [tokens, heads, headDim] input. */
  x: Float32Array;
  /** Output, same layout; defaults to x (in place). */
  out?: Float32Array;
  /** [tokens] position of each token, 0 ≤ position < table.maxPositions. */
  positions: Int32Array;
  table: RopeTable;
  tokens: number;
  heads: number;
}

export interface SoftmaxArgs {
  x: Float32Array;
  /** [rows, n] output (may be x). */
  y: Float32Array;
  rows: number;
  n: number;
}

export interface SoftmaxBackwardArgs {
  /** The forward's output. */
  y: Float32Array;
  dy: Float32Array;
  /** [rows, n] input gradient (may be dy). */
  dx: Float32Array;
  rows: number;
  n: number;
}

export interface SwigluArgs {
  /** Gate rows: element (r, c) at gate[r·stride + c]. */
  gate: Float32Array;
  /** Up rows, same stride. For a fused [rows, gate | up] matrix pass gate = gu, up = gu.subarray(cols), stride = 2·cols. */
  up: Float32Array;
  /** [rows, cols] output silu(gate) ⊙ up (not aliasing gate or up). */
  h: Float32Array;
  rows: number;
  cols: number;
  /** Distance between gate (and up) rows; defaults to cols. */
  stride?: number;
}

export interface SwigluBackwardArgs {
  gate: Float32Array;
  up: Float32Array;
  /** [rows, cols] output gradient. */
  dh: Float32Array;
  /** Gradients of gate and up, written at the same stride; may be gate and up themselves (in place). */
  dGate: Float32Array;
  dUp: Float32Array;
  rows: number;
  cols: number;
  stride?: number;
}

export interface AttentionArgs {
  /** [tokens, heads, headDim], rotated. */
  q: Float32Array;
  /** [tokens, kvHeads, headDim], rotated. */
  k: Float32Array;
  /** [tokens, kvHeads, headDim]. */
  v: Float32Array;
  /** [tokens, heads, headDim] output. */
  out: Float32Array;
  /** [heads, tokens] log-sum-exp of each query's scaled scores: written here, read by the backward. */
  lse: Float32Array;
  tokens: number;
  heads: number;
  /** Divides heads; head h reads kv head floor(h / (heads / kvHeads)). */
  kvHeads: number;
  /** A multiple of 8. */
  headDim: number;
  /** Score scale; defaults to 1/sqrt(headDim). */
  scale?: number;
}

export interface AttentionBackwardArgs extends Omit<AttentionArgs, 'out'> {
  /** The forward's output and its lse. */
  out: Float32Array;
  dOut: Float32Array;
  /** Gradients, overwritten: dq like q, dk and dv like k and v. */
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

export interface CrossEntropyArgs {
  /** [rows, vocab]. */
  logits: Float32Array;
  /** [rows] target ids; a negative target is ignored (loss 0, zero gradient row). */
  targets: Int32Array;
  /** [rows] per-row loss logsumexp(logits) − logits[target]. */
  losses: Float32Array;
  /** [rows, vocab] (softmax − onehot)·scale; may be logits (in place). Omit for loss only. */
  dLogits?: Float32Array;
  rows: number;
  vocab: number;
  /** Gradient scale, e.g. 1 / number of counted targets; default 1. */
  scale?: number;
}

export interface TopKArgs {
  /** [rows, n] scores. */
  x: Float32Array;
  rows: number;
  n: number;
  k: number;
  /** [rows, k] outputs in descending value order; ties keep the lower index first. */
  indices: Int32Array;
  values: Float32Array;
}

export interface TopKBackwardArgs {
  indices: Int32Array;
  /** [rows, k] gradient of the selected values. */
  dValues: Float32Array;
  /** [rows, n] input gradient, added to at the selected positions. */
  dx: Float32Array;
  rows: number;
  n: number;
  k: number;
}

export interface AdamWArgs {
  /** [n] updated in place, with the moments m and v. */
  params: Float32Array;
  grads: Float32Array;
  m: Float32Array;
  v: Float32Array;
  n: number;
  lr: number;
  /** 1-based step count, for bias correction. */
  step: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Multiplies the gradients first (gradient clipping, accumulation averaging); default 1. */
  gradScale?: number;
}

export interface GatherRowsArgs {
  /** [srcRows, cols]. */
  src: Float32Array;
  /** [rows] source row of each output row. */
  indices: Int32Array;
  /** [rows, cols]. */
  dst: Float32Array;
  rows: number;
  cols: number;
  srcRows: number;
}

export interface ScaleRowsArgs {
  /** [rows, cols]. */
  src: Float32Array;
  /** [rows] the weight of each row. */
  weights: Float32Array;
  /** [rows, cols], overwritten (or added to with accumulate); may be src. */
  dst: Float32Array;
  rows: number;
  cols: number;
  accumulate?: boolean;
}

export interface ScatterAddRowsArgs {
  /** [rows, cols]. */
  src: Float32Array;
  /** [rows] destination row of each source row. */
  indices: Int32Array;
  /** [rows] optional weight per source row. */
  weights?: Float32Array;
  /** [dstRows, cols], added to. */
  dst: Float32Array;
  rows: number;
  cols: number;
  dstRows: number;
}

function stridedLength(rows: number, cols: number, stride: number): number {
  return rows === 0 ? 0 : (rows - 1) * stride + cols;
}

function checkIndices(what: string, name: string, view: Int32Array, count: number, limit: number): void {
  for (let i = 0; i < count; i++) {
    if (!(view[i] >= 0 && view[i] < limit)) throw new RangeError(`${what}: ${name}[${i}] = ${view[i]} is outside [0, ${limit})`);
  }
}

export class Ops {
  /** Per-query-head dk/dv shares of grouped-query attention's backward, grown on demand. */
  private kvShares?: Float32Array;
  private partials?: Float32Array;

  constructor(private readonly rt: KernelRuntime) {}

  /** y = x / sqrt(mean(x²) + eps) · weight over rows; keeps rstd for the backward. */
  rmsNorm({ x, weight, y, rstd, rows, dim, eps }: RmsNormArgs): void {
    const what = 'rmsNorm';
    checkDims(what, { rows, dim });
    if (!(eps >= 0)) throw new RangeError(`${what}: eps must be ≥ 0, got ${eps}`);
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'x', x, rows * dim), heapPtr(heap, what, 'weight', weight, dim),
      heapPtr(heap, what, 'y', y, rows * dim), heapPtr(heap, what, 'rstd', rstd, rows), dim, eps,
    ];
    this.rt.parallel('rmsnorm_fwd', args, rows, 1, rows * dim < PARALLEL_MIN_ELEMENTS);
  }

  /** dx (=|+=) the input gradient; dWeight += the weight gradient. */
  rmsNormBackward({ x, weight, rstd, dy, dx, dWeight, rows, dim, accumulate = false }: RmsNormBackwardArgs): void {
    const what = 'rmsNormBackward';
    checkDims(what, { rows, dim });
    const { heap } = this.rt;
    const px = heapPtr(heap, what, 'x', x, rows * dim);
    const pr = heapPtr(heap, what, 'rstd', rstd, rows);
    const pdy = heapPtr(heap, what, 'dy', dy, rows * dim);
    const serial = rows * dim < PARALLEL_MIN_ELEMENTS;
    // The weight gradient first: it reads dy, which dx may overwrite.
    this.rt.parallel('rmsnorm_bwd_dw', [px, pr, pdy, heapPtr(heap, what, 'dWeight', dWeight, dim), rows, dim], dim, COLUMN_GRAIN, serial);
    this.rt.parallel('rmsnorm_bwd_dx', [
      px, heapPtr(heap, what, 'weight', weight, dim), pr, pdy, heapPtr(heap, what, 'dx', dx, rows * dim), dim, +accumulate,
    ], rows, 1, serial);
  }

  /**
   * The rotary table for positions [0, maxPositions): θ_i = theta^(−2i/headDim), angles and
   * cos/sin in float64, rounded once. (Hugging Face forms the angles in float32, which
   * differs by up to ~position·6e-8 rad.) Free it with heap.release(table.table).
   */
  ropeTable(headDim: number, maxPositions: number, theta: number): RopeTable {
    checkDims('ropeTable', { headDim, maxPositions });
    if (headDim % 2 !== 0 || headDim === 0) throw new RangeError(`ropeTable: headDim must be even and positive, got ${headDim}`);
    if (!(theta > 0)) throw new RangeError(`ropeTable: theta must be positive, got ${theta}`);
    const half = headDim / 2;
    const table = this.rt.heap.f32(maxPositions * headDim);
    for (let pos = 0; pos < maxPositions; pos++) {
      for (let i = 0; i < half; i++) {
        const angle = pos * theta ** (-(2 * i) / headDim);
        table[pos * headDim + i] = Math.cos(angle);
        table[pos * headDim + half + i] = Math.sin(angle);
      }
    }
    return { table, headDim, maxPositions };
  }

  /** Rotates x [tokens, heads, headDim] by each token's position (HF rotate_half pairs i, i + headDim/2). */
  rope(args: RopeArgs): void {
    this.rotate('rope', args, false);
  }

  /** The backward of rope: the inverse rotation of the output gradient (pass it as x). */
  ropeBackward(args: RopeArgs): void {
    this.rotate('ropeBackward', args, true);
  }

  softmax({ x, y, rows, n }: SoftmaxArgs): void {
    const what = 'softmax';
    checkDims(what, { rows, n });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'x', x, rows * n), heapPtr(heap, what, 'y', y, rows * n), n];
    this.rt.parallel('softmax_fwd', args, rows, 1, rows * n < PARALLEL_MIN_ELEMENTS);
  }

  /** dx = y ⊙ (dy − Σ y⊙dy) per row. */
  softmaxBackward({ y, dy, dx, rows, n }: SoftmaxBackwardArgs): void {
    const what = 'softmaxBackward';
    checkDims(what, { rows, n });
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'y', y, rows * n), heapPtr(heap, what, 'dy', dy, rows * n), heapPtr(heap, what, 'dx', dx, rows * n), n,
    ];
    this.rt.parallel('softmax_bwd', args, rows, 1, rows * n < PARALLEL_MIN_ELEMENTS);
  }

  /** h = silu(gate) ⊙ up. */
  swiglu({ gate, up, h, rows, cols, stride = cols }: SwigluArgs): void {
    const what = 'swiglu';
    this.checkStride(what, rows, cols, stride);
    const { heap } = this.rt;
    const span = stridedLength(rows, cols, stride);
    const args = [
      heapPtr(heap, what, 'gate', gate, span), heapPtr(heap, what, 'up', up, span),
      heapPtr(heap, what, 'h', h, rows * cols), cols, stride,
    ];
    this.rt.parallel('swiglu_fwd', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /** dGate, dUp from dh (overwritten, at the gate/up stride). */
  swigluBackward({ gate, up, dh, dGate, dUp, rows, cols, stride = cols }: SwigluBackwardArgs): void {
    const what = 'swigluBackward';
    this.checkStride(what, rows, cols, stride);
    const { heap } = this.rt;
    const span = stridedLength(rows, cols, stride);
    const args = [
      heapPtr(heap, what, 'gate', gate, span), heapPtr(heap, what, 'up', up, span), heapPtr(heap, what, 'dh', dh, rows * cols),
      heapPtr(heap, what, 'dGate', dGate, span), heapPtr(heap, what, 'dUp', dUp, span), cols, stride,
    ];
    this.rt.parallel('swiglu_bwd', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /** Causal softmax(scale·q·kᵀ)·v per head, parallel over heads; writes out and lse. */
  attention(args: AttentionArgs): void {
    const what = 'attention';
    const { tokens, heads, headDim } = args;
    const scale = this.checkAttention(what, args, false);
    const [q, k, v, out, lse] = this.attentionPointers(what, args);
    this.rt.parallel('attention_fwd', [q, k, v, out, lse, tokens, heads, args.kvHeads, headDim, scale], heads, 1,
      tokens * tokens * headDim * heads < PARALLEL_MIN_ATTENTION_MACS);
  }

  /** dq, dk, dv of attention, recomputing the probabilities from the forward's lse. */
  attentionBackward(args: AttentionBackwardArgs): void {
    const what = 'attentionBackward';
    const { tokens, heads, kvHeads, headDim, dOut, dq, dk, dv } = args;
    const scale = this.checkAttention(what, args, true);
    const { heap } = this.rt;
    const [q, k, v, out, lse] = this.attentionPointers(what, args);
    const qSize = tokens * heads * headDim, kvSize = tokens * kvHeads * headDim;
    const pdOut = heapPtr(heap, what, 'dOut', dOut, qSize);
    const pdq = heapPtr(heap, what, 'dq', dq, qSize);
    const pdk = heapPtr(heap, what, 'dk', dk, kvSize);
    const pdv = heapPtr(heap, what, 'dv', dv, kvSize);
    const serial = tokens * tokens * headDim * heads < PARALLEL_MIN_ATTENTION_MACS;
    if (heads === kvHeads) {
      this.rt.parallel('attention_bwd', [q, k, v, out, pdOut, lse, pdq, pdk, pdv, tokens, heads, kvHeads, headDim, scale],
        heads, 1, serial);
      return;
    }
    // Grouped heads share dk/dv: each head writes its share, then one pass sums each group in order.
    if (!this.kvShares || this.kvShares.length < 2 * qSize) {
      if (this.kvShares) heap.release(this.kvShares);
      this.kvShares = heap.f32(2 * qSize);
    }
    const dkShares = this.kvShares.byteOffset, dvShares = dkShares + qSize * 4;
    this.rt.parallel('attention_bwd', [q, k, v, out, pdOut, lse, pdq, dkShares, dvShares, tokens, heads, kvHeads, headDim, scale],
      heads, 1, serial);
    const reduceSerial = qSize < PARALLEL_MIN_ELEMENTS;
    this.rt.parallel('attention_reduce_kv', [dkShares, pdk, heads, kvHeads, headDim], tokens, 1, reduceSerial);
    this.rt.parallel('attention_reduce_kv', [dvShares, pdv, heads, kvHeads, headDim], tokens, 1, reduceSerial);
  }

  /** Per-row softmax cross-entropy loss and, optionally, its logit gradient in the same pass. */
  crossEntropy({ logits, targets, losses, dLogits, rows, vocab, scale = 1 }: CrossEntropyArgs): void {
    const what = 'crossEntropy';
    checkDims(what, { rows, vocab });
    if (vocab === 0) throw new RangeError(`${what}: vocab must be positive`);
    const { heap } = this.rt;
    const pl = heapPtr(heap, what, 'logits', logits, rows * vocab);
    const pt = heapPtr(heap, what, 'targets', targets, rows);
    for (let r = 0; r < rows; r++) {
      if (targets[r] >= vocab) {
        throw new RangeError(`${what}: targets[${r}] = ${targets[r]} is not below vocab ${vocab} (negative targets are ignored)`);
      }
    }
    const pd = dLogits ? heapPtr(heap, what, 'dLogits', dLogits, rows * vocab) : 0;
    const args = [pl, pt, heapPtr(heap, what, 'losses', losses, rows), pd, vocab, scale];
    this.rt.parallel('cross_entropy', args, rows, 1, rows * vocab < PARALLEL_MIN_ELEMENTS);
  }

  /** The k largest entries of each row, descending (ties: lower index first). */
  topK({ x, rows, n, k, indices, values }: TopKArgs): void {
    const what = 'topK';
    checkDims(what, { rows, n, k });
    if (k < 1 || k > n) throw new RangeError(`${what}: k must be from 1 to n = ${n}, got ${k}`);
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'x', x, rows * n), n, k,
      heapPtr(heap, what, 'indices', indices, rows * k), heapPtr(heap, what, 'values', values, rows * k),
    ];
    this.rt.parallel('topk_fwd', args, rows, 1, rows * n < PARALLEL_MIN_ELEMENTS);
  }

  /** dx[r, indices[r, j]] += dValues[r, j]. */
  topKBackward({ indices, dValues, dx, rows, n, k }: TopKBackwardArgs): void {
    const what = 'topKBackward';
    checkDims(what, { rows, n, k });
    const { heap } = this.rt;
    const pi = heapPtr(heap, what, 'indices', indices, rows * k);
    checkIndices(what, 'indices', indices, rows * k, n);
    const args = [pi, heapPtr(heap, what, 'dValues', dValues, rows * k), heapPtr(heap, what, 'dx', dx, rows * n), n, k];
    this.rt.parallel('topk_bwd', args, rows, 1, rows * k < PARALLEL_MIN_ELEMENTS);
  }

  /** One AdamW step in place (PyTorch's formulation: decoupled decay, bias-corrected moments). */
  adamW({ params, grads, m, v, n, lr, step, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0.01, gradScale = 1 }: AdamWArgs): void {
    const what = 'adamW';
    checkDims(what, { n });
    if (!Number.isInteger(step) || step < 1) throw new RangeError(`${what}: step must be an integer ≥ 1 (1-based), got ${step}`);
    for (const [name, value] of Object.entries({ beta1, beta2 })) {
      if (!(value >= 0 && value < 1)) throw new RangeError(`${what}: ${name} must be in [0, 1), got ${value}`);
    }
    for (const [name, value] of Object.entries({ lr, eps, weightDecay, gradScale })) {
      if (!Number.isFinite(value)) throw new RangeError(`${what}: ${name} must be finite, got ${value}`);
    }
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'params', params, n), heapPtr(heap, what, 'grads', grads, n),
      heapPtr(heap, what, 'm', m, n), heapPtr(heap, what, 'v', v, n),
      gradScale, beta1, beta2, lr / (1 - beta1 ** step), 1 / Math.sqrt(1 - beta2 ** step), eps, 1 - lr * weightDecay,
    ];
    this.rt.parallel('adamw', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** out = a + b (out may be a or b). */
  add(a: Float32Array, b: Float32Array, out: Float32Array, n: number): void {
    const what = 'add';
    checkDims(what, { n });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'a', a, n), heapPtr(heap, what, 'b', b, n), heapPtr(heap, what, 'out', out, n)];
    this.rt.parallel('add_f32', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** y += alpha·x. */
  axpy(alpha: number, x: Float32Array, y: Float32Array, n: number): void {
    const what = 'axpy';
    checkDims(what, { n });
    const { heap } = this.rt;
    const args = [alpha, heapPtr(heap, what, 'x', x, n), heapPtr(heap, what, 'y', y, n)];
    this.rt.parallel('axpy_f32', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** out = alpha·x (out defaults to x: in place). */
  scale(x: Float32Array, alpha: number, n: number, out: Float32Array = x): void {
    const what = 'scale';
    checkDims(what, { n });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'x', x, n), alpha, heapPtr(heap, what, 'out', out, n)];
    this.rt.parallel('scale_f32', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** bf16[i] = the bfloat16 nearest x[i] (ties to even), as bit patterns (proto/half.ts f32ToBf16Bits). */
  toBf16(x: Float32Array, bf16: Uint16Array, n: number): void {
    const what = 'toBf16';
    checkDims(what, { n });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'x', x, n), heapPtr(heap, what, 'bf16', bf16, n)];
    this.rt.parallel('f32_to_bf16', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** x[i] = the value of the bfloat16 bit pattern bf16[i] (exact). */
  fromBf16(bf16: Uint16Array, x: Float32Array, n: number): void {
    const what = 'fromBf16';
    checkDims(what, { n });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'bf16', bf16, n), heapPtr(heap, what, 'x', x, n)];
    this.rt.parallel('bf16_to_f32', args, n, ELEMENT_GRAIN, n < PARALLEL_MIN_ELEMENTS);
  }

  /** Σ x² over the first n elements (e.g. for gradient-norm clipping); the same for every thread count. */
  sumSquares(x: Float32Array, n: number): number {
    const what = 'sumSquares';
    checkDims(what, { n });
    const { heap } = this.rt;
    const px = heapPtr(heap, what, 'x', x, n);
    const blocks = Math.ceil(n / SUM_BLOCK);
    if (!this.partials || this.partials.length < blocks) {
      if (this.partials) heap.release(this.partials);
      this.partials = heap.f32(Math.max(blocks, 64));
    }
    this.rt.parallel('sum_squares_blocks', [px, n, SUM_BLOCK, this.partials.byteOffset], blocks, 1, n < PARALLEL_MIN_ELEMENTS);
    let total = 0;
    for (let b = 0; b < blocks; b++) total += this.partials[b];
    return total;
  }

  /** dst[r] = src[indices[r]] (token dispatch to an expert, embedding lookup). */
  gatherRows({ src, indices, dst, rows, cols, srcRows }: GatherRowsArgs): void {
    const what = 'gatherRows';
    checkDims(what, { rows, cols, srcRows });
    const { heap } = this.rt;
    const pi = heapPtr(heap, what, 'indices', indices, rows);
    checkIndices(what, 'indices', indices, rows, srcRows);
    const args = [heapPtr(heap, what, 'src', src, srcRows * cols), pi, heapPtr(heap, what, 'dst', dst, rows * cols), cols];
    this.rt.parallel('gather_rows', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /**
   * dst[indices[r]] += weights[r]·src[r] (expert output combine, gather backward, embedding
   * gradient). Repeated destinations run on one thread, in row order.
   */
  scatterAddRows({ src, indices, weights, dst, rows, cols, dstRows }: ScatterAddRowsArgs): void {
    const what = 'scatterAddRows';
    checkDims(what, { rows, cols, dstRows });
    const { heap } = this.rt;
    const pi = heapPtr(heap, what, 'indices', indices, rows);
    checkIndices(what, 'indices', indices, rows, dstRows);
    const seen = new Set<number>();
    for (let r = 0; r < rows; r++) seen.add(indices[r]);
    const serial = seen.size < rows || rows * cols < PARALLEL_MIN_ELEMENTS;
    const pw = weights ? heapPtr(heap, what, 'weights', weights, rows) : 0;
    const args = [heapPtr(heap, what, 'src', src, rows * cols), pi, pw, heapPtr(heap, what, 'dst', dst, dstRows * cols), cols];
    this.rt.parallel('scatter_add_rows', args, rows, 1, serial);
  }

  /** dst[r] (= or += with accumulate) weights[r]·src[r] over rows of cols (dst may be src): gates times expert rows. */
  scaleRows({ src, weights, dst, rows, cols, accumulate = false }: ScaleRowsArgs): void {
    const what = 'scaleRows';
    checkDims(what, { rows, cols });
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'src', src, rows * cols), heapPtr(heap, what, 'weights', weights, rows),
      heapPtr(heap, what, 'dst', dst, rows * cols), cols, +accumulate,
    ];
    this.rt.parallel('scale_rows', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /** out[r] = a[r]·b[r] over rows of cols (e.g. the gradient of a gate weight). */
  rowDots(a: Float32Array, b: Float32Array, out: Float32Array, rows: number, cols: number): void {
    const what = 'rowDots';
    checkDims(what, { rows, cols });
    const { heap } = this.rt;
    const args = [
      heapPtr(heap, what, 'a', a, rows * cols), heapPtr(heap, what, 'b', b, rows * cols), heapPtr(heap, what, 'out', out, rows), cols,
    ];
    this.rt.parallel('row_dots', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /** x[r] += bias for every row (Qwen2's q/k/v biases). */
  addBias(x: Float32Array, bias: Float32Array, rows: number, cols: number): void {
    const what = 'addBias';
    checkDims(what, { rows, cols });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'x', x, rows * cols), heapPtr(heap, what, 'bias', bias, cols), cols];
    this.rt.parallel('add_bias', args, rows, 1, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  /** dBias += Σ_rows dy (the backward of addBias). */
  biasGrad(dy: Float32Array, dBias: Float32Array, rows: number, cols: number): void {
    const what = 'biasGrad';
    checkDims(what, { rows, cols });
    const { heap } = this.rt;
    const args = [heapPtr(heap, what, 'dy', dy, rows * cols), heapPtr(heap, what, 'dBias', dBias, cols), rows, cols];
    this.rt.parallel('bias_grad', args, cols, COLUMN_GRAIN, rows * cols < PARALLEL_MIN_ELEMENTS);
  }

  private rotate(what: string, { x, out = x, positions, table, tokens, heads }: RopeArgs, inverse: boolean): void {
    checkDims(what, { tokens, heads });
    const { heap } = this.rt;
    const { headDim, maxPositions } = table;
    const size = tokens * heads * headDim;
    const pp = heapPtr(heap, what, 'positions', positions, tokens);
    checkIndices(what, 'positions', positions, tokens, maxPositions);
    const args = [
      heapPtr(heap, what, 'x', x, size), heapPtr(heap, what, 'out', out, size), pp,
      heapPtr(heap, what, 'table', table.table, maxPositions * headDim), heads, headDim, +inverse,
    ];
    this.rt.parallel('rope_apply', args, tokens, 1, size < PARALLEL_MIN_ELEMENTS);
  }

  private checkStride(what: string, rows: number, cols: number, stride: number): void {
    checkDims(what, { rows, cols, stride });
    if (stride < cols) throw new RangeError(`${what}: stride ${stride} is smaller than cols ${cols}`);
  }

  /** Checks attention's shapes; returns the score scale. */
  private checkAttention(what: string, args: AttentionArgs, backward: boolean): number {
    const { tokens, heads, kvHeads, headDim, scale = 1 / Math.sqrt(headDim) } = args;
    checkDims(what, { tokens, heads, kvHeads, headDim });
    if (kvHeads === 0 || heads % kvHeads !== 0) {
      throw new RangeError(`${what}: heads (${heads}) must be a positive multiple of kvHeads (${kvHeads})`);
    }
    if (headDim === 0 || headDim % 8 !== 0) throw new RangeError(`${what}: headDim must be a positive multiple of 8, got ${headDim}`);
    if (!Number.isFinite(scale)) throw new RangeError(`${what}: scale must be finite, got ${scale}`);
    const need = this.rt.fn('attention_scratch_need')(tokens, headDim, +backward);
    if (need > SCRATCH_BYTES) {
      throw new RangeError(`${what}: ${tokens} tokens at headDim ${headDim} need ${need} bytes of scratch per thread, ` +
        `more than ${SCRATCH_BYTES}; use shorter sequences`);
    }
    return scale;
  }

  private attentionPointers(what: string, { q, k, v, out, lse, tokens, heads, kvHeads, headDim }: AttentionArgs): number[] {
    const { heap } = this.rt;
    const qSize = tokens * heads * headDim, kvSize = tokens * kvHeads * headDim;
    const views: [string, HeapView, number][] = [
      ['q', q, qSize], ['k', k, kvSize], ['v', v, kvSize], ['out', out, qSize], ['lse', lse, heads * tokens],
    ];
    return views.map(([name, view, need]) => heapPtr(heap, what, name, view, need));
  }
}
