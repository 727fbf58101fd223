// Plain float64 references of the transformer ops (src/kernels/ops.ts) and their backwards.
// Used only by tests: simple loops, no tricks, layouts as documented in the kernels.

type Arr = ArrayLike<number>;

export function rmsNorm64(x: Arr, w: Arr, rows: number, dim: number, eps: number): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(rows * dim);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    rstd[r] = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = x[r * dim + i] * rstd[r] * w[i];
  }
  return { y, rstd };
}

export function rmsNormBackward64(x: Arr, w: Arr, dy: Arr, rows: number, dim: number, eps: number): { dx: Float64Array; dw: Float64Array } {
  const { rstd } = rmsNorm64(x, w, rows, dim, eps);
  const dx = new Float64Array(rows * dim);
  const dw = new Float64Array(dim);
  for (let r = 0; r < rows; r++) {
    const s = rstd[r];
    let dot = 0; // Σ dy·w·x
    for (let i = 0; i < dim; i++) dot += dy[r * dim + i] * w[i] * x[r * dim + i];
    for (let i = 0; i < dim; i++) {
      const o = r * dim + i;
      // y_i = x_i·s·w_i, ds/dx_j = −s³·x_j/dim
      dx[o] = dy[o] * w[i] * s - (x[o] * s * s * s * dot) / dim;
      dw[i] += dy[o] * x[o] * s;
    }
  }
  return { dx, dw };
}

/** HF rotate_half rotation of x [tokens, heads, headDim] by angle pos·theta^(−2i/headDim); inverse rotates back. */
export function rope64(
  x: Arr, positions: Arr, tokens: number, heads: number, headDim: number, theta: number, inverse = false,
): Float64Array {
  const half = headDim / 2;
  const y = new Float64Array(tokens * heads * headDim);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = (inverse ? -1 : 1) * positions[t] * theta ** (-(2 * i) / headDim);
        const a = x[base + i], b = x[base + half + i];
        y[base + i] = a * Math.cos(angle) - b * Math.sin(angle);
        y[base + half + i] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
  }
  return y;
}

export function softmax64(x: Arr, rows: number, n: number): Float64Array {
  const y = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < n; i++) m = Math.max(m, x[r * n + i]);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += Math.exp(x[r * n + i] - m);
    for (let i = 0; i < n; i++) y[r * n + i] = Math.exp(x[r * n + i] - m) / sum;
  }
  return y;
}

export function softmaxBackward64(y: Arr, dy: Arr, rows: number, n: number): Float64Array {
  const dx = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let dot = 0;
    for (let i = 0; i < n; i++) dot += y[r * n + i] * dy[r * n + i];
    for (let i = 0; i < n; i++) dx[r * n + i] = y[r * n + i] * (dy[r * n + i] - dot);
  }
  return dx;
}

const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));

export function swiglu64(gate: Arr, up: Arr, n: number): Float64Array {
  const h = new Float64Array(n);
  for (let i = 0; i < n; i++) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
  return h;
}

export function swigluBackward64(gate: Arr, up: Arr, dh: Arr, n: number): { dGate: Float64Array; dUp: Float64Array } {
  const dGate = new Float64Array(n);
  const dUp = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = sigmoid(gate[i]);
    dGate[i] = dh[i] * up[i] * (s + gate[i] * s * (1 - s));
    dUp[i] = dh[i] * gate[i] * s;
  }
  return { dGate, dUp };
}

export interface AttentionShape {
  tokens: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
}

/** Causal grouped-query attention: probs[h][i][j] for j ≤ i, out [T, H, D], lse [H, T]. */
export function attention64(q: Arr, k: Arr, v: Arr, s: AttentionShape): { out: Float64Array; lse: Float64Array; probs: Float64Array[][] } {
  const { tokens: T, heads: H, kvHeads: Hkv, headDim: D, scale } = s;
  const out = new Float64Array(T * H * D);
  const lse = new Float64Array(H * T);
  const probs: Float64Array[][] = [];
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / Hkv));
    probs.push([]);
    for (let i = 0; i < T; i++) {
      const scores = new Float64Array(i + 1);
      for (let j = 0; j <= i; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(i * H + h) * D + d] * k[(j * Hkv + g) * D + d];
        scores[j] = scale * dot;
      }
      const m = Math.max(...scores);
      let sum = 0;
      for (let j = 0; j <= i; j++) sum += Math.exp(scores[j] - m);
      lse[h * T + i] = m + Math.log(sum);
      const p = scores.map((x) => Math.exp(x - m) / sum);
      probs[h].push(p);
      for (let j = 0; j <= i; j++) {
        for (let d = 0; d < D; d++) out[(i * H + h) * D + d] += p[j] * v[(j * Hkv + g) * D + d];
      }
    }
  }
  return { out, lse, probs };
}

export function attentionBackward64(
  q: Arr, k: Arr, v: Arr, dOut: Arr, s: AttentionShape,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { tokens: T, heads: H, kvHeads: Hkv, headDim: D, scale } = s;
  const { probs } = attention64(q, k, v, s);
  const dq = new Float64Array(T * H * D);
  const dk = new Float64Array(T * Hkv * D);
  const dv = new Float64Array(T * Hkv * D);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / Hkv));
    for (let i = 0; i < T; i++) {
      const p = probs[h][i];
      const dp = new Float64Array(i + 1);
      for (let j = 0; j <= i; j++) {
        for (let d = 0; d < D; d++) {
          dp[j] += dOut[(i * H + h) * D + d] * v[(j * Hkv + g) * D + d];
          dv[(j * Hkv + g) * D + d] += p[j] * dOut[(i * H + h) * D + d];
        }
      }
      let pdp = 0;
      for (let j = 0; j <= i; j++) pdp += p[j] * dp[j];
      for (let j = 0; j <= i; j++) {
        const dScore = p[j] * (dp[j] - pdp); // softmax backward
        for (let d = 0; d < D; d++) {
          dq[(i * H + h) * D + d] += scale * dScore * k[(j * Hkv + g) * D + d];
          dk[(j * Hkv + g) * D + d] += scale * dScore * q[(i * H + h) * D + d];
        }
      }
    }
  }
  return { dq, dk, dv };
}

/** Per-row loss and (softmax − onehot)·scale; negative targets give loss 0 and a zero row. */
export function crossEntropy64(
  logits: Arr, targets: Arr, rows: number, vocab: number, scale: number,
): { losses: Float64Array; dLogits: Float64Array } {
  const losses = new Float64Array(rows);
  const dLogits = new Float64Array(rows * vocab);
  const p = softmax64(logits, rows, vocab);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t < 0) continue;
    losses[r] = -Math.log(p[r * vocab + t]);
    for (let i = 0; i < vocab; i++) dLogits[r * vocab + i] = (p[r * vocab + i] - (i === t ? 1 : 0)) * scale;
  }
  return { losses, dLogits };
}

/** The k largest per row, descending; equal values keep the lower index first. */
export function topK64(x: Arr, rows: number, n: number, k: number): { indices: number[]; values: number[] } {
  const indices: number[] = [];
  const values: number[] = [];
  for (let r = 0; r < rows; r++) {
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => x[r * n + b] - x[r * n + a] || a - b);
    for (const i of order.slice(0, k)) {
      indices.push(i);
      values.push(x[r * n + i]);
    }
  }
  return { indices, values };
}

/** dx[r, indices[r, j]] += dValues[r, j]: the gradient of the selected values. */
export function topKBackward64(indices: Arr, dValues: Arr, rows: number, n: number, k: number): Float64Array {
  const dx = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) for (let j = 0; j < k; j++) dx[r * n + indices[r * k + j]] += dValues[r * k + j];
  return dx;
}

export interface AdamW64Options {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
  gradScale: number;
}

/** torch.optim.AdamW's update, in place on float64 arrays. */
export function adamW64(p: Float64Array, g: Arr, m: Float64Array, v: Float64Array, o: AdamW64Options): void {
  for (let i = 0; i < p.length; i++) {
    const grad = g[i] * o.gradScale;
    p[i] *= 1 - o.lr * o.weightDecay;
    m[i] = o.beta1 * m[i] + (1 - o.beta1) * grad;
    v[i] = o.beta2 * v[i] + (1 - o.beta2) * grad * grad;
    const mHat = m[i] / (1 - o.beta1 ** o.step);
    const vHat = v[i] / (1 - o.beta2 ** o.step);
    p[i] -= (o.lr * mHat) / (Math.sqrt(vHat) + o.eps);
  }
}
