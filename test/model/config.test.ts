import { describe, expect, it } from 'vitest';
import { createConfig, DEMO_CONFIG, isLoraTarget, loraShapes, parameterShapes, validateConfig } from '../../src/model/config.ts';

const count = (shapes: Map<string, number[]>) => [...shapes.values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);

describe('model config', () => {
  it('accepts the demo config and applies overrides', () => {
    expect(validateConfig({ ...DEMO_CONFIG })).toEqual(DEMO_CONFIG);
    expect(createConfig({ numLayers: 2, vocabSize: 300 })).toEqual({ ...DEMO_CONFIG, numLayers: 2, vocabSize: 300 });
    // Every matrix input width is a whole number of 32-value quantization blocks.
    for (const [name, shape] of parameterShapes(DEMO_CONFIG)) if (shape.length === 2) expect(shape[1] % 32, name).toBe(0);
  });

  it('rejects bad configs with a message naming the field', () => {
    const bad: [unknown, RegExp][] = [
      [null, /must be an object/],
      [{ ...DEMO_CONFIG, numExpert: 8 }, /unknown field "numExpert"/],
      [{ ...DEMO_CONFIG, hiddenSize: 255.5 }, /hiddenSize must be a positive int number, got 255\.5/],
      [{ ...DEMO_CONFIG, numLayers: 0 }, /numLayers must be a positive int number, got 0/],
      [{ ...DEMO_CONFIG, rmsNormEps: 0 }, /rmsNormEps must be a positive number/],
      [{ ...DEMO_CONFIG, routerAuxLossCoef: -1 }, /routerAuxLossCoef must be a non-negative number/],
      [{ ...DEMO_CONFIG, ropeTheta: Infinity }, /ropeTheta must be a positive number, got Infinity/],
      [{ ...DEMO_CONFIG, tieEmbeddings: 'no' }, /tieEmbeddings must be a boolean, got "no"/],
      [{ ...DEMO_CONFIG, maxSeqLen: undefined }, /maxSeqLen must be a positive int number, got undefined/],
      [{ ...DEMO_CONFIG, numKvHeads: 3 }, /numKvHeads \(3\) must divide numHeads \(8\)/],
      [{ ...DEMO_CONFIG, headDim: 33 }, /headDim \(33\) must be even/],
      [{ ...DEMO_CONFIG, expertsPerToken: 9 }, /expertsPerToken \(9\) exceeds numExperts \(8\)/],
    ];
    for (const [value, message] of bad) expect(() => validateConfig(value), String(message)).toThrow(message);
  });

  it('lists canonical parameters with [out, in] shapes; counts match a hand count', () => {
    const c = createConfig({ sharedExpertHiddenSize: 96, attentionBias: true, numLayers: 2 });
    const shapes = parameterShapes(c);
    expect(shapes.get('embed')).toEqual([4096, 256]);
    expect(shapes.get('layers.1.attn.q')).toEqual([256, 256]);
    expect(shapes.get('layers.1.attn.k')).toEqual([128, 256]);
    expect(shapes.get('layers.1.attn.v_bias')).toEqual([128]);
    expect(shapes.get('layers.1.attn.o')).toEqual([256, 256]);
    expect(shapes.get('layers.0.router')).toEqual([8, 256]);
    expect(shapes.get('layers.0.experts.7.gate')).toEqual([512, 256]);
    expect(shapes.get('layers.0.experts.7.down')).toEqual([256, 512]);
    expect(shapes.get('layers.0.shared_expert.up')).toEqual([96, 256]);
    expect(shapes.get('layers.0.shared_expert_gate')).toEqual([1, 256]);
    expect(shapes.has('layers.2.attn_norm')).toBe(false);
    const H = 256, V = 4096;
    const attention = H * 256 + 256 + 2 * (H * 128 + 128) + 256 * H;
    const moe = 8 * H + 8 * 3 * H * 512 + 3 * H * 96 + H;
    expect(count(shapes)).toBe(V * H + 2 * (2 * H + attention + moe) + H + V * H);
    expect(parameterShapes({ ...c, tieEmbeddings: true }).has('lm_head')).toBe(false);
    expect(parameterShapes(DEMO_CONFIG).has('layers.0.attn.q_bias')).toBe(false);
    expect(parameterShapes(DEMO_CONFIG).has('layers.0.shared_expert_gate')).toBe(false);
  });

  it('gives LoRA shapes for attention and expert matrices only', () => {
    const c = createConfig({ numLayers: 1, sharedExpertHiddenSize: 64 });
    const shapes = loraShapes(c, 4);
    expect(shapes.get('layers.0.attn.k.lora_a')).toEqual([4, 256]);
    expect(shapes.get('layers.0.attn.k.lora_b')).toEqual([128, 4]);
    expect(shapes.get('layers.0.experts.3.down.lora_a')).toEqual([4, 512]);
    expect(shapes.get('layers.0.shared_expert.gate.lora_b')).toEqual([64, 4]);
    expect(shapes.size).toBe(2 * (4 + 8 * 3 + 3));
    for (const name of ['embed', 'lm_head', 'layers.0.router', 'layers.0.attn_norm', 'layers.0.shared_expert_gate', 'layers.0.attn.q_bias']) {
      expect(isLoraTarget(name), name).toBe(false);
    }
    expect(() => loraShapes(c, 0)).toThrow(/LoRA rank must be a positive integer, got 0/);
  });
});
