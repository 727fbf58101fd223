// Causal self-attention with grouped KV heads and rotary embeddings, over a batch of
// sequences laid out [batch·seq, features]. Forward keeps q, k, v (rotated), the attention
// output and each query's log-sum-exp; backward recomputes the probabilities from those.
// For generation, decode() runs new tokens of one sequence against cached keys and values.
import { HeapGroup } from '../kernels/heap.ts';
import type { Kernels } from '../kernels/index.ts';
import type { RopeTable } from '../kernels/ops.ts';
import type { ModelConfig } from './config.ts';
import type { ActivationStorage } from './expert.ts';
import { LAYER_SCRATCH, type Linear, type ScratchBuffers } from './linear.ts';

/** The four [rows, features] tensors one attention call computes and its backward reads. */
interface AttentionTensors<T> {
  q: T;
  k: T;
  v: T;
  att: T;
}

/**
 * One layer's kept activations. With f32 storage q, k, v and att are kept as computed; with
 * bf16 they are computed in the layer scratch and kept rounded (half the memory), and the
 * backward widens them again, a sequence at a time. The log-sum-exp stays f32 either way.
 */
class AttentionActivations {
  readonly f32?: AttentionTensors<Float32Array>;
  readonly bf16?: AttentionTensors<Uint16Array>;
  readonly lse: Float32Array;
  private readonly heap: HeapGroup;

  constructor(kernels: Kernels, readonly rows: number, config: ModelConfig, storage: ActivationStorage) {
    const heap = (this.heap = new HeapGroup(kernels.heap));
    const lengths = tensorLengths(rows, config);
    if (storage === 'bf16') this.bf16 = { q: heap.u16(lengths.q), k: heap.u16(lengths.k), v: heap.u16(lengths.v), att: heap.u16(lengths.att) };
    else this.f32 = { q: heap.f32(lengths.q), k: heap.f32(lengths.k), v: heap.f32(lengths.v), att: heap.f32(lengths.att) };
    this.lse = heap.f32(rows * config.numHeads);
  }

  release(): void {
    this.heap.release();
  }
}

function tensorLengths(rows: number, config: ModelConfig): AttentionTensors<number> {
  const qLength = rows * config.numHeads * config.headDim;
  const kvLength = rows * config.numKvHeads * config.headDim;
  return { q: qLength, k: kvLength, v: kvLength, att: qLength };
}

/**
 * Holds one layer's attention activations, grown to the largest batch seen. Under gradient
 * checkpointing all layers share one holder: a layer's forward is recomputed before its backward.
 */
export class AttentionBuffers {
  private acts?: AttentionActivations;

  constructor(readonly storage: ActivationStorage = 'f32') {}

  get(kernels: Kernels, rows: number, config: ModelConfig): AttentionActivations {
    if (!this.acts || this.acts.rows < rows) {
      this.acts?.release();
      this.acts = new AttentionActivations(kernels, rows, config, this.storage);
    }
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
    const a = this.activations(rows);
    const w = this.project(x, rows, positions, a);
    for (let b = 0; b < batch; b++) {
      ops.attention({ ...this.sequence(w, b, seq), lse: this.sequenceLse(a, b, seq), tokens: seq, heads: numHeads, kvHeads: numKvHeads, headDim });
    }
    this.o.forward(w.att, out, rows);
    if (a.bf16) for (const name of ['q', 'k', 'v', 'att'] as const) ops.toBf16(w[name], a.bf16[name], w[name].length);
  }

  /**
   * Generation: out[rows, H] for `rows` new tokens of one sequence at positions start..start+rows-1,
   * each attending to itself and every earlier position; their keys and values join the cache.
   * Few rows and up to maxSeqLen keys: plain loops in float64 beat a kernel call per head.
   */
  decode(x: Float32Array, out: Float32Array, rows: number, cache: KvCacheLayer, start: number, positions: Int32Array): void {
    const { numHeads, numKvHeads, headDim: D } = this.config;
    const a = this.project(x, rows, positions, this.activations(rows));
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

  /**
   * dx = ∂L/∂x from dOut, unless dx is undefined; adds the projections' gradients. `pause` is awaited halfway, between
   * the attention's own gradients and the q, k, v projections' (a swarm node serves peers' expert calls there).
   */
  async backward(
    x: Float32Array, dOut: Float32Array, dx: Float32Array | undefined, batch: number, seq: number, positions: Int32Array, pause?: () => Promise<void>,
  ): Promise<void> {
    const { ops } = this.kernels;
    const { numHeads, numKvHeads, headDim } = this.config;
    const rows = batch * seq;
    const a = this.activations(rows);
    const lengths = tensorLengths(rows, this.config);
    const oneSequence = tensorLengths(seq, this.config);
    const [dAtt, dq, dk, dv, wideAtt, wideQ, wideK, wideV] = this.scratch.parts(LAYER_SCRATCH, this.backwardScratch(rows, seq));
    if (a.bf16) ops.fromBf16(a.bf16.att, wideAtt, lengths.att);
    const att = a.f32?.att ?? wideAtt;
    this.o.backward(att, dOut, dAtt, rows);
    const d = { q: dq, k: dk, v: dv, att: dAtt };
    for (let b = 0; b < batch; b++) {
      const { q, k, v } = a.bf16 ? this.widenSequence(a.bf16, b, seq, { q: wideQ, k: wideK, v: wideV }) : this.sequence(a.f32!, b, seq);
      const ds = this.sequence(d, b, seq);
      ops.attentionBackward({
        q, k, v, out: att.subarray(b * oneSequence.att, (b + 1) * oneSequence.att), lse: this.sequenceLse(a, b, seq), dOut: ds.out, dq: ds.q, dk: ds.k, dv: ds.v,
        tokens: seq, heads: numHeads, kvHeads: numKvHeads, headDim,
      });
    }
    ops.ropeBackward({ x: dq, positions, table: this.rope, tokens: rows, heads: numHeads });
    ops.ropeBackward({ x: dk, positions, table: this.rope, tokens: rows, heads: numKvHeads });
    await pause?.();
    this.q.backward(x, dq, dx, rows);
    this.k.backward(x, dk, dx, rows, true);
    this.v.backward(x, dv, dx, rows, true);
  }

  /** Floats of the layer scratch a call on `rows` tokens in sequences of `seq` takes: the backward's, at least the forward's. */
  scratchLength(rows: number, seq: number): number {
    return this.backwardScratch(rows, seq).reduce((a, b) => a + b, 0);
  }

  /**
   * The backward's parts of the layer scratch: the gradients of att, q, k and v, then with bf16
   * storage the widened output (whole: the o projection's backward reads it) and one sequence's
   * widened q, k and v.
   */
  private backwardScratch(rows: number, seq: number): number[] {
    const lengths = tensorLengths(rows, this.config);
    const oneSequence = tensorLengths(seq, this.config);
    return [lengths.att, lengths.q, lengths.k, lengths.v, ...(this.buffers.storage === 'bf16' ? [lengths.att, oneSequence.q, oneSequence.k, oneSequence.v] : [])];
  }

  /**
   * q, k and v of `rows` tokens, the first two rotated to the tokens' positions, with room for
   * the output: the layer's own buffers (f32 storage) or the layer scratch (bf16).
   */
  private project(x: Float32Array, rows: number, positions: Int32Array, a: AttentionActivations): AttentionTensors<Float32Array> {
    const { ops } = this.kernels;
    const { numHeads, numKvHeads } = this.config;
    const lengths = tensorLengths(rows, this.config);
    const [q, k, v, att] = a.f32 ? [a.f32.q, a.f32.k, a.f32.v, a.f32.att] : this.scratch.parts(LAYER_SCRATCH, [lengths.q, lengths.k, lengths.v, lengths.att]);
    this.q.forward(x, q, rows);
    this.k.forward(x, k, rows);
    this.v.forward(x, v, rows);
    ops.rope({ x: q, positions, table: this.rope, tokens: rows, heads: numHeads });
    ops.rope({ x: k, positions, table: this.rope, tokens: rows, heads: numKvHeads });
    return { q, k, v, att };
  }

  /** Views of sequence b's rows of q, k, v and the output (as `out`). */
  private sequence(t: AttentionTensors<Float32Array>, b: number, seq: number) {
    const one = tensorLengths(seq, this.config);
    return {
      q: t.q.subarray(b * one.q, (b + 1) * one.q),
      k: t.k.subarray(b * one.k, (b + 1) * one.k),
      v: t.v.subarray(b * one.v, (b + 1) * one.v),
      out: t.att.subarray(b * one.att, (b + 1) * one.att),
    };
  }

  private sequenceLse(a: AttentionActivations, b: number, seq: number): Float32Array {
    const span = seq * this.config.numHeads;
    return a.lse.subarray(b * span, (b + 1) * span);
  }

  /** Sequence b's kept bf16 q, k and v, widened into one-sequence buffers. */
  private widenSequence(kept: AttentionTensors<Uint16Array>, b: number, seq: number, into: Omit<AttentionTensors<Float32Array>, 'att'>) {
    const { ops } = this.kernels;
    for (const name of ['q', 'k', 'v'] as const) {
      const n = into[name].length;
      ops.fromBf16(kept[name].subarray(b * n, (b + 1) * n), into[name], n);
    }
    return into;
  }
}
