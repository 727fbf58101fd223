// Blockwise-quantized weights (q8, q4) on the fp32 path: quantization, dequantization, GEMMs
// that dequantize W while packing it (the fp32 driver and micro-kernel, unchanged), and
// dot-product kernels for products with few rows (token generation), where packing costs
// more than it saves.
//
// Formats (test/reference/quant64.ts is the specification, matched bit for bit): blocks of
// QBLOCK values along a row, each with an f32 scale = amax / qmax and q = nearest(x · (1 / scale)),
// ties to even, clamped. q8 stores int8 q in [-127, 127]; q4 stores the nibble q + 8 (q in
// [-8, 7]), two per byte, the even element in the low nibble. Dequantized values are exactly
// f32(q · scale) on every path.
import { ceilDiv, gemmDriver, madd, NR } from './gemm';

export const QBLOCK: i32 = 32;

// ---- quantization ----

/** Largest |x| of the QBLOCK values at src. */
@inline
function blockAmax(src: usize): f32 {
  let m = f32x4.abs(v128.load(src));
  for (let i = 1; i < QBLOCK / 4; i++) m = f32x4.max(m, f32x4.abs(v128.load(src + (<usize>i << 4))));
  return max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
}

/** nearest(x · inv) of the 16 values at src, saturated to int8. */
@inline
function roundToInt8(src: usize, inv: v128): v128 {
  const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(src), inv)));
  const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(src, 16), inv)));
  const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(src, 32), inv)));
  const d = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(src, 48), inv)));
  return i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a, b), i16x8.narrow_i32x4_s(c, d));
}

/** Stores the block's scale and returns 1 / scale (0 for an all-zero block) as a splat. */
@inline
function blockScale(src: usize, qmax: f32, scaleDst: usize): v128 {
  const scale = blockAmax(src) / qmax;
  store<f32>(scaleDst, scale);
  return f32x4.splat(scale == 0 ? 0 : <f32>1 / scale);
}

/** Rows [r0, r1) of x (rows × k fp32) to q8: q (rows × k int8) and scales (rows × k/QBLOCK). */
export function quantize_q8(x: usize, q: usize, scales: usize, k: i32, r0: i32, r1: i32, scratch: usize): void {
  const blocks = <usize>(r1 - r0) * (k / QBLOCK);
  const first = <usize>r0 * (k / QBLOCK);
  const lowest = i8x16.splat(-127);
  for (let b: usize = first; b < first + blocks; b++) {
    const src = x + (b * QBLOCK << 2);
    const inv = blockScale(src, 127, scales + (b << 2));
    const dst = q + b * QBLOCK;
    v128.store(dst, i8x16.max_s(roundToInt8(src, inv), lowest));
    v128.store(dst, i8x16.max_s(roundToInt8(src + 64, inv), lowest), 16);
  }
}

/** Rows [r0, r1) of x (rows × k fp32) to q4: q (rows × k/2 bytes) and scales (rows × k/QBLOCK). */
export function quantize_q4(x: usize, q: usize, scales: usize, k: i32, r0: i32, r1: i32, scratch: usize): void {
  const blocks = <usize>(r1 - r0) * (k / QBLOCK);
  const first = <usize>r0 * (k / QBLOCK);
  const lowest = i8x16.splat(-8);
  const highest = i8x16.splat(7);
  const offset = i8x16.splat(8);
  for (let b: usize = first; b < first + blocks; b++) {
    const src = x + (b * QBLOCK << 2);
    const inv = blockScale(src, 7, scales + (b << 2));
    const lo = i8x16.add(i8x16.min_s(i8x16.max_s(roundToInt8(src, inv), lowest), highest), offset);
    const hi = i8x16.add(i8x16.min_s(i8x16.max_s(roundToInt8(src + 64, inv), lowest), highest), offset);
    const even = i8x16.shuffle(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const odd = i8x16.shuffle(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    // Nibbles are < 16, so shifting 16-bit lanes by 4 never carries across bytes.
    v128.store(q + b * (QBLOCK / 2), v128.or(even, i16x8.shl(odd, 4)));
  }
}

// ---- dequantization ----

/** Stores f32(q · scale) for the 8 int16 lanes of q: lanes 0-3 scaled by sLow, 4-7 by sHigh. */
@inline
function storeScaled8(dst: usize, q: v128, sLow: v128, sHigh: v128): void {
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), sLow));
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), sHigh), 16);
}

/** Signed q4 values (nibble - 8) of the low nibbles of the 16 bytes of v. */
@inline
function lowNibbles(v: v128): v128 {
  return i8x16.sub(v128.and(v, i8x16.splat(15)), i8x16.splat(8));
}

/** Signed q4 values (nibble - 8) of the high nibbles of the 16 bytes of v. */
@inline
function highNibbles(v: v128): v128 {
  return i8x16.sub(v128.and(i16x8.shr_u(v, 4), i8x16.splat(15)), i8x16.splat(8));
}

/** Dequantizes one q8 row of k values into dst (fp32). */
@inline
function dequantRow_q8(dst: usize, q: usize, scales: usize, k: i32): void {
  for (let p = 0; p < k; p += QBLOCK) {
    const s = v128.load32_splat(scales + (<usize>(p / QBLOCK) << 2));
    const src = q + p;
    const out = dst + (<usize>p << 2);
    storeScaled8(out, v128.load8x8_s(src), s, s);
    storeScaled8(out + 32, v128.load8x8_s(src + 8), s, s);
    storeScaled8(out + 64, v128.load8x8_s(src + 16), s, s);
    storeScaled8(out + 96, v128.load8x8_s(src + 24), s, s);
  }
}

/** Dequantizes one q4 row of k values into dst (fp32). */
@inline
function dequantRow_q4(dst: usize, q: usize, scales: usize, k: i32): void {
  for (let p = 0; p < k; p += QBLOCK) {
    const s = v128.load32_splat(scales + (<usize>(p / QBLOCK) << 2));
    const v = v128.load(q + (p >> 1));
    const lo = lowNibbles(v);
    const hi = highNibbles(v);
    const first = i8x16.shuffle(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const second = i8x16.shuffle(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const out = dst + (<usize>p << 2);
    storeScaled8(out, i16x8.extend_low_i8x16_s(first), s, s);
    storeScaled8(out + 32, i16x8.extend_high_i8x16_s(first), s, s);
    storeScaled8(out + 64, i16x8.extend_low_i8x16_s(second), s, s);
    storeScaled8(out + 96, i16x8.extend_high_i8x16_s(second), s, s);
  }
}

/** Rows [r0, r1) of a q8 matrix (rows × k) to x (fp32). */
export function dequantize_q8(q: usize, scales: usize, x: usize, k: i32, r0: i32, r1: i32, scratch: usize): void {
  const blocks = k / QBLOCK;
  for (let r = r0; r < r1; r++) {
    dequantRow_q8(x + (<usize>r * k << 2), q + <usize>r * k, scales + (<usize>r * blocks << 2), k);
  }
}

/** Rows [r0, r1) of a q4 matrix (rows × k) to x (fp32). */
export function dequantize_q4(q: usize, scales: usize, x: usize, k: i32, r0: i32, r1: i32, scratch: usize): void {
  const blocks = k / QBLOCK;
  for (let r = r0; r < r1; r++) {
    dequantRow_q4(x + (<usize>r * k << 2), q + (<usize>r * k >> 1), scales + (<usize>r * blocks << 2), k);
  }
}

// ---- packing quantized B for the GEMM driver (see PackB in gemm.ts) ----

/** The 4 bytes at offset `at` of rows r0..r3, in that order. */
@inline
function gather4(r0: usize, r1: usize, r2: usize, r3: usize, at: usize): v128 {
  let v = v128.load32_zero(r0 + at);
  v = v128.load32_lane(r1 + at, v, 1);
  v = v128.load32_lane(r2 + at, v, 2);
  return v128.load32_lane(r3 + at, v, 3);
}

/**
 * Transposes bytes: a and b hold 4 bytes of 4 rows each (rows 0-3 and 4-7); returns byte 0
 * of the 8 rows, then byte 1.
 */
@inline
function columns01(a: v128, b: v128): v128 {
  return i8x16.shuffle(a, b, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
}

/** As columns01, for bytes 2 and 3. */
@inline
function columns23(a: v128, b: v128): v128 {
  return i8x16.shuffle(a, b, 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
}

/** Stores the two 8-value rows of int8 pair (columns01/23) dequantized with per-column scales. */
@inline
function storePair(dst: usize, pair: v128, sLow: v128, sHigh: v128): void {
  storeScaled8(dst, i16x8.extend_low_i8x16_s(pair), sLow, sHigh);
  storeScaled8(dst + (NR << 2), i16x8.extend_high_i8x16_s(pair), sLow, sHigh);
}

/**
 * The scales of block `block` of W rows j + first .. j + first + 3; rows at or past w (outside W)
 * get 0, so their padding values in the panel are zeros.
 */
@inline
function rowScales(scales: usize, blocks: i32, j: i32, w: i32, first: i32, block: i32): v128 {
  const at = scales + ((<usize>(j + first) * blocks + block) << 2);
  const stride = <usize>blocks << 2;
  return f32x4(
    first < w ? load<f32>(at) : 0,
    first + 1 < w ? load<f32>(at + stride) : 0,
    first + 2 < w ? load<f32>(at + 2 * stride) : 0,
    first + 3 < w ? load<f32>(at + 3 * stride) : 0,
  );
}

/**
 * op(B) = Wᵀ with W a q8 matrix stored n×k (forward, x·Wᵀ). Gathers 4 bytes of each of the
 * panel's 8 rows, transposes them with two shuffles and dequantizes 4 panel rows at once.
 */
function packB_q8_t(dst: usize, q: usize, scales: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const blocks = k / QBLOCK;
  const panels = ceilDiv(nc, NR);
  for (let panel = 0; panel < panels; panel++) {
    const j = j0 + panel * NR;
    const w = min(NR, j0 + nc - j);
    // Rows past n repeat the last row (valid memory); their scale is 0.
    const row0 = q + <usize>j * k + p0;
    const r1 = row0 + <usize>min(1, w - 1) * k, r2 = row0 + <usize>min(2, w - 1) * k;
    const r3 = row0 + <usize>min(3, w - 1) * k, r4 = row0 + <usize>min(4, w - 1) * k;
    const r5 = row0 + <usize>min(5, w - 1) * k, r6 = row0 + <usize>min(6, w - 1) * k;
    const r7 = row0 + <usize>min(7, w - 1) * k;
    let out = dst + (<usize>panel * kc * NR << 2);
    for (let p = 0; p < kc; p += QBLOCK) {
      const block = (p0 + p) / QBLOCK;
      const sLow = rowScales(scales, blocks, j, w, 0, block);
      const sHigh = rowScales(scales, blocks, j, w, 4, block);
      for (let pp: usize = p; pp < <usize>(p + QBLOCK); pp += 4) {
        const a = gather4(row0, r1, r2, r3, pp);
        const b = gather4(r4, r5, r6, r7, pp);
        storePair(out, columns01(a, b), sLow, sHigh);
        storePair(out + (2 * NR << 2), columns23(a, b), sLow, sHigh);
        out += 4 * NR << 2;
      }
    }
  }
}

/** op(B) = Wᵀ with W a q4 matrix stored n×k (forward): as packB_q8_t, 8 values per row at a time. */
function packB_q4_t(dst: usize, q: usize, scales: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const blocks = k / QBLOCK;
  const half = <usize>k >> 1; // bytes per row
  const panels = ceilDiv(nc, NR);
  for (let panel = 0; panel < panels; panel++) {
    const j = j0 + panel * NR;
    const w = min(NR, j0 + nc - j);
    const row0 = q + ((<usize>j * k + p0) >> 1);
    const r1 = row0 + <usize>min(1, w - 1) * half, r2 = row0 + <usize>min(2, w - 1) * half;
    const r3 = row0 + <usize>min(3, w - 1) * half, r4 = row0 + <usize>min(4, w - 1) * half;
    const r5 = row0 + <usize>min(5, w - 1) * half, r6 = row0 + <usize>min(6, w - 1) * half;
    const r7 = row0 + <usize>min(7, w - 1) * half;
    let out = dst + (<usize>panel * kc * NR << 2);
    for (let p = 0; p < kc; p += QBLOCK) {
      const block = (p0 + p) / QBLOCK;
      const sLow = rowScales(scales, blocks, j, w, 0, block);
      const sHigh = rowScales(scales, blocks, j, w, 4, block);
      for (let pp: usize = p >> 1; pp < <usize>((p + QBLOCK) >> 1); pp += 4) {
        // Byte c of a row holds elements 2c (low nibble) and 2c + 1 (high nibble).
        const a = gather4(row0, r1, r2, r3, pp);
        const b = gather4(r4, r5, r6, r7, pp);
        const aLow = lowNibbles(a), bLow = lowNibbles(b);
        const aHigh = highNibbles(a), bHigh = highNibbles(b);
        const even01 = columns01(aLow, bLow); // elements 0, 2
        const odd01 = columns01(aHigh, bHigh); // elements 1, 3
        const even23 = columns23(aLow, bLow); // elements 4, 6
        const odd23 = columns23(aHigh, bHigh); // elements 5, 7
        const row = NR << 2;
        storeScaled8(out, i16x8.extend_low_i8x16_s(even01), sLow, sHigh);
        storeScaled8(out + row, i16x8.extend_low_i8x16_s(odd01), sLow, sHigh);
        storeScaled8(out + 2 * row, i16x8.extend_high_i8x16_s(even01), sLow, sHigh);
        storeScaled8(out + 3 * row, i16x8.extend_high_i8x16_s(odd01), sLow, sHigh);
        storeScaled8(out + 4 * row, i16x8.extend_low_i8x16_s(even23), sLow, sHigh);
        storeScaled8(out + 5 * row, i16x8.extend_low_i8x16_s(odd23), sLow, sHigh);
        storeScaled8(out + 6 * row, i16x8.extend_high_i8x16_s(even23), sLow, sHigh);
        storeScaled8(out + 7 * row, i16x8.extend_high_i8x16_s(odd23), sLow, sHigh);
        out += 8 * row;
      }
    }
  }
}

/**
 * op(B) = W with W a q8 matrix stored k×n (backward, dy·W: the GEMM's inner dimension is W's
 * rows). n is a multiple of QBLOCK and the driver's column ranges are whole panels, so every
 * panel is full and lies inside one block of its row.
 */
function packB_q8_n(dst: usize, q: usize, scales: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const scaleStride = <usize>(n / QBLOCK) << 2;
  for (let panel = 0; panel < nc / NR; panel++) {
    const j = j0 + panel * NR;
    let src = q + <usize>p0 * n + j;
    let scale = scales + ((<usize>p0 * (n / QBLOCK) + j / QBLOCK) << 2);
    let out = dst + (<usize>panel * kc * NR << 2);
    for (let p = 0; p < kc; p++) {
      const s = v128.load32_splat(scale);
      storeScaled8(out, v128.load8x8_s(src), s, s);
      src += n;
      scale += scaleStride;
      out += NR << 2;
    }
  }
}

/** op(B) = W with W a q4 matrix stored k×n (backward): as packB_q8_n. */
function packB_q4_n(dst: usize, q: usize, scales: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const scaleStride = <usize>(n / QBLOCK) << 2;
  for (let panel = 0; panel < nc / NR; panel++) {
    const j = j0 + panel * NR;
    let src = q + ((<usize>p0 * n + j) >> 1);
    let scale = scales + ((<usize>p0 * (n / QBLOCK) + j / QBLOCK) << 2);
    let out = dst + (<usize>panel * kc * NR << 2);
    for (let p = 0; p < kc; p++) {
      const v = v128.load32_zero(src);
      const values = i8x16.shuffle(lowNibbles(v), highNibbles(v), 0, 16, 1, 17, 2, 18, 3, 19, 0, 0, 0, 0, 0, 0, 0, 0);
      const s = v128.load32_splat(scale);
      storeScaled8(out, i16x8.extend_low_i8x16_s(values), s, s);
      src += n >> 1;
      scale += scaleStride;
      out += NR << 2;
    }
  }
}

// ---- quantized GEMMs (parallel over output column panels, like gemm_f32) ----

/** Forward: y (m×n) (=|+=) x (m×k) · Wᵀ, W a q8 matrix n×k. Columns [n0, n1) of y. */
export function gemm_q8_t(
  x: usize, q: usize, scales: usize, y: usize, m: i32, n: i32, k: i32,
  accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  gemmDriver(x, false, packB_q8_t, q, scales, y, m, n, k, accumulate != 0, scratch, n0, n1, 0, m);
}

/** Forward: y (m×n) (=|+=) x (m×k) · Wᵀ, W a q4 matrix n×k. Columns [n0, n1) of y. */
export function gemm_q4_t(
  x: usize, q: usize, scales: usize, y: usize, m: i32, n: i32, k: i32,
  accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  gemmDriver(x, false, packB_q4_t, q, scales, y, m, n, k, accumulate != 0, scratch, n0, n1, 0, m);
}

/** Backward: dx (m×k) (=|+=) dy (m×n) · W, W a q8 matrix n×k. Columns [k0, k1) of dx, whole panels. */
export function gemm_q8_n(
  dy: usize, q: usize, scales: usize, dx: usize, m: i32, n: i32, k: i32,
  accumulate: i32, k0: i32, k1: i32, scratch: usize,
): void {
  gemmDriver(dy, false, packB_q8_n, q, scales, dx, m, k, n, accumulate != 0, scratch, k0, k1, 0, m);
}

/** Backward: dx (m×k) (=|+=) dy (m×n) · W, W a q4 matrix n×k. Columns [k0, k1) of dx, whole panels. */
export function gemm_q4_n(
  dy: usize, q: usize, scales: usize, dx: usize, m: i32, n: i32, k: i32,
  accumulate: i32, k0: i32, k1: i32, scratch: usize,
): void {
  gemmDriver(dy, false, packB_q4_n, q, scales, dx, m, k, n, accumulate != 0, scratch, k0, k1, 0, m);
}

// ---- dot products for few rows: y = x·Wᵀ, parallel over the outputs n ----
//
// Every output x_i · w_j is one f32x4 accumulator over steps of 4 values, a fixed horizontal
// sum and a scalar tail, whichever tile computes it, so results do not depend on how the
// outputs are split between threads. Tiles hold 8 accumulators (8 independent multiply-add
// chains): 2 rows of x × 4 rows of W, or 1 × 8 for a last odd row of x.

/** Rows of W a dot kernel takes at once (fp32 W is read in place; quantized W is dequantized to scratch). */
const DOT_ROWS: i32 = 8;

/** Scratch bytes of the quantized dot kernels: DOT_ROWS dequantized rows of k values. */
export function dot_scratch_bytes_per_k(): i32 {
  return DOT_ROWS * 4;
}

/** Completes one output from its accumulator: horizontal sum, then the values past the last step of 4. */
@inline
function finishDot(acc: v128, x: usize, w: usize, k: i32): f32 {
  let s = (f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1)) + (f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3));
  for (let p = k & ~3; p < k; p++) s += load<f32>(x + (<usize>p << 2)) * load<f32>(w + (<usize>p << 2));
  return s;
}

@inline
function storeOutput(y: usize, s: f32, accumulate: bool): void {
  store<f32>(y, accumulate ? load<f32>(y) + s : s);
}

/** Rows x0, x1 of x against the 4 rows of W at w (stride k); outputs at y0, y1 (4 consecutive each). */
function dot2x4(x0: usize, x1: usize, w: usize, k: i32, y0: usize, y1: usize, accumulate: bool): void {
  const stride = <usize>k << 2;
  const w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
  const end = <usize>(k & ~3) << 2;
  for (let p: usize = 0; p < end; p += 16) {
    const u = v128.load(x0 + p), v = v128.load(x1 + p);
    let c = v128.load(w + p);
    a0 = madd(u, c, a0); b0 = madd(v, c, b0);
    c = v128.load(w1 + p);
    a1 = madd(u, c, a1); b1 = madd(v, c, b1);
    c = v128.load(w2 + p);
    a2 = madd(u, c, a2); b2 = madd(v, c, b2);
    c = v128.load(w3 + p);
    a3 = madd(u, c, a3); b3 = madd(v, c, b3);
  }
  storeOutput(y0, finishDot(a0, x0, w, k), accumulate);
  storeOutput(y0 + 4, finishDot(a1, x0, w1, k), accumulate);
  storeOutput(y0 + 8, finishDot(a2, x0, w2, k), accumulate);
  storeOutput(y0 + 12, finishDot(a3, x0, w3, k), accumulate);
  storeOutput(y1, finishDot(b0, x1, w, k), accumulate);
  storeOutput(y1 + 4, finishDot(b1, x1, w1, k), accumulate);
  storeOutput(y1 + 8, finishDot(b2, x1, w2, k), accumulate);
  storeOutput(y1 + 12, finishDot(b3, x1, w3, k), accumulate);
}

/** Row x0 of x against the 8 rows of W at w (stride k); outputs at y0 (8 consecutive). */
function dot1x8(x0: usize, w: usize, k: i32, y0: usize, accumulate: bool): void {
  const stride = <usize>k << 2;
  const w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
  const w4 = w3 + stride, w5 = w4 + stride, w6 = w5 + stride, w7 = w6 + stride;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
  const end = <usize>(k & ~3) << 2;
  for (let p: usize = 0; p < end; p += 16) {
    const u = v128.load(x0 + p);
    a0 = madd(u, v128.load(w + p), a0); a1 = madd(u, v128.load(w1 + p), a1);
    a2 = madd(u, v128.load(w2 + p), a2); a3 = madd(u, v128.load(w3 + p), a3);
    a4 = madd(u, v128.load(w4 + p), a4); a5 = madd(u, v128.load(w5 + p), a5);
    a6 = madd(u, v128.load(w6 + p), a6); a7 = madd(u, v128.load(w7 + p), a7);
  }
  storeOutput(y0, finishDot(a0, x0, w, k), accumulate);
  storeOutput(y0 + 4, finishDot(a1, x0, w1, k), accumulate);
  storeOutput(y0 + 8, finishDot(a2, x0, w2, k), accumulate);
  storeOutput(y0 + 12, finishDot(a3, x0, w3, k), accumulate);
  storeOutput(y0 + 16, finishDot(a4, x0, w4, k), accumulate);
  storeOutput(y0 + 20, finishDot(a5, x0, w5, k), accumulate);
  storeOutput(y0 + 24, finishDot(a6, x0, w6, k), accumulate);
  storeOutput(y0 + 28, finishDot(a7, x0, w7, k), accumulate);
}

/** Row x0 of x against one row of W: the tile for the last rows of W in a range. */
function dot1x1(x0: usize, w: usize, k: i32, y0: usize, accumulate: bool): void {
  let a = f32x4.splat(0);
  const end = <usize>(k & ~3) << 2;
  for (let p: usize = 0; p < end; p += 16) a = madd(v128.load(x0 + p), v128.load(w + p), a);
  storeOutput(y0, finishDot(a, x0, w, k), accumulate);
}

/**
 * y[i, j + r] (=|+=) x_i · w_r for the m rows x_i of x (m×k) and `count` (≤ DOT_ROWS) fp32
 * rows w_r at w (stride k); y is m×n.
 */
function dotRows(x: usize, w: usize, y: usize, m: i32, n: i32, k: i32, j: i32, count: i32, accumulate: bool): void {
  const xStride = <usize>k << 2;
  const yStride = <usize>n << 2;
  const y0 = y + (<usize>j << 2);
  if (count == DOT_ROWS) {
    let i = 0;
    for (; i + 2 <= m; i += 2) {
      const xi = x + <usize>i * xStride, yi = y0 + <usize>i * yStride;
      dot2x4(xi, xi + xStride, w, k, yi, yi + yStride, accumulate);
      dot2x4(xi, xi + xStride, w + 4 * xStride, k, yi + 16, yi + yStride + 16, accumulate);
    }
    if (i < m) dot1x8(x + <usize>i * xStride, w, k, y0 + <usize>i * yStride, accumulate);
    return;
  }
  for (let r = 0; r < count; r++) {
    for (let i = 0; i < m; i++) {
      dot1x1(x + <usize>i * xStride, w + <usize>r * xStride, k, y0 + <usize>i * yStride + (<usize>r << 2), accumulate);
    }
  }
}

/** y (m×n) (=|+=) x (m×k) · Wᵀ with W fp32 n×k, outputs [n0, n1). */
export function dot_f32_t(x: usize, w: usize, y: usize, m: i32, n: i32, k: i32, accumulate: i32, n0: i32, n1: i32, scratch: usize): void {
  for (let j = n0; j < n1; j += DOT_ROWS) {
    dotRows(x, w + (<usize>j * k << 2), y, m, n, k, j, min(DOT_ROWS, n1 - j), accumulate != 0);
  }
}

/** y (m×n) (=|+=) x (m×k) · Wᵀ with W a q8 matrix n×k, outputs [n0, n1). Scratch: DOT_ROWS·k floats. */
export function dot_q8_t(
  x: usize, q: usize, scales: usize, y: usize, m: i32, n: i32, k: i32,
  accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  const blocks = k / QBLOCK;
  for (let j = n0; j < n1; j += DOT_ROWS) {
    const count = min(DOT_ROWS, n1 - j);
    for (let r = 0; r < count; r++) {
      dequantRow_q8(scratch + (<usize>r * k << 2), q + <usize>(j + r) * k, scales + (<usize>(j + r) * blocks << 2), k);
    }
    dotRows(x, scratch, y, m, n, k, j, count, accumulate != 0);
  }
}

/** y (m×n) (=|+=) x (m×k) · Wᵀ with W a q4 matrix n×k, outputs [n0, n1). Scratch: DOT_ROWS·k floats. */
export function dot_q4_t(
  x: usize, q: usize, scales: usize, y: usize, m: i32, n: i32, k: i32,
  accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  const blocks = k / QBLOCK;
  for (let j = n0; j < n1; j += DOT_ROWS) {
    const count = min(DOT_ROWS, n1 - j);
    for (let r = 0; r < count; r++) {
      dequantRow_q4(scratch + (<usize>r * k << 2), q + (<usize>(j + r) * k >> 1), scales + (<usize>(j + r) * blocks << 2), k);
    }
    dotRows(x, scratch, y, m, n, k, j, count, accumulate != 0);
  }
}
