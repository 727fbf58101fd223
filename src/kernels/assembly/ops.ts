// The transformer's non-GEMM kernels, each forward beside its backward: RMSNorm, rotary
// embeddings, row softmax, SwiGLU, causal grouped-query attention, fused softmax cross-entropy,
// top-k, AdamW, and small elementwise / row helpers.
//
// All tensors are row-major f32 unless noted. Parallel kernels take their work range
// [begin, end) and the thread's scratch last; every output element is computed by one
// thread in an order that does not depend on the range, so any thread split gives the same
// bits. SIMD bodies and scalar tails do the same IEEE operations per element (no fused
// multiply-add outside the attention tiles, which are per-head and thus never split).

// ---------------------------------------------------------------------------------------
// Shared helpers

@inline
function at(base: usize, i: i32): usize {
  return base + (<usize>i << 2);
}

@inline
function fma4(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

@inline
function hsum(v: v128): f32 {
  return (f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1)) + (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3));
}

const EXP_LO: f32 = -87.33654; // below this exp() is subnormal in f32: flushed to 0 (covers -Infinity)
const EXP_HI: f32 = 88.0; // exp(88) is finite; larger inputs are clamped (callers pass ≤ 0, or feed a sigmoid)
const ROUND: f32 = 12583039; // 1.5·2^23 + 127: x·log2(e) + ROUND rounds to n and leaves n + 127 in the low bits

/** exp of 4 lanes: Cephes expf (range reduction by ln 2, degree-5 polynomial), ~1 ulp. */
@inline
function expv(x: v128): v128 {
  const tiny = f32x4.lt(x, f32x4.splat(EXP_LO));
  // pmin/pmax are single instructions (min/max propagate NaN at several); both keep a NaN x.
  x = f32x4.pmax(f32x4.pmin(x, f32x4.splat(EXP_HI)), f32x4.splat(EXP_LO));
  const t = f32x4.add(f32x4.mul(x, f32x4.splat(1.44269504088896341)), f32x4.splat(ROUND));
  const n = f32x4.sub(t, f32x4.splat(ROUND));
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(-2.12194440e-4)));
  let p = f32x4.splat(1.9875691500e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  const y = f32x4.add(f32x4.mul(f32x4.mul(p, r), r), f32x4.add(r, f32x4.splat(1)));
  const pow2n = i32x4.shl(t, 23); // n + 127 shifted into the exponent field: 2^n
  return v128.bitselect(f32x4.splat(0), f32x4.mul(y, pow2n), tiny);
}

/** The same exp for one value, so scalar tails round exactly like SIMD lanes. */
@inline
function exp1(x: f32): f32 {
  return f32x4.extract_lane(expv(f32x4.splat(x)), 0);
}

function rowMax(x: usize, n: i32): f32 {
  let m: f32 = -Infinity;
  let i = 0;
  if (n >= 4) {
    let mv = v128.load(x);
    for (i = 4; i + 4 <= n; i += 4) mv = f32x4.pmax(mv, v128.load(at(x, i))); // a NaN still poisons the exp sum
    m = max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)), max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
  }
  for (; i < n; i++) m = max(m, load<f32>(at(x, i)));
  return m;
}

/** y[i] = exp(x[i] - shift) for i < n (y may be x; y == 0 only sums); returns the sum. */
function expRow(x: usize, y: usize, n: i32, shift: f32): f32 {
  const s = f32x4.splat(shift);
  let acc = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const e = expv(f32x4.sub(v128.load(at(x, i)), s));
    if (y) v128.store(at(y, i), e);
    acc = f32x4.add(acc, e);
  }
  let sum = hsum(acc);
  for (; i < n; i++) {
    const e = exp1(load<f32>(at(x, i)) - shift);
    if (y) store<f32>(at(y, i), e);
    sum += e;
  }
  return sum;
}

function scaleRow(x: usize, n: i32, c: f32): void {
  const cv = f32x4.splat(c);
  let i = 0;
  for (; i + 4 <= n; i += 4) v128.store(at(x, i), f32x4.mul(v128.load(at(x, i)), cv));
  for (; i < n; i++) store<f32>(at(x, i), load<f32>(at(x, i)) * c);
}

function dotRow(a: usize, b: usize, n: i32): f32 {
  let acc = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) acc = f32x4.add(acc, f32x4.mul(v128.load(at(a, i)), v128.load(at(b, i))));
  let s = hsum(acc);
  for (; i < n; i++) s += load<f32>(at(a, i)) * load<f32>(at(b, i));
  return s;
}

/**
 * dst[c] += Σ_r dy[r, c] · (x ? x[r, c] · rstd[r] : 1) for columns [c0, c1), rows in order.
 * Column-parallel so every column's sum has one fixed order (the RMSNorm weight gradient
 * and bias gradients).
 */
function columnSums(dy: usize, x: usize, rstd: usize, dst: usize, rows: i32, cols: i32, c0: i32, c1: i32): void {
  let c = c0;
  for (; c + 16 <= c1; c += 16) {
    let a0 = v128.load(at(dst, c)), a1 = v128.load(at(dst, c + 4));
    let a2 = v128.load(at(dst, c + 8)), a3 = v128.load(at(dst, c + 12));
    for (let r = 0; r < rows; r++) {
      const o = <usize>r * cols + c;
      const d = dy + (o << 2);
      let t0 = v128.load(d), t1 = v128.load(d, 16), t2 = v128.load(d, 32), t3 = v128.load(d, 48);
      if (x) {
        const xp = x + (o << 2);
        const s = v128.load32_splat(at(rstd, r));
        t0 = f32x4.mul(f32x4.mul(t0, v128.load(xp)), s);
        t1 = f32x4.mul(f32x4.mul(t1, v128.load(xp, 16)), s);
        t2 = f32x4.mul(f32x4.mul(t2, v128.load(xp, 32)), s);
        t3 = f32x4.mul(f32x4.mul(t3, v128.load(xp, 48)), s);
      }
      a0 = f32x4.add(a0, t0); a1 = f32x4.add(a1, t1); a2 = f32x4.add(a2, t2); a3 = f32x4.add(a3, t3);
    }
    v128.store(at(dst, c), a0); v128.store(at(dst, c + 4), a1);
    v128.store(at(dst, c + 8), a2); v128.store(at(dst, c + 12), a3);
  }
  for (; c < c1; c++) {
    let a = load<f32>(at(dst, c));
    for (let r = 0; r < rows; r++) {
      const o = <usize>r * cols + c;
      let t = load<f32>(dy + (o << 2));
      if (x) t = t * load<f32>(x + (o << 2)) * load<f32>(at(rstd, r));
      a += t;
    }
    store<f32>(at(dst, c), a);
  }
}

// ---------------------------------------------------------------------------------------
// RMSNorm: y = x · rstd · w, rstd = 1/sqrt(mean(x²) + eps), over rows of `dim`.

/** Rows [r0, r1): writes y and the per-row rstd that the backward needs. */
export function rmsnorm_fwd(x: usize, w: usize, y: usize, rstd: usize, dim: i32, eps: f32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const xr = x + (<usize>r * dim << 2);
    const yr = y + (<usize>r * dim << 2);
    const s: f32 = 1 / Mathf.sqrt(dotRow(xr, xr, dim) / <f32>dim + eps);
    store<f32>(at(rstd, r), s);
    const sv = f32x4.splat(s);
    let i = 0;
    for (; i + 4 <= dim; i += 4) v128.store(at(yr, i), f32x4.mul(f32x4.mul(v128.load(at(xr, i)), sv), v128.load(at(w, i))));
    for (; i < dim; i++) store<f32>(at(yr, i), load<f32>(at(xr, i)) * s * load<f32>(at(w, i)));
  }
}

/**
 * Rows [r0, r1): dx (=|+=) rstd·(w⊙dy) − x·rstd³·mean(x⊙w⊙dy). The weight gradient is a
 * separate column-parallel kernel (rmsnorm_bwd_dw) so its row sums keep a fixed order.
 */
export function rmsnorm_bwd_dx(
  x: usize, w: usize, rstd: usize, dy: usize, dx: usize, dim: i32,
  accumulate: i32, r0: i32, r1: i32, scratch: usize,
): void {
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * dim << 2;
    const xr = x + o, dyr = dy + o, dxr = dx + o;
    const s = load<f32>(at(rstd, r));
    let acc = f32x4.splat(0);
    let i = 0;
    for (; i + 4 <= dim; i += 4) {
      const dyw = f32x4.mul(v128.load(at(dyr, i)), v128.load(at(w, i)));
      acc = f32x4.add(acc, f32x4.mul(dyw, v128.load(at(xr, i))));
    }
    let dot = hsum(acc);
    for (; i < dim; i++) dot += load<f32>(at(dyr, i)) * load<f32>(at(w, i)) * load<f32>(at(xr, i));
    const coef: f32 = s * s * s * dot / <f32>dim;
    const sv = f32x4.splat(s), cv = f32x4.splat(coef);
    for (i = 0; i + 4 <= dim; i += 4) {
      let g = f32x4.sub(f32x4.mul(f32x4.mul(v128.load(at(dyr, i)), v128.load(at(w, i))), sv), f32x4.mul(v128.load(at(xr, i)), cv));
      if (accumulate) g = f32x4.add(v128.load(at(dxr, i)), g);
      v128.store(at(dxr, i), g);
    }
    for (; i < dim; i++) {
      let g = load<f32>(at(dyr, i)) * load<f32>(at(w, i)) * s - load<f32>(at(xr, i)) * coef;
      if (accumulate) g = load<f32>(at(dxr, i)) + g;
      store<f32>(at(dxr, i), g);
    }
  }
}

/** Columns [c0, c1): dw[c] += Σ_rows dy·x·rstd. */
export function rmsnorm_bwd_dw(x: usize, rstd: usize, dy: usize, dw: usize, rows: i32, dim: i32, c0: i32, c1: i32, scratch: usize): void {
  columnSums(dy, x, rstd, dw, rows, dim, c0, c1);
}

// ---------------------------------------------------------------------------------------
// Rotary embeddings (Hugging Face rotate_half: element i pairs with i + headDim/2).
// table: [maxPositions][headDim] = cos of the headDim/2 angles, then their sin.

/**
 * Tokens [t0, t1) of x [tokens, heads, headDim] at positions[t] (i32): out = rotation of x
 * (out may be x). inverse != 0 rotates by the negative angle, which is the backward.
 */
export function rope_apply(
  x: usize, out: usize, positions: usize, table: usize, heads: i32, headDim: i32,
  inverse: i32, t0: i32, t1: i32, scratch: usize,
): void {
  const half = headDim >> 1;
  const sign: f32 = inverse ? -1 : 1;
  const signv = f32x4.splat(sign);
  for (let t = t0; t < t1; t++) {
    const cs = table + (<usize>load<i32>(at(positions, t)) * headDim << 2);
    const sn = at(cs, half);
    for (let h = 0; h < heads; h++) {
      const o = (<usize>t * heads + h) * headDim << 2;
      const x1 = x + o, x2 = at(x1, half), y1 = out + o, y2 = at(y1, half);
      let i = 0;
      for (; i + 4 <= half; i += 4) {
        const a = v128.load(at(x1, i)), b = v128.load(at(x2, i));
        const c = v128.load(at(cs, i)), s = f32x4.mul(v128.load(at(sn, i)), signv);
        v128.store(at(y1, i), f32x4.sub(f32x4.mul(a, c), f32x4.mul(b, s)));
        v128.store(at(y2, i), f32x4.add(f32x4.mul(b, c), f32x4.mul(a, s)));
      }
      for (; i < half; i++) {
        const a = load<f32>(at(x1, i)), b = load<f32>(at(x2, i));
        const c = load<f32>(at(cs, i)), s = load<f32>(at(sn, i)) * sign;
        store<f32>(at(y1, i), a * c - b * s);
        store<f32>(at(y2, i), b * c + a * s);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Row softmax.

/** Rows [r0, r1) of n: y = softmax(x) (y may be x). */
export function softmax_fwd(x: usize, y: usize, n: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const xr = x + (<usize>r * n << 2), yr = y + (<usize>r * n << 2);
    const sum = expRow(xr, yr, n, rowMax(xr, n));
    scaleRow(yr, n, 1 / sum);
  }
}

/** Rows [r0, r1): dx = y ⊙ (dy − Σ y⊙dy) (dx may be dy). */
export function softmax_bwd(y: usize, dy: usize, dx: usize, n: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * n << 2;
    const yr = y + o, dyr = dy + o, dxr = dx + o;
    const dot = dotRow(yr, dyr, n);
    const dv = f32x4.splat(dot);
    let i = 0;
    for (; i + 4 <= n; i += 4) v128.store(at(dxr, i), f32x4.mul(v128.load(at(yr, i)), f32x4.sub(v128.load(at(dyr, i)), dv)));
    for (; i < n; i++) store<f32>(at(dxr, i), load<f32>(at(yr, i)) * (load<f32>(at(dyr, i)) - dot));
  }
}

// ---------------------------------------------------------------------------------------
// SwiGLU: h = silu(g) ⊙ u. g and u rows are `stride` apart (stride = 2·cols reads a fused
// [rows, gate | up] GEMM output); h rows are `cols` apart.

/** Rows [r0, r1). */
export function swiglu_fwd(g: usize, u: usize, h: usize, cols: i32, stride: i32, r0: i32, r1: i32, scratch: usize): void {
  const one = f32x4.splat(1);
  for (let r = r0; r < r1; r++) {
    const gi = g + (<usize>r * stride << 2), ui = u + (<usize>r * stride << 2), hi = h + (<usize>r * cols << 2);
    let i = 0;
    for (; i + 4 <= cols; i += 4) {
      const gv = v128.load(at(gi, i));
      const sig = f32x4.div(one, f32x4.add(one, expv(f32x4.neg(gv))));
      v128.store(at(hi, i), f32x4.mul(f32x4.mul(gv, sig), v128.load(at(ui, i))));
    }
    for (; i < cols; i++) {
      const gv = load<f32>(at(gi, i));
      const sig: f32 = 1 / (1 + exp1(-gv));
      store<f32>(at(hi, i), gv * sig * load<f32>(at(ui, i)));
    }
  }
}

/** Rows [r0, r1): dg = dh·u·σ(g)·(1 + g·(1−σ(g))), du = dh·silu(g), at the g/u stride. */
export function swiglu_bwd(
  g: usize, u: usize, dh: usize, dg: usize, du: usize, cols: i32, stride: i32,
  r0: i32, r1: i32, scratch: usize,
): void {
  const one = f32x4.splat(1);
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * stride << 2;
    const gi = g + o, ui = u + o, dgi = dg + o, dui = du + o, dhi = dh + (<usize>r * cols << 2);
    let i = 0;
    for (; i + 4 <= cols; i += 4) {
      const gv = v128.load(at(gi, i)), uv = v128.load(at(ui, i)), dhv = v128.load(at(dhi, i));
      const sig = f32x4.div(one, f32x4.add(one, expv(f32x4.neg(gv))));
      const silu = f32x4.mul(gv, sig);
      const dsilu = f32x4.mul(sig, f32x4.add(one, f32x4.mul(gv, f32x4.sub(one, sig))));
      v128.store(at(dgi, i), f32x4.mul(f32x4.mul(dhv, uv), dsilu));
      v128.store(at(dui, i), f32x4.mul(dhv, silu));
    }
    for (; i < cols; i++) {
      const gv = load<f32>(at(gi, i)), uv = load<f32>(at(ui, i)), dhv = load<f32>(at(dhi, i));
      const sig: f32 = 1 / (1 + exp1(-gv));
      const silu = gv * sig;
      const dsilu = sig * (1 + gv * (1 - sig));
      store<f32>(at(dgi, i), dhv * uv * dsilu);
      store<f32>(at(dui, i), dhv * silu);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Causal grouped-query attention for one sequence.
// q, out, dq: [T, H, D]; k, v: [T, Hkv, D]; head h reads kv head h / (H / Hkv).
// lse: [H, T], log-sum-exp of each query's scaled scores, kept by the forward so the
// backward recomputes the probabilities instead of storing T×T per head.
// Every product is a 4×8 register tile (attnTile); D must be a multiple of 8.

const QB: i32 = 4; // query rows (or keys) per tile
const KB: i32 = 8; // keys (or head dims) per tile
const TILE_BYTES: usize = QB * KB * 4;

@inline
function roundUp(n: i32, m: i32): i32 {
  return (n + m - 1) / m * m;
}

/**
 * tile[r][c] = Σ_{p<count} a_r[p·aStep] · b[p·bStep + c] for r < 4, c < 8, written to `tile`
 * (row-major 4×8). a_r are four row pointers (callers repeat the last valid row past an edge).
 */
function attnTile(a0: usize, a1: usize, a2: usize, a3: usize, aStep: usize, b: usize, bStep: usize, count: i32, tile: usize): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  let ao: usize = 0;
  for (let p = 0; p < count; p++) {
    const b0 = v128.load(b), b1 = v128.load(b, 16);
    let a = v128.load32_splat(a0 + ao);
    c00 = fma4(a, b0, c00); c01 = fma4(a, b1, c01);
    a = v128.load32_splat(a1 + ao);
    c10 = fma4(a, b0, c10); c11 = fma4(a, b1, c11);
    a = v128.load32_splat(a2 + ao);
    c20 = fma4(a, b0, c20); c21 = fma4(a, b1, c21);
    a = v128.load32_splat(a3 + ao);
    c30 = fma4(a, b0, c30); c31 = fma4(a, b1, c31);
    ao += aStep;
    b += bStep;
  }
  v128.store(tile, c00); v128.store(tile, c01, 16);
  v128.store(tile, c10, 32); v128.store(tile, c11, 48);
  v128.store(tile, c20, 64); v128.store(tile, c21, 80);
  v128.store(tile, c30, 96); v128.store(tile, c31, 112);
}

/** Packs kv head g of src [T, Hkv, D] as [Tpad/8][D][8] (keys past T are zero). */
function packKeys(dst: usize, src: usize, T: i32, Hkv: i32, D: i32, g: i32): void {
  const tpad = roundUp(T, KB);
  for (let j0 = 0; j0 < tpad; j0 += KB) {
    const panel = dst + (<usize>j0 * D << 2);
    for (let c = 0; c < KB; c++) {
      const j = j0 + c;
      if (j < T) {
        const row = src + ((<usize>j * Hkv + g) * D << 2);
        for (let d = 0; d < D; d++) store<f32>(panel + ((<usize>d * KB + c) << 2), load<f32>(at(row, d)));
      } else {
        for (let d = 0; d < D; d++) store<f32>(panel + ((<usize>d * KB + c) << 2), 0);
      }
    }
  }
}

/**
 * Scaled scores of query rows i0.. (4 row pointers into q) against keys [0, nk), written to
 * dst rows r (stride `ld` floats), columns up to roundUp(nk, 8).
 */
function scoreRows(
  qr0: usize, qr1: usize, qr2: usize, qr3: usize, kp: usize, D: i32, nk: i32, scale: f32,
  dst: usize, ld: i32, rows: i32, tile: usize,
): void {
  const sv = f32x4.splat(scale);
  for (let j0 = 0; j0 < nk; j0 += KB) {
    attnTile(qr0, qr1, qr2, qr3, 4, kp + (<usize>j0 * D << 2), KB << 2, D, tile);
    for (let r = 0; r < rows; r++) {
      const d = dst + ((<usize>r * ld + j0) << 2);
      const t = tile + (<usize>r * KB << 2);
      v128.store(d, f32x4.mul(v128.load(t), sv));
      v128.store(d, f32x4.mul(v128.load(t, 16), sv), 16);
    }
  }
}

/** Zeroes row entries [from, to): the causally masked keys inside a computed tile. */
@inline
function zeroFrom(row: usize, from: i32, to: i32): void {
  if (to > from) memory.fill(at(row, from), 0, <usize>(to - from) << 2);
}

/**
 * dst rows (stride dstLd floats, `rows` of 4 valid) [., d0..d0+8) for every d0 < D:
 * Σ_{p<count} a_r[p·aStep] · b[p·bStep + d0 + c].
 */
function tileRowsOverD(
  a0: usize, a1: usize, a2: usize, a3: usize, aStep: usize, b: usize, bStep: usize, count: i32, D: i32,
  dst: usize, dstLd: usize, rows: i32, tile: usize,
): void {
  for (let d0 = 0; d0 < D; d0 += KB) {
    attnTile(a0, a1, a2, a3, aStep, at(b, d0), bStep, count, tile);
    for (let r = 0; r < rows; r++) {
      const d = at(dst + <usize>r * (dstLd << 2), d0);
      const t = tile + (<usize>r * KB << 2);
      v128.store(d, v128.load(t));
      v128.store(d, v128.load(t, 16), 16);
    }
  }
}

/** Scratch bytes one thread needs for attention at T tokens and head dim D. */
export function attention_scratch_need(T: i32, D: i32, backward: i32): f64 {
  const tpad = <f64>roundUp(T, KB);
  const packed = tpad * D * 4;
  if (!backward) return packed + <f64>QB * tpad * 4 + <f64>TILE_BYTES;
  return 2 * packed + 2 * <f64>T * tpad * 4 + <f64>T * 4 + <f64>TILE_BYTES;
}

/** Heads [h0, h1): out = softmax(scale·q·kᵀ, causal)·v; lse[h, i] = log Σ_j exp(scale·q_i·k_j). */
export function attention_fwd(
  q: usize, k: usize, v: usize, out: usize, lse: usize,
  T: i32, H: i32, Hkv: i32, D: i32, scale: f32, h0: i32, h1: i32, scratch: usize,
): void {
  const tpad = roundUp(T, KB);
  const group = H / Hkv;
  const kp = scratch;
  const probs = kp + (<usize>tpad * D << 2); // [4][tpad]: the current query block
  const tile = probs + (<usize>QB * tpad << 2);
  const qLd = <usize>H * D << 2, vLd = <usize>Hkv * D << 2;
  let packed = -1;
  for (let h = h0; h < h1; h++) {
    const g = h / group;
    if (g != packed) { packKeys(kp, k, T, Hkv, D, g); packed = g; }
    const qh = q + (<usize>h * D << 2), oh = out + (<usize>h * D << 2), vg = v + (<usize>g * D << 2);
    for (let i0 = 0; i0 < T; i0 += QB) {
      const rows = min(QB, T - i0);
      const nk = i0 + rows;
      const last = rows - 1;
      const q0 = qh + <usize>i0 * qLd;
      scoreRows(q0, q0 + <usize>min(1, last) * qLd, q0 + <usize>min(2, last) * qLd, q0 + <usize>last * qLd,
        kp, D, nk, scale, probs, tpad, rows, tile);
      for (let r = 0; r < rows; r++) {
        const i = i0 + r;
        const row = probs + (<usize>r * tpad << 2);
        const m = rowMax(row, i + 1);
        const sum = expRow(row, row, i + 1, m);
        scaleRow(row, i + 1, 1 / sum);
        zeroFrom(row, i + 1, roundUp(nk, KB));
        store<f32>(at(lse, h * T + i), <f32>(<f64>m + Math.log(<f64>sum)));
      }
      const p0 = probs, pl = <usize>tpad << 2;
      tileRowsOverD(p0, p0 + <usize>min(1, last) * pl, p0 + <usize>min(2, last) * pl, p0 + <usize>last * pl, 4,
        vg, vLd, nk, D, oh + <usize>i0 * qLd, <usize>H * D, rows, tile);
    }
  }
}

/**
 * Heads [h0, h1): dq [T, H, D], and this head's shares of dk and dv written to
 * dkPart / dvPart [T, H, D] (attention_reduce_kv sums each kv group's heads; when H == Hkv
 * they are dk and dv themselves).
 */
export function attention_bwd(
  q: usize, k: usize, v: usize, out: usize, dout: usize, lse: usize,
  dq: usize, dkPart: usize, dvPart: usize,
  T: i32, H: i32, Hkv: i32, D: i32, scale: f32, h0: i32, h1: i32, scratch: usize,
): void {
  const tpad = roundUp(T, KB);
  const group = H / Hkv;
  const kp = scratch;
  const vp = kp + (<usize>tpad * D << 2);
  const probs = vp + (<usize>tpad * D << 2); // [T][tpad] probabilities of this head
  const dscore = probs + (<usize>T * tpad << 2); // [T][tpad] scale · dL/d(score)
  const delta = dscore + (<usize>T * tpad << 2); // [T] dout_i · out_i
  const tile = delta + (<usize>T << 2);
  const qLd = <usize>H * D << 2, kLd = <usize>Hkv * D << 2, pl = <usize>tpad << 2;
  const sv = f32x4.splat(scale);
  let packed = -1;
  for (let h = h0; h < h1; h++) {
    const g = h / group;
    if (g != packed) {
      packKeys(kp, k, T, Hkv, D, g);
      packKeys(vp, v, T, Hkv, D, g);
      packed = g;
    }
    const hOff = <usize>h * D << 2;
    const qh = q + hOff, oh = out + hOff, doh = dout + hOff, kg = k + (<usize>g * D << 2);
    for (let i = 0; i < T; i++) store<f32>(at(delta, i), dotRow(doh + <usize>i * qLd, oh + <usize>i * qLd, D));

    for (let i0 = 0; i0 < T; i0 += QB) {
      const rows = min(QB, T - i0);
      const nk = i0 + rows;
      const nkPad = roundUp(nk, KB);
      const last = rows - 1;
      const r1 = <usize>min(1, last), r2 = <usize>min(2, last), r3 = <usize>last;
      const pBlock = probs + <usize>i0 * pl, sBlock = dscore + <usize>i0 * pl;
      // Probabilities, recomputed from the forward's log-sum-exp.
      const q0 = qh + <usize>i0 * qLd;
      scoreRows(q0, q0 + r1 * qLd, q0 + r2 * qLd, q0 + r3 * qLd, kp, D, nk, scale, pBlock, tpad, rows, tile);
      for (let r = 0; r < rows; r++) {
        const i = i0 + r;
        const row = pBlock + <usize>r * pl;
        expRow(row, row, i + 1, load<f32>(at(lse, h * T + i)));
        zeroFrom(row, i + 1, nkPad);
      }
      // dscore = scale · p ⊙ (dout·vᵀ − delta).
      const d0 = doh + <usize>i0 * qLd;
      for (let j0 = 0; j0 < nk; j0 += KB) {
        attnTile(d0, d0 + r1 * qLd, d0 + r2 * qLd, d0 + r3 * qLd, 4, vp + (<usize>j0 * D << 2), KB << 2, D, tile);
        for (let r = 0; r < rows; r++) {
          const dl = f32x4.splat(load<f32>(at(delta, i0 + r)));
          const t = tile + (<usize>r * KB << 2);
          const p = at(pBlock + <usize>r * pl, j0), s = at(sBlock + <usize>r * pl, j0);
          v128.store(s, f32x4.mul(f32x4.mul(v128.load(p), f32x4.sub(v128.load(t), dl)), sv));
          v128.store(s, f32x4.mul(f32x4.mul(v128.load(p, 16), f32x4.sub(v128.load(t, 16), dl)), sv), 16);
        }
      }
      // dq = dscore · k.
      tileRowsOverD(sBlock, sBlock + r1 * pl, sBlock + r2 * pl, sBlock + r3 * pl, 4,
        kg, kLd, nk, D, dq + hOff + <usize>i0 * qLd, <usize>H * D, rows, tile);
    }

    // dk = dscoreᵀ · q and dv = pᵀ · dout, four keys at a time over the queries that see them.
    for (let j0 = 0; j0 < T; j0 += QB) {
      const keys = min(QB, T - j0);
      const count = T - j0;
      const pCol = probs + <usize>j0 * pl + (<usize>j0 << 2);
      const sCol = dscore + <usize>j0 * pl + (<usize>j0 << 2);
      const dst = <usize>j0 * qLd + hOff;
      tileRowsOverD(pCol, pCol + 4, pCol + 8, pCol + 12, pl, doh + <usize>j0 * qLd, qLd, count, D, dvPart + dst, <usize>H * D, keys, tile);
      tileRowsOverD(sCol, sCol + 4, sCol + 8, sCol + 12, pl, qh + <usize>j0 * qLd, qLd, count, D, dkPart + dst, <usize>H * D, keys, tile);
    }
  }
}

/** Tokens [t0, t1): dst [T, Hkv, D] = Σ over each kv group's query heads (in order) of part [T, H, D]. */
export function attention_reduce_kv(part: usize, dst: usize, H: i32, Hkv: i32, D: i32, t0: i32, t1: i32, scratch: usize): void {
  const group = H / Hkv;
  for (let t = t0; t < t1; t++) {
    for (let g = 0; g < Hkv; g++) {
      const o = dst + ((<usize>t * Hkv + g) * D << 2);
      const first = part + ((<usize>t * H + g * group) * D << 2);
      memory.copy(o, first, <usize>D << 2);
      for (let e = 1; e < group; e++) {
        const src = first + (<usize>e * D << 2);
        for (let d = 0; d < D; d += 4) v128.store(at(o, d), f32x4.add(v128.load(at(o, d)), v128.load(at(src, d))));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Cross-entropy fused with softmax.

/**
 * Rows [r0, r1) of logits [rows, V] with i32 targets: losses[r] = logsumexp(x) − x[target],
 * and, when dlogits != 0, dlogits = (softmax(x) − onehot(target))·scale (dlogits may be
 * logits). Negative targets are ignored: loss 0 and a zero gradient row.
 */
export function cross_entropy(
  logits: usize, targets: usize, losses: usize, dlogits: usize, V: i32, scale: f32,
  r0: i32, r1: i32, scratch: usize,
): void {
  for (let r = r0; r < r1; r++) {
    const xr = logits + (<usize>r * V << 2);
    const dr: usize = dlogits ? dlogits + (<usize>r * V << 2) : 0;
    const t = load<i32>(at(targets, r));
    if (t < 0) {
      store<f32>(at(losses, r), 0);
      if (dr) memory.fill(dr, 0, <usize>V << 2);
      continue;
    }
    const target = load<f32>(at(xr, t));
    const m = rowMax(xr, V);
    const sum = expRow(xr, dr, V, m);
    store<f32>(at(losses, r), <f32>(<f64>m + Math.log(<f64>sum) - <f64>target));
    if (dr) {
      scaleRow(dr, V, scale / sum);
      store<f32>(at(dr, t), load<f32>(at(dr, t)) - scale);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Top-k per row (routing).

/**
 * Rows [r0, r1) of x [rows, n]: the k largest values in descending order with their indices
 * (i32); equal values keep the lower index first.
 */
export function topk_fwd(x: usize, n: i32, k: i32, indices: usize, values: usize, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const xr = x + (<usize>r * n << 2);
    const ir = indices + (<usize>r * k << 2), vr = values + (<usize>r * k << 2);
    let count = 0;
    for (let e = 0; e < n; e++) {
      const val = load<f32>(at(xr, e));
      if (count == k && !(val > load<f32>(at(vr, k - 1)))) continue;
      let pos = count < k ? count++ : k - 1;
      while (pos > 0 && val > load<f32>(at(vr, pos - 1))) {
        store<f32>(at(vr, pos), load<f32>(at(vr, pos - 1)));
        store<i32>(at(ir, pos), load<i32>(at(ir, pos - 1)));
        pos--;
      }
      store<f32>(at(vr, pos), val);
      store<i32>(at(ir, pos), e);
    }
  }
}

/** Rows [r0, r1): dx[r, indices[r, j]] += dvalues[r, j]. */
export function topk_bwd(indices: usize, dvalues: usize, dx: usize, n: i32, k: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    for (let j = 0; j < k; j++) {
      const o = <usize>r * k + j;
      const p = at(dx + (<usize>r * n << 2), load<i32>(indices + (o << 2)));
      store<f32>(p, load<f32>(p) + load<f32>(dvalues + (o << 2)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// AdamW (PyTorch's formulation, decoupled weight decay).

/**
 * Elements [i0, i1): g' = g·gradScale; m = β1·m + (1−β1)·g'; v = β2·v + (1−β2)·g'²;
 * p = p·decay − stepSize·m / (sqrt(v)·invBc2Sqrt + eps), with decay = 1 − lr·wd,
 * stepSize = lr / (1 − β1^t), invBc2Sqrt = 1 / sqrt(1 − β2^t).
 */
export function adamw(
  p: usize, g: usize, m: usize, v: usize,
  gradScale: f32, beta1: f32, beta2: f32, stepSize: f32, invBc2Sqrt: f32, eps: f32, decay: f32,
  i0: i32, i1: i32, scratch: usize,
): void {
  const gs = f32x4.splat(gradScale), b1 = f32x4.splat(beta1), b2 = f32x4.splat(beta2);
  const c1 = f32x4.splat(1 - beta1), c2 = f32x4.splat(1 - beta2);
  const st = f32x4.splat(stepSize), ib = f32x4.splat(invBc2Sqrt), ep = f32x4.splat(eps), dc = f32x4.splat(decay);
  let i = i0;
  for (; i + 4 <= i1; i += 4) {
    const gv = f32x4.mul(v128.load(at(g, i)), gs);
    const mv = f32x4.add(f32x4.mul(b1, v128.load(at(m, i))), f32x4.mul(c1, gv));
    const vv = f32x4.add(f32x4.mul(b2, v128.load(at(v, i))), f32x4.mul(c2, f32x4.mul(gv, gv)));
    const denom = f32x4.add(f32x4.mul(f32x4.sqrt(vv), ib), ep);
    v128.store(at(m, i), mv);
    v128.store(at(v, i), vv);
    v128.store(at(p, i), f32x4.sub(f32x4.mul(v128.load(at(p, i)), dc), f32x4.div(f32x4.mul(st, mv), denom)));
  }
  for (; i < i1; i++) {
    const gv = load<f32>(at(g, i)) * gradScale;
    const mv = beta1 * load<f32>(at(m, i)) + (1 - beta1) * gv;
    const vv = beta2 * load<f32>(at(v, i)) + (1 - beta2) * (gv * gv);
    const denom = Mathf.sqrt(vv) * invBc2Sqrt + eps;
    store<f32>(at(m, i), mv);
    store<f32>(at(v, i), vv);
    store<f32>(at(p, i), load<f32>(at(p, i)) * decay - (stepSize * mv) / denom);
  }
}

// ---------------------------------------------------------------------------------------
// Elementwise and row helpers.

/** out = a + b over [i0, i1) (out may be a or b). */
export function add_f32(a: usize, b: usize, out: usize, i0: i32, i1: i32, scratch: usize): void {
  let i = i0;
  for (; i + 4 <= i1; i += 4) v128.store(at(out, i), f32x4.add(v128.load(at(a, i)), v128.load(at(b, i))));
  for (; i < i1; i++) store<f32>(at(out, i), load<f32>(at(a, i)) + load<f32>(at(b, i)));
}

/** y += alpha·x over [i0, i1). */
export function axpy_f32(alpha: f32, x: usize, y: usize, i0: i32, i1: i32, scratch: usize): void {
  const av = f32x4.splat(alpha);
  let i = i0;
  for (; i + 4 <= i1; i += 4) v128.store(at(y, i), f32x4.add(v128.load(at(y, i)), f32x4.mul(av, v128.load(at(x, i)))));
  for (; i < i1; i++) store<f32>(at(y, i), load<f32>(at(y, i)) + alpha * load<f32>(at(x, i)));
}

/** out = alpha·x over [i0, i1) (out may be x). */
export function scale_f32(x: usize, alpha: f32, out: usize, i0: i32, i1: i32, scratch: usize): void {
  const av = f32x4.splat(alpha);
  let i = i0;
  for (; i + 4 <= i1; i += 4) v128.store(at(out, i), f32x4.mul(av, v128.load(at(x, i))));
  for (; i < i1; i++) store<f32>(at(out, i), alpha * load<f32>(at(x, i)));
}

/**
 * dst[i] = the bfloat16 nearest src[i] (ties to even; NaN stays NaN, quieted), as u16 bit
 * patterns, over [i0, i1): the rounding of proto/half.ts f32ToBf16Bits.
 */
export function f32_to_bf16(src: usize, dst: usize, i0: i32, i1: i32, scratch: usize): void {
  const magnitude = i32x4.splat(0x7fffffff);
  const infinity = i32x4.splat(0x7f800000);
  const bias = i32x4.splat(0x7fff);
  const one = i32x4.splat(1);
  const quiet = i32x4.splat(0x40);
  let i = i0;
  for (; i + 8 <= i1; i += 8) {
    const lo = bf16Lanes(v128.load(at(src, i)), magnitude, infinity, bias, one, quiet);
    const hi = bf16Lanes(v128.load(at(src, i + 4)), magnitude, infinity, bias, one, quiet);
    v128.store(dst + (<usize>i << 1), i16x8.narrow_i32x4_u(lo, hi));
  }
  for (; i < i1; i++) {
    const bits = load<u32>(at(src, i));
    const nan = (bits & 0x7f800000) == 0x7f800000 && (bits & 0x7fffff) != 0;
    store<u16>(dst + (<usize>i << 1), <u16>(nan ? (bits >>> 16) | 0x40 : (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16));
  }
}

/** Four f32 lanes to their bfloat16 bit patterns in the low half of each i32 lane. */
@inline
function bf16Lanes(bits: v128, magnitude: v128, infinity: v128, bias: v128, one: v128, quiet: v128): v128 {
  const high = i32x4.shr_u(bits, 16);
  const rounded = i32x4.shr_u(i32x4.add(i32x4.add(bits, bias), v128.and(high, one)), 16);
  const nan = i32x4.gt_s(v128.and(bits, magnitude), infinity);
  return v128.bitselect(v128.or(high, quiet), rounded, nan);
}

/** dst[i] = f32 of the bfloat16 bit pattern src[i] (exact), over [i0, i1). */
export function bf16_to_f32(src: usize, dst: usize, i0: i32, i1: i32, scratch: usize): void {
  let i = i0;
  for (; i + 8 <= i1; i += 8) {
    const h = v128.load(src + (<usize>i << 1));
    v128.store(at(dst, i), i32x4.shl(i32x4.extend_low_i16x8_u(h), 16));
    v128.store(at(dst, i + 4), i32x4.shl(i32x4.extend_high_i16x8_u(h), 16));
  }
  for (; i < i1; i++) store<u32>(at(dst, i), <u32>load<u16>(src + (<usize>i << 1)) << 16);
}

/**
 * Blocks [b0, b1): partials[b] = Σ x² over elements [b·block, min(n, (b+1)·block)). The caller
 * fixes `block` and sums the partials in order, so the total does not depend on threads.
 */
export function sum_squares_blocks(x: usize, n: i32, block: i32, partials: usize, b0: i32, b1: i32, scratch: usize): void {
  for (let b = b0; b < b1; b++) {
    const start = b * block;
    const p = at(x, start);
    store<f32>(at(partials, b), dotRow(p, p, min(block, n - start)));
  }
}

/** Rows [r0, r1): dst[r] (= or += with accumulate) weights[r]·src[r] (rows of `cols`; dst may be src). */
export function scale_rows(src: usize, weights: usize, dst: usize, cols: i32, accumulate: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * cols;
    const w = load<f32>(at(weights, r));
    if (accumulate) axpy_f32(w, at(src, <i32>o), at(dst, <i32>o), 0, cols, scratch);
    else scale_f32(at(src, <i32>o), w, at(dst, <i32>o), 0, cols, scratch);
  }
}

/** Rows [r0, r1): dst[r] = src[indices[r]] (rows of `cols`). */
export function gather_rows(src: usize, indices: usize, dst: usize, cols: i32, r0: i32, r1: i32, scratch: usize): void {
  const bytes = <usize>cols << 2;
  for (let r = r0; r < r1; r++) memory.copy(dst + <usize>r * bytes, src + <usize>load<i32>(at(indices, r)) * bytes, bytes);
}

/**
 * Rows [r0, r1): dst[indices[r]] += weights[r]·src[r] (weights == 0: weight 1). Rows that
 * share a destination must run on one thread (the wrapper checks).
 */
export function scatter_add_rows(
  src: usize, indices: usize, weights: usize, dst: usize, cols: i32, r0: i32, r1: i32, scratch: usize,
): void {
  for (let r = r0; r < r1; r++) {
    const s = src + (<usize>r * cols << 2);
    const d = dst + (<usize>load<i32>(at(indices, r)) * cols << 2);
    if (weights) axpy_f32(load<f32>(at(weights, r)), s, d, 0, cols, scratch);
    else add_f32(d, s, d, 0, cols, scratch);
  }
}

/** Rows [r0, r1): out[r] = a[r]·b[r]. */
export function row_dots(a: usize, b: usize, out: usize, cols: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * cols << 2;
    store<f32>(at(out, r), dotRow(a + o, b + o, cols));
  }
}

/** Rows [r0, r1): x[r] += bias. */
export function add_bias(x: usize, bias: usize, cols: i32, r0: i32, r1: i32, scratch: usize): void {
  for (let r = r0; r < r1; r++) {
    const xr = x + (<usize>r * cols << 2);
    add_f32(xr, bias, xr, 0, cols, scratch);
  }
}

/** Columns [c0, c1): dbias[c] += Σ_rows dy[r, c]. */
export function bias_grad(dy: usize, dbias: usize, rows: i32, cols: i32, c0: i32, c1: i32, scratch: usize): void {
  columnSums(dy, 0, 0, dbias, rows, cols, c0, c1);
}
