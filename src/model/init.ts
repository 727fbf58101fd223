// Seeded random initialization (GPT-2 style): matrices ~ N(0, 0.02²), the projections that
// write into the residual stream (attention output, expert down) scaled by 1/√(2·layers),
// norms 1, biases 0. The same seed gives the same model on every machine.
import { parameterShapes, type F32Tensor, type ModelConfig } from './config.ts';
import { sizeOf } from './params.ts';

const STD = 0.02;

/** Uniform numbers in [0, 1) from a 32-bit seed (mulberry32). */
export function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal numbers (Box–Muller over `uniform`). */
export function gaussian(seed: number): () => number {
  const u = uniform(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/**
 * The initial tensors in canonical order, generated one at a time from `seed`. With
 * `reuseBuffer` every tensor is written into one buffer, valid until the next is generated:
 * for a consumer that copies each away (a model's load), so the ~4 bytes per parameter of
 * garbage arrays never pile up before the garbage collector gets to them.
 */
export function* initTensors(config: ModelConfig, seed: number, { reuseBuffer = false } = {}): Generator<[string, F32Tensor]> {
  const normal = gaussian(seed);
  const residualScale = 1 / Math.sqrt(2 * config.numLayers);
  const shapes = parameterShapes(config);
  const shared = reuseBuffer ? new Float32Array(Math.max(...[...shapes.values()].map(sizeOf))) : undefined;
  for (const [name, shape] of shapes) {
    const data = shared ? shared.subarray(0, sizeOf(shape)) : new Float32Array(sizeOf(shape));
    if (name.endsWith('norm')) data.fill(1);
    else if (name.endsWith('_bias')) data.fill(0);
    else {
      const std = /\.(attn\.o|down)$/.test(name) ? STD * residualScale : STD;
      for (let i = 0; i < data.length; i++) data[i] = normal() * std;
    }
    yield [name, { shape, data }];
  }
}

export function initParameters(config: ModelConfig, seed: number): Map<string, F32Tensor> {
  return new Map(initTensors(config, seed));
}
