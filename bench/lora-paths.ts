// What the frozen base's number format and product path do to a LoRA loss curve: one base
// trained on SOTU speeches, then the same LoRA fine-tuning on TypeScript's lib.*.d.ts files
// with the base kept f32, q8 or q4, on the fp32 path or the integer path (int8 activations).
// Prints held-out loss (nats/token) every few steps, one column per setting.
// Run: npx tsx bench/lora-paths.ts [--steps 200]
import { parseArgs } from 'node:util';
import { createKernels } from '../src/kernels/index.ts';
import { createConfig } from '../src/model/config.ts';
import { Model, type ModelOptions } from '../src/model/model.ts';
import { loadCorpus } from '../src/train/corpus.ts';
import { corpusLoaders } from '../src/train/data.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { DEFAULT_TRAIN, Trainer } from '../src/train/trainer.ts';
import { printTable } from './table.ts';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '200' }, 'base-steps': { type: 'string', default: '300' } } });
const steps = Number(values.steps);
const baseSteps = Number(values['base-steps']);
const every = Math.max(1, Math.round(steps / 10));

const kernels = await createKernels({ threads: 2 });
const sotu = { documents: loadCorpus('sotu').documents.slice(-60) };
const typescript = loadCorpus('typescript-lib');
const tokenizer = BpeTokenizer.train([...sotu.documents, ...typescript.documents.slice(0, 20)], { vocabSize: 1024 });
const config = createConfig({
  vocabSize: tokenizer.vocabSize, hiddenSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 32,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 256, maxSeqLen: 128,
});
const loader = (corpus: { documents: string[] }) => corpusLoaders(tokenizer, corpus, { batchSize: 8, seqLen: 128, seed: 5, heldOutFraction: 0.1 });
const sotuData = loader(sotu);
const tsData = loader(typescript);

const base = new Trainer(kernels, new Model(kernels, config, { mode: 'full' }), sotuData.train, sotuData.heldOut, tokenizer,
  { ...DEFAULT_TRAIN, totalSteps: baseSteps, lr: 3e-3, minLr: 3e-4 });
for (let s = 0; s < baseSteps; s++) await base.trainStep();
const weights = base.model.params.snapshot();
console.log(`base: ${baseSteps} steps on SOTU, held-out ${(await base.evaluate(8)).loss.toFixed(3)} nats/token\n`);

const settings: [string, Partial<ModelOptions>][] = [
  ['f32 base', { baseFormat: 'f32' }],
  ['q8 fp32 path', { baseFormat: 'q8', basePath: 'fp32' }],
  ['q8 int path', { baseFormat: 'q8', basePath: 'int' }],
  ['q4 fp32 path', { baseFormat: 'q4', basePath: 'fp32' }],
  ['q4 int path', { baseFormat: 'q4', basePath: 'int' }],
];
const curves: number[][] = [];
for (const [, options] of settings) {
  const model = new Model(kernels, config, { mode: 'lora', lora: { rank: 8, alpha: 16 }, seed: 2, ...options }, weights);
  const run = new Trainer(kernels, model, tsData.train, tsData.heldOut, tokenizer, { ...DEFAULT_TRAIN, totalSteps: steps, lr: 5e-3, minLr: 5e-4 });
  const curve = [(await run.evaluate(8)).loss];
  for (let s = 1; s <= steps; s++) {
    await run.trainStep();
    if (s % every === 0) curve.push((await run.evaluate(8)).loss);
  }
  curves.push(curve);
  model.params.release();
}
printTable(
  ['step', ...settings.map(([name]) => name)],
  curves[0].map((_, i) => [String(i * every), ...curves.map((c) => c[i].toFixed(3))]),
);
await kernels.close();
