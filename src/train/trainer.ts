// The single-process training loop: micro-batches from a deterministic loader, gradient
// accumulation, AdamW with warmup + cosine learning rate and gradient clipping, held-out
// evaluation in nats and bits per byte. Its whole state is (parameters, optimizer moments,
// step, next micro-batch index), which checkpoints save and restore exactly.
import type { Kernels } from '../kernels/index.ts';
import type { Model } from '../model/model.ts';
import { bitsPerByte, targetBytes, type BatchLoader, type MicroBatch } from './data.ts';
import { AdamW, DEFAULT_ADAMW, type AdamWOptions } from './optimizer.ts';
import { learningRate, type ScheduleOptions } from './schedule.ts';
import type { BpeTokenizer } from './tokenizer.ts';

export interface TrainOptions extends ScheduleOptions {
  /** Micro-batches whose gradients are summed (averaged) into one update. */
  accumulation: number;
  adamw: AdamWOptions;
}

export const DEFAULT_TRAIN: Readonly<Omit<TrainOptions, 'totalSteps'>> = Object.freeze({
  lr: 3e-3, minLr: 3e-4, warmupSteps: 20, accumulation: 1, adamw: DEFAULT_ADAMW,
});

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
    readonly tokenizer: BpeTokenizer,
    readonly options: TrainOptions,
  ) {
    this.optimizer = new AdamW(kernels, model.params.trainable(), options.adamw);
  }

  nextBatch(): MicroBatch {
    const perEpoch = this.train.batchesPerEpoch;
    const batch = this.train.batch(Math.floor(this.microIndex / perEpoch), this.microIndex % perEpoch);
    this.microIndex++;
    return batch;
  }

  /** One update over `accumulation` micro-batches. */
  async trainStep(): Promise<StepMetrics> {
    const { accumulation } = this.options;
    this.model.params.zeroGrads();
    let loss = 0;
    let crossEntropy = 0;
    let aux = 0;
    let tokens = 0;
    for (let a = 0; a < accumulation; a++) {
      const batch = this.nextBatch();
      const { inputs, targets } = splitBatch(batch);
      const result = await this.model.trainStep(inputs, targets, batch.rows, batch.seqLen, 1 / accumulation);
      loss += result.loss / accumulation;
      crossEntropy += result.crossEntropy / accumulation;
      aux += result.aux / accumulation;
      tokens += result.tokens;
    }
    const lr = learningRate(this.step, this.options);
    const gradNorm = this.optimizer.update(lr);
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
