// The model against independent references: Hugging Face logits of the fixtures, and central
// finite differences of the float64 reference model (test/reference/model64.ts) for the
// gradients of every parameter tensor, in full and LoRA mode.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel, type HfModel } from '../../src/io/hf.ts';
import { createKernels, type Kernels } from '../../src/kernels/index.ts';
import { createConfig, expertOf, type F32Tensor, type ModelConfig } from '../../src/model/config.ts';
import type { RemoteExperts } from '../../src/model/hosted.ts';
import { initParameters } from '../../src/model/init.ts';
import { Model, type ModelOptions } from '../../src/model/model.ts';
import { generate } from '../../src/train/generate.ts';
import { hfFixturesDir } from '../fixtures.ts';
import { bitEqual, maxRelError, rng } from '../helpers.ts';
import { forward64 } from '../reference/model64.ts';

const fixtures = hfFixturesDir();
const FIXTURES = ['atenia-tiny-mixtral-classic', 'atenia-tiny-mixtral-packed', 'atenia-tiny-qwen2-moe'];

let kernels: Kernels;
beforeAll(async () => {
  kernels = await createKernels({ threads: 1 });
});
afterAll(async () => kernels?.close());

/** A small random model whose matrices can be quantized (inputs multiples of 32). */
const SMALL: ModelConfig = createConfig({
  vocabSize: 64, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16,
  numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64, maxSeqLen: 32, routerAuxLossCoef: 0.05,
});

function tokensFor(config: ModelConfig, count: number, seed: number): number[] {
  const random = rng(seed);
  return Array.from({ length: count }, () => Math.floor(((random() + 1) / 2) * config.vocabSize));
}

/**
 * Compares the model's gradient of `name` with central differences of the float64 loss at
 * `samples` elements. Returns the worst |fd − grad| relative to the largest |fd| of the tensor.
 */
function checkGradient(
  config: ModelConfig, params64: Map<string, Float64Array>, grad: Float32Array, name: string,
  tokens: number[], targets: number[], lora: { rank: number; alpha: number } | undefined, samples = 5,
  dropped?: ReadonlySet<string>,
): { error: number; scale: number } {
  const p = params64.get(name)!;
  const get = (n: string) => params64.get(n);
  let error = 0;
  let scale = 1e-6;
  const h = 1e-5;
  for (let s = 0; s < samples; s++) {
    const i = (s * 7919 + 13) % p.length;
    const old = p[i];
    p[i] = old + h;
    const up = forward64(config, get, tokens, targets, lora, dropped).loss;
    p[i] = old - h;
    const down = forward64(config, get, tokens, targets, lora, dropped).loss;
    p[i] = old;
    const fd = (up - down) / (2 * h);
    error = Math.max(error, Math.abs(fd - grad[i]));
    scale = Math.max(scale, Math.abs(fd));
  }
  return { error, scale };
}

const to64 = (m: Map<string, F32Tensor>) => new Map([...m].map(([n, t]) => [n, Float64Array.from(t.data)]));

describe.skipIf(!fixtures)(`Hugging Face fixtures${fixtures ? '' : ' (skipped: ../shared/fixtures/hf not found)'}`, () => {
  const load = (name: string) => loadHfModel(join(fixtures!, name));

  it.each(FIXTURES)('%s: logits match transformers (float64) to 1e-5', async (name) => {
    const hf = await load(name);
    const ref = JSON.parse(readFileSync(join(fixtures!, name, 'reference_logits.json'), 'utf8'));
    const model = new Model(kernels, hf.config, { mode: 'full' }, hf.params);
    const logits = await model.logits(ref.input_ids, 1, ref.input_ids.length);
    const want = (ref.hf_logits as number[] | number[][]).flat();
    expect(logits.length).toBe(want.length);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(logits[i] - want[i]));
    expect(worst).toBeLessThan(1e-5);
  });

  it('Mixtral greedy continuation and its step logits match reference_greedy.json', async () => {
    const hf = await load('atenia-tiny-mixtral-packed');
    const ref = JSON.parse(readFileSync(join(fixtures!, 'atenia-tiny-mixtral-packed', 'reference_greedy.json'), 'utf8'));
    const model = new Model(kernels, hf.config, { mode: 'full' }, hf.params);
    const stepLogits: number[] = [];
    const ids = await generate(model, ref.prompt_ids, { maxNewTokens: ref.max_new_tokens, onLogits: (l) => stepLogits.push(...l) });
    expect(ids).toEqual(ref.generated_ids);
    expect(maxRelError(stepLogits, ref.step_logits)).toBeLessThan(1e-5);
  });

  it('Qwen2-MoE greedy continuation matches the fixture', async () => {
    const hf = await load('atenia-tiny-qwen2-moe');
    const ref = JSON.parse(readFileSync(join(fixtures!, 'atenia-tiny-qwen2-moe', 'reference_logits.json'), 'utf8'));
    const model = new Model(kernels, hf.config, { mode: 'full' }, hf.params);
    expect(await generate(model, ref.input_ids, { maxNewTokens: ref.greedy_ids.length })).toEqual(ref.greedy_ids);
  });

  it('an expert no remote holder answers is dropped and the gates renormalized, with exact gradients, whatever its rows hold', async () => {
    const hf = await load('atenia-tiny-mixtral-classic');
    const config = { ...hf.config, routerAuxLossCoef: 0.1, maxSeqLen: 64 };
    const dropped = new Set(['0.1', '1.3']);
    const remoteCalls: string[] = [];
    const model = new Model(kernels, config, {
      mode: 'full',
      hosts: (l, e) => !dropped.has(`${l}.${e}`),
      remote: {
        // A failed call may leave anything in its output rows (here NaN): they must not count.
        forward: async (l, e, _x, y) => (remoteCalls.push(`${l}.${e}`), y.fill(NaN), false),
        backward: async (l, e) => (remoteCalls.push(`backward ${l}.${e}`), false),
      },
    }, hf.params);
    const tokens = [22, 25, 29, 38, 36, 3, 17];
    const targets = [25, 29, 38, 36, 3, 17, 1];
    const result = await model.trainStep(tokens, targets, 1, tokens.length);
    const params64 = to64(hf.params);
    const ref = forward64(config, (n) => params64.get(n), tokens, targets, undefined, dropped);
    expect(Math.abs(result.loss - ref.loss)).toBeLessThan(1e-5);
    expect(model.droppedAssignments()).toBeGreaterThan(0);
    // Only the experts not hosted went to the remote port, and a dropped expert gets no backward call.
    expect(remoteCalls.length).toBeGreaterThan(0);
    expect(remoteCalls.every((key) => dropped.has(key))).toBe(true);
    expect(model.params.has('layers.0.experts.1.gate')).toBe(false);
    for (const name of ['layers.0.router', 'layers.1.router', 'layers.0.experts.2.down', 'layers.0.attn.q', 'embed']) {
      const { error, scale } = checkGradient(config, params64, model.params.get(name).grad!, name, tokens, targets, undefined, 4, dropped);
      expect(error, name).toBeLessThan(2e-4 * scale + 1e-7);
    }
  });

  describe.each(['atenia-tiny-mixtral-classic', 'atenia-tiny-qwen2-moe'])('%s gradients', (name) => {
    let hf: HfModel;
    let config: ModelConfig;
    const tokens = [22, 25, 29, 38, 36, 3, 17];
    const targets = [25, 29, 38, 36, 3, 17, -1];
    beforeAll(async () => {
      hf = await load(name);
      config = { ...hf.config, routerAuxLossCoef: 0.1, maxSeqLen: 64 };
    });

    it('full mode: every parameter tensor matches finite differences of the float64 loss', async () => {
      const model = new Model(kernels, config, { mode: 'full' }, hf.params);
      const result = await model.trainStep(tokens, targets, 1, tokens.length);
      const params64 = to64(hf.params);
      const ref = forward64(config, (n) => params64.get(n), tokens, targets);
      expect(Math.abs(result.loss - ref.loss)).toBeLessThan(1e-5);
      for (const param of model.params.all()) {
        const { error, scale } = checkGradient(config, params64, param.grad!, param.name, tokens, targets, undefined, 3);
        // FD of a float64 loss is good to ~1e-9; the fp32 backward to ~1e-6 of the gradient's size.
        expect(error, param.name).toBeLessThan(2e-4 * scale + 1e-7);
      }
    });

    it('lora mode: LoRA gradients match finite differences; the base gets none', async () => {
      const lora = { rank: 4, alpha: 8 };
      const model = new Model(kernels, config, { mode: 'lora', lora }, hf.params);
      // Give B non-zero values so A's gradient is not trivially zero.
      const random = rng(5);
      for (const p of model.params.all()) if (p.name.endsWith('.lora_b')) p.value.forEach((_, i, v) => (v[i] = random() * 0.1));
      await model.trainStep(tokens, targets, 1, tokens.length);
      const params64 = to64(model.params.snapshot());
      expect(model.params.all().filter((p) => p.grad).every((p) => /\.lora_[ab]$/.test(p.name))).toBe(true);
      const adapters = model.params.trainable();
      expect(adapters.length).toBeGreaterThan(0);
      for (const param of adapters.filter((_, i) => i % 3 === 0)) {
        const { error, scale } = checkGradient(config, params64, param.grad!, param.name, tokens, targets, lora, 3);
        expect(error, param.name).toBeLessThan(2e-4 * scale + 1e-7);
      }
    });
  });
});

describe('model on a small random config', () => {
  const tokens = tokensFor(SMALL, 2 * 16, 3);
  const targets = tokensFor(SMALL, 2 * 16, 4);
  const base = initParameters(SMALL, 7);

  async function gradients(options: ModelOptions, k: Kernels = kernels): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const model = new Model(k, SMALL, options, base);
    const { loss } = await model.trainStep(tokens, targets, 2, 16);
    const grads = new Map(model.params.trainable().map((p) => [p.name, Float32Array.from(p.grad!)]));
    model.params.release();
    return { loss, grads };
  }

  it('gradient checkpointing gives bit-identical loss and gradients', async () => {
    const plain = await gradients({ mode: 'full' });
    const recomputed = await gradients({ mode: 'full', checkpointing: true });
    expect(recomputed.loss).toBe(plain.loss);
    for (const [name, g] of plain.grads) expect(bitEqual(recomputed.grads.get(name)!, g), name).toBe(true);
  });

  it('1 and 2 threads give bit-identical loss and gradients', async () => {
    const two = await createKernels({ threads: 2 });
    try {
      const a = await gradients({ mode: 'full' });
      const b = await gradients({ mode: 'full' }, two);
      expect(b.loss).toBe(a.loss);
      for (const [name, g] of a.grads) expect(bitEqual(b.grads.get(name)!, g), name).toBe(true);
    } finally {
      await two.close();
    }
  });

  // bf16 keeps 8 significant bits of the experts' gate·x and up·x and of attention's q, k, v and
  // output for the backward (relative rounding ≤ 2^-9 per value): gradients move by a few tenths
  // of a percent (measured ≤ 0.44% of each tensor's largest gradient, bound 2%); the forward
  // does not change at all.
  it('bf16 activation storage: the same loss, gradients within 2% of f32 storage, still bit-identical with checkpointing and on 2 threads', async () => {
    const two = await createKernels({ threads: 2 });
    try {
      for (const mode of [{ mode: 'full' }, { mode: 'lora', lora: { rank: 4, alpha: 8 } }] as const) {
        const exact = await gradients(mode);
        const bf16 = await gradients({ ...mode, activationStorage: 'bf16' });
        expect(bf16.loss).toBe(exact.loss);
        const moved = new Set<string>();
        for (const [name, g] of exact.grads) {
          const h = bf16.grads.get(name)!;
          let scale = 0;
          let error = 0;
          for (let i = 0; i < g.length; i++) {
            scale = Math.max(scale, Math.abs(g[i]));
            error = Math.max(error, Math.abs(h[i] - g[i]));
          }
          if (error > 0) moved.add(/attn\.[qkv]/.test(name) ? 'attention' : /experts\.\d+\.(gate|up)/.test(name) ? 'experts' : 'other');
          expect(error, name).toBeLessThanOrEqual(0.02 * scale);
        }
        expect([...moved].sort(), 'gradients the rounding reaches').toEqual(expect.arrayContaining(['attention', 'experts']));
        for (const variant of [await gradients({ ...mode, activationStorage: 'bf16', checkpointing: true }), await gradients({ ...mode, activationStorage: 'bf16' }, two)]) {
          expect(variant.loss).toBe(bf16.loss);
          for (const [name, g] of bf16.grads) expect(bitEqual(variant.grads.get(name)!, g), name).toBe(true);
        }
      }
    } finally {
      await two.close();
    }
  });

  it('a fresh LoRA adapter (B = 0) leaves the base model\'s logits bit-identical', async () => {
    const full = new Model(kernels, SMALL, { mode: 'full' }, base);
    const lora = new Model(kernels, SMALL, { mode: 'lora', lora: { rank: 8, alpha: 16 } }, base);
    const a = Float32Array.from(await full.logits(tokens, 2, 16));
    const b = Float32Array.from(await lora.logits(tokens, 2, 16));
    expect(bitEqual(a, b)).toBe(true);
  });

  // Stated bounds, relative to the largest |logit|: q8 keeps 7 bits per weight (measured 0.5%,
  // bound 1%), q4 3 bits (measured 7.7%, bound 12%). The integer path also rounds activations
  // to int8 per block of 32 (measured 0.6% with q8, bound 1.5%).
  it.each([
    ['q8', 'fp32', 0.01], ['q4', 'fp32', 0.12], ['q8', 'int', 0.015], ['q4', 'int', 0.12],
  ] as const)('%s base on the %s path: logits close to the fp32 base', async (format, path, bound) => {
    const ref = new Model(kernels, SMALL, { mode: 'lora', lora: { rank: 4, alpha: 8 } }, base);
    const quant = new Model(kernels, SMALL, { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: format, basePath: path }, base);
    const want = Float32Array.from(await ref.logits(tokens, 2, 16));
    const got = await quant.logits(tokens, 2, 16);
    const error = maxRelError(got, want);
    expect(error).toBeLessThan(bound);
    expect(error).toBeGreaterThan(0); // the base really is quantized
  });

  it.each([
    ['full', { mode: 'full' }],
    ['lora q4', { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4' }],
  ] as [string, ModelOptions][])('%s: a node holding some experts takes others on from a holder\'s state and gives them up', async (_, options) => {
    const full = new Model(kernels, SMALL, options, base);
    const partial = new Model(kernels, SMALL, { ...options, hosts: (_l, e) => e < 2 }, base);
    expect(partial.params.has('layers.1.experts.3.up') || partial.weights.quantized.has('layers.1.experts.3.up')).toBe(false);
    expect(full.params.all().length).toBeGreaterThan(partial.params.all().length);
    for (let l = 0; l < SMALL.numLayers; l++) {
      for (const e of [2, 3]) {
        const added = partial.experts.add(l, e, full.experts.state(l, e));
        expect(added.length).toBeGreaterThan(0);
        expect(added.every((p) => p.grad)).toBe(true);
      }
    }
    const want = Float32Array.from(await full.logits(tokens, 2, 16));
    expect(bitEqual(Float32Array.from(await partial.logits(tokens, 2, 16)), want)).toBe(true);
    expect(partial.experts.remove(1, 3)).toContain('layers.1.experts.3.down');
    await partial.logits(tokens, 2, 16);
    expect(partial.droppedAssignments()).toBeGreaterThan(0);
    expect(() => partial.experts.add(0, 0)).toThrow(/already held/);
    expect(() => partial.experts.remove(1, 3)).toThrow(/not held/);
  });

  it('lora q4 on the seeded base: an expert taken on from its adapters alone gets its frozen base from the seed', async () => {
    const options: ModelOptions = { mode: 'lora', lora: { rank: 4, alpha: 8, freezeA: true }, baseFormat: 'q4', seed: 7 };
    const full = new Model(kernels, SMALL, options);
    for (const p of full.params.trainable()) if (/\.experts\.[23]\./.test(p.name)) p.value.fill(0.01); // trained B of the experts taken on
    const partial = new Model(kernels, SMALL, { ...options, hosts: (_l, e) => e < 2 });
    const adapters = (l: number, e: number) => new Map([...full.experts.state(l, e)].filter(([name]) => name.includes('.lora_')));
    for (let l = 0; l < SMALL.numLayers; l++) for (const e of [2, 3]) expect(partial.experts.add(l, e, adapters(l, e)).length).toBe(3);
    for (const { name, value } of partial.params.all()) expect(bitEqual(value, full.params.get(name).value), name).toBe(true);
    const want = Float32Array.from(await full.logits(tokens, 2, 16));
    expect(bitEqual(Float32Array.from(await partial.logits(tokens, 2, 16)), want)).toBe(true);
    expect(full.weights.baseDigests()).toEqual(partial.weights.baseDigests());
  });

  it.each([
    ['full', { mode: 'full' }],
    ['lora q4', { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4' }],
  ] as [string, ModelOptions][])('%s: runs hosted experts locally and the others through the remote port, bit-identical to holding them all', async (_, options) => {
    const full = new Model(kernels, SMALL, options, base);
    // Another process's experts, called as an expert server does: stateless, the forward rerun before a backward.
    const holder = new Model(kernels, SMALL, options, base);
    const remoteCalls = { forward: 0, backward: 0 };
    const remote: RemoteExperts = {
      forward: async (l, e, x, y, rows) => {
        remoteCalls.forward++;
        holder.experts.servingExpert(l, e)!.forward(x, y, rows);
        return true;
      },
      backward: async (l, e, x, dy, dx, rows) => {
        remoteCalls.backward++;
        const expert = holder.experts.servingExpert(l, e)!;
        expert.keepInputsOf(x, rows);
        expert.backward(x, dy, dx, rows);
        return true;
      },
    };
    const partial = new Model(kernels, SMALL, { ...options, hosts: (_l, e) => e < 2, remote }, base);
    const want = await full.trainStep(tokens, targets, 2, 16);
    const got = await partial.trainStep(tokens, targets, 2, 16);
    expect(got).toEqual(want);
    expect(partial.droppedAssignments()).toBe(0);
    expect(remoteCalls.forward).toBeGreaterThan(0);
    expect(partial.experts.localCalls + remoteCalls.forward + remoteCalls.backward).toBe(full.experts.localCalls);
    // The trunk's and hosted experts' gradients here, the others' at the holder: each the full model's, bit for bit.
    for (const p of full.params.trainable()) {
      const owner = expertOf(p.name);
      const where = owner && owner.expert >= 2 ? holder : partial;
      expect(bitEqual(where.params.get(p.name).grad!, p.grad!), p.name).toBe(true);
    }
  });

  // The two halves of a split batch share the weights and take turns in a fixed order here (one process), so each
  // parameter gets the first half's gradient, then the second's: what trainStep on each half in turn adds, when
  // each half's gradScale is its share of the counted targets.
  it.each([
    ['full', { mode: 'full' }, false],
    ['lora q4 with checkpointing, half the experts remote', { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4', checkpointing: true }, true],
  ] as [string, ModelOptions, boolean][])('%s: splitBatch gives trainStep on each half in turn, bit for bit, and the whole batch\'s cross-entropy', async (_, options, remoteHalf) => {
    const [batch, seq] = [4, 16];
    const someTokens = tokensFor(SMALL, batch * seq, 5);
    const someTargets = tokensFor(SMALL, batch * seq, 6);
    someTargets[3] = -1; // an ignored target: the halves count 31 and 32
    const holder = new Model(kernels, SMALL, options, base);
    // Calls answer after 0-3 ms at random, so a lane's turn at a stage comes from the gates, not from call order.
    const random = rng(7);
    const latency = () => new Promise((resolve) => setTimeout(resolve, Math.floor(4 * random())));
    const remote: RemoteExperts = {
      forward: async (l, e, x, y, rows) => (await latency(), holder.experts.servingExpert(l, e)!.forward(x, y, rows), true),
      backward: async (l, e, x, dy, dx, rows) => {
        await latency();
        const expert = holder.experts.servingExpert(l, e)!;
        expert.keepInputsOf(x, rows);
        expert.backward(x, dy, dx, rows);
        return true;
      },
    };
    const placement: Partial<ModelOptions> = remoteHalf ? { hosts: (_l, e) => e < 2, remote } : {};
    const split = new Model(kernels, SMALL, { ...options, ...placement, splitBatch: true }, base);
    const inTurn = new Model(kernels, SMALL, { ...options, ...placement }, base);
    // Gradients already holding an earlier micro-batch's: with zeros, two lanes' sums would agree in either order.
    const earlier = new Map(holder.params.trainable().map((p) => [p.name, Float32Array.from(p.grad!, () => random() - 0.5)]));
    const startFromEarlier = (model: Model) => model.params.trainable().forEach((p) => p.grad!.set(earlier.get(p.name)!));
    [holder, split, inTurn].forEach(startFromEarlier);
    const got = await split.trainStep(someTokens, someTargets, batch, seq);
    const splitHolderGrads = new Map(holder.params.trainable().map((p) => [p.name, Float32Array.from(p.grad!)]));
    startFromEarlier(holder);

    const half = (batch / 2) * seq;
    const first = await inTurn.trainStep(someTokens.slice(0, half), someTargets.slice(0, half), batch / 2, seq, 31 / 63);
    const second = await inTurn.trainStep(someTokens.slice(half), someTargets.slice(half), batch / 2, seq, 32 / 63);
    for (const p of inTurn.params.trainable()) expect(bitEqual(split.params.get(p.name).grad!, p.grad!), p.name).toBe(true);
    // Both lanes' routed rows, as the halves in turn routed them: every token to k experts per layer, again when
    // checkpointing recomputes the forward.
    expect(split.routedRows()).toEqual(inTurn.routedRows());
    const E = SMALL.numExperts;
    const perLayer = batch * seq * SMALL.expertsPerToken * (options.checkpointing ? 2 : 1);
    for (let l = 0; l < SMALL.numLayers; l++) expect(split.routedRows().slice(l * E, (l + 1) * E).reduce((x, y) => x + y)).toBe(perLayer);
    for (const p of holder.params.trainable()) {
      if (expertOf(p.name) && expertOf(p.name)!.expert >= 2) expect(bitEqual(splitHolderGrads.get(p.name)!, p.grad!), p.name).toBe(true);
    }
    if (remoteHalf) expect(holder.params.trainable().some((p) => !bitEqual(p.grad!, earlier.get(p.name)!))).toBe(true);
    expect(got.tokens).toBe(63);
    expect(got.crossEntropy).toBeCloseTo((31 * first.crossEntropy + 32 * second.crossEntropy) / 63, 12);
    expect(got.aux).toBeCloseTo((31 * first.aux + 32 * second.aux) / 63, 12);
    expect(got.loss).toBeCloseTo(got.crossEntropy + SMALL.routerAuxLossCoef * got.aux, 12);
    // The whole batch in one pass: the same per-token losses (only the load-balancing term is per half).
    const whole = await new Model(kernels, SMALL, options, base).trainStep(someTokens, someTargets, batch, seq);
    expect(Math.abs(got.crossEntropy - whole.crossEntropy)).toBeLessThan(1e-6 * whole.crossEntropy);
    expect(split.droppedAssignments()).toBe(0);
  });

  it('LoRA starts from the same values on every node, whatever experts each holds or takes on later', async () => {
    const options: ModelOptions = { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4' };
    const full = new Model(kernels, SMALL, options, base);
    const partial = new Model(kernels, SMALL, { ...options, hosts: (_l, e) => e === 1 }, base);
    partial.experts.add(0, 3); // a new replica with no holder to copy from: seeded values
    let compared = 0;
    for (const p of partial.params.trainable()) {
      expect(bitEqual(p.value, full.params.get(p.name).value), p.name).toBe(true);
      if (p.name.endsWith('.lora_a')) compared++;
    }
    expect(partial.params.has('layers.0.experts.3.up.lora_a')).toBe(true);
    expect(compared).toBeGreaterThan(10);
  });

  it('a call with more rows than any before frees the row-sized buffers it outgrows', async () => {
    // Heap taken by the calls of a model that grew 16 -> 64 -> 128 rows, and of one that only ever saw 128.
    const callMemory = async (batches: number[]) => {
      const model = new Model(kernels, SMALL, { mode: 'full', activationStorage: 'bf16' }, base);
      const before = kernels.heap.allocatedBytes;
      for (const batch of batches) await model.trainStep(tokensFor(SMALL, batch * 16, 5), tokensFor(SMALL, batch * 16, 6), batch, 16);
      const bytes = kernels.heap.allocatedBytes - before;
      model.params.release();
      return bytes;
    };
    const grown = await callMemory([1, 4, 8]);
    const direct = await callMemory([8]);
    expect(direct).toBeGreaterThan(0);
    // Keeping the outgrown workspaces would take (16 + 64) / 128 more; scratch sized by routing may differ a little.
    expect(grown / direct).toBeLessThan(1.1);
  });

  it('rejects bad input with clear errors', async () => {
    const model = new Model(kernels, SMALL, { mode: 'full' }, base);
    await expect(model.logits([1, 2, 3], 2, 2)).rejects.toThrow(/3 tokens for batch 2 × seq 2/);
    await expect(model.logits([1, 64], 1, 2)).rejects.toThrow(/token id 64 at 1 is outside the vocabulary/);
    await expect(model.logits(new Array(33).fill(1), 1, 33)).rejects.toThrow(/exceeds maxSeqLen 32/);
    expect(() => new Model(kernels, SMALL, { mode: 'lora' }, base)).toThrow(/lora mode needs lora options/);
    expect(() => new Model(kernels, SMALL, { mode: 'full', baseFormat: 'q4' }, base)).toThrow(/quantized base needs lora mode/);
  });
});

describe('generation with a KV cache', () => {
  const base = initParameters(SMALL, 11);
  const sequence = tokensFor(SMALL, 20, 5);
  const modes: [string, ModelOptions][] = [
    ['full', { mode: 'full' }],
    ['lora, q8 base on the integer path', { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q8', basePath: 'int' }],
    // Attention then works in the layer scratch rather than in its kept buffers.
    ['lora, q4 base, bf16 activation storage', { mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4', basePath: 'int', activationStorage: 'bf16' }],
  ];

  /** A model whose LoRA adapters (if any) are not zero, so they take part in the comparison. */
  function modelFor(options: ModelOptions): Model {
    const model = new Model(kernels, SMALL, options, base);
    const random = rng(17);
    for (const p of model.params.trainable()) if (p.name.endsWith('lora_b')) for (let i = 0; i < p.value.length; i++) p.value[i] = 0.05 * random();
    return model;
  }

  const lastRow = (logits: Float32Array, rows: number) => Float32Array.from(logits.subarray((rows - 1) * SMALL.vocabSize, rows * SMALL.vocabSize));

  it.each(modes)('%s: the prompt at once, then one token at a time, gives the logits of the whole sequence', async (_, options) => {
    const model = modelFor(options);
    const whole = Float32Array.from(await model.logits(sequence, 1, sequence.length));
    const cache = model.kvCache();
    try {
      const prompt = 7;
      for (let end = prompt; end <= sequence.length; end++) {
        const logits = await model.decode(end === prompt ? sequence.slice(0, prompt) : [sequence[end - 1]], cache);
        // The model's own GEMMs on a sequence against its dot products on one row: rounding only.
        expect(maxRelError(logits, lastRow(whole, end)), `position ${end - 1}`).toBeLessThan(1e-5);
      }
      expect(cache.length).toBe(sequence.length);
    } finally {
      cache.release();
    }
  });

  it('past maxSeqLen, generation restarts the cache from the latest half of the text', async () => {
    const model = modelFor({ mode: 'full' });
    const prompt = sequence.slice(0, 20);
    const steps: Float32Array[] = [];
    const ids = await generate(model, prompt, { maxNewTokens: 30, onLogits: (l) => steps.push(Float32Array.from(l)) });
    expect(ids).toHaveLength(30);
    const text = [...prompt, ...ids];
    // Step i's logits follow text[0, 20 + i) while it fits (20 + i ≤ 32), then the latest 16 tokens once the cache fills.
    for (const i of [0, 5, 12]) {
      const context = text.slice(0, 20 + i);
      expect(maxRelError(steps[i], lastRow(await model.logits(context, 1, context.length), context.length)), `step ${i}`).toBeLessThan(1e-5);
    }
    const restarted = text.slice(20 + 13 - 16, 20 + 13);
    expect(maxRelError(steps[13], lastRow(await model.logits(restarted, 1, 16), 16))).toBeLessThan(1e-5);
  });

  it('refuses more positions than maxSeqLen, and an empty step', async () => {
    const model = modelFor({ mode: 'full' });
    const cache = model.kvCache();
    try {
      await model.decode(tokensFor(SMALL, 30, 8), cache);
      await expect(model.decode([1, 2, 3], cache)).rejects.toThrow(/30 cached and 3 new positions exceed maxSeqLen 32/);
      await expect(model.decode([], cache)).rejects.toThrow(/at least one token/);
      await expect(model.decode([64], cache)).rejects.toThrow(/token id 64 at 0 is outside the vocabulary/);
    } finally {
      cache.release();
    }
  });
});
