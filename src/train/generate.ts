// Text generation from a model: greedy (temperature 0) or sampled with temperature and
// nucleus (top-p) filtering. The prompt runs once, then each new token alone against the
// cached keys and values of the context. The context is at most maxSeqLen tokens: when the
// cache is full it restarts from the latest half of the text.
import { uniform } from '../model/init.ts';
import type { Model } from '../model/model.ts';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 picks the most likely token. */
  temperature?: number;
  /** Sample only from the smallest set of tokens whose probability reaches topP. */
  topP?: number;
  seed?: number;
  /** Stop after emitting this token. */
  eosId?: number;
  /** Called with each step's logits (a view, valid during the call). */
  onLogits?: (logits: Float32Array) => void;
}

/** Index of the largest value (the lowest index among ties). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Samples from softmax(logits / temperature) restricted to the top-p nucleus. */
export function sampleToken(logits: ArrayLike<number>, temperature: number, topP: number, random: () => number): number {
  if (temperature <= 0) return argmax(logits);
  const max = logits[argmax(logits)];
  const probs = Array.from(logits, (z, id) => ({ id, p: Math.exp((z - max) / temperature) }));
  const total = probs.reduce((s, x) => s + x.p, 0);
  probs.sort((a, b) => b.p - a.p || a.id - b.id);
  const nucleus = [];
  let mass = 0;
  for (const x of probs) {
    nucleus.push(x);
    mass += x.p / total;
    if (mass >= topP) break;
  }
  let r = random() * nucleus.reduce((s, x) => s + x.p, 0);
  for (const x of nucleus) if ((r -= x.p) <= 0) return x.id;
  return nucleus[nucleus.length - 1].id;
}

/** Continues `prompt`; returns only the new token ids. */
export async function generate(model: Model, prompt: readonly number[], options: GenerateOptions): Promise<number[]> {
  const { maxNewTokens, temperature = 0, topP = 1, seed = 1, eosId, onLogits } = options;
  if (prompt.length === 0) throw new RangeError('generate: the prompt needs at least one token');
  const random = uniform(seed);
  const { maxSeqLen } = model.config;
  const context = [...prompt];
  const out: number[] = [];
  const cache = model.kvCache();
  try {
    let logits = await model.decode(context.slice(-maxSeqLen), cache);
    for (let i = 0; i < maxNewTokens; i++) {
      onLogits?.(logits);
      const next = sampleToken(logits, temperature, topP, random);
      out.push(next);
      context.push(next);
      if (next === eosId || i === maxNewTokens - 1) break;
      if (cache.length === maxSeqLen) {
        cache.clear();
        logits = await model.decode(context.slice(-Math.ceil(maxSeqLen / 2)), cache);
      } else {
        logits = await model.decode([next], cache);
      }
    }
  } finally {
    cache.release();
  }
  return out;
}
