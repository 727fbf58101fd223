import { describe, expect, it } from 'vitest';
import type { Kernels } from '../../src/kernels/index.ts';
import { bf16BitsToF32, f32ToBf16Bits } from '../../proto/half.ts';
import * as ref from '../reference/ops64.ts';
import { bitEqual, fillRandom, kernelsOnOneAndTwoThreads, maxRelError, rng } from '../helpers.ts';

type Random = () => number;

function randomArray(n: number, random: Random, scale = 1): Float64Array {
  const a = new Float64Array(n);
  fillRandom(a, random, scale);
  return a;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * max |x − y| / max(max |y|, floor). The floor is the natural size of a result whose exact
 * value cancels to near zero (e.g. the gradient of a one-token attention), where an error
 * relative to the result itself would measure nothing but f32 rounding of the terms.
 */
function errorAbove(x: ArrayLike<number>, y: ArrayLike<number>, floor: number): number {
  let err = 0;
  let mag = floor;
  for (let i = 0; i < y.length; i++) {
    err = Math.max(err, Math.abs(x[i] - y[i]));
    mag = Math.max(mag, Math.abs(y[i]));
  }
  return err / mag;
}

/** Central differences of f at every coordinate of x. */
function numericGrad(f: (x: Float64Array) => number, x: Float64Array, h = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const keep = x[i];
    x[i] = keep + h;
    const up = f(x);
    x[i] = keep - h;
    const down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

describe('float64 references agree with finite differences of their forwards', () => {
  const random = rng(11);
  const FD_TOL = 1e-7;

  it('rmsNorm', () => {
    const [rows, dim, eps] = [3, 7, 1e-5];
    const x = randomArray(rows * dim, random), w = randomArray(dim, random), dy = randomArray(rows * dim, random);
    const { dx, dw } = ref.rmsNormBackward64(x, w, dy, rows, dim, eps);
    expect(maxRelError(dx, numericGrad((xx) => dot(dy, ref.rmsNorm64(xx, w, rows, dim, eps).y), x))).toBeLessThan(FD_TOL);
    expect(maxRelError(dw, numericGrad((ww) => dot(dy, ref.rmsNorm64(x, ww, rows, dim, eps).y), w))).toBeLessThan(FD_TOL);
  });

  it('rope (the backward is the inverse rotation)', () => {
    const [tokens, heads, headDim, theta] = [3, 2, 6, 10000];
    const positions = [0, 5, 17];
    const x = randomArray(tokens * heads * headDim, random), dy = randomArray(x.length, random);
    const dx = ref.rope64(dy, positions, tokens, heads, headDim, theta, true);
    expect(maxRelError(dx, numericGrad((xx) => dot(dy, ref.rope64(xx, positions, tokens, heads, headDim, theta)), x))).toBeLessThan(FD_TOL);
  });

  it('softmax', () => {
    const [rows, n] = [3, 7];
    const x = randomArray(rows * n, random, 3), dy = randomArray(rows * n, random);
    const dx = ref.softmaxBackward64(ref.softmax64(x, rows, n), dy, rows, n);
    expect(maxRelError(dx, numericGrad((xx) => dot(dy, ref.softmax64(xx, rows, n)), x))).toBeLessThan(FD_TOL);
  });

  it('swiglu', () => {
    const n = 11;
    const g = randomArray(n, random, 4), u = randomArray(n, random), dh = randomArray(n, random);
    const { dGate, dUp } = ref.swigluBackward64(g, u, dh, n);
    expect(maxRelError(dGate, numericGrad((gg) => dot(dh, ref.swiglu64(gg, u, n)), g))).toBeLessThan(FD_TOL);
    expect(maxRelError(dUp, numericGrad((uu) => dot(dh, ref.swiglu64(g, uu, n)), u))).toBeLessThan(FD_TOL);
  });

  it('grouped causal attention', () => {
    const shape = { tokens: 6, heads: 4, kvHeads: 2, headDim: 4, scale: 0.7 };
    const { tokens: T, heads: H, kvHeads: Hkv, headDim: D } = shape;
    const q = randomArray(T * H * D, random), k = randomArray(T * Hkv * D, random), v = randomArray(T * Hkv * D, random);
    const dOut = randomArray(T * H * D, random);
    const { dq, dk, dv } = ref.attentionBackward64(q, k, v, dOut, shape);
    const loss = (qq: Float64Array, kk: Float64Array, vv: Float64Array) => dot(dOut, ref.attention64(qq, kk, vv, shape).out);
    expect(maxRelError(dq, numericGrad((x) => loss(x, k, v), q))).toBeLessThan(FD_TOL);
    expect(maxRelError(dk, numericGrad((x) => loss(q, x, v), k))).toBeLessThan(FD_TOL);
    expect(maxRelError(dv, numericGrad((x) => loss(q, k, x), v))).toBeLessThan(FD_TOL);
    // lse is the log of the softmax denominator: p = exp(score − lse) sums to 1 by construction,
    // so check it against the probabilities' definition once.
    const { lse, probs } = ref.attention64(q, k, v, shape);
    let s = 0;
    for (let d = 0; d < D; d++) s += q[(3 * H + 1) * D + d] * k[(2 * Hkv + 0) * D + d];
    expect(Math.exp(shape.scale * s - lse[1 * T + 3])).toBeCloseTo(probs[1][3][2], 12);
  });

  it('cross-entropy with an ignored row', () => {
    const [rows, vocab, scale] = [4, 9, 0.25];
    const targets = [3, -1, 0, 8];
    const x = randomArray(rows * vocab, random, 3);
    const { dLogits } = ref.crossEntropy64(x, targets, rows, vocab, scale);
    const loss = (xx: Float64Array) => scale * ref.crossEntropy64(xx, targets, rows, vocab, scale).losses.reduce((a, b) => a + b, 0);
    expect(maxRelError(dLogits, numericGrad(loss, x))).toBeLessThan(FD_TOL);
  });

  it('top-k (gradient flows to the selected values only)', () => {
    const [rows, n, k] = [3, 9, 3];
    const x = randomArray(rows * n, random);
    const dValues = randomArray(rows * k, random);
    const { indices } = ref.topK64(x, rows, n, k);
    const dx = ref.topKBackward64(indices, dValues, rows, n, k);
    expect(maxRelError(dx, numericGrad((xx) => dot(dValues, ref.topK64(xx, rows, n, k).values), x))).toBeLessThan(FD_TOL);
  });
});

describe.each(['simd', 'relaxed'] as const)('transformer ops (%s build)', (build) => {
  let one: Kernels;
  let two: Kernels;
  kernelsOnOneAndTwoThreads(build, (single, double) => ((one = single), (two = double)));

  const f32 = (kern: Kernels, data: ArrayLike<number>) => {
    const view = kern.heap.f32(data.length);
    view.set(data);
    return view;
  };
  const i32 = (kern: Kernels, data: ArrayLike<number>) => {
    const view = kern.heap.i32(data.length);
    view.set(data);
    return view;
  };
  const rand = (kern: Kernels, n: number, random: Random, scale = 1) => f32(kern, randomArray(n, random, scale));

  it.each([[1, 1], [3, 7], [5, 64], [13, 301]])('rmsNorm and its backward match float64 (rows=%i dim=%i)', (rows, dim) => {
    const random = rng(rows * 100 + dim);
    const eps = 1e-5;
    const x = rand(one, rows * dim, random, 2), w = rand(one, dim, random), dy = rand(one, rows * dim, random);
    const y = one.heap.f32(rows * dim), rstd = one.heap.f32(rows);
    one.ops.rmsNorm({ x, weight: w, y, rstd, rows, dim, eps });
    const want = ref.rmsNorm64(x, w, rows, dim, eps);
    expect(maxRelError(y, want.y)).toBeLessThan(1e-6);
    expect(maxRelError(rstd, want.rstd)).toBeLessThan(1e-6);
    const grads = ref.rmsNormBackward64(x, w, dy, rows, dim, eps);
    // dx = rstd·w⊙dy − (a term that nearly cancels it when dim is small): measure against the first.
    let termSize = 0;
    for (let i = 0; i < rows * dim; i++) termSize = Math.max(termSize, Math.abs(dy[i] * w[i % dim] * want.rstd[Math.floor(i / dim)]));
    for (const accumulate of [false, true]) {
      const dx = rand(one, rows * dim, random), dw = rand(one, dim, random);
      const dx0 = Float64Array.from(dx), dw0 = Float64Array.from(dw);
      one.ops.rmsNormBackward({ x, weight: w, rstd, dy, dx, dWeight: dw, rows, dim, accumulate });
      expect(errorAbove(dx, grads.dx.map((g, i) => g + (accumulate ? dx0[i] : 0)), termSize)).toBeLessThan(2e-6);
      expect(maxRelError(dw, grads.dw.map((g, i) => g + dw0[i]))).toBeLessThan(2e-6);
    }
    // In place: dx overwrites dy, the weight gradient still sees dy.
    const dxInPlace = f32(one, dy), dwInPlace = one.heap.f32(dim);
    one.ops.rmsNormBackward({ x, weight: w, rstd, dy: dxInPlace, dx: dxInPlace, dWeight: dwInPlace, rows, dim });
    expect(errorAbove(dxInPlace, grads.dx, termSize)).toBeLessThan(2e-6);
    expect(maxRelError(dwInPlace, grads.dw)).toBeLessThan(2e-6);
  });

  it.each([8, 10, 24, 64])(
    'rope matches the float64 rotation, in and out of place, and its backward inverts it (headDim=%i)',
    (headDim) => {
      const random = rng(headDim);
      const [tokens, heads, maxPositions] = [13, 3, 4096];
      for (const theta of [10000, 1e6]) {
        const table = one.ops.ropeTable(headDim, maxPositions, theta);
        const positionOf = (t: number) => (t === 0 ? maxPositions - 1 : Math.floor(((random() + 1) / 2) * maxPositions));
        const positions = i32(one, Array.from({ length: tokens }, (_, t) => positionOf(t)));
        const n = tokens * heads * headDim;
        const x = rand(one, n, random), out = one.heap.f32(n);
        const want = ref.rope64(x, positions, tokens, heads, headDim, theta);
        one.ops.rope({ x, out, positions, table, tokens, heads });
        expect(maxRelError(out, want)).toBeLessThan(1e-6);
        const inPlace = f32(one, x);
        one.ops.rope({ x: inPlace, positions, table, tokens, heads });
        expect(bitEqual(inPlace, out)).toBe(true);
        const dy = rand(one, n, random), dx = one.heap.f32(n);
        one.ops.ropeBackward({ x: dy, out: dx, positions, table, tokens, heads });
        expect(maxRelError(dx, ref.rope64(dy, positions, tokens, heads, headDim, theta, true))).toBeLessThan(1e-6);
        one.heap.release(table.table);
      }
    },
  );

  it.each([[1, 1], [3, 5], [7, 64], [5, 1001]])(
    'softmax and its backward match float64, with large and masked logits (rows=%i n=%i)',
    (rows, n) => {
      const random = rng(rows + n);
      const x = rand(one, rows * n, random, 30);
      if (n > 2) x[1] = -Infinity;
      const y = one.heap.f32(rows * n);
      one.ops.softmax({ x, y, rows, n });
      const want = ref.softmax64(x, rows, n);
      expect(maxRelError(y, want)).toBeLessThan(1e-6);
      const dy = rand(one, rows * n, random), dx = one.heap.f32(rows * n);
      one.ops.softmaxBackward({ y, dy, dx, rows, n });
      // dy − Σ y⊙dy cancels for a near one-hot y: measure against |dy| (≤ 1).
      expect(errorAbove(dx, ref.softmaxBackward64(want, dy, rows, n), 1)).toBeLessThan(2e-6);
      one.ops.softmax({ x, y: x, rows, n }); // in place
      expect(bitEqual(x, y)).toBe(true);
    },
  );

  it.each([[1, 3], [7, 37], [4, 64]])(
    'swiglu and its backward match float64, contiguous and as a fused gate|up matrix (rows=%i cols=%i)',
    (rows, cols) => {
      const random = rng(rows * cols);
      const gu = rand(one, rows * 2 * cols, random, 6);
      gu[0] = 100; // sigmoid saturates: no overflow or NaN
      if (cols > 1) gu[1] = -100;
      const dh = rand(one, rows * cols, random);
      const gate = new Float64Array(rows * cols), up = new Float64Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          gate[r * cols + c] = gu[r * 2 * cols + c];
          up[r * cols + c] = gu[r * 2 * cols + cols + c];
        }
      }
      const wantH = ref.swiglu64(gate, up, rows * cols);
      const want = ref.swigluBackward64(gate, up, dh, rows * cols);
      const h = one.heap.f32(rows * cols);
      // Fused: gate and up interleaved by row, stride 2·cols.
      one.ops.swiglu({ gate: gu, up: gu.subarray(cols), h, rows, cols, stride: 2 * cols });
      expect(maxRelError(h, wantH)).toBeLessThan(1e-6);
      const dgu = one.heap.f32(rows * 2 * cols);
      one.ops.swigluBackward({ gate: gu, up: gu.subarray(cols), dh, dGate: dgu, dUp: dgu.subarray(cols), rows, cols, stride: 2 * cols });
      const dGate = new Float64Array(rows * cols), dUp = new Float64Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          dGate[r * cols + c] = dgu[r * 2 * cols + c];
          dUp[r * cols + c] = dgu[r * 2 * cols + cols + c];
        }
      }
      expect(maxRelError(dGate, want.dGate)).toBeLessThan(2e-6);
      expect(maxRelError(dUp, want.dUp)).toBeLessThan(2e-6);
      // Contiguous: the same numbers.
      const g = f32(one, gate), u = f32(one, up);
      const h2 = one.heap.f32(rows * cols), dg = one.heap.f32(rows * cols), du = one.heap.f32(rows * cols);
      one.ops.swiglu({ gate: g, up: u, h: h2, rows, cols });
      one.ops.swigluBackward({ gate: g, up: u, dh, dGate: dg, dUp: du, rows, cols });
      expect(bitEqual(h2, h)).toBe(true);
      expect(maxRelError(dg, want.dGate)).toBeLessThan(2e-6);
      expect(maxRelError(du, want.dUp)).toBeLessThan(2e-6);
      one.ops.swigluBackward({ gate: g, up: u, dh, dGate: g, dUp: u, rows, cols }); // in place
      expect(bitEqual(g, dg) && bitEqual(u, du)).toBe(true);
    },
  );

  it.each([
    [1, 1, 1, 8], [5, 2, 2, 8], [13, 4, 2, 16], [37, 4, 1, 24], [67, 6, 3, 64], [130, 2, 2, 128],
  ])('causal attention and its backward match float64 (T=%i H=%i Hkv=%i D=%i)', (T, H, Hkv, D) => {
    const random = rng(T * 1000 + H * 100 + Hkv * 10 + D);
    const shape = { tokens: T, heads: H, kvHeads: Hkv, headDim: D, scale: 1 / Math.sqrt(D) };
    const q = rand(one, T * H * D, random, 2), k = rand(one, T * Hkv * D, random, 2), v = rand(one, T * Hkv * D, random);
    const out = one.heap.f32(T * H * D), lse = one.heap.f32(H * T);
    one.ops.attention({ q, k, v, out, lse, tokens: T, heads: H, kvHeads: Hkv, headDim: D });
    const want = ref.attention64(q, k, v, shape);
    expect(maxRelError(out, want.out)).toBeLessThan(5e-6);
    expect(maxRelError(lse, want.lse)).toBeLessThan(1e-6);
    const dOut = rand(one, T * H * D, random);
    const dq = one.heap.f32(T * H * D), dk = one.heap.f32(T * Hkv * D), dv = one.heap.f32(T * Hkv * D);
    one.ops.attentionBackward({ q, k, v, out, lse, dOut, dq, dk, dv, tokens: T, heads: H, kvHeads: Hkv, headDim: D });
    const grads = ref.attentionBackward64(q, k, v, dOut, shape);
    // Inputs are of unit size; dq and dk cancel to ~0 for a single token, so measure against 1.
    expect(errorAbove(dq, grads.dq, 1)).toBeLessThan(5e-6);
    expect(errorAbove(dk, grads.dk, 1)).toBeLessThan(5e-6);
    expect(maxRelError(dv, grads.dv)).toBeLessThan(5e-6);
  });

  it('cross-entropy matches float64 with ignored rows, in place, and loss-only', () => {
    const random = rng(5);
    const [rows, vocab, scale] = [7, 1001, 1 / 5];
    const targets = i32(one, [0, -1, 1000, 17, -100, 500, 3]);
    const x = rand(one, rows * vocab, random, 10);
    const want = ref.crossEntropy64(x, targets, rows, vocab, scale);
    const losses = one.heap.f32(rows), dLogits = one.heap.f32(rows * vocab).fill(7);
    one.ops.crossEntropy({ logits: x, targets, losses, dLogits, rows, vocab, scale });
    expect(maxRelError(losses, want.losses)).toBeLessThan(1e-6);
    expect(maxRelError(dLogits, want.dLogits)).toBeLessThan(1e-6);
    expect(losses[1]).toBe(0);
    expect(dLogits.subarray(vocab, 2 * vocab).every((g) => g === 0)).toBe(true);
    const lossOnly = one.heap.f32(rows);
    one.ops.crossEntropy({ logits: x, targets, losses: lossOnly, rows, vocab });
    expect(bitEqual(lossOnly, losses)).toBe(true);
    one.ops.crossEntropy({ logits: x, targets, losses, dLogits: x, rows, vocab, scale });
    expect(bitEqual(x, dLogits)).toBe(true);
  });

  it.each([[8, 1], [8, 2], [37, 3], [64, 8], [5, 5]])(
    'top-k matches float64, ties to the lower index, and its backward scatters (n=%i k=%i)',
    (n, k) => {
      const random = rng(n * 10 + k);
      const rows = 33;
      // Few distinct levels so that many rows hold ties.
      const x = f32(one, randomArray(rows * n, random).map((u) => Math.round(u * 3) / 3));
      const indices = one.heap.i32(rows * k), values = one.heap.f32(rows * k);
      one.ops.topK({ x, rows, n, k, indices, values });
      const want = ref.topK64(x, rows, n, k);
      expect(Array.from(indices)).toEqual(want.indices);
      expect(Array.from(values)).toEqual(want.values.map(Math.fround));
      const dValues = rand(one, rows * k, random), dx = rand(one, rows * n, random);
      const dx0 = Float64Array.from(dx);
      one.ops.topKBackward({ indices, dValues, dx, rows, n, k });
      expect(maxRelError(dx, ref.topKBackward64(indices, dValues, rows, n, k).map((g, i) => g + dx0[i]))).toBeLessThan(1e-7);
    },
  );

  it('adamW follows torch.optim.AdamW over several steps', () => {
    const random = rng(3);
    const n = 1003;
    const options = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5 };
    const params = rand(one, n, random), m = one.heap.f32(n), v = one.heap.f32(n);
    const p64 = Float64Array.from(params), m64 = new Float64Array(n), v64 = new Float64Array(n);
    for (let step = 1; step <= 5; step++) {
      const grads = rand(one, n, random);
      one.ops.adamW({ params, grads, m, v, n, step, ...options });
      ref.adamW64(p64, grads, m64, v64, { ...options, step });
    }
    expect(maxRelError(params, p64)).toBeLessThan(1e-6);
    expect(maxRelError(m, m64)).toBeLessThan(1e-6);
    expect(maxRelError(v, v64)).toBeLessThan(1e-6);
  });

  it('elementwise and row helpers match float64', () => {
    const random = rng(9);
    const [rows, cols, n] = [11, 37, 407];
    const a = rand(one, n, random), b = rand(one, n, random), out = one.heap.f32(n);
    one.ops.add(a, b, out, n);
    expect(maxRelError(out, Array.from(a, (x, i) => x + b[i]))).toBeLessThan(1e-7);
    const y = f32(one, b);
    one.ops.axpy(-0.3, a, y, n);
    expect(maxRelError(y, Array.from(a, (x, i) => b[i] - 0.3 * x))).toBeLessThan(2e-7);
    one.ops.scale(a, 1.5, n, out);
    expect(maxRelError(out, Array.from(a, (x) => 1.5 * x))).toBeLessThan(1e-7);
    const big = rand(one, 5001, random);
    expect(one.ops.sumSquares(big, 5001) / dot(big, big) - 1).toBeLessThan(1e-6);

    const src = rand(one, rows * cols, random);
    const row = (a: Float32Array, r: number) => a.subarray(r * cols, (r + 1) * cols);
    const indices = i32(one, [10, 0, 3, 3, 7]);
    const gathered = one.heap.f32(5 * cols);
    one.ops.gatherRows({ src, indices, dst: gathered, rows: 5, cols, srcRows: rows });
    for (let r = 0; r < 5; r++) expect(Array.from(row(gathered, r))).toEqual(Array.from(row(src, indices[r])));

    const weights = f32(one, [0.5, -1, 2, 3, 0.25]);
    const scaled = one.heap.f32(5 * cols);
    one.ops.scaleRows({ src: gathered, weights, dst: scaled, rows: 5, cols });
    for (let r = 0; r < 5; r++) {
      expect(Array.from(row(scaled, r))).toEqual(Array.from(row(gathered, r), (x) => Math.fround(weights[r] * x)));
    }
    const summed = Float64Array.from(scaled, (x, i) => x + weights[Math.floor(i / cols)] * gathered[i]);
    one.ops.scaleRows({ src: gathered, weights, dst: scaled, rows: 5, cols, accumulate: true });
    expect(maxRelError(scaled, summed)).toBeLessThan(2e-7);
    const dst = rand(one, rows * cols, random);
    const want = Float64Array.from(dst);
    for (let r = 0; r < 5; r++) for (let c = 0; c < cols; c++) want[indices[r] * cols + c] += weights[r] * gathered[r * cols + c];
    one.ops.scatterAddRows({ src: gathered, indices, weights, dst, rows: 5, cols, dstRows: rows });
    expect(maxRelError(dst, want)).toBeLessThan(2e-7);

    const dots = one.heap.f32(rows);
    one.ops.rowDots(src, dst, dots, rows, cols);
    expect(maxRelError(dots, Array.from({ length: rows }, (_, r) => dot(row(src, r), row(dst, r))))).toBeLessThan(1e-6);

    const bias = rand(one, cols, random), x = f32(one, src);
    one.ops.addBias(x, bias, rows, cols);
    expect(maxRelError(x, Array.from(src, (s, i) => s + bias[i % cols]))).toBeLessThan(1e-7);
    const dBias = f32(one, bias);
    one.ops.biasGrad(src, dBias, rows, cols);
    const wantBias = Array.from(bias, (b0, c) => b0 + Array.from({ length: rows }, (_, r) => src[r * cols + c]).reduce((s, t) => s + t, 0));
    expect(maxRelError(dBias, wantBias)).toBeLessThan(1e-6);
  });

  it('bfloat16 conversion rounds as proto/half.ts does (ties to even, NaN kept) and expands exactly, on 1 and 2 threads', () => {
    const random = rng(31);
    const special = [0, -0, 1, -1, Infinity, -Infinity, NaN, 1e-40, -3e-39, 3.4e38, -3.4028234e38, 65504,
      1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20]; // ties round to even; just above a tie rounds up
    const n = 100_003; // parallel, with a scalar tail
    const randomMagnitude = () => (random() - 0.5) * 10 ** Math.floor(random() * 12 - 6);
    const values = Float32Array.from({ length: n }, (_, i) => (i < special.length ? special[i] : randomMagnitude()));
    const expected = Uint16Array.from(values, (x) => f32ToBf16Bits(x));
    for (const kern of [one, two]) {
      const x = f32(kern, values);
      const bits = kern.heap.u16(n);
      kern.ops.toBf16(x, bits, n);
      expect(Array.from(bits)).toEqual(Array.from(expected));
      const back = kern.heap.f32(n);
      kern.ops.fromBf16(bits, back, n);
      expect(Array.from(back)).toEqual(Array.from(expected, (h) => bf16BitsToF32(h)));
    }
    expect(() => one.ops.toBf16(one.heap.f32(8), one.heap.u16(4), 8)).toThrow(/toBf16: bf16/);
    expect(() => one.ops.fromBf16(new Uint16Array(8), one.heap.f32(8), 8)).toThrow(/fromBf16: bf16/);
  });

  it('gives bit-identical results on 1 and 2 threads', () => {
    // Sizes above the wrappers' single-thread thresholds, odd so that splits fall mid-vector.
    const runs: [string, (kern: Kernels, random: Random) => (Float32Array | Int32Array)[]][] = [
      ['rmsNorm', (kern, random) => {
        const [rows, dim] = [67, 515];
        const x = rand(kern, rows * dim, random), weight = rand(kern, dim, random);
        const y = kern.heap.f32(rows * dim), rstd = kern.heap.f32(rows);
        kern.ops.rmsNorm({ x, weight, y, rstd, rows, dim, eps: 1e-6 });
        const dy = rand(kern, rows * dim, random), dx = kern.heap.f32(rows * dim), dWeight = rand(kern, dim, random);
        kern.ops.rmsNormBackward({ x, weight, rstd, dy, dx, dWeight, rows, dim });
        return [y, rstd, dx, dWeight];
      }],
      ['rope', (kern, random) => {
        const [tokens, heads, headDim] = [301, 4, 32];
        const table = kern.ops.ropeTable(headDim, 512, 10000);
        const positions = i32(kern, Array.from({ length: tokens }, (_, t) => t));
        const x = rand(kern, tokens * heads * headDim, random);
        kern.ops.rope({ x, positions, table, tokens, heads });
        return [x];
      }],
      ['softmax', (kern, random) => {
        const [rows, n] = [67, 513];
        const x = rand(kern, rows * n, random, 5), y = kern.heap.f32(rows * n), dx = kern.heap.f32(rows * n);
        kern.ops.softmax({ x, y, rows, n });
        kern.ops.softmaxBackward({ y, dy: x, dx, rows, n });
        return [y, dx];
      }],
      ['swiglu', (kern, random) => {
        const [rows, cols] = [67, 515];
        const g = rand(kern, rows * cols, random, 4), u = rand(kern, rows * cols, random), h = kern.heap.f32(rows * cols);
        const dg = kern.heap.f32(rows * cols), du = kern.heap.f32(rows * cols);
        kern.ops.swiglu({ gate: g, up: u, h, rows, cols });
        kern.ops.swigluBackward({ gate: g, up: u, dh: u, dGate: dg, dUp: du, rows, cols });
        return [h, dg, du];
      }],
      ['attention', (kern, random) => {
        const [T, H, Hkv, D] = [131, 8, 2, 32]; // T·H·D above the threshold: the kv-group sum runs split too
        const q = rand(kern, T * H * D, random), k = rand(kern, T * Hkv * D, random), v = rand(kern, T * Hkv * D, random);
        const out = kern.heap.f32(T * H * D), lse = kern.heap.f32(H * T);
        const args = { q, k, v, out, lse, tokens: T, heads: H, kvHeads: Hkv, headDim: D };
        kern.ops.attention(args);
        const dq = kern.heap.f32(T * H * D), dk = kern.heap.f32(T * Hkv * D), dv = kern.heap.f32(T * Hkv * D);
        kern.ops.attentionBackward({ ...args, dOut: rand(kern, T * H * D, random), dq, dk, dv });
        return [out, lse, dq, dk, dv];
      }],
      ['crossEntropy', (kern, random) => {
        const [rows, vocab] = [37, 1001];
        const logits = rand(kern, rows * vocab, random, 4), losses = kern.heap.f32(rows);
        const targets = i32(kern, Array.from({ length: rows }, (_, r) => (r % 5 === 0 ? -1 : (r * 97) % vocab)));
        kern.ops.crossEntropy({ logits, targets, losses, dLogits: logits, rows, vocab, scale: 1 / 30 });
        return [losses, logits];
      }],
      ['topK', (kern, random) => {
        const [rows, n, k] = [4099, 64, 8];
        const x = rand(kern, rows * n, random), indices = kern.heap.i32(rows * k), values = kern.heap.f32(rows * k);
        kern.ops.topK({ x, rows, n, k, indices, values });
        kern.ops.topKBackward({ indices, dValues: values, dx: x, rows, n, k });
        return [indices, values, x];
      }],
      ['adamW', (kern, random) => {
        const n = 40_001;
        const params = rand(kern, n, random), grads = rand(kern, n, random), m = rand(kern, n, random), v = rand(kern, n, random, 0.1);
        v.forEach((x, i) => (v[i] = Math.abs(x)));
        kern.ops.adamW({ params, grads, m, v, n, lr: 1e-3, step: 3 });
        return [params, m, v];
      }],
      ['helpers', (kern, random) => {
        const [rows, cols] = [257, 131];
        const n = rows * cols;
        const a = rand(kern, n, random), b = rand(kern, n, random), sum = kern.heap.f32(n);
        kern.ops.add(a, b, sum, n);
        kern.ops.axpy(0.7, a, b, n);
        kern.ops.scale(a, 3, n);
        const norm = f32(kern, [kern.ops.sumSquares(b, n)]);
        const indices = i32(kern, Array.from({ length: rows }, (_, r) => (r * 31) % rows));
        const gathered = kern.heap.f32(n);
        kern.ops.gatherRows({ src: a, indices, dst: gathered, rows, cols, srcRows: rows });
        kern.ops.scatterAddRows({ src: gathered, indices, weights: a, dst: b, rows, cols, dstRows: rows });
        kern.ops.scaleRows({ src: gathered, weights: a, dst: gathered, rows, cols });
        kern.ops.scaleRows({ src: a, weights: b, dst: gathered, rows, cols, accumulate: true });
        const dots = kern.heap.f32(rows), dBias = kern.heap.f32(cols);
        kern.ops.rowDots(a, b, dots, rows, cols);
        kern.ops.addBias(b, dBias.fill(0.5), rows, cols);
        kern.ops.biasGrad(b, dBias, rows, cols);
        return [sum, a, b, norm, gathered, dots, dBias];
      }],
    ];
    for (const [name, run] of runs) {
      const single = run(one, rng(1));
      const pair = run(two, rng(1));
      single.forEach((x, i) => {
        const same = x instanceof Int32Array ? Array.from(x).join() === Array.from(pair[i]).join() : bitEqual(x, pair[i] as Float32Array);
        expect(same, `${name} output ${i}`).toBe(true);
      });
    }
  });

  it('rejects bad arguments with a clear error', () => {
    const { ops, heap } = one;
    const x = heap.f32(12), w = heap.f32(4), y = heap.f32(12), rstd = heap.f32(3);
    expect(() => ops.rmsNorm({ x, weight: w, y, rstd, rows: 4, dim: 4, eps: 1e-5 })).toThrow(/rmsNorm: x has 12 elements, needs 16/);
    expect(() => ops.rmsNorm({ x: new Float32Array(12), weight: w, y, rstd, rows: 3, dim: 4, eps: 1e-5 }))
      .toThrow(/not in the kernel heap/);
    expect(() => ops.rmsNormBackward({ x, weight: w, rstd, dy: y, dx: y, dWeight: heap.f32(3), rows: 3, dim: 4 }))
      .toThrow(/dWeight has 3 elements, needs 4/);
    expect(() => ops.softmax({ x, y, rows: 2.5, n: 4 })).toThrow(/rows must be a non-negative integer/);

    const table = ops.ropeTable(4, 8, 10000);
    expect(() => ops.ropeTable(5, 8, 10000)).toThrow(/headDim must be even/);
    expect(() => ops.rope({ x, positions: i32(one, [0, 8, 1]), table, tokens: 3, heads: 1 }))
      .toThrow(/positions\[1\] = 8 is outside \[0, 8\)/);

    expect(() => ops.swiglu({ gate: x, up: x, h: y, rows: 3, cols: 4, stride: 3 })).toThrow(/stride 3 is smaller than cols 4/);

    const attn = {
      q: heap.f32(64), k: heap.f32(64), v: heap.f32(64), out: heap.f32(64), lse: heap.f32(8), tokens: 2, heads: 4, kvHeads: 3, headDim: 8,
    };
    expect(() => ops.attention(attn)).toThrow(/heads \(4\) must be a positive multiple of kvHeads \(3\)/);
    expect(() => ops.attention({ ...attn, kvHeads: 2, headDim: 12 })).toThrow(/headDim must be a positive multiple of 8/);
    expect(() => ops.attention({ ...attn, kvHeads: 2, lse: heap.f32(7) })).toThrow(/lse has 7 elements, needs 8/);
    const T = 700, D = 128;
    const long = {
      q: heap.f32(T * D), k: heap.f32(T * D), v: heap.f32(T * D), out: heap.f32(T * D), lse: heap.f32(T),
      tokens: T, heads: 1, kvHeads: 1, headDim: D,
    };
    expect(() => ops.attention(long)).not.toThrow();
    expect(() => ops.attentionBackward({ ...long, dOut: long.out, dq: heap.f32(T * D), dk: heap.f32(T * D), dv: heap.f32(T * D) }))
      .toThrow(/700 tokens at headDim 128 need \d+ bytes of scratch per thread/);

    const losses = heap.f32(3);
    expect(() => ops.crossEntropy({ logits: x, targets: i32(one, [0, 4, 1]), losses, rows: 3, vocab: 4 }))
      .toThrow(/targets\[1\] = 4 is not below vocab 4/);
    expect(() => ops.topK({ x, rows: 3, n: 4, k: 5, indices: heap.i32(15), values: heap.f32(15) })).toThrow(/k must be from 1 to n = 4/);
    expect(() => ops.topKBackward({ indices: i32(one, [0, 4]), dValues: heap.f32(2), dx: x, rows: 2, n: 4, k: 1 }))
      .toThrow(/indices\[1\] = 4 is outside/);
    expect(() => ops.adamW({ params: x, grads: x, m: x, v: x, n: 12, lr: 1e-3, step: 0 })).toThrow(/step must be an integer ≥ 1/);
    expect(() => ops.adamW({ params: x, grads: x, m: x, v: x, n: 12, lr: 1e-3, step: 1, beta2: 1 })).toThrow(/beta2 must be in \[0, 1\)/);
    expect(() => ops.scatterAddRows({ src: x, indices: i32(one, [0, -1]), dst: y, rows: 2, cols: 4, dstRows: 3 }))
      .toThrow(/indices\[1\] = -1 is outside \[0, 3\)/);
    expect(() => ops.gatherRows({ src: x, indices: i32(one, [3]), dst: y, rows: 1, cols: 4, srcRows: 3 }))
      .toThrow(/indices\[0\] = 3 is outside \[0, 3\)/);
    expect(() => ops.scaleRows({ src: x, weights: one.heap.f32(2), dst: y, rows: 3, cols: 4 }))
      .toThrow(/scaleRows: weights has 2 elements, needs 3/);
  });
});
