// Packed fp32 GEMM: C[m×n] (=|+=) op(A)[m×k] · op(B)[k×n], row-major.
//
// BLIS-style loops (jc → pc → ic → jr → ir) around a 4×8 register tile: 8 f32x4 accumulators,
// per k step 2 loads of B, 4 splatted A values and 8 multiply-adds. Larger tiles spill in V8.
// Edge tiles are zero-padded in the packed panels, so every output element is the same
// sequence of operations (k in order, blocks of KC summed in order) wherever it sits and
// whichever thread computes it: results do not depend on the column range [n0, n1).
//
// B is packed by a PackB function so the quantized formats can dequantize while packing and
// reuse the driver and micro-kernel unchanged.

export const MR: i32 = 4;
export const NR: i32 = 8;
export const KC: i32 = 256; // a multiple of the quantization block (32)
const MC: i32 = 64;
const NC: i32 = 512;

/** Scratch bytes one thread needs for gemmDriver: packed A block, packed B block, edge tile. */
export const GEMM_SCRATCH: i32 = (MC * KC + KC * NC + MR * NR) * 4;

/**
 * Packs op(B)[p0..p0+kc, j0..j0+nc] into NR-column panels: panel q holds, for each p,
 * NR consecutive values of columns j0+q*NR..; columns past nc are zero.
 * `aux` is format-specific (block scales for quantized B, unused for fp32).
 */
export type PackB = (dst: usize, b: usize, aux: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32) => void;

@inline
export function ceilDiv(a: i32, b: i32): i32 {
  return (a + b - 1) / b;
}

/** op(B) = B stored k×n. */
export function packB_f32_n(dst: usize, b: usize, aux: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const panels = ceilDiv(nc, NR);
  for (let q = 0; q < panels; q++) {
    const j = j0 + q * NR;
    const w = min(NR, j0 + nc - j);
    let out = dst + (<usize>q * kc * NR << 2);
    if (w == NR) {
      for (let p = 0; p < kc; p++) {
        const src = b + ((<usize>(p0 + p) * n + j) << 2);
        v128.store(out, v128.load(src));
        v128.store(out, v128.load(src, 16), 16);
        out += NR << 2;
      }
    } else {
      for (let p = 0; p < kc; p++) {
        const src = b + ((<usize>(p0 + p) * n + j) << 2);
        for (let jj = 0; jj < NR; jj++) {
          store<f32>(out + (jj << 2), jj < w ? load<f32>(src + (jj << 2)) : 0);
        }
        out += NR << 2;
      }
    }
  }
}

/** op(B) = Bᵀ with B stored n×k (the A·Bᵀ orientation). */
export function packB_f32_t(dst: usize, b: usize, aux: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const panels = ceilDiv(nc, NR);
  for (let q = 0; q < panels; q++) {
    const j = j0 + q * NR;
    const w = min(NR, j0 + nc - j);
    const out = dst + (<usize>q * kc * NR << 2);
    for (let jj = 0; jj < NR; jj++) {
      if (jj < w) {
        const src = b + ((<usize>(j + jj) * k + p0) << 2);
        for (let p = 0; p < kc; p++) store<f32>(out + ((<usize>p * NR + jj) << 2), load<f32>(src + (<usize>p << 2)));
      } else {
        for (let p = 0; p < kc; p++) store<f32>(out + ((<usize>p * NR + jj) << 2), 0);
      }
    }
  }
}

/** Packs op(A)[i0..i0+mc, p0..p0+kc] into MR-row panels (rows past mc are zero). */
function packA(dst: usize, a: usize, transA: bool, m: i32, k: i32, i0: i32, mc: i32, p0: i32, kc: i32): void {
  const panels = ceilDiv(mc, MR);
  for (let q = 0; q < panels; q++) {
    const i = i0 + q * MR;
    const h = min(MR, i0 + mc - i);
    const out = dst + (<usize>q * kc * MR << 2);
    if (transA) {
      // A stored k×m: the MR values of one p are contiguous.
      for (let p = 0; p < kc; p++) {
        const src = a + ((<usize>(p0 + p) * m + i) << 2);
        const o = out + (<usize>p * MR << 2);
        if (h == MR) v128.store(o, v128.load(src));
        else for (let ii = 0; ii < MR; ii++) store<f32>(o + (ii << 2), ii < h ? load<f32>(src + (ii << 2)) : 0);
      }
    } else {
      for (let ii = 0; ii < MR; ii++) {
        if (ii < h) {
          const src = a + ((<usize>(i + ii) * k + p0) << 2);
          for (let p = 0; p < kc; p++) store<f32>(out + ((<usize>p * MR + ii) << 2), load<f32>(src + (<usize>p << 2)));
        } else {
          for (let p = 0; p < kc; p++) store<f32>(out + ((<usize>p * MR + ii) << 2), 0);
        }
      }
    }
  }
}

@inline
export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/**
 * 4×8 tile over kc steps of packed panels. Writes (first block, not accumulating) or adds
 * the tile into C at (i, j), of which only h×w is inside C.
 */
function microKernel(ap: usize, bp: usize, kc: i32, c: usize, ldc: i32, h: i32, w: i32, add: bool, edge: usize): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  for (let p = 0; p < kc; p++) {
    const b0 = v128.load(bp);
    const b1 = v128.load(bp, 16);
    let a = v128.load32_splat(ap);
    c00 = madd(a, b0, c00); c01 = madd(a, b1, c01);
    a = v128.load32_splat(ap, 4);
    c10 = madd(a, b0, c10); c11 = madd(a, b1, c11);
    a = v128.load32_splat(ap, 8);
    c20 = madd(a, b0, c20); c21 = madd(a, b1, c21);
    a = v128.load32_splat(ap, 12);
    c30 = madd(a, b0, c30); c31 = madd(a, b1, c31);
    ap += MR << 2;
    bp += NR << 2;
  }
  const row = <usize>ldc << 2;
  if (h == MR && w == NR) {
    if (add) {
      v128.store(c, f32x4.add(v128.load(c), c00)); v128.store(c, f32x4.add(v128.load(c, 16), c01), 16); c += row;
      v128.store(c, f32x4.add(v128.load(c), c10)); v128.store(c, f32x4.add(v128.load(c, 16), c11), 16); c += row;
      v128.store(c, f32x4.add(v128.load(c), c20)); v128.store(c, f32x4.add(v128.load(c, 16), c21), 16); c += row;
      v128.store(c, f32x4.add(v128.load(c), c30)); v128.store(c, f32x4.add(v128.load(c, 16), c31), 16);
    } else {
      v128.store(c, c00); v128.store(c, c01, 16); c += row;
      v128.store(c, c10); v128.store(c, c11, 16); c += row;
      v128.store(c, c20); v128.store(c, c21, 16); c += row;
      v128.store(c, c30); v128.store(c, c31, 16);
    }
    return;
  }
  // Edge tile: spill to scratch, then copy the part inside C (same adds as the full path).
  v128.store(edge, c00); v128.store(edge, c01, 16);
  v128.store(edge, c10, 32); v128.store(edge, c11, 48);
  v128.store(edge, c20, 64); v128.store(edge, c21, 80);
  v128.store(edge, c30, 96); v128.store(edge, c31, 112);
  for (let ii = 0; ii < h; ii++) {
    for (let jj = 0; jj < w; jj++) {
      const dst = c + <usize>ii * row + (<usize>jj << 2);
      const v = load<f32>(edge + ((<usize>ii * NR + jj) << 2));
      store<f32>(dst, add ? load<f32>(dst) + v : v);
    }
  }
}

/**
 * The GEMM driver for columns [n0, n1) and rows [m0, m1) of C. `accumulate` adds into C
 * instead of overwriting it. `scratch` must hold GEMM_SCRATCH bytes private to the calling thread.
 */
export function gemmDriver(
  a: usize, transA: bool, packB: PackB, b: usize, bAux: usize,
  c: usize, m: i32, n: i32, k: i32, accumulate: bool, scratch: usize, n0: i32, n1: i32, m0: i32, m1: i32,
): void {
  if (m1 <= m0 || n1 <= n0) return;
  if (k <= 0) {
    if (!accumulate) for (let i = m0; i < m1; i++) memory.fill(c + ((<usize>i * n + n0) << 2), 0, <usize>(n1 - n0) << 2);
    return;
  }
  const packedA = scratch;
  const packedB = packedA + (<usize>MC * KC << 2);
  const edge = packedB + (<usize>KC * NC << 2);
  for (let jc = n0; jc < n1; jc += NC) {
    const nc = min(NC, n1 - jc);
    for (let pc = 0; pc < k; pc += KC) {
      const kc = min(KC, k - pc);
      const add = accumulate || pc > 0;
      packB(packedB, b, bAux, n, k, pc, kc, jc, nc);
      for (let ic = m0; ic < m1; ic += MC) {
        const mc = min(MC, m1 - ic);
        packA(packedA, a, transA, m, k, ic, mc, pc, kc);
        for (let jr = 0; jr < nc; jr += NR) {
          const w = min(NR, nc - jr);
          const bp = packedB + (<usize>(jr / NR) * kc * NR << 2);
          for (let ir = 0; ir < mc; ir += MR) {
            const h = min(MR, mc - ir);
            const ap = packedA + (<usize>(ir / MR) * kc * MR << 2);
            const cp = c + ((<usize>(ic + ir) * n + jc + jr) << 2);
            microKernel(ap, bp, kc, cp, n, h, w, add, edge);
          }
        }
      }
    }
  }
}

/**
 * fp32 GEMM over output columns [n0, n1): C (=|+=) op(A)·op(B).
 * transA: A is stored k×m; transB: B is stored n×k.
 */
export function gemm_f32(
  a: usize, b: usize, c: usize, m: i32, n: i32, k: i32,
  transA: i32, transB: i32, accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  gemmDriver(a, transA != 0, transB != 0 ? packB_f32_t : packB_f32_n, b, 0, c, m, n, k, accumulate != 0, scratch, n0, n1, 0, m);
}

/**
 * fp32 GEMM over output rows [m0, m1), all columns: for products with too few column panels
 * to share among threads (LoRA's rank-r side). Each element's reduction order is the same.
 */
export function gemm_f32_rows(
  a: usize, b: usize, c: usize, m: i32, n: i32, k: i32,
  transA: i32, transB: i32, accumulate: i32, m0: i32, m1: i32, scratch: usize,
): void {
  gemmDriver(a, transA != 0, transB != 0 ? packB_f32_t : packB_f32_n, b, 0, c, m, n, k, accumulate != 0, scratch, 0, n, m0, m1);
}

export function gemm_scratch_bytes(): i32 {
  return GEMM_SCRATCH;
}
