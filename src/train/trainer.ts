// The single-process training loop: micro-batches from a deterministic loader, gradient
// accumulation, AdamW with warmup + cosine learning rate and gradient clipping, held-out
// evaluation in nats and bits per byte. Its whole state is (parameters, optimizer moments,
// step, next micro-batch index), which checkpoints save and restore exactly. A swarm node runs
// the same step on the batches it leased, with its averaging in the hooks.
import type { Kernels } from '../kernels/index.ts';
import type { Model } from '../model/model.ts';
import { bitsPerByte, targetBytes, type BatchLoader, type MicroBatch } from './data.ts';
import { AdamW, DEFAULT_ADAMW, type AdamWOptions } from './optimizer.ts';
import { learningRate, type ScheduleOptions } from './schedule.ts';
import type { Tokenizer } from './tokenizers/index.ts';

export interface TrainOptions extends ScheduleOptions {
  /** Micro-batches whose gradients are summed (averaged) into one update. */
  accumulation: number;
  adamw: AdamWOptions;
}

export const DEFAULT_TRAIN: Readonly<Omit<TrainOptions, 'totalSteps'>> = Object.freeze({
  lr: 3e-3, minLr: 3e-4, warmupSteps: 20, accumulation: 1, adamw: DEFAULT_ADAMW,
});

/** Where a swarm node joins the step; both get the 0-based number of the step under way. */
export interface TrainerHooks {
  /** After the backward of the step's micro-batches, before the optimizer (e.g. averaging gradients). */
  afterBackward?(step: number): Promise<void>;
  /** After the optimizer update (e.g. a periodic averaging round). */
  afterUpdate?(step: number): Promise<void>;
}

export interface StepMetrics {
  step: number;
  loss: number;
  crossEntropy: number;
  aux: number;
  lr: number;
  gradNorm: number;
  tokens: number;
}

export interface EvalMetrics {
  loss: number;
  bitsPerByte: number;
  tokens: number;
}

/** Inputs (first seqLen tokens of each row) and targets (the last seqLen). */
export function splitBatch(batch: MicroBatch): { inputs: Int32Array; targets: Int32Array } {
  const { rows, seqLen } = batch;
  const inputs = new Int32Array(rows * seqLen);
  const targets = new Int32Array(rows * seqLen);
  for (let r = 0; r < rows; r++) {
    const row = batch.tokens.subarray(r * (seqLen + 1), (r + 1) * (seqLen + 1));
    inputs.set(row.subarray(0, seqLen), r * seqLen);
    targets.set(row.subarray(1), r * seqLen);
  }
  return { inputs, targets };
}

export class Trainer {
  readonly optimizer: AdamW;
  /** Updates done. */
  step = 0;
  /** Global index of the next training micro-batch (epoch = index / batchesPerEpoch). */
  microIndex = 0;

  constructor(
    kernels: Kernels,
    readonly model: Model,
    readonly train: BatchLoader,
    readonly heldOut: BatchLoader,
    readonly tokenizer: Tokenizer,
    readonly options: TrainOptions,
    private readonly hooks: TrainerHooks = {},
  ) {
    this.optimizer = new AdamW(kernels, model.params.trainable(), options.adamw);
    model.params.zeroGrads();
  }

  nextBatch(): MicroBatch {
    return this.train.batchAt(this.microIndex++);
  }

  /**
   * One update over `batches`, by default the next `accumulation` micro-batches; their gradients
   * are averaged. Gradients are zeroed after the update rather than before the next step: a swarm
   * node's hosted experts gather gradients from peers' backward passes between its own steps.
   */
  async trainStep(batches: MicroBatch[] = Array.from({ length: this.options.accumulation }, () => this.nextBatch())): Promise<StepMetrics> {
    const count = batches.length;
    let loss = 0;
    let crossEntropy = 0;
    let aux = 0;
    let tokens = 0;
    for (const batch of batches) {
      const { inputs, targets } = splitBatch(batch);
      const result = await this.model.trainStep(inputs, targets, batch.rows, batch.seqLen, 1 / count);
      loss += result.loss / count;
      crossEntropy += result.crossEntropy / count;
      aux += result.aux / count;
      tokens += result.tokens;
    }
    await this.hooks.afterBackward?.(this.step);
    await this.model.experts.letPeersIn(); // a swarm node serves peers' expert calls before the update's kernels
    const lr = learningRate(this.step, this.options);
    const gradNorm = this.optimizer.update(lr);
    this.model.params.zeroGrads();
    await this.hooks.afterUpdate?.(this.step);
    this.step++;
    return { step: this.step, loss, crossEntropy, aux, lr, gradNorm, tokens };
  }

  /** Mean held-out cross-entropy over the first `batches` held-out micro-batches (all when omitted). */
  async evaluate(batches = this.heldOut.batchesPerEpoch): Promise<EvalMetrics> {
    let nats = 0;
    let tokens = 0;
    let bytes = 0;
    for (let id = 0; id < Math.min(batches, this.heldOut.batchesPerEpoch); id++) {
      const batch = this.heldOut.batch(0, id);
      const { inputs, targets } = splitBatch(batch);
      const result = await this.model.evaluate(inputs, targets, batch.rows, batch.seqLen);
      nats += result.crossEntropy * result.tokens;
      tokens += result.tokens;
      bytes += targetBytes(this.tokenizer, batch);
    }
    const loss = nats / tokens;
    return { loss, bitsPerByte: bitsPerByte(loss, tokens, bytes), tokens };
  }
}
