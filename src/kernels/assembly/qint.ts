// Integer path of the quantized kernels: Y[m×n] (=|+=) quant8(X)[m×k] · Wᵀ, with W n×k in q8
// or q4 (blocks of QBLOCK along k, one f32 scale each) and X quantized on the fly per row and
// block exactly like q8. Each output element is, as test/reference/quant64.ts integerProduct,
//   Σ_b f32(isum_b) · f32(sx[i,b]·sw[j,b])   summed over blocks b in order in f32,
// with isum_b the exact int32 dot product of block b (|isum| ≤ 32·127·127 < 2^24, so the
// conversion is exact too). Only IEEE f32 mul/add and integer ops: the same bits on every
// CPU and engine, for both builds (no relaxed instructions here) and any thread count.
//
// Operands are packed once to int16 pairs so i32x4.dot_i16x8_s does 8 multiply-adds:
// A panels (4 rows) hold per k-pair the 4 rows' pairs (x[p], x[p+1]) as i32s, B panels
// (8 columns = 8 rows of W) hold per k-pair the 8 columns' pairs. The 4×8 register tile keeps
// 8 int32x4 accumulators; at each block end they are converted, scaled and added to an f32
// tile kept in scratch (registers would spill: 8 int + 8 f32 + operands > 16 xmm).
// Two phases, so that no thread repeats another's packing: qint_pack_x quantizes X into A
// panels in a shared buffer (threads split the rows), then qint_gemm packs each B panel once
// (threads split the output's column panels) and runs it over the A panels.

export const QBLOCK: i32 = 32;
const MR: i32 = 4;
const NR: i32 = 8;
const PAIRS: i32 = QBLOCK / 2;
/** Scratch bytes the integer kernels use per thread (the runtime gives each thread 4 MiB). */
const QINT_SCRATCH: i32 = 4 << 20;
const TILE_BYTES: i32 = MR * NR * 4;
/** Packed A panels per row chunk of the GEMM: well inside L2 next to the B panel in use. */
const A_CHUNK_BYTES: i32 = 256 << 10;

/** Bytes of one packed A panel (MR rows × k int16 values, then MR·k/QBLOCK scales). */
@inline
function aPanelBytes(k: i32): i32 {
  return MR * k * 2 + MR * (k / QBLOCK) * 4;
}

/** Bytes of the packed B panel (NR columns × k int16 values, then NR·k/QBLOCK scales). */
@inline
function bPanelBytes(k: i32): i32 {
  return NR * k * 2 + NR * (k / QBLOCK) * 4;
}

/** Largest k the integer GEMM supports: the f32 tile and one B panel fit in scratch. */
export function qint_max_k(): i32 {
  return (QINT_SCRATCH - TILE_BYTES) / bPanelBytes(QBLOCK) * QBLOCK;
}

/** Bytes of one packed A panel: the packed X of m rows takes ceil(m / 4) of them. */
export function qint_a_panel_bytes(k: i32): i32 {
  return aPanelBytes(k);
}

export function qint_scratch_bytes(): i32 {
  return QINT_SCRATCH;
}

// ---- blockwise quantization (shared by the activation packing and the transposed copy) ----

/**
 * amax / qmax over the QBLOCK f32 values at src. The max runs on the bit patterns of |x| as
 * int32, which order like the floats (and put any NaN above +Inf: NaN propagates, as
 * Math.max does); one integer max is much cheaper than f32x4.max.
 */
@inline
function blockScale(src: usize, qmax: f32): f32 {
  const magnitude = i32x4.splat(0x7fffffff);
  let m = v128.and(v128.load(src), magnitude);
  for (let o = 16; o < QBLOCK * 4; o += 16) m = i32x4.max_s(m, v128.and(v128.load(src + o), magnitude));
  const amax = max(max(i32x4.extract_lane(m, 0), i32x4.extract_lane(m, 1)), max(i32x4.extract_lane(m, 2), i32x4.extract_lane(m, 3)));
  return reinterpret<f32>(amax) / qmax;
}

@inline
function inverse(scale: f32): f32 {
  return scale == 0 ? 0 : <f32>1 / scale;
}

/** 1.5·2^23: adding it rounds any |y| < 2^22 to an integer, ties to even, kept in the low bits. */
const ROUNDER: f32 = 12582912;

/**
 * round-half-even(v·inv) as int32 lanes, unclamped but saturating for ±Inf; NaN lanes become 0
 * (as an Int8Array store of NaN). |v·inv| stays below ~2·qmax unless inv is +Inf (a denormal
 * block), so the rounding trick is exact where it matters.
 */
@inline
function round4(v: v128, inv: v128): v128 {
  const y = f32x4.mul(v, inv);
  const q = i32x4.sub(f32x4.add(y, f32x4.splat(ROUNDER)), i32x4.splat(reinterpret<i32>(ROUNDER)));
  return v128.and(q, f32x4.eq(y, y));
}

/**
 * Quantizes the QBLOCK f32 values at src (q8 or q4 range) to QBLOCK int16 at dst (4 v128);
 * returns the scale.
 */
@inline
function quantizeBlockI16(src: usize, bits: i32, dst: usize): f32 {
  const qmax: f32 = bits == 8 ? 127 : 7;
  const scale = blockScale(src, qmax);
  const inv = f32x4.splat(inverse(scale));
  const hi = i16x8.splat(<i16>qmax);
  const lo = i16x8.splat(bits == 8 ? -127 : -8);
  for (let o: usize = 0; o < <usize>QBLOCK * 2; o += 16) {
    const q = i16x8.narrow_i32x4_s(round4(v128.load(src + (o << 1)), inv), round4(v128.load(src + (o << 1), 16), inv));
    v128.store(dst + o, i16x8.min_s(hi, i16x8.max_s(lo, q)));
  }
  return scale;
}

// ---- packing ----

/** Stores 8 int16 values (4 k-pairs) of one row/column at pair stride `stride` bytes. */
@inline
function storePairs(dst: usize, stride: usize, v: v128): void {
  store<i32>(dst, i32x4.extract_lane(v, 0));
  store<i32>(dst + stride, i32x4.extract_lane(v, 1));
  store<i32>(dst + 2 * stride, i32x4.extract_lane(v, 2));
  store<i32>(dst + 3 * stride, i32x4.extract_lane(v, 3));
}

/**
 * Quantizes rows [i, i+MR) of X (m×k f32) into an A panel at dst: per k-pair, MR i32 pairs;
 * then per block, MR scales. Rows past m are zero. `temp` holds MR blocks of int16.
 */
function packA(dst: usize, x: usize, m: i32, k: i32, i: i32, temp: usize): void {
  const blocks = k / QBLOCK;
  const scales = dst + (<usize>MR * k << 1);
  const rowBytes: usize = QBLOCK * 2;
  for (let b = 0; b < blocks; b++) {
    for (let r = 0; r < MR; r++) {
      const q = temp + <usize>r * rowBytes;
      let scale: f32 = 0;
      if (i + r < m) scale = quantizeBlockI16(x + ((<usize>(i + r) * k + <usize>b * QBLOCK) << 2), 8, q);
      else memory.fill(q, 0, rowBytes);
      store<f32>(scales + (<usize>(b * MR + r) << 2), scale);
    }
    // Transpose 4 rows × 4 pairs (i32) at a time into pair-major order.
    const out = dst + (<usize>b * PAIRS * MR << 2);
    for (let o: usize = 0; o < rowBytes; o += 16) {
      const q0 = v128.load(temp + o);
      const q1 = v128.load(temp + rowBytes + o);
      const q2 = v128.load(temp + 2 * rowBytes + o);
      const q3 = v128.load(temp + 3 * rowBytes + o);
      const t0 = i32x4.shuffle(q0, q1, 0, 4, 1, 5);
      const t1 = i32x4.shuffle(q2, q3, 0, 4, 1, 5);
      const t2 = i32x4.shuffle(q0, q1, 2, 6, 3, 7);
      const t3 = i32x4.shuffle(q2, q3, 2, 6, 3, 7);
      const at = out + (o << 2);
      v128.store(at, i64x2.shuffle(t0, t1, 0, 2));
      v128.store(at, i64x2.shuffle(t0, t1, 1, 3), 16);
      v128.store(at, i64x2.shuffle(t2, t3, 0, 2), 32);
      v128.store(at, i64x2.shuffle(t2, t3, 1, 3), 48);
    }
  }
}

/**
 * Unpacks columns [j, j+NR) of Bᵀ = rows of W (n×k, q8 or q4) into a B panel at dst: per
 * k-pair, NR i32 pairs; then per block, NR scales. Columns past n are zero.
 */
function packB(dst: usize, wq: usize, ws: usize, bits: i32, n: i32, k: i32, j: i32): void {
  const blocks = k / QBLOCK;
  const scales = dst + (<usize>NR * k << 1);
  const stride: usize = NR << 2;
  const eight = i8x16.splat(8);
  for (let c = 0; c < NR; c++) {
    const colDst = dst + (<usize>c << 2);
    if (j + c >= n) {
      for (let t = 0; t < k / 2; t++) store<i32>(colDst + <usize>t * stride, 0);
      for (let b = 0; b < blocks; b++) store<f32>(scales + (<usize>(b * NR + c) << 2), 0);
      continue;
    }
    for (let b = 0; b < blocks; b++) {
      const out = colDst + <usize>b * PAIRS * stride;
      let lo: v128, hi: v128; // elements 0..15 and 16..31 of the block as int8
      if (bits == 8) {
        const src = wq + <usize>(j + c) * k + <usize>b * QBLOCK;
        lo = v128.load(src);
        hi = v128.load(src, 16);
      } else {
        const bytes = v128.load(wq + ((<usize>(j + c) * k + <usize>b * QBLOCK) >> 1));
        const even = v128.and(bytes, i8x16.splat(15));
        const odd = i8x16.shr_u(bytes, 4);
        lo = i8x16.sub(i8x16.shuffle(even, odd, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), eight);
        hi = i8x16.sub(i8x16.shuffle(even, odd, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), eight);
      }
      storePairs(out, stride, i16x8.extend_low_i8x16_s(lo));
      storePairs(out + 4 * stride, stride, i16x8.extend_high_i8x16_s(lo));
      storePairs(out + 8 * stride, stride, i16x8.extend_low_i8x16_s(hi));
      storePairs(out + 12 * stride, stride, i16x8.extend_high_i8x16_s(hi));
      store<f32>(scales + (<usize>(b * NR + c) << 2), load<f32>(ws + ((<usize>(j + c) * blocks + b) << 2)));
    }
  }
}

// ---- micro-kernel ----

/** acc[r] += f32(isum) · f32(sx[r] · sw) for the two column halves of tile row r. */
@inline
function scaleAdd(acc: usize, isum0: v128, isum1: v128, sx: v128, sw0: v128, sw1: v128): void {
  v128.store(acc, f32x4.add(v128.load(acc), f32x4.mul(f32x4.convert_i32x4_s(isum0), f32x4.mul(sx, sw0))));
  v128.store(acc, f32x4.add(v128.load(acc, 16), f32x4.mul(f32x4.convert_i32x4_s(isum1), f32x4.mul(sx, sw1))), 16);
}

/**
 * The 4×8 tile of A panel `ap` times B panel `bp` over `blocks` blocks into the f32 tile at
 * `acc` (row-major 4×8, zeroed here).
 */
function microKernel(ap: usize, bp: usize, k: i32, acc: usize): void {
  const blocks = k / QBLOCK;
  let sxp = ap + (<usize>MR * k << 1);
  let swp = bp + (<usize>NR * k << 1);
  const zero = f32x4.splat(0);
  for (let o = 0; o < TILE_BYTES; o += 16) v128.store(acc + o, zero);
  for (let b = 0; b < blocks; b++) {
    let s00 = i32x4.splat(0), s01 = i32x4.splat(0);
    let s10 = i32x4.splat(0), s11 = i32x4.splat(0);
    let s20 = i32x4.splat(0), s21 = i32x4.splat(0);
    let s30 = i32x4.splat(0), s31 = i32x4.splat(0);
    for (let t = 0; t < PAIRS; t++) {
      const b0 = v128.load(bp);
      const b1 = v128.load(bp, 16);
      let a = v128.load32_splat(ap);
      s00 = i32x4.add(s00, i32x4.dot_i16x8_s(a, b0)); s01 = i32x4.add(s01, i32x4.dot_i16x8_s(a, b1));
      a = v128.load32_splat(ap, 4);
      s10 = i32x4.add(s10, i32x4.dot_i16x8_s(a, b0)); s11 = i32x4.add(s11, i32x4.dot_i16x8_s(a, b1));
      a = v128.load32_splat(ap, 8);
      s20 = i32x4.add(s20, i32x4.dot_i16x8_s(a, b0)); s21 = i32x4.add(s21, i32x4.dot_i16x8_s(a, b1));
      a = v128.load32_splat(ap, 12);
      s30 = i32x4.add(s30, i32x4.dot_i16x8_s(a, b0)); s31 = i32x4.add(s31, i32x4.dot_i16x8_s(a, b1));
      ap += MR << 2;
      bp += NR << 2;
    }
    const sw0 = v128.load(swp);
    const sw1 = v128.load(swp, 16);
    scaleAdd(acc, s00, s01, v128.load32_splat(sxp), sw0, sw1);
    scaleAdd(acc + 32, s10, s11, v128.load32_splat(sxp, 4), sw0, sw1);
    scaleAdd(acc + 64, s20, s21, v128.load32_splat(sxp, 8), sw0, sw1);
    scaleAdd(acc + 96, s30, s31, v128.load32_splat(sxp, 12), sw0, sw1);
    sxp += MR << 2;
    swp += NR << 2;
  }
}

/** Writes (or adds) the h×w part of the f32 tile into Y at y (row stride n). */
function storeTile(acc: usize, y: usize, n: i32, h: i32, w: i32, add: bool): void {
  const row = <usize>n << 2;
  if (w == NR) {
    for (let r = 0; r < h; r++) {
      const dst = y + <usize>r * row;
      const src = acc + (<usize>r * NR << 2);
      if (add) {
        v128.store(dst, f32x4.add(v128.load(dst), v128.load(src)));
        v128.store(dst, f32x4.add(v128.load(dst, 16), v128.load(src, 16)), 16);
      } else {
        v128.store(dst, v128.load(src));
        v128.store(dst, v128.load(src, 16), 16);
      }
    }
    return;
  }
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const dst = y + <usize>r * row + (<usize>c << 2);
      const v = load<f32>(acc + ((<usize>(r * NR + c)) << 2));
      store<f32>(dst, add ? load<f32>(dst) + v : v);
    }
  }
}

/**
 * Quantizes rows [begin, end) of X (m×k f32; begin a multiple of MR) into their A panels of
 * the packed matrix at a (row panel p at a + p·qint_a_panel_bytes(k)). Threads split the rows,
 * so X is quantized once, however many threads then share the packed panels.
 */
export function qint_pack_x(x: usize, m: i32, k: i32, a: usize, begin: i32, end: i32, scratch: usize): void {
  const aBytes = <usize>aPanelBytes(k);
  for (let i = begin; i < end; i += MR) packA(a + <usize>(i / MR) * aBytes, x, m, k, i, scratch);
}

/**
 * Y (=|+=) quant8(X)·Wᵀ over output columns [n0, n1): X packed by qint_pack_x at a (m rows),
 * W n×k quantized (bits 8 or 4, q at wq, scales at ws), Y m×n f32; k a multiple of QBLOCK, at
 * most qint_max_k(). With accumulate, Y += P where P is the exact product above.
 * The thread's B panels are packed into scratch once, during the first row chunk (in column
 * chunks if they do not all fit); rows go in chunks of about A_CHUNK_BYTES of A panels, which stay in L2 while every
 * B panel passes over them (else each B panel would stream all of A from L3).
 */
export function qint_gemm(
  a: usize, wq: usize, ws: usize, bits: i32, y: usize, m: i32, n: i32, k: i32,
  accumulate: i32, n0: i32, n1: i32, scratch: usize,
): void {
  if (m <= 0 || n1 <= n0) return;
  const acc = scratch;
  const bPanels = scratch + TILE_BYTES;
  const aBytes = <usize>aPanelBytes(k);
  const bBytes = <usize>bPanelBytes(k);
  const chunkCols = (QINT_SCRATCH - TILE_BYTES) / max(bPanelBytes(k), 1) * NR;
  const chunkRows = max(1, A_CHUNK_BYTES / max(aPanelBytes(k), 1)) * MR;
  const add = accumulate != 0;
  for (let jc = n0; jc < n1; jc += chunkCols) {
    const jEnd = min(n1, jc + chunkCols);
    for (let ic = 0; ic < m; ic += chunkRows) {
      const iEnd = min(m, ic + chunkRows);
      for (let j = jc; j < jEnd; j += NR) {
        // Packed where first used, so it is still in L1; with a single row chunk each panel is
        // used once and they all take the first slot, so packing writes nothing out of L1.
        const bp = m <= chunkRows ? bPanels : bPanels + <usize>((j - jc) / NR) * bBytes;
        if (ic == 0) packB(bp, wq, ws, bits, n, k, j);
        const w = min(NR, jEnd - j);
        for (let i = ic; i < iEnd; i += MR) {
          microKernel(a + <usize>(i / MR) * aBytes, bp, k, acc);
          storeTile(acc, y + ((<usize>i * n + j) << 2), n, min(MR, m - i), w, add);
        }
      }
    }
  }
}

// ---- transposed quantized copy (for the backward through a frozen weight) ----

/**
 * Quantizes QBLOCK f32 values at src to q8 bytes or q4 nibbles at dst, via QBLOCK int16 at
 * temp; returns the scale.
 */
function quantizeBlockTo(src: usize, bits: i32, dst: usize, temp: usize): f32 {
  const scale = quantizeBlockI16(src, bits, temp);
  const b0 = i8x16.narrow_i16x8_s(v128.load(temp), v128.load(temp, 16));
  const b1 = i8x16.narrow_i16x8_s(v128.load(temp, 32), v128.load(temp, 48));
  if (bits == 8) {
    v128.store(dst, b0);
    v128.store(dst, b1, 16);
  } else {
    // As i16 lanes, q + 8 holds an (even, odd) pair of nibbles in its two bytes: join them.
    const eight = i8x16.splat(8);
    const p0 = i8x16.add(b0, eight);
    const p1 = i8x16.add(b1, eight);
    const low = i16x8.splat(0x0f);
    const high = i16x8.splat(0xf0);
    const join0 = v128.or(v128.and(p0, low), v128.and(i16x8.shr_u(p0, 4), high));
    const join1 = v128.or(v128.and(p1, low), v128.and(i16x8.shr_u(p1, 4), high));
    v128.store(dst, i8x16.narrow_i16x8_u(join0, join1));
  }
  return scale;
}

/**
 * Wᵀ as a quantized matrix: W is rows×cols quantized (blocks along cols), the result T is
 * cols×rows quantized with `tbits` in blocks along rows (rows a multiple of QBLOCK). Each
 * value of W is dequantized (f32(q)·scale) and re-quantized. Work items are T's rows (W's
 * columns) [begin, end), in whole blocks; 32×32 tiles go through scratch.
 */
export function qint_transpose_quantized(
  wq: usize, ws: usize, bits: i32, rows: i32, cols: i32, tq: usize, ts: usize, tbits: i32,
  begin: i32, end: i32, scratch: usize,
): void {
  const wBlocks = cols / QBLOCK;
  const tBlocks = rows / QBLOCK;
  const tile = scratch; // QBLOCK×QBLOCK f32: tile[c][r] = W[j0 + r, p0 + c]
  const temp = tile + (<usize>QBLOCK * QBLOCK << 2);
  for (let p0 = begin; p0 < end; p0 += QBLOCK) {
    for (let j0 = 0; j0 < rows; j0 += QBLOCK) {
      for (let r = 0; r < QBLOCK; r++) {
        const j = j0 + r;
        const scale = load<f32>(ws + ((<usize>j * wBlocks + p0 / QBLOCK) << 2));
        for (let c = 0; c < QBLOCK; c++) {
          const at = <usize>j * cols + p0 + c;
          const q: i32 = bits == 8 ? <i32>load<i8>(wq + at) : ((<i32>load<u8>(wq + (at >> 1)) >> (<i32>(at & 1) << 2)) & 15) - 8;
          store<f32>(tile + ((<usize>(c * QBLOCK + r)) << 2), <f32>q * scale);
        }
      }
      for (let c = 0; c < QBLOCK; c++) {
        const at = <usize>(p0 + c) * rows + j0;
        const dst = tbits == 8 ? tq + at : tq + (at >> 1);
        const scale = quantizeBlockTo(tile + (<usize>c * QBLOCK << 2), tbits, dst, temp);
        store<f32>(ts + ((<usize>(p0 + c) * tBlocks + j0 / QBLOCK) << 2), scale);
      }
    }
  }
}
