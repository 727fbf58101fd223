import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peftKey, readPeftAdapter, writePeftAdapter, type LoraAdapter } from '../../src/io/peft.ts';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { createConfig, loraShapes, type F32Tensor, type ModelConfig } from '../../src/model/config.ts';
import { bitEqual, fillRandom, rng } from '../helpers.ts';

const mixtral = createConfig({
  vocabSize: 64, hiddenSize: 32, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 8, numExperts: 3, expertHiddenSize: 64,
});
const qwen = { ...mixtral, sharedExpertHiddenSize: 48, attentionBias: true, normTopkProb: false };
const llama = { ...mixtral, numExperts: 1, expertsPerToken: 1 };

/** Random LoRA tensors for the canonical targets whose names match `pick`. */
function randomLora(config: ModelConfig, rank: number, pick: RegExp): Map<string, F32Tensor> {
  const random = rng(rank * 7 + config.numExperts);
  const out = new Map<string, F32Tensor>();
  for (const [name, shape] of loraShapes(config, rank)) {
    if (!pick.test(name)) continue;
    const data = new Float32Array(shape[0] * shape[1]);
    fillRandom(data, random);
    out.set(name, { shape, data });
  }
  return out;
}

describe('PEFT LoRA export', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'swarmtrain-peft-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('maps canonical names to PEFT keys of each family', () => {
    expect(peftKey('mixtral', 'layers.0.attn.q.lora_a')).toBe('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect(peftKey('mixtral', 'layers.1.attn.o.lora_b')).toBe('base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight');
    expect(peftKey('mixtral', 'layers.1.experts.2.gate.lora_a'))
      .toBe('base_model.model.model.layers.1.block_sparse_moe.experts.2.w1.lora_A.weight');
    expect(peftKey('mixtral', 'layers.1.experts.2.up.lora_b'))
      .toBe('base_model.model.model.layers.1.block_sparse_moe.experts.2.w3.lora_B.weight');
    expect(peftKey('mixtral', 'layers.1.experts.2.down.lora_a'))
      .toBe('base_model.model.model.layers.1.block_sparse_moe.experts.2.w2.lora_A.weight');
    expect(peftKey('qwen2_moe', 'layers.0.experts.1.up.lora_a'))
      .toBe('base_model.model.model.layers.0.mlp.experts.1.up_proj.lora_A.weight');
    expect(peftKey('qwen2_moe', 'layers.0.shared_expert.down.lora_b'))
      .toBe('base_model.model.model.layers.0.mlp.shared_expert.down_proj.lora_B.weight');
    expect(peftKey('llama', 'layers.1.experts.0.gate.lora_a')).toBe('base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight');
    expect(() => peftKey('mixtral', 'layers.0.router.lora_a')).toThrow(/not a canonical LoRA name/);
  });

  it.each([
    ['mixtral', mixtral, /attn\.[qv]|experts/, ['q_proj', 'v_proj', 'w1', 'w2', 'w3']],
    ['qwen2_moe', qwen, /./, ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']],
    ['llama', llama, /attn\.o|experts/, ['down_proj', 'gate_proj', 'o_proj', 'up_proj']],
  ] as const)('%s: writes PEFT keys and adapter_config.json, and reads back the same tensors', async (family, config, pick, modules) => {
    const out = join(dir, family);
    const adapter: LoraAdapter = { rank: 4, alpha: 8, baseModel: `org/tiny-${family}`, tensors: randomLora(config, 4, pick) };
    await writePeftAdapter(out, config, family, adapter);

    const json = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
    expect(json).toMatchObject({
      peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, base_model_name_or_path: `org/tiny-${family}`, bias: 'none',
    });
    expect(json.target_modules).toEqual(modules);

    const file = await readSafetensors(join(out, 'adapter_model.safetensors'));
    expect(file.metadata).toEqual({ format: 'pt' });
    expect([...file.tensors.keys()].sort()).toEqual([...adapter.tensors.keys()].map((n) => peftKey(family, n)).sort());
    for (const key of file.tensors.keys()) {
      expect(key).toMatch(/^base_model\.model\.model\.layers\.\d+\.(self_attn|block_sparse_moe|mlp)\..*\.lora_[AB]\.weight$/);
    }

    const back = await readPeftAdapter(out, config, family);
    expect({ rank: back.rank, alpha: back.alpha, baseModel: back.baseModel })
      .toEqual({ rank: 4, alpha: 8, baseModel: `org/tiny-${family}` });
    expect([...back.tensors.keys()].sort()).toEqual([...adapter.tensors.keys()].sort());
    for (const [name, t] of adapter.tensors) {
      expect(back.tensors.get(name)!.shape, name).toEqual(t.shape);
      expect(bitEqual(back.tensors.get(name)!.data, t.data), name).toBe(true);
    }
  });

  it('stores A as [r, in] and B as [out, r] for a GQA projection', async () => {
    const out = join(dir, 'shapes');
    await writePeftAdapter(out, mixtral, 'mixtral', {
      rank: 2, alpha: 2, baseModel: 'm', tensors: randomLora(mixtral, 2, /layers\.0\.attn\.k/),
    });
    const { tensors } = await readSafetensors(join(out, 'adapter_model.safetensors'));
    expect(tensors.get('base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight')!.shape).toEqual([2, 32]);
    expect(tensors.get('base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight')!.shape).toEqual([16, 2]);
  });

  it('rejects inconsistent adapters with a clear error', async () => {
    const write = (tensors: Map<string, F32Tensor>, rank = 4, alpha = 8) =>
      writePeftAdapter(join(dir, 'bad'), mixtral, 'mixtral', { rank, alpha, baseModel: 'm', tensors });
    const good = randomLora(mixtral, 4, /layers\.0\.attn\.q/);
    const onlyA = new Map([...good].filter(([n]) => n.endsWith('lora_a')));
    await expect(write(onlyA)).rejects.toThrow(/layers\.0\.attn\.q: needs both lora_a and lora_b/);
    const mixedRank = new Map([...good, ...randomLora(mixtral, 2, /layers\.1\.attn\.q/)]);
    await expect(write(mixedRank)).rejects.toThrow(/layers\.1\.attn\.q\.lora_a has shape \[2, 32\], expected \[4, 32\]/);
    const transposed = new Map(good).set('layers.0.attn.q.lora_b', { shape: [4, 32], data: new Float32Array(128) });
    await expect(write(transposed)).rejects.toThrow(/layers\.0\.attn\.q\.lora_b has shape \[4, 32\], expected \[32, 4\]/);
    await expect(write(new Map(good).set('layers.0.router.lora_a', good.get('layers.0.attn.q.lora_a')!)))
      .rejects.toThrow(/"layers\.0\.router\.lora_a" is not a LoRA name/);
    await expect(write(new Map(good).set('layers.5.attn.q.lora_a', good.get('layers.0.attn.q.lora_a')!)))
      .rejects.toThrow(/"layers\.5\.attn\.q\.lora_a" is not a LoRA name/);
    await expect(write(good, 8)).rejects.toThrow(/adapter\.rank is 8 but the tensors have rank 4/);
    await expect(write(good, 4, 0)).rejects.toThrow(/alpha must be a positive number/);
    await expect(write(new Map())).rejects.toThrow(/no LoRA tensors/);
  });

  it('refuses adapters it would misread', async () => {
    const out = join(dir, 'variants');
    await writePeftAdapter(out, mixtral, 'mixtral', { rank: 4, alpha: 8, baseModel: 'm', tensors: randomLora(mixtral, 4, /attn\.q/) });
    const configPath = join(out, 'adapter_config.json');
    const json = JSON.parse(await readFile(configPath, 'utf8'));
    for (const [patch, message] of [
      [{ use_dora: true }, /use_dora adapters are not supported/],
      [{ use_rslora: true }, /use_rslora adapters are not supported/],
      [{ rank_pattern: { q_proj: 8 } }, /per-module rank_pattern is not supported/],
      [{ peft_type: 'IA3' }, /peft_type "IA3" is not LORA/],
      [{ r: 2 }, /r is 2 but the tensors have rank 4/],
    ] as const) {
      await writeFile(configPath, JSON.stringify({ ...json, ...patch }));
      await expect(readPeftAdapter(out, mixtral, 'mixtral')).rejects.toThrow(message);
    }
    await writeFile(configPath, JSON.stringify(json));
    await expect(readPeftAdapter(out, qwen, 'qwen2_moe')).resolves.toBeDefined(); // attention keys are shared
    await expect(readPeftAdapter(out, { ...mixtral, numLayers: 1 }, 'mixtral'))
      .rejects.toThrow(/layers\.1\.self_attn\.q_proj\.lora_A\.weight is not a LoRA matrix of this mixtral model/);
  });
});
