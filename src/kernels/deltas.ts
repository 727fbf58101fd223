// The per-value passes of an averaging round in WASM SIMD (assembly/deltas.ts), bit for bit what the
// JavaScript passes (src/averaging/passes.ts) compute, on any f32 arrays: arrays in the kernel heap
// (a parameter's values) are used where they are, the others (the outer step's anchors, decoded
// deltas) go through the main thread's scratch a chunk at a time, small enough to stay in cache
// between the copy in, the pass and the copy out.
import { alignedBytes } from './heap.ts';
import { SCRATCH_BYTES, type KernelRuntime } from './runtime.ts';

/** Values per chunk: 64 KiB of each f32 array. */
const CHUNK = 16384;

type Typed = Float32Array | Int8Array;
/** Where a pass keeps an operand: its offset in the scratch (−1: used in the heap where it is), and whether it is read, written. */
interface Place {
  array: Typed;
  offset: number;
  read: boolean;
  written: boolean;
}

export class DeltaPasses {
  constructor(private readonly rt: KernelRuntime) {}

  /** A zeroed array in the kernel heap, which every pass uses where it is (no copy through the scratch); free() it. */
  allocate(length: number): Float32Array {
    return this.rt.heap.f32(length);
  }

  free(array: Float32Array): void {
    this.rt.heap.release(array);
  }

  /** The L2 norm over all of the tensors, the squares summed in f64 (src/averaging/screen.ts's l2Norm, in another order). */
  l2Norm(values: readonly Float32Array[]): number {
    let total = 0;
    for (const v of values) this.pass('l2Norm', [[v, 'in']], CHUNK, ([pv], n) => void (total += this.rt.fn('sum_squares_f64')(pv, n)));
    return Math.sqrt(total);
  }

  /** out = a − b. */
  subtract(a: Float32Array, b: Float32Array, out: Float32Array): void {
    this.pass('subtract', [[a, 'in'], [b, 'in'], [out, 'out']], CHUNK, ([pa, pb, po], n) => void this.rt.fn('sub_f32')(pa, pb, po, n));
  }

  /** out = fround(fround(0 + w0·x0) + w1·x1) / total per value (out may be x0 or x1). */
  meanOfTwo(out: Float32Array, x0: Float32Array, x1: Float32Array, w0: number, w1: number, total: number): void {
    // Two fresh contributions (the usual round) take the f32 kernel: its bits are the same for these weights.
    const unit = w0 === 1 && w1 === 1 && total === 2;
    this.pass('meanOfTwo', [[x0, 'in'], [x1, 'in'], [out, 'out']], CHUNK, ([p0, p1, po], n) => {
      if (unit) this.rt.fn('mean_of_two_unit_f32')(p0, p1, po, n);
      else this.rt.fn('mean_of_two_f32')(p0, p1, po, n, w0, w1, total);
    });
  }

  /** values = anchor = fround(anchor + lr·update). */
  applyStep(values: Float32Array, anchor: Float32Array, update: Float32Array, lr: number): void {
    this.pass('applyStep', [[values, 'out'], [anchor, 'both'], [update, 'in']], CHUNK, ([pv, pa, pu], n) => {
      this.rt.fn('apply_outer_f32')(pv, pa, pu, 0, n, lr);
    });
  }

  /** anchor = moved = fround(anchor + lr·update); values = moved + (values − boundary). */
  applyLate(values: Float32Array, anchor: Float32Array, update: Float32Array, boundary: Float32Array, lr: number): void {
    this.pass('applyLate', [[values, 'both'], [anchor, 'both'], [update, 'in'], [boundary, 'in']], CHUNK, ([pv, pa, pu, pb], n) => {
      this.rt.fn('apply_outer_f32')(pv, pa, pu, pb, n, lr);
    });
  }

  /** src/compress/int8-block.ts's quantizeBlocks, the same codes, scales and decoded values. */
  quantizeBlocks(
    x: Float32Array, blockSize: number, q: Int8Array, scales: Float32Array, decoded?: Float32Array,
  ): { index: number; value: number } | undefined {
    const n = x.length;
    if (q.length !== n || scales.length !== Math.ceil(n / blockSize) || (decoded && decoded.length !== n)) {
      throw new RangeError(`quantizeBlocks: ${n} values, ${q.length} codes, ${scales.length} scales of blocks of ${blockSize}`);
    }
    let first: { index: number; value: number } | undefined;
    const operands: [Typed, 'in' | 'out' | 'both'][] = [[x, 'in'], [q, 'out'], ...(decoded ? [[decoded, 'out'] as [Typed, 'out']] : [])];
    const scalesBytes = scaleRoom(blockSize);
    this.pass('quantizeBlocks', operands, chunkOf(blockSize), ([px, pq, pd], count, lo) => {
      const ps = this.rt.mainScratch + SCRATCH_BYTES - scalesBytes;
      const pf = ps - FOUND_BYTES;
      const found = this.rt.fn('quantize_blocks_i8')(px, pq, ps, pd ?? 0, count, blockSize, pf);
      const { buffer } = this.rt.memory;
      scales.set(new Float32Array(buffer, ps, Math.ceil(count / blockSize)), lo / blockSize);
      if (found >= 0 && !first) first = { index: lo + found, value: new Float32Array(buffer, pf, 1)[0] };
    }, scalesBytes + FOUND_BYTES);
    return first;
  }

  /**
   * Writes code · its block's scale into `out` (the scales are the caller's to check); returns the index of the
   * first code −128 (never sent), or −1. Past that code `out` holds whatever the chunk's scratch held.
   */
  dequantizeBlocks(q: Int8Array, scales: Float32Array, blockSize: number, out: Float32Array): number {
    let bad = -1;
    const scalesBytes = scaleRoom(blockSize);
    this.pass('dequantizeBlocks', [[q, 'in'], [out, 'out']], chunkOf(blockSize), ([pq, po], count, lo) => {
      const blocks = Math.ceil(count / blockSize);
      const ps = this.rt.mainScratch + SCRATCH_BYTES - scalesBytes;
      new Float32Array(this.rt.memory.buffer, ps, blocks).set(scales.subarray(lo / blockSize, lo / blockSize + blocks));
      // Whole blocks as rows of one block each, then the tensor's shorter last block as a row of its own.
      const whole = Math.floor(count / blockSize);
      const dequantize = this.rt.fn('dequantize_rows_i8');
      const found = dequantize(pq, ps, po, blockSize, 1, 0, whole);
      if (found >= 0) bad = lo + found;
      else if (count > whole * blockSize) {
        const tail = dequantize(pq + whole * blockSize, ps + whole * 4, po + whole * blockSize * 4, count - whole * blockSize, 1, 0, 1);
        if (tail >= 0) bad = lo + whole * blockSize + tail;
      }
      return bad < 0;
    }, scalesBytes);
    return bad;
  }

  /**
   * Runs `kernel(pointers, count, lo)` over [lo, lo + count) chunks of the operands (all of one length): heap
   * arrays where they are, the others copied into the scratch (when read) and back (when written). `reserved`
   * bytes at the scratch's end are the kernel's own. A kernel returning false ends the pass after its chunk.
   */
  private pass(
    name: string, operands: [Typed, 'in' | 'out' | 'both'][], chunk: number,
    kernel: (pointers: number[], count: number, lo: number) => boolean | void, reserved = 0,
  ): void {
    const n = operands[0][0].length;
    const lengths = operands.map(([a]) => a.length);
    if (lengths.some((length) => length !== n)) throw new RangeError(`${name}: arrays of ${lengths.join(', ')} values`);
    const heap = this.rt.heap;
    // One place per distinct array: an array both read and written (or listed twice) is copied in and out once.
    const places = new Map<Typed, Place>();
    let offset = 0;
    for (const [array, use] of operands) {
      let place = places.get(array);
      if (!place) {
        places.set(array, (place = { array, offset: -1, read: false, written: false }));
        if (!heap.contains(array)) {
          place.offset = offset;
          offset += alignedBytes(chunk * array.BYTES_PER_ELEMENT);
        }
      }
      place.read ||= use !== 'out';
      place.written ||= use !== 'in';
    }
    if (offset + reserved > SCRATCH_BYTES) {
      throw new RangeError(`${name}: chunks of ${chunk} values need ${offset + reserved} bytes of scratch`);
    }
    const base = this.rt.mainScratch;
    for (let lo = 0; lo < n; lo += chunk) {
      const count = Math.min(chunk, n - lo);
      const { buffer } = this.rt.memory;
      const view = (place: Place) => {
        const Ctor = place.array instanceof Int8Array ? Int8Array : Float32Array;
        return new Ctor(buffer, base + place.offset, count);
      };
      for (const place of places.values()) {
        if (place.offset >= 0 && place.read) view(place).set(place.array.subarray(lo, lo + count) as never);
      }
      const goOn = kernel(operands.map(([array]) => {
        const place = places.get(array)!;
        return place.offset >= 0 ? base + place.offset : array.byteOffset + lo * array.BYTES_PER_ELEMENT;
      }), count, lo);
      for (const place of places.values()) if (place.offset >= 0 && place.written) place.array.set(view(place) as never, lo);
      if (goOn === false) return;
    }
  }
}

/** Chunks of whole blocks: a block never straddles two. */
const chunkOf = (blockSize: number) => Math.max(1, Math.floor(CHUNK / blockSize)) * blockSize;
/** The block passes' room at the scratch's end for one chunk's scales (they never straddle two chunks). */
const scaleRoom = (blockSize: number) => alignedBytes((chunkOf(blockSize) / blockSize) * 4);
/** Below the scales, quantizeBlocks' first non-finite value (one f32, in a block of its own). */
const FOUND_BYTES = 64;
