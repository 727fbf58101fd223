// Causal self-attention with grouped KV heads and rotary embeddings, over a batch of
// sequences laid out [batch·seq, features]. Forward keeps q, k, v (rotated), the attention
// output and each query's log-sum-exp; backward recomputes the probabilities from those.
// For generation, decode() runs new tokens of one sequence against cached keys and values.
import type { Kernels } from '../kernels/index.ts';
import type { RopeTable } from '../kernels/ops.ts';
import type { ModelConfig } from './config.ts';
import { LAYER_SCRATCH, type Linear, type ScratchBuffers } from './linear.ts';

class AttentionActivations {
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly att: Float32Array;
  readonly lse: Float32Array;

  constructor(kernels: Kernels, readonly rows: number, config: ModelConfig) {
    const { heap } = kernels;
    const qDim = config.numHeads * config.headDim;
    const kvDim = config.numKvHeads * config.headDim;
    this.q = heap.f32(rows * qDim);
    this.k = heap.f32(rows * kvDim);
    this.v = heap.f32(rows * kvDim);
    this.att = heap.f32(rows * qDim);
    this.lse = heap.f32(rows * config.numHeads);
  }
}

/**
 * Holds one layer's attention activations, grown to the largest batch seen. Under gradient
 * checkpointing all layers share one holder: a layer's forward is recomputed before its backward.
 */
export class AttentionBuffers {
  private acts?: AttentionActivations;

  get(kernels: Kernels, rows: number, config: ModelConfig): AttentionActivations {
    if (!this.acts || this.acts.rows < rows) this.acts = new AttentionActivations(kernels, rows, config);
    return this.acts;
  }
}

/** One layer's rotated keys and values of the positions generated so far, [maxSeqLen, kvHeads·headDim] each. */
export interface KvCacheLayer {
  k: Float32Array;
  v: Float32Array;
}

export class Attention {
  constructor(
    private readonly kernels: Kernels,
    private readonly config: ModelConfig,
    readonly q: Linear,
    readonly k: Linear,
    readonly v: Linear,
    readonly o: Linear,
    private readonly rope: RopeTable,
    private readonly scratch: ScratchBuffers,
    private readonly buffers: AttentionBuffers,
  ) {}

  private activations(rows: number): AttentionActivations {
    return this.buffers.get(this.kernels, rows, this.config);
  }

  /** out[B·T, H] = attention(x) for `batch` sequences of `seq` tokens at `positions`. */
  forward(x: Float32Array, out: Float32Array, batch: number, seq: number, positions: Int32Array): void {
    const { ops } = this.kernels;
    const { numHeads, numKvHeads, headDim } = this.config;
    const rows = batch * seq;
    const a = this.project(x, rows, positions);
    for (let b = 0; b < batch; b++) {
      const s = this.sequence(a, b, seq);
      ops.attention({ ...s, tokens: seq, heads: numHeads, kvHeads: numKvHeads, headDim });
    }
    this.o.forward(a.att, out, rows);
  }

  /**
   * Generation: out[rows, H] for `rows` new tokens of one sequence at positions start..start+rows-1,
   * each attending to itself and every earlier position; their keys and values join the cache.
   * Few rows and up to maxSeqLen keys: plain loops in float64 beat a kernel call per head.
   */
  decode(x: Float32Array, out: Float32Array, rows: number, cache: KvCacheLayer, start: number, positions: Int32Array): void {
    const { numHeads, numKvHeads, headDim: D } = this.config;
    const a = this.project(x, rows, positions);
    const kvDim = numKvHeads * D;
    cache.k.set(a.k.subarray(0, rows * kvDim), start * kvDim);
    cache.v.set(a.v.subarray(0, rows * kvDim), start * kvDim);
    const scale = 1 / Math.sqrt(D);
    const group = numHeads / numKvHeads;
    const scores = new Float64Array(start + rows);
    for (let i = 0; i < rows; i++) {
      const keys = start + i + 1;
      for (let h = 0; h < numHeads; h++) {
        const q = (i * numHeads + h) * D;
        const kv = Math.floor(h / group) * D;
        let max = -Infinity;
        for (let j = 0; j < keys; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += a.q[q + d] * cache.k[j * kvDim + kv + d];
          scores[j] = dot * scale;
          max = Math.max(max, scores[j]);
        }
        let sum = 0;
        for (let j = 0; j < keys; j++) sum += (scores[j] = Math.exp(scores[j] - max));
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j < keys; j++) acc += scores[j] * cache.v[j * kvDim + kv + d];
          a.att[q + d] = acc / sum;
        }
      }
    }
    this.o.forward(a.att, out, rows);
  }

  /** dx (= or += with accumulate) ∂L/∂x from dOut, unless dx is undefined; adds the projections' gradients. */
  backward(x: Float32Array, dOut: Float32Array, dx: Float32Array | undefined, batch: number, seq: number, positions: Int32Array, accumulate = false): void {
    const { ops } = this.kernels;
    const { numHeads, numKvHeads, headDim } = this.config;
    const rows = batch * seq;
    const a = this.activations(rows);
    const [dAtt, dq, dk, dv] = this.scratch.parts(LAYER_SCRATCH, [a.att.length, a.q.length, a.k.length, a.v.length]);
    this.o.backward(a.att, dOut, dAtt, rows);
    for (let b = 0; b < batch; b++) {
      const s = this.sequence(a, b, seq);
      const qSpan = (v: Float32Array) => v.subarray(b * seq * numHeads * headDim, (b + 1) * seq * numHeads * headDim);
      const kvSpan = (v: Float32Array) => v.subarray(b * seq * numKvHeads * headDim, (b + 1) * seq * numKvHeads * headDim);
      ops.attentionBackward({
        ...s, dOut: qSpan(dAtt), dq: qSpan(dq), dk: kvSpan(dk), dv: kvSpan(dv),
        tokens: seq, heads: numHeads, kvHeads: numKvHeads, headDim,
      });
    }
    ops.ropeBackward({ x: dq, positions, table: this.rope, tokens: rows, heads: numHeads });
    ops.ropeBackward({ x: dk, positions, table: this.rope, tokens: rows, heads: numKvHeads });
    this.q.backward(x, dq, dx, rows, accumulate);
    this.k.backward(x, dk, dx, rows, true);
    this.v.backward(x, dv, dx, rows, true);
  }

  /** q, k and v of `rows` tokens, the first two rotated to the tokens' positions. */
  private project(x: Float32Array, rows: number, positions: Int32Array): AttentionActivations {
    const { ops } = this.kernels;
    const { numHeads, numKvHeads } = this.config;
    const a = this.activations(rows);
    this.q.forward(x, a.q, rows);
    this.k.forward(x, a.k, rows);
    this.v.forward(x, a.v, rows);
    ops.rope({ x: a.q, positions, table: this.rope, tokens: rows, heads: numHeads });
    ops.rope({ x: a.k, positions, table: this.rope, tokens: rows, heads: numKvHeads });
    return a;
  }

  /** Views of sequence b's q, k, v, output and lse. */
  private sequence(a: AttentionActivations, b: number, seq: number) {
    const { numHeads, numKvHeads, headDim } = this.config;
    const qs = seq * numHeads * headDim;
    const kvs = seq * numKvHeads * headDim;
    return {
      q: a.q.subarray(b * qs, (b + 1) * qs),
      k: a.k.subarray(b * kvs, (b + 1) * kvs),
      v: a.v.subarray(b * kvs, (b + 1) * kvs),
      out: a.att.subarray(b * qs, (b + 1) * qs),
      lse: a.lse.subarray(b * seq * numHeads, (b + 1) * seq * numHeads),
    };
  }
}
