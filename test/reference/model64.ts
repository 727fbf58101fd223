// A float64 reference of the Mixtral / Qwen2-MoE decoder, written independently of src/model
// as plain loops over Float64Arrays, for tests only: logits against the Hugging Face fixtures,
// and finite differences of its loss against the model's backward.
//
// Parameters are looked up by canonical name (see src/io/hf.ts); linear weights are [out, in].
// LoRA, when `lora` is given, adds (alpha / r) · (x·Aᵀ)·Bᵀ to a target's output, with A [r, in]
// and B [out, r] stored as `<target>.lora_a` / `<target>.lora_b`.
import type { ModelConfig } from '../../src/model/config.ts';

export type Params64 = (name: string) => Float64Array | undefined;

function param(get: Params64, name: string): Float64Array {
  const p = get(name);
  if (!p) throw new Error(`reference model: missing parameter ${name}`);
  return p;
}

/** y[t, o] = Σ_i x[t, i] w[o, i] (+ bias[o]) (+ LoRA). */
function linear(
  get: Params64, name: string, x: Float64Array, rows: number, inDim: number, outDim: number,
  lora?: { rank: number; alpha: number }, bias = false,
): Float64Array {
  const w = param(get, name);
  const b = bias ? param(get, `${name}_bias`) : undefined;
  const y = new Float64Array(rows * outDim);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < outDim; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inDim; i++) s += x[t * inDim + i] * w[o * inDim + i];
      y[t * outDim + o] = s;
    }
  }
  const a = lora && get(`${name}.lora_a`);
  if (lora && a) {
    const bm = param(get, `${name}.lora_b`);
    const scale = lora.alpha / lora.rank;
    for (let t = 0; t < rows; t++) {
      const xa = new Float64Array(lora.rank);
      for (let r = 0; r < lora.rank; r++) for (let i = 0; i < inDim; i++) xa[r] += x[t * inDim + i] * a[r * inDim + i];
      for (let o = 0; o < outDim; o++) {
        let s = 0;
        for (let r = 0; r < lora.rank; r++) s += xa[r] * bm[o * lora.rank + r];
        y[t * outDim + o] += scale * s;
      }
    }
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float64Array, rows: number, dim: number, eps: number): Float64Array {
  const y = new Float64Array(rows * dim);
  for (let t = 0; t < rows; t++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[t * dim + i] ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[t * dim + i] = x[t * dim + i] * r * w[i];
  }
  return y;
}

/** Rotary embedding in place on [T, heads, D], rotate-half pairing (i, i + D/2). */
function rope(x: Float64Array, tokens: number, heads: number, d: number, theta: number): void {
  const half = d / 2;
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * d;
      for (let i = 0; i < half; i++) {
        const angle = t * theta ** (-(2 * i) / d);
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        const x1 = x[base + i];
        const x2 = x[base + i + half];
        x[base + i] = x1 * c - x2 * s;
        x[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

function swiglu(
  get: Params64, prefix: string, x: Float64Array, rows: number, dim: number, hidden: number, lora?: { rank: number; alpha: number },
): Float64Array {
  const g = linear(get, `${prefix}.gate`, x, rows, dim, hidden, lora);
  const u = linear(get, `${prefix}.up`, x, rows, dim, hidden, lora);
  for (let i = 0; i < g.length; i++) g[i] = silu(g[i]) * u[i];
  return linear(get, `${prefix}.down`, g, rows, hidden, dim, lora);
}

export interface RefOutput {
  logits: Float64Array;
  /** Mean cross-entropy over targets ≥ 0, plus the router auxiliary loss times its coefficient. */
  loss: number;
  auxLoss: number;
}

/**
 * Forward over one sequence of `tokens` (positions 0..T-1). With `targets`, also the loss.
 * The auxiliary loss is Switch/Mixtral style per layer: E · Σ_e f_e · P_e, with f_e the share
 * of top-k assignments going to e and P_e the mean router probability, averaged over layers.
 */
export function forward64(
  cfg: ModelConfig, get: Params64, tokens: number[], targets?: number[], lora?: { rank: number; alpha: number },
  /** Experts ("layer.expert") treated as unreachable: dropped from the top-k, the rest renormalized. */
  dropped: ReadonlySet<string> = new Set(),
): RefOutput {
  const T = tokens.length;
  const H = cfg.hiddenSize;
  const D = cfg.headDim;
  const E = cfg.numExperts;
  const embed = param(get, 'embed');
  let x = new Float64Array(T * H);
  for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) x[t * H + i] = embed[tokens[t] * H + i];
  let auxLoss = 0;

  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `layers.${l}`;
    const h = rmsnorm(x, param(get, `${p}.attn_norm`), T, H, cfg.rmsNormEps);
    const q = linear(get, `${p}.attn.q`, h, T, H, cfg.numHeads * D, lora, cfg.attentionBias);
    const k = linear(get, `${p}.attn.k`, h, T, H, cfg.numKvHeads * D, lora, cfg.attentionBias);
    const v = linear(get, `${p}.attn.v`, h, T, H, cfg.numKvHeads * D, lora, cfg.attentionBias);
    rope(q, T, cfg.numHeads, D, cfg.ropeTheta);
    rope(k, T, cfg.numKvHeads, D, cfg.ropeTheta);
    const att = new Float64Array(T * cfg.numHeads * D);
    const group = cfg.numHeads / cfg.numKvHeads;
    for (let hd = 0; hd < cfg.numHeads; hd++) {
      const kv = Math.floor(hd / group);
      for (let t = 0; t < T; t++) {
        const scores = new Float64Array(t + 1);
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < D; i++) dot += q[(t * cfg.numHeads + hd) * D + i] * k[(s * cfg.numKvHeads + kv) * D + i];
          scores[s] = dot / Math.sqrt(D);
          max = Math.max(max, scores[s]);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) sum += (scores[s] = Math.exp(scores[s] - max));
        for (let s = 0; s <= t; s++) {
          for (let i = 0; i < D; i++) att[(t * cfg.numHeads + hd) * D + i] += (scores[s] / sum) * v[(s * cfg.numKvHeads + kv) * D + i];
        }
      }
    }
    const o = linear(get, `${p}.attn.o`, att, T, cfg.numHeads * D, H, lora);
    x = x.map((xi, i) => xi + o[i]);

    const hf = rmsnorm(x, param(get, `${p}.ffn_norm`), T, H, cfg.rmsNormEps);
    const logits = linear(get, `${p}.router`, hf, T, H, E);
    const moe = new Float64Array(T * H);
    const share = new Float64Array(E);
    const meanProb = new Float64Array(E);
    for (let t = 0; t < T; t++) {
      const row = Array.from(logits.subarray(t * E, (t + 1) * E));
      const max = Math.max(...row);
      const exps = row.map((z) => Math.exp(z - max));
      const total = exps.reduce((a, b) => a + b, 0);
      const probs = exps.map((z) => z / total);
      probs.forEach((pr, e) => (meanProb[e] += pr / T));
      const chosen = probs.map((pr, e) => ({ pr, e })).sort((a, b) => b.pr - a.pr || a.e - b.e).slice(0, cfg.expertsPerToken);
      const live = chosen.filter(({ e }) => !dropped.has(`${l}.${e}`));
      const liveMass = live.reduce((a, c) => a + c.pr, 0);
      const norm = cfg.normTopkProb ? liveMass : liveMass / chosen.reduce((a, c) => a + c.pr, 0);
      const xt = hf.subarray(t * H, (t + 1) * H);
      for (const { e } of chosen) share[e] += 1 / (T * cfg.expertsPerToken);
      for (const { pr, e } of live) {
        const y = swiglu(get, `${p}.experts.${e}`, xt, 1, H, cfg.expertHiddenSize, lora);
        for (let i = 0; i < H; i++) moe[t * H + i] += (pr / norm) * y[i];
      }
      if (cfg.sharedExpertHiddenSize > 0) {
        const y = swiglu(get, `${p}.shared_expert`, xt, 1, H, cfg.sharedExpertHiddenSize, lora);
        const gate = sigmoid(linear(get, `${p}.shared_expert_gate`, xt, 1, H, 1)[0]);
        for (let i = 0; i < H; i++) moe[t * H + i] += gate * y[i];
      }
    }
    let aux = 0;
    for (let e = 0; e < E; e++) aux += share[e] * meanProb[e];
    auxLoss += (E * aux) / cfg.numLayers;
    x = x.map((xi, i) => xi + moe[i]);
  }

  const xf = rmsnorm(x, param(get, 'final_norm'), T, H, cfg.rmsNormEps);
  const logits = linear(get, cfg.tieEmbeddings ? 'embed' : 'lm_head', xf, T, H, cfg.vocabSize);
  let loss = 0;
  if (targets) {
    let count = 0;
    for (let t = 0; t < T; t++) {
      if (targets[t] < 0) continue;
      const row = logits.subarray(t * cfg.vocabSize, (t + 1) * cfg.vocabSize);
      const max = Math.max(...row);
      let sum = 0;
      for (const z of row) sum += Math.exp(z - max);
      loss += Math.log(sum) + max - row[targets[t]];
      count++;
    }
    loss = loss / Math.max(count, 1) + cfg.routerAuxLossCoef * auxLoss;
  }
  return { logits, loss, auxLoss };
}
