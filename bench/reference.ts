// The training benchmarks' reference config (issue 3): vocab 4096, hidden 256, 4 layers,
// 8 heads, 8 experts top-2 of width 512, batch 8 × seq 256, LoRA rank 8.
import { createConfig } from '../src/model/config.ts';

export const REFERENCE_CONFIG = createConfig({
  vocabSize: 4096, hiddenSize: 256, numLayers: 4, numHeads: 8, numKvHeads: 8, headDim: 32,
  numExperts: 8, expertsPerToken: 2, expertHiddenSize: 512, maxSeqLen: 256,
});
export const BATCH = 8;
export const SEQ = 256;
export const LORA = { rank: 8, alpha: 16 };
