// Small synthetic Hugging Face checkpoints written by the weights tests (random f32 weights),
// in the single-file classic layout, the packed layout, and sharded with an index.
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { saveHfModel, toHfTensors, hfConfigFromConfig, type HfLayout } from '../../src/io/hf.ts';
import { encodeSafetensors, type Tensor } from '../../src/io/safetensors.ts';
import { createConfig, parameterShapes, type F32Tensor, type ModelConfig } from '../../src/model/config.ts';
import { fillRandom, rng } from '../helpers.ts';

export const TINY: ModelConfig = createConfig({
  vocabSize: 64, hiddenSize: 16, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 8, numExperts: 4, expertHiddenSize: 24, maxSeqLen: 32,
});

export function randomParams(config: ModelConfig, seed: number): Map<string, F32Tensor> {
  const random = rng(seed);
  const params = new Map<string, F32Tensor>();
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    fillRandom(data, random);
    params.set(name, { shape, data });
  }
  return params;
}

const CLASSIC: HfLayout = { family: 'mixtral', packedExperts: false };

export async function writeCheckpoint(dir: string, params: Map<string, F32Tensor>, packedExperts = false): Promise<void> {
  await saveHfModel(dir, { config: TINY, layout: { ...CLASSIC, packedExperts }, params });
}

/** The classic layout split over two shards by hand, with a model.safetensors.index.json. */
export async function writeShardedCheckpoint(dir: string, params: Map<string, F32Tensor>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors = [...toHfTensors(TINY, CLASSIC, params)];
  const half = Math.ceil(tensors.length / 2);
  const shards: [string, [string, Tensor][]][] = [
    ['model-00001-of-00002.safetensors', tensors.slice(0, half)],
    ['model-00002-of-00002.safetensors', tensors.slice(half)],
  ];
  const weightMap: Record<string, string> = {};
  for (const [file, part] of shards) {
    await writeFile(join(dir, file), encodeSafetensors(part));
    for (const [key] of part) weightMap[key] = file;
  }
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  await writeFile(join(dir, 'config.json'), JSON.stringify(hfConfigFromConfig(TINY, 'mixtral')));
}

/** The little-endian f32 bytes of a tensor and their sha256, computed here without the code under test. */
export function f32Sha256(data: Float32Array): string {
  return createHash('sha256').update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)).digest('hex');
}
