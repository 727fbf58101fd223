import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  configFromHf, fromHfTensors, hfConfigFromConfig, loadHfModel, saveHfModel, toHfTensors, type HfLayout, type HfModel,
} from '../../src/io/hf.ts';
import { readSafetensors, writeSafetensors, type Tensor } from '../../src/io/safetensors.ts';
import { parameterShapes, type ModelConfig } from '../../src/model/config.ts';
import { hfFixturesDir } from '../fixtures.ts';
import { bitEqual } from '../helpers.ts';
import { readRawSafetensors, type RawTensor } from '../reference/safetensors64.ts';

const fixtures = hfFixturesDir();

const MIXTRAL: ModelConfig = {
  vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 8, ropeTheta: 10000, rmsNormEps: 1e-5,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64, sharedExpertHiddenSize: 0, normTopkProb: true, attentionBias: false,
  tieEmbeddings: false, routerAuxLossCoef: 0.001, maxSeqLen: 64,
};
const EXPECTED: Record<string, { config: ModelConfig; layout: HfLayout }> = {
  // The classic config.json omits max_position_embeddings: transformers' Mixtral default applies.
  'atenia-tiny-mixtral-classic': { config: { ...MIXTRAL, maxSeqLen: 131072 }, layout: { family: 'mixtral', packedExperts: false } },
  'atenia-tiny-mixtral-packed': { config: MIXTRAL, layout: { family: 'mixtral', packedExperts: true } },
  'atenia-tiny-qwen2-moe': {
    config: {
      ...MIXTRAL, numKvHeads: 2, expertHiddenSize: 16, sharedExpertHiddenSize: 24, normTopkProb: false, attentionBias: true,
    },
    layout: { family: 'qwen2_moe', packedExperts: true },
  },
  'pagedinfer-tiny-llama-bf16': {
    config: {
      vocabSize: 112, hiddenSize: 96, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 24, ropeTheta: 10000, rmsNormEps: 1e-5,
      numExperts: 1, expertsPerToken: 1, expertHiddenSize: 192, sharedExpertHiddenSize: 0, normTopkProb: true, attentionBias: false,
      tieEmbeddings: false, routerAuxLossCoef: 0, maxSeqLen: 2048,
    },
    layout: { family: 'llama', packedExperts: false },
  },
};

/**
 * The values a canonical parameter must hold, picked out of the raw file by hand: names spelled
 * out per layout, packed experts indexed element by element as [expert][row][column].
 */
function expectedValues(raw: Map<string, RawTensor>, layout: HfLayout, config: ModelConfig, name: string): Float64Array {
  const get = (key: string) => {
    const t = raw.get(key);
    if (!t) throw new Error(`raw file lacks ${key}`);
    return t.values;
  };
  const fixed: Record<string, string> = { embed: 'model.embed_tokens.weight', final_norm: 'model.norm.weight', lm_head: 'lm_head.weight' };
  if (fixed[name]) return get(fixed[name]);
  const [, l, rest] = /^layers\.(\d+)\.(.*)$/.exec(name)!;
  const p = `model.layers.${l}.`;
  const perLayer: Record<string, string> = {
    attn_norm: 'input_layernorm.weight', ffn_norm: 'post_attention_layernorm.weight',
    'attn.q': 'self_attn.q_proj.weight', 'attn.k': 'self_attn.k_proj.weight',
    'attn.v': 'self_attn.v_proj.weight', 'attn.o': 'self_attn.o_proj.weight',
    'attn.q_bias': 'self_attn.q_proj.bias', 'attn.k_bias': 'self_attn.k_proj.bias', 'attn.v_bias': 'self_attn.v_proj.bias',
    'shared_expert.gate': 'mlp.shared_expert.gate_proj.weight', 'shared_expert.up': 'mlp.shared_expert.up_proj.weight',
    'shared_expert.down': 'mlp.shared_expert.down_proj.weight', shared_expert_gate: 'mlp.shared_expert_gate.weight',
  };
  if (perLayer[rest]) return get(p + perLayer[rest]);
  if (rest === 'router') {
    if (layout.family === 'llama') return new Float64Array(config.hiddenSize);
    return get(p + (layout.packedExperts ? 'mlp.gate.weight' : 'block_sparse_moe.gate.weight'));
  }
  const [, e, kind] = /^experts\.(\d+)\.(gate|up|down)$/.exec(rest)!;
  if (layout.family === 'llama') return get(`${p}mlp.${kind}_proj.weight`);
  if (!layout.packedExperts) return get(`${p}block_sparse_moe.experts.${e}.${{ gate: 'w1', up: 'w3', down: 'w2' }[kind]}.weight`);
  const { hiddenSize: H, expertHiddenSize: F } = config;
  const out = new Float64Array(F * H);
  if (kind === 'down') {
    const down = get(`${p}mlp.experts.down_proj`); // [E, H, F]
    for (let r = 0; r < H; r++) for (let c = 0; c < F; c++) out[r * F + c] = down[Number(e) * H * F + r * F + c];
  } else {
    const gateUp = get(`${p}mlp.experts.gate_up_proj`); // [E, 2F, H]: gate rows, then up rows
    const first = kind === 'gate' ? 0 : F;
    for (let r = 0; r < F; r++) for (let c = 0; c < H; c++) out[r * H + c] = gateUp[Number(e) * 2 * F * H + (first + r) * H + c];
  }
  return out;
}

function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Float64 sum in index order. */
function sum(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s;
}

describe.skipIf(!fixtures)(`Hugging Face fixtures${fixtures ? '' : ' (skipped: ../shared/fixtures/hf not found)'}`, () => {
  const models = new Map<string, HfModel>();
  const raws = new Map<string, Map<string, RawTensor>>();
  let scratch: string;
  beforeAll(async () => {
    for (const name of Object.keys(EXPECTED)) {
      models.set(name, await loadHfModel(join(fixtures!, name)));
      raws.set(name, readRawSafetensors(join(fixtures!, name, 'model.safetensors')));
    }
    scratch = await mkdtemp(join(tmpdir(), 'swarmtrain-hf-'));
  });
  afterAll(async () => {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it.each(Object.keys(EXPECTED))('%s: config and layout', (name) => {
    const { config, layout } = models.get(name)!;
    expect(config).toEqual(EXPECTED[name].config);
    expect(layout).toEqual(EXPECTED[name].layout);
  });

  it.each(Object.keys(EXPECTED))('%s: every canonical tensor has its shape and the raw file values', (name) => {
    const { config, layout, params } = models.get(name)!;
    const raw = raws.get(name)!;
    expect([...params.keys()]).toEqual([...parameterShapes(config).keys()]);
    for (const [pname, shape] of parameterShapes(config)) {
      const p = params.get(pname)!;
      expect(p.shape, pname).toEqual(shape);
      const want = expectedValues(raw, layout, config, pname);
      expect(sum(p.data), pname).toBe(sum(want));
      expect(firstMismatch(p.data, want), pname).toBe(-1);
    }
  });

  it('dense Llama: expert 0 is the MLP, the router a zero [1, H] matrix, bf16 widened exactly', () => {
    const { params, config } = models.get('pagedinfer-tiny-llama-bf16')!;
    const raw = raws.get('pagedinfer-tiny-llama-bf16')!;
    expect(raw.get('model.layers.1.mlp.down_proj.weight')!.dtype).toBe('BF16');
    expect(params.get('layers.1.router')).toEqual({ shape: [1, 96], data: new Float32Array(96) });
    expect(firstMismatch(params.get('layers.1.experts.0.down')!.data, raw.get('model.layers.1.mlp.down_proj.weight')!.values)).toBe(-1);
    expect(config.numExperts * config.expertsPerToken).toBe(1);
  });

  it('both Mixtral layouts give bit-identical canonical tensors', () => {
    const classic = models.get('atenia-tiny-mixtral-classic')!.params;
    const packed = models.get('atenia-tiny-mixtral-packed')!.params;
    expect([...classic.keys()]).toEqual([...packed.keys()]);
    for (const [name, t] of classic) {
      expect(packed.get(name)!.shape, name).toEqual(t.shape);
      expect(bitEqual(packed.get(name)!.data, t.data), name).toBe(true);
    }
  });

  /** Checks exported tensors equal a raw file's tensors: same names, shapes and values. */
  function expectSameAsRaw(exported: Map<string, Tensor>, raw: Map<string, RawTensor>): void {
    expect([...exported.keys()].sort()).toEqual([...raw.keys()].sort());
    for (const [key, t] of exported) {
      expect(t.shape, key).toEqual(raw.get(key)!.shape);
      expect(firstMismatch(t.data, raw.get(key)!.values), key).toBe(-1);
    }
  }

  it.each(Object.keys(EXPECTED))('%s: export in its own layout reproduces the file', (name) => {
    const { config, layout, params } = models.get(name)!;
    expectSameAsRaw(toHfTensors(config, layout, params), raws.get(name)!);
  });

  it('classic Mixtral exported packed equals the packed file, and packed exported classic the classic file', () => {
    const classic = models.get('atenia-tiny-mixtral-classic')!;
    const packed = models.get('atenia-tiny-mixtral-packed')!;
    expectSameAsRaw(toHfTensors(classic.config, packed.layout, classic.params), raws.get('atenia-tiny-mixtral-packed')!);
    expectSameAsRaw(toHfTensors(packed.config, classic.layout, packed.params), raws.get('atenia-tiny-mixtral-classic')!);
  });

  it.each(Object.keys(EXPECTED))('%s: config.json written back maps to the same config', async (name) => {
    const { config, layout } = models.get(name)!;
    const json = hfConfigFromConfig(config, layout.family);
    expect(configFromHf(JSON.parse(JSON.stringify(json)))).toEqual({ config, family: layout.family });
  });

  it('saves a loadable model folder (bf16 Llama stays bit-exact, files carry format=pt)', async () => {
    const model = models.get('pagedinfer-tiny-llama-bf16')!;
    const dir = join(scratch, 'llama');
    await saveHfModel(dir, model, 'BF16');
    const again = await loadHfModel(dir);
    expect(again.config).toEqual(model.config);
    for (const [name, t] of model.params) expect(bitEqual(again.params.get(name)!.data, t.data), name).toBe(true);
    const written = await readSafetensors(join(dir, 'model.safetensors'));
    expect(written.metadata).toEqual({ format: 'pt' });
    expect(written.tensors.get('lm_head.weight')!.dtype).toBe('BF16');
    expect(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
    // The independent reader agrees with what was written.
    expectSameAsRaw(toHfTensors(model.config, model.layout, model.params), readRawSafetensors(join(dir, 'model.safetensors')));
  });

  it('loads a sharded checkpoint through model.safetensors.index.json', async () => {
    const source = join(fixtures!, 'atenia-tiny-qwen2-moe');
    const dir = join(scratch, 'sharded');
    const { tensors } = await readSafetensors(join(source, 'model.safetensors'));
    const keys = [...tensors.keys()];
    const shards = [keys.slice(0, 20), keys.slice(20)];
    const weightMap: Record<string, string> = {};
    await rm(dir, { recursive: true, force: true });
    await saveHfModel(dir, models.get('atenia-tiny-qwen2-moe')!); // creates the folder and config.json
    await rm(join(dir, 'model.safetensors'));
    for (const [i, part] of shards.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      await writeSafetensors(join(dir, file), part.map((k) => [k, tensors.get(k)!]));
      for (const k of part) weightMap[k] = file;
    }
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const loaded = await loadHfModel(dir);
    for (const [name, t] of models.get('atenia-tiny-qwen2-moe')!.params) {
      expect(bitEqual(loaded.params.get(name)!.data, t.data), name).toBe(true);
    }

    const indexPath = join(dir, 'model.safetensors.index.json');
    await writeFile(indexPath, JSON.stringify({ weight_map: { ...weightMap, [keys[0]]: '../x.safetensors' } }));
    await expect(loadHfModel(dir)).rejects.toThrow(/shard for .* must be a file name in the same folder/);
    await writeFile(indexPath, JSON.stringify({ weight_map: { ...weightMap, [keys[0]]: 'model-00002-of-00002.safetensors' } }));
    await expect(loadHfModel(dir)).rejects.toThrow(/is mapped to model-00002-of-00002\.safetensors, which does not contain it/);
  });

  it('rejects tensors that do not fit the config or layout, naming the tensor', async () => {
    const dir = join(fixtures!, 'atenia-tiny-mixtral-classic');
    const { tensors } = await readSafetensors(join(dir, 'model.safetensors'));
    const { config, layout } = models.get('atenia-tiny-mixtral-classic')!;
    const without = new Map(tensors);
    without.delete('model.layers.1.block_sparse_moe.experts.3.w2.weight');
    expect(() => fromHfTensors(config, layout, without, 'x'))
      .toThrow('x: missing tensor model.layers.1.block_sparse_moe.experts.3.w2.weight');
    expect(() => fromHfTensors({ ...config, expertHiddenSize: 32 }, layout, tensors)).toThrow(
      /tensor model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight has shape \[64, 32\], the config implies \[32, 32\]/,
    );
    expect(() => fromHfTensors({ ...config, numLayers: 1 }, layout, tensors))
      .toThrow(/19 unexpected tensor\(s\) for this config and layout, e\.g\. model\.layers\.1\./);
    expect(() => fromHfTensors(config, { family: 'mixtral', packedExperts: true }, tensors))
      .toThrow(/missing tensor model\.layers\.0\.mlp\.gate\.weight/);
    const quantized = new Map(tensors).set('lm_head.weight', { dtype: 'I8', shape: [48, 32], data: new Int8Array(48 * 32) });
    expect(() => fromHfTensors(config, layout, quantized)).toThrow(/lm_head\.weight is I8; quantized checkpoints are not supported/);
    // A tied model ignores a stored lm_head; rotary caches of old checkpoints are ignored too.
    const extra = new Map(tensors)
      .set('model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'F32', shape: [4], data: new Float32Array(4) });
    expect(fromHfTensors({ ...config, tieEmbeddings: true }, layout, extra).has('lm_head')).toBe(false);
  });
});

describe('Hugging Face config mapping', () => {
  const mixtral = {
    model_type: 'mixtral', vocab_size: 48, hidden_size: 64, intermediate_size: 64,
    num_hidden_layers: 2, num_attention_heads: 8, num_local_experts: 4,
  };

  it('fills behavioural defaults as transformers does', () => {
    const { config } = configFromHf(mixtral);
    expect(config).toMatchObject({ numKvHeads: 8, headDim: 8, ropeTheta: 1e6, rmsNormEps: 1e-5, expertsPerToken: 2, maxSeqLen: 131072 });
    const llama = configFromHf({
      model_type: 'llama', vocab_size: 10, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 1, num_attention_heads: 2,
    });
    expect(llama.config).toMatchObject({
      numKvHeads: 2, headDim: 32, rmsNormEps: 1e-6, maxSeqLen: 2048, numExperts: 1, expertsPerToken: 1, routerAuxLossCoef: 0,
    });
  });

  it('caps maxSeqLen at an active sliding window and reads v5 rope_parameters', () => {
    expect(configFromHf({ ...mixtral, max_position_embeddings: 64, sliding_window: 16 }).config.maxSeqLen).toBe(16);
    const v5 = configFromHf({ ...mixtral, rope_parameters: { rope_type: 'default', rope_theta: 5e5 } });
    expect(v5.config.ropeTheta).toBe(5e5);
  });

  it('rejects what the model cannot run, saying what', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ ...mixtral, model_type: 'gpt2' }, /unsupported model_type "gpt2"/],
      [{ ...mixtral, hidden_act: 'gelu' }, /hidden_act "gelu" \(only silu\) is not supported/],
      [{ ...mixtral, rope_scaling: { type: 'linear', factor: 2 } }, /RoPE type "linear" is not supported/],
      [{ ...mixtral, hidden_size: undefined }, /hidden_size must be a number, got undefined/],
      [{ ...mixtral, num_key_value_heads: 3 }, /numKvHeads \(3\) must divide numHeads \(8\)/],
      [{ ...mixtral, num_experts_per_tok: 5 }, /expertsPerToken \(5\) exceeds numExperts \(4\)/],
      [{
        model_type: 'qwen2_moe', vocab_size: 8, hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 2,
        num_experts: 2, moe_intermediate_size: 4, shared_expert_intermediate_size: 4, mlp_only_layers: [1],
      }, /dense MLP in some layers/],
      [{
        model_type: 'llama', vocab_size: 8, hidden_size: 8, intermediate_size: 8,
        num_hidden_layers: 1, num_attention_heads: 2, attention_bias: true,
      }, /attention_bias/],
      [{ ...mixtral, hidden_size: 30 }, /hidden_size 30 is not a multiple of num_attention_heads 8/],
    ];
    for (const [json, message] of bad) expect(() => configFromHf(json), String(message)).toThrow(message);
  });

  it('refuses to export features a family cannot express', () => {
    const { config } = configFromHf(mixtral);
    expect(() => hfConfigFromConfig({ ...config, sharedExpertHiddenSize: 8 }, 'mixtral'))
      .toThrow(/cannot express this model as mixtral: it has a shared expert/);
    expect(() => hfConfigFromConfig(config, 'llama')).toThrow(/a dense Llama has exactly 1 expert, top-1/);
    expect(() => hfConfigFromConfig(config, 'qwen2_moe')).toThrow(/Qwen2-MoE always has a shared expert/);
  });
});

describe('fixture location helper', () => {
  it('skips outside CI and fails in CI when the folder is missing', () => {
    expect(hfFixturesDir('/nonexistent/fixtures', {})).toBeNull();
    expect(() => hfFixturesDir('/nonexistent/fixtures', { CI: 'true' })).toThrow(/HF fixtures missing at \/nonexistent\/fixtures/);
    expect(hfFixturesDir(tmpdir(), { CI: 'true' })).toBe(tmpdir());
  });
});
