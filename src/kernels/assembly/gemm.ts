// Packed fp32 GEMM: C[m×n] (=|+=) op(A)[m×k] · op(B)[k×n], row-major.
//
// BLIS-style loops (jc → pc → ic → jr → ir) around a 4×8 register tile: 8 f32x4 accumulators,
// per k step 2 loads of B, 4 splatted A values and 8 multiply-adds. Larger tiles spill in V8.
// Skinny products skip packing the operand whose values would be used only a few times: A
// when the B block has few panels (LoRA's rank-r outputs, or k = r), fp32 B when there are
// few rows (LoRA's rank-r inputs). Every output element is the same sequence of operations
// (k in order from zero, each block of KC then added to C in order) whichever path, tile
// position or thread computes it: edge tiles are zero-padded or spilled, and results do not
// depend on [n0, n1) or [m0, m1).
//
// B is packed by a PackB function so the quantized formats can dequantize while packing and
// reuse the driver and micro-kernel unchanged.

export const MR: i32 = 4;
export const NR: i32 = 8;
export const KC: i32 = 256; // a multiple of the quantization block (32)
const MC: i32 = 64;
const NC: i32 = 512;
/** B blocks of at most this many values (64 KB) read A in place rather than packing it. */
const A_IN_PLACE_MAX_B: i32 = 64 * KC;
/** Row ranges of at most this many rows read fp32 B in place rather than packing it. */
const B_IN_PLACE_MAX_ROWS: i32 = 16;
/** Rows of Aᵀ packed at a time where A is otherwise read in place (16 KB at KC: stays in L1). */
const A_STRIP: i32 = 16;

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

/**
 * op(B) = Bᵀ with B stored n×k (the A·Bᵀ orientation). A full panel goes 4 values of k at a time: the 8 rows'
 * f32x4 at p, transposed as two 4×4 blocks into the panel's rows p..p+3 (value by value, packing cost a call of
 * 32 rows through an expert ~7% of its products' time: bench:kernels' expert calls).
 */
export function packB_f32_t(dst: usize, b: usize, aux: usize, n: i32, k: i32, p0: i32, kc: i32, j0: i32, nc: i32): void {
  const panels = ceilDiv(nc, NR);
  const rowBytes = <usize>k << 2;
  for (let q = 0; q < panels; q++) {
    const j = j0 + q * NR;
    const w = min(NR, j0 + nc - j);
    const out = dst + (<usize>q * kc * NR << 2);
    let p = 0;
    if (w == NR) {
      const src = b + ((<usize>j * k + p0) << 2);
      for (; p + 4 <= kc; p += 4) {
        const s = src + (<usize>p << 2);
        const o = out + (<usize>p * NR << 2);
        transpose4(o, s, rowBytes);
        transpose4(o + 16, s + (rowBytes << 2), rowBytes);
      }
    }
    for (let jj = 0; jj < NR; jj++) {
      if (jj < w) {
        const src = b + ((<usize>(j + jj) * k + p0) << 2);
        for (let pp = p; pp < kc; pp++) store<f32>(out + ((<usize>pp * NR + jj) << 2), load<f32>(src + (<usize>pp << 2)));
      } else {
        for (let pp = p; pp < kc; pp++) store<f32>(out + ((<usize>pp * NR + jj) << 2), 0);
      }
    }
  }
}

/** The 4×4 block of f32 at src (rows `stride` bytes apart) transposed into 4 f32x4 at dst, NR floats apart. */
@inline
function transpose4(dst: usize, src: usize, stride: usize): void {
  const r0 = v128.load(src);
  const r1 = v128.load(src + stride);
  const r2 = v128.load(src + (stride << 1));
  const r3 = v128.load(src + stride * 3);
  const t0 = v128.shuffle<u32>(r0, r1, 0, 4, 1, 5); // a0 b0 a1 b1
  const t1 = v128.shuffle<u32>(r2, r3, 0, 4, 1, 5); // c0 d0 c1 d1
  const t2 = v128.shuffle<u32>(r0, r1, 2, 6, 3, 7); // a2 b2 a3 b3
  const t3 = v128.shuffle<u32>(r2, r3, 2, 6, 3, 7); // c2 d2 c3 d3
  v128.store(dst, v128.shuffle<u64>(t0, t1, 0, 2));
  v128.store(dst, v128.shuffle<u64>(t0, t1, 1, 3), NR << 2);
  v128.store(dst, v128.shuffle<u64>(t2, t3, 0, 2), NR << 3);
  v128.store(dst, v128.shuffle<u64>(t2, t3, 1, 3), NR * 12);
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
 * 4×8 tile over kc steps. Row r of A is at ap + r·aRow, advancing aStep bytes per k step (a
 * packed panel: 4 and 16; A read in place: its row and column strides); the 8 values of B for
 * one k step are at bp, advancing bStep bytes (a packed panel: 32; B read in place: its row
 * stride). Writes (first block, not accumulating) or adds the tile into C at (i, j), of which
 * only h×w is inside C. Inlined into the loops below with the strides of their layout.
 */
@inline
function tile(
  ap: usize, aRow: usize, aStep: usize, bp: usize, bStep: usize, kc: i32,
  c: usize, ldc: i32, h: i32, w: i32, add: bool, edge: usize,
): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  const a2 = aRow << 1, a3 = aRow * 3;
  for (let p = 0; p < kc; p++) {
    const b0 = v128.load(bp);
    const b1 = v128.load(bp, 16);
    let a = v128.load32_splat(ap);
    c00 = madd(a, b0, c00); c01 = madd(a, b1, c01);
    a = v128.load32_splat(ap + aRow);
    c10 = madd(a, b0, c10); c11 = madd(a, b1, c11);
    a = v128.load32_splat(ap + a2);
    c20 = madd(a, b0, c20); c21 = madd(a, b1, c21);
    a = v128.load32_splat(ap + a3);
    c30 = madd(a, b0, c30); c31 = madd(a, b1, c31);
    ap += aStep;
    bp += bStep;
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

// The tile loops take whole rows or columns of tiles: a call per tile would cost a third of
// the tile's time when kc is small (k = 8 for LoRA's rank-8 inputs).

/** The tiles down mc rows of packed A, on one panel of B (w of its columns inside C). */
function columnOfTiles(
  packedA: usize, mc: i32, bp: usize, bStep: usize, kc: i32, c: usize, ldc: i32, w: i32, add: bool, edge: usize,
): void {
  for (let ir = 0; ir < mc; ir += MR) {
    const ap = packedA + (<usize>ir * kc << 2);
    tile(ap, 4, MR << 2, bp, bStep, kc, c + (<usize>ir * ldc << 2), ldc, min(MR, mc - ir), w, add, edge);
  }
}

/** The tiles across nc columns of packed B, for one tile of h rows of A (strides as in `tile`). */
function rowOfTiles(
  ap: usize, aRow: usize, aStep: usize, h: i32, packedB: usize, kc: i32, nc: i32, c: usize, ldc: i32, add: bool, edge: usize,
): void {
  for (let jr = 0; jr < nc; jr += NR) {
    const bp = packedB + (<usize>jr * kc << 2);
    tile(ap, aRow, aStep, bp, NR << 2, kc, c + (<usize>jr << 2), ldc, h, min(NR, nc - jr), add, edge);
  }
}

/**
 * The GEMM driver for columns [n0, n1) and rows [m0, m1) of C. `accumulate` adds into C
 * instead of overwriting it. `scratch` must hold GEMM_SCRATCH bytes private to the calling thread.
 * `bInPlace`: B is fp32 stored k×n (packB_f32_n), so its panels may be read where they are.
 */
export function gemmDriver(
  a: usize, transA: bool, packB: PackB, b: usize, bAux: usize,
  c: usize, m: i32, n: i32, k: i32, accumulate: bool, scratch: usize, n0: i32, n1: i32, m0: i32, m1: i32,
  bInPlace: bool = false,
): void {
  if (m1 <= m0 || n1 <= n0) return;
  if (k <= 0) {
    if (!accumulate) for (let i = m0; i < m1; i++) memory.fill(c + ((<usize>i * n + n0) << 2), 0, <usize>(n1 - n0) << 2);
    return;
  }
  const packedA = scratch;
  const packedB = packedA + (<usize>MC * KC << 2);
  const edge = packedB + (<usize>KC * NC << 2);
  // Rows of B a multiple of 4 KB apart share L1 sets: its panels read in place would miss.
  const fewRows = bInPlace && m1 - m0 <= B_IN_PLACE_MAX_ROWS && (n & 1023) != 0;
  for (let jc = n0; jc < n1; jc += NC) {
    const nc = min(NC, n1 - jc);
    for (let pc = 0; pc < k; pc += KC) {
      const kc = min(KC, k - pc);
      const add = accumulate || pc > 0;
      if (fewRows) {
        // Each packed B value would be used by one or two row tiles: read full panels in place
        // (the last row of an edge panel would run past B's end, so that one is packed).
        const mc = m1 - m0;
        packA(packedA, a, transA, m, k, m0, mc, pc, kc);
        const cp = c + ((<usize>m0 * n + jc) << 2);
        const full = nc / NR * NR;
        for (let jr = 0; jr < full; jr += NR) {
          const bp = b + ((<usize>pc * n + jc + jr) << 2);
          columnOfTiles(packedA, mc, bp, <usize>n << 2, kc, cp + (<usize>jr << 2), n, NR, add, edge);
        }
        if (full < nc) {
          packB(packedB, b, bAux, n, k, pc, kc, jc + full, nc - full);
          columnOfTiles(packedA, mc, packedB, NR << 2, kc, cp + (<usize>full << 2), n, nc - full, add, edge);
        }
        continue;
      }
      packB(packedB, b, bAux, n, k, pc, kc, jc, nc);
      if (kc * nc <= A_IN_PLACE_MAX_B) {
        // Few panels for this depth: each packed A value would be used a few times. So A goes a
        // row tile at a time across the panels (its values stay in L1), read in place: from A,
        // or from Aᵀ over at most two panels (its rows of A are m apart: a cache line, often a
        // page, per k step of each tile, which only a few panels pay back; over more, Aᵀ is
        // packed A_STRIP rows at a time).
        const aRow: usize = transA ? 4 : <usize>k << 2;
        const aStep: usize = transA ? <usize>m << 2 : 4;
        const readInPlace = !transA || nc <= 2 * NR;
        for (let i0 = m0; i0 < m1; i0 += A_STRIP) {
          const mc = min(A_STRIP, m1 - i0);
          // The last rows, which MR rows in place would run past A's end, are packed zero-padded.
          const inPlace = readInPlace ? mc / MR * MR : 0;
          for (let t = 0; t < inPlace; t += MR) {
            const i = i0 + t;
            const ap = a + (transA ? (<usize>pc * m + i) << 2 : (<usize>i * k + pc) << 2);
            rowOfTiles(ap, aRow, aStep, MR, packedB, kc, nc, c + ((<usize>i * n + jc) << 2), n, add, edge);
          }
          if (inPlace == mc) continue;
          packA(packedA, a, transA, m, k, i0 + inPlace, mc - inPlace, pc, kc);
          for (let t = inPlace; t < mc; t += MR) {
            const ap = packedA + (<usize>(t - inPlace) * kc << 2);
            const cp = c + ((<usize>(i0 + t) * n + jc) << 2);
            rowOfTiles(ap, 4, MR << 2, min(MR, mc - t), packedB, kc, nc, cp, n, add, edge);
          }
        }
        continue;
      }
      for (let ic = m0; ic < m1; ic += MC) {
        const mc = min(MC, m1 - ic);
        packA(packedA, a, transA, m, k, ic, mc, pc, kc);
        for (let jr = 0; jr < nc; jr += NR) {
          const bp = packedB + (<usize>jr * kc << 2);
          const cp = c + ((<usize>ic * n + jc + jr) << 2);
          columnOfTiles(packedA, mc, bp, NR << 2, kc, cp, n, min(NR, nc - jr), add, edge);
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
  gemmDriver(a, transA != 0, transB != 0 ? packB_f32_t : packB_f32_n, b, 0, c, m, n, k,
    accumulate != 0, scratch, n0, n1, 0, m, transB == 0);
}

/**
 * fp32 GEMM over output rows [m0, m1), all columns: for products with too few column panels
 * to share among threads (LoRA's rank-r side), or tall ones. Each element's reduction order
 * is the same.
 */
export function gemm_f32_rows(
  a: usize, b: usize, c: usize, m: i32, n: i32, k: i32,
  transA: i32, transB: i32, accumulate: i32, m0: i32, m1: i32, scratch: usize,
): void {
  gemmDriver(a, transA != 0, transB != 0 ? packB_f32_t : packB_f32_n, b, 0, c, m, n, k,
    accumulate != 0, scratch, 0, n, m0, m1, transB == 0);
}

export function gemm_scratch_bytes(): i32 {
  return GEMM_SCRATCH;
}
