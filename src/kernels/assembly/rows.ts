// Activation rows on the wire between nodes (node/experts.ts): int8 codes with one f32 scale per
// row, coded as the q8 weights are (assembly/quant.ts) with the whole row as the block: scale =
// amax / 127, code = nearest(x · (1 / scale)) in f32, ties to even; their decoding, which checks
// the codes; and a fingerprint of rows' bits. Serial: a call's rows are few, and the wire's
// framing around them costs more.

/** Largest |x| of the k values at src; NaN is passed over (pmax), as a comparison would. */
@inline
function rowAmax(src: usize, k: i32): f32 {
  let m = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= k; i += 4) m = f32x4.pmax(m, f32x4.abs(v128.load(src + (<usize>i << 2))));
  let amax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  for (; i < k; i++) {
    const a = abs(load<f32>(src + (<usize>i << 2)));
    if (a > amax) amax = a;
  }
  return amax;
}

/** nearest(x · inv) clamped to [-127, 127]; NaN codes as 0 (as trunc_sat does in the vector loop). */
@inline
function codeOf(x: f32, inv: f32): i32 {
  const v = nearest(x * inv);
  if (isNaN(v)) return 0;
  return <i32>min(max(v, <f32>-127), <f32>127);
}

/** Rows [r0, r1) of x (rows × k f32) to q (rows × k int8) and scales (one f32 per row). */
export function quantize_rows_i8(x: usize, q: usize, scales: usize, k: i32, r0: i32, r1: i32): void {
  const lowest = i8x16.splat(-127);
  for (let r = r0; r < r1; r++) {
    const src = x + (<usize>r * <usize>k << 2);
    const dst = q + <usize>r * <usize>k;
    const scale = rowAmax(src, k) / 127;
    store<f32>(scales + (<usize>r << 2), scale);
    const inv: f32 = scale == 0 ? 0 : <f32>1 / scale;
    const invs = f32x4.splat(inv);
    let i = 0;
    for (; i + 16 <= k; i += 16) {
      const at = src + (<usize>i << 2);
      const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(at), invs)));
      const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(at, 16), invs)));
      const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(at, 32), invs)));
      const d = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(at, 48), invs)));
      const codes = i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a, b), i16x8.narrow_i32x4_s(c, d));
      v128.store(dst + i, i8x16.max_s(codes, lowest));
    }
    for (; i < k; i++) store<i8>(dst + i, <i8>codeOf(load<f32>(src + (<usize>i << 2)), inv));
  }
}

/**
 * Rows [r0, r1) of q (rows × k int8) times their block's scale (`blocks` f32 scales per row, each
 * for k / blocks consecutive codes) into out (rows × k f32). Returns the index of the first code
 * -128 (never sent), or -1; the rows past it are not written.
 */
export function dequantize_rows_i8(q: usize, scales: usize, out: usize, k: i32, blocks: i32, r0: i32, r1: i32): i32 {
  const len = k / blocks;
  const forbidden = i8x16.splat(-128);
  for (let r = r0; r < r1; r++) {
    for (let b = 0; b < blocks; b++) {
      const first = <usize>r * <usize>k + <usize>(b * len);
      const s = load<f32>(scales + ((<usize>r * <usize>blocks + <usize>b) << 2));
      const ss = f32x4.splat(s);
      let i = 0;
      for (; i + 16 <= len; i += 16) {
        const codes = v128.load(q + first + i);
        if (v128.any_true(i8x16.eq(codes, forbidden))) break;
        const lo = i16x8.extend_low_i8x16_s(codes);
        const hi = i16x8.extend_high_i8x16_s(codes);
        const dst = out + ((first + i) << 2);
        v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)), ss));
        v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)), ss), 16);
        v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)), ss), 32);
        v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)), ss), 48);
      }
      for (; i < len; i++) {
        const code = load<i8>(q + first + i);
        if (code == -128) return <i32>(first + i);
        store<f32>(out + ((first + i) << 2), <f32>code * s);
      }
    }
  }
  return -1;
}

@inline
function mixA(h: u32, w: u32): u32 {
  h = (h ^ w) * 0x01000193;
  return h ^ (h >>> 15);
}

@inline
function mixB(h: u32, w: u32): u32 {
  h = (h ^ w) * 0x5bd1e995;
  return h ^ (h >>> 13);
}

/**
 * A 52-bit hash (as an f64 integer) of the n 32-bit words at src: four lanes of two multiply-xor
 * hashes, folded together at the end. Tells rows from other rows, not a checksum against tampering.
 */
export function fingerprint_words(src: usize, n: i32): f64 {
  let a = i32x4.splat(0x811c9dc5);
  let b = i32x4.splat(0x9747b28c);
  const pa = i32x4.splat(0x01000193);
  const pb = i32x4.splat(0x5bd1e995);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const w = v128.load(src + (<usize>i << 2));
    a = i32x4.mul(v128.xor(a, w), pa);
    a = v128.xor(a, i32x4.shr_u(a, 15));
    b = i32x4.mul(v128.xor(b, w), pb);
    b = v128.xor(b, i32x4.shr_u(b, 13));
  }
  let ha = mixA(<u32>n, i32x4.extract_lane(a, 0));
  ha = mixA(mixA(mixA(ha, i32x4.extract_lane(a, 1)), i32x4.extract_lane(a, 2)), i32x4.extract_lane(a, 3));
  let hb = mixB(<u32>n, i32x4.extract_lane(b, 0));
  hb = mixB(mixB(mixB(hb, i32x4.extract_lane(b, 1)), i32x4.extract_lane(b, 2)), i32x4.extract_lane(b, 3));
  for (; i < n; i++) {
    const w = load<u32>(src + (<usize>i << 2));
    ha = mixA(ha, w);
    hb = mixB(hb, w);
  }
  return <f64>ha * 1048576 + <f64>(hb & 0xfffff);
}
