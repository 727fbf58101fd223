// The per-value passes of an averaging round (src/kernels/deltas.ts, node/averaging): a delta, the
// mean of two contributions, the outer step's update, and int8 coding with a scale per block. Each
// computes what its JavaScript twin (src/averaging/passes.ts, src/compress/int8-block.ts) computes
// in f64 and stores in f32, in the same order, so holders running either get the same bits: the
// f64 steps run two values at a time (f64x2), the f32 ones four. Serial: a round's passes run on
// the main thread between training steps, over chunks of the main scratch.

/** Values 2 and 3 of four f32 lanes, as two f64 lanes. */
@inline
function highF64(v: v128): v128 {
  return f64x2.promote_low_f32x4(i64x2.shuffle(v, v, 1, 0));
}

/** Each f64 lane rounded to f32, back in f64 (Math.fround). */
@inline
function fround(x: v128): v128 {
  return f64x2.promote_low_f32x4(f32x4.demote_f64x2_zero(x));
}

/** Two pairs of f64 lanes rounded to four f32 lanes. */
@inline
function toF32(lo: v128, hi: v128): v128 {
  return i64x2.shuffle(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 2);
}

/** out = a − b (f32). */
export function sub_f32(a: usize, b: usize, out: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const at = <usize>i << 2;
    v128.store(out + at, f32x4.sub(v128.load(a + at), v128.load(b + at)));
  }
  for (; i < n; i++) {
    const at = <usize>i << 2;
    store<f32>(out + at, load<f32>(a + at) - load<f32>(b + at));
  }
}

/** fround(fround(0 + w0·x0) + w1·x1) / total: the sum starts at +0, so a −0 product sums to +0. */
@inline
function meanOfTwo(x0: v128, x1: v128, w0: v128, w1: v128, total: v128): v128 {
  const first = fround(f64x2.add(f64x2.splat(0), f64x2.mul(w0, x0)));
  return f64x2.div(fround(f64x2.add(first, f64x2.mul(w1, x1))), total);
}

/** out = (w0·x0 + w1·x1) / total per value, summed in f32 from +0 (out may be x0 or x1). */
export function mean_of_two_f32(x0: usize, x1: usize, out: usize, n: i32, w0: f64, w1: f64, total: f64): void {
  const a = f64x2.splat(w0);
  const b = f64x2.splat(w1);
  const t = f64x2.splat(total);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const at = <usize>i << 2;
    const u = v128.load(x0 + at);
    const v = v128.load(x1 + at);
    const lo = meanOfTwo(f64x2.promote_low_f32x4(u), f64x2.promote_low_f32x4(v), a, b, t);
    const hi = meanOfTwo(highF64(u), highF64(v), a, b, t);
    v128.store(out + at, toF32(lo, hi));
  }
  for (; i < n; i++) {
    const at = <usize>i << 2;
    const first = <f64><f32>(0 + w0 * <f64>load<f32>(x0 + at));
    store<f32>(out + at, <f32>(<f64><f32>(first + w1 * <f64>load<f32>(x1 + at)) / total));
  }
}

/**
 * mean_of_two_f32 for weights 1 and 1 and a total of 2, in f32 four values at a time, the same bits: a sum of two f32
 * rounded from f64 is their f32 sum (f64 holds more than twice f32's digits), and halving is exact in f64, so the f64
 * half rounded to f32 is the f32 product by 0.5, rounded once either way.
 */
export function mean_of_two_unit_f32(x0: usize, x1: usize, out: usize, n: i32): void {
  const half = f32x4.splat(0.5);
  const zero = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const at = <usize>i << 2;
    v128.store(out + at, f32x4.mul(f32x4.add(f32x4.add(zero, v128.load(x0 + at)), v128.load(x1 + at)), half));
  }
  for (; i < n; i++) {
    const at = <usize>i << 2;
    store<f32>(out + at, (<f32>0 + load<f32>(x0 + at) + load<f32>(x1 + at)) * <f32>0.5);
  }
}

/** Four f32 lanes of fround(anchor + lr·update), the sum in f64. */
@inline
function stepped(anchor: v128, update: v128, rate: v128): v128 {
  const lo = f64x2.add(f64x2.promote_low_f32x4(anchor), f64x2.mul(rate, f64x2.promote_low_f32x4(update)));
  return toF32(lo, f64x2.add(highF64(anchor), f64x2.mul(rate, highF64(update))));
}

/**
 * The outer step: anchor = moved = fround(anchor + lr·update); values = moved, or with a `boundary` (0: none;
 * overlapped averaging) values = moved + (values − boundary), in f64.
 */
export function apply_outer_f32(values: usize, anchor: usize, update: usize, boundary: usize, n: i32, lr: f64): void {
  const rate = f64x2.splat(lr);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const at = <usize>i << 2;
    const moved = stepped(v128.load(anchor + at), v128.load(update + at), rate);
    v128.store(anchor + at, moved);
    if (!boundary) {
      v128.store(values + at, moved);
      continue;
    }
    const v = v128.load(values + at);
    const s = v128.load(boundary + at);
    const lo = f64x2.add(f64x2.promote_low_f32x4(moved), f64x2.sub(f64x2.promote_low_f32x4(v), f64x2.promote_low_f32x4(s)));
    const hi = f64x2.add(highF64(moved), f64x2.sub(highF64(v), highF64(s)));
    v128.store(values + at, toF32(lo, hi));
  }
  for (; i < n; i++) {
    const at = <usize>i << 2;
    const moved = <f32>(<f64>load<f32>(anchor + at) + lr * <f64>load<f32>(update + at));
    store<f32>(anchor + at, moved);
    const trained = boundary ? <f64>load<f32>(values + at) - <f64>load<f32>(boundary + at) : 0;
    store<f32>(values + at, boundary ? <f32>(<f64>moved + trained) : moved);
  }
}

/**
 * Σ x² of n f32 values, in f64: four running sums (two f64x2), so an add need not wait for the one before
 * (the JavaScript twin, src/averaging/screen.ts's l2Norm, sums in another order: norms are compared with slack).
 */
export function sum_squares_f64(x: usize, n: i32): f64 {
  let s0 = f64x2.splat(0);
  let s1 = f64x2.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const v = v128.load(x + (<usize>i << 2));
    const lo = f64x2.promote_low_f32x4(v);
    const hi = highF64(v);
    s0 = f64x2.add(s0, f64x2.mul(lo, lo));
    s1 = f64x2.add(s1, f64x2.mul(hi, hi));
  }
  const s = f64x2.add(s0, s1);
  let total = f64x2.extract_lane(s, 0) + f64x2.extract_lane(s, 1);
  for (; i < n; i++) {
    const v = <f64>load<f32>(x + (<usize>i << 2));
    total += v * v;
  }
  return total;
}

/** The one input where floor(y + 0.5) rounds up and Math.round does not. */
const HAIR_UNDER_HALF: f64 = 0.49999999999999994;

/** Math.round(y) clamped to [-127, 127] (NaN: 0), as src/compress/int8-block.ts's loop codes y. */
@inline
function codeOf(y: f64): i32 {
  if (y == HAIR_UNDER_HALF) return 0;
  const rounded = floor(y + 0.5);
  if (isNaN(rounded)) return 0;
  return <i32>min(max(rounded, -127), 127);
}

/** 1.5 · 2^52: an integer-valued f64 under 2^51 in magnitude plus this holds the integer in its low 32 bits. */
const I32_MAGIC: f64 = 6755399441055744.0;

/**
 * Two f64 lanes of x·inv coded as Math.round would, clamped to [-127, 127] (NaN codes 0), as the i32 lanes 0 and 2. pmin
 * and pmax are one instruction each where min and max (which propagate NaN) and trunc_sat take several: a NaN passes
 * the clamp and is zeroed after, and the magic add converts without a range check, the value being in range by then.
 */
@inline
function codesOf(y: v128): v128 {
  const hair = f64x2.eq(y, f64x2.splat(HAIR_UNDER_HALF));
  const rounded = v128.andnot(f64x2.floor(f64x2.add(y, f64x2.splat(0.5))), hair);
  const clamped = f64x2.pmin(f64x2.pmax(rounded, f64x2.splat(-127)), f64x2.splat(127));
  return f64x2.add(v128.and(clamped, f64x2.eq(clamped, clamped)), f64x2.splat(I32_MAGIC));
}

/**
 * x (n values) to int8 codes q and one f32 scale per block of `block` values (the last may be shorter):
 * scale = fround(amax / 127), code = Math.round(x · (1 / scale)) in f64, clamped to ±127; `decoded`
 * (0: none; may be x) gets code · scale; a NaN codes as 0. Returns the index of the first NaN or ±Infinity,
 * or −1, and stores that value at `found`.
 */
export function quantize_blocks_i8(x: usize, q: usize, scales: usize, decoded: usize, n: i32, block: i32, found: usize): i32 {
  let nonFinite = -1;
  for (let b = 0, lo = 0; lo < n; b++, lo += block) {
    const hi = min(n, lo + block);
    let m = f32x4.splat(0);
    let i = lo;
    for (; i + 4 <= hi; i += 4) m = f32x4.max(m, f32x4.abs(v128.load(x + (<usize>i << 2)))); // max propagates NaN
    let amax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
    for (; i < hi; i++) amax = max(amax, abs(load<f32>(x + (<usize>i << 2))));
    if (!(amax < Infinity)) {
      if (nonFinite < 0) {
        let at = lo;
        while (isFinite(load<f32>(x + (<usize>at << 2)))) at++;
        nonFinite = at;
        store<f32>(found, load<f32>(x + (<usize>at << 2))); // before `decoded`, which may be x, overwrites it
      }
      // The absmax of all but the NaNs (an Infinity makes the scale infinite), as the JavaScript loop takes it.
      amax = 0;
      for (i = lo; i < hi; i++) {
        const a = abs(load<f32>(x + (<usize>i << 2)));
        if (a > amax) amax = a;
      }
    }
    const scale = <f32>(<f64>amax / 127);
    store<f32>(scales + (<usize>b << 2), scale);
    if (scale == 0) {
      memory.fill(q + <usize>lo, 0, <usize>(hi - lo));
      if (decoded) memory.fill(decoded + (<usize>lo << 2), 0, <usize>(hi - lo) << 2);
      continue;
    }
    const inv = 1 / <f64>scale;
    const invs = f64x2.splat(inv);
    const scales4 = f32x4.splat(scale);
    i = lo;
    for (; i + 4 <= hi; i += 4) {
      const v = v128.load(x + (<usize>i << 2));
      const codes = i32x4.shuffle(
        codesOf(f64x2.mul(f64x2.promote_low_f32x4(v), invs)), codesOf(f64x2.mul(highF64(v), invs)), 0, 2, 4, 6,
      );
      // Narrowed twice (saturating: the codes are within ±127), the first four bytes are the four codes.
      store<i32>(q + <usize>i, i32x4.extract_lane(i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(codes, codes), codes), 0));
      if (decoded) v128.store(decoded + (<usize>i << 2), f32x4.mul(f32x4.convert_i32x4_s(codes), scales4));
    }
    for (; i < hi; i++) {
      const code = codeOf(<f64>load<f32>(x + (<usize>i << 2)) * inv);
      store<i8>(q + <usize>i, <i8>code);
      if (decoded) store<f32>(decoded + (<usize>i << 2), <f32>code * scale);
    }
  }
  return nonFinite;
}
