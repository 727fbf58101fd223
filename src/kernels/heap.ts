// The kernels' heap: a first-fit allocator over the shared WebAssembly memory, owned by
// JavaScript (the WASM code never allocates). Blocks are 64-byte aligned (cache line,
// and any SIMD load). The memory is shared, so growing it never detaches earlier views.

const ALIGN = 64;

/** `bytes` rounded up to whole 64-byte blocks: a region that keeps the next one aligned, as the heap's blocks are. */
export const alignedBytes = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;
const PAGE = 65536;
/** Below this the module keeps its static data; the heap starts here. */
export const HEAP_BASE = PAGE;

export type HeapView = Float32Array | Int8Array | Uint8Array | Int32Array | Uint32Array | Int16Array | Uint16Array;

export class KernelHeap {
  private readonly free: { ptr: number; size: number }[] = [];
  private readonly used = new Map<number, number>();
  private top = HEAP_BASE;
  /** Nothing above this was ever handed out: grown memory is zero, so it needs no clearing. */
  private highWater = HEAP_BASE;
  /** Every buffer object this heap's views were made on. */
  private readonly buffers = new WeakSet<ArrayBufferLike>();

  constructor(readonly memory: WebAssembly.Memory) {}

  /** Bytes currently allocated. */
  get allocatedBytes(): number {
    let total = 0;
    for (const size of this.used.values()) total += size;
    return total;
  }

  /** Allocates `bytes` (zeroed, unless the caller overwrites them all) and returns the pointer. */
  allocBytes(bytes: number, zeroed = true): number {
    if (!Number.isInteger(bytes) || bytes < 0) throw new RangeError(`heap: cannot allocate ${bytes} bytes`);
    const size = Math.max(ALIGN, alignedBytes(bytes));
    let ptr = -1;
    for (let i = 0; i < this.free.length; i++) {
      const block = this.free[i];
      if (block.size < size) continue;
      ptr = block.ptr;
      if (block.size === size) this.free.splice(i, 1);
      else { block.ptr += size; block.size -= size; }
      break;
    }
    if (ptr < 0) {
      ptr = this.top;
      this.ensure(ptr + size);
      this.top += size;
    }
    this.used.set(ptr, size);
    const dirtyEnd = Math.min(ptr + size, this.highWater);
    if (zeroed && dirtyEnd > ptr) new Uint8Array(this.memory.buffer, ptr, dirtyEnd - ptr).fill(0);
    this.highWater = Math.max(this.highWater, ptr + size);
    return ptr;
  }

  /** Returns a block to the heap, merging it with free neighbours. */
  freeBytes(ptr: number): void {
    const size = this.used.get(ptr);
    if (size === undefined) throw new Error(`heap: pointer ${ptr} was not allocated here (double free?)`);
    this.used.delete(ptr);
    let at = this.free.findIndex((block) => block.ptr > ptr);
    if (at < 0) at = this.free.length;
    this.free.splice(at, 0, { ptr, size });
    const next = this.free[at + 1];
    if (next && ptr + size === next.ptr) { this.free[at].size += next.size; this.free.splice(at + 1, 1); }
    const prev = this.free[at - 1];
    if (prev && prev.ptr + prev.size === ptr) { prev.size += this.free[at].size; this.free.splice(at, 1); }
    const last = this.free[this.free.length - 1];
    if (last && last.ptr + last.size === this.top) { this.top = last.ptr; this.free.pop(); }
  }

  // zeroed false: the caller writes every value before reading any (the zeroing would be a wasted pass).
  f32(length: number, zeroed = true): Float32Array { return this.view(Float32Array, length, zeroed); }
  i8(length: number, zeroed = true): Int8Array { return this.view(Int8Array, length, zeroed); }
  u8(length: number, zeroed = true): Uint8Array { return this.view(Uint8Array, length, zeroed); }
  i16(length: number, zeroed = true): Int16Array { return this.view(Int16Array, length, zeroed); }
  u16(length: number, zeroed = true): Uint16Array { return this.view(Uint16Array, length, zeroed); }
  i32(length: number, zeroed = true): Int32Array { return this.view(Int32Array, length, zeroed); }
  u32(length: number, zeroed = true): Uint32Array { return this.view(Uint32Array, length, zeroed); }

  /** A new heap view holding a copy of `view`. */
  copyOf<T extends Float32Array | Uint16Array>(view: T): T {
    const { length } = view;
    const copy = (view instanceof Float32Array ? this.view(Float32Array, length, false) : this.view(Uint16Array, length, false)) as T;
    copy.set(view);
    return copy;
  }

  /** Frees a view obtained from this heap. */
  release(view: HeapView): void {
    this.pointer(view, 'release');
    this.freeBytes(view.byteOffset);
  }

  /** Whether the view lives in this heap. */
  contains(view: HeapView): boolean {
    return this.buffers.has(view.buffer);
  }

  /** The pointer of a heap view; throws if the view does not live in this heap. */
  pointer(view: HeapView, what: string): number {
    if (!this.contains(view)) {
      throw new TypeError(`${what}: array is not in the kernel heap; allocate it with kernels.heap.f32(n) (or i8/u8/...)`);
    }
    return view.byteOffset;
  }

  private view<T extends HeapView>(
    type: { new (buffer: ArrayBufferLike, offset: number, length: number): T; BYTES_PER_ELEMENT: number },
    length: number,
    zeroed = true,
  ): T {
    const ptr = this.allocBytes(length * type.BYTES_PER_ELEMENT, zeroed); // may grow: take the buffer after
    const buffer = this.memory.buffer; // a shared memory may hand out a new object per read
    this.buffers.add(buffer);
    return new type(buffer, ptr, length);
  }

  private ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    this.memory.grow(Math.ceil((end - have) / PAGE));
  }
}

/**
 * Views allocated together and released together: a model's workspace, or a layer's kept
 * activations, replaced by larger ones when a call brings more rows than any before.
 */
export class HeapGroup {
  private readonly views: HeapView[] = [];

  constructor(private readonly heap: KernelHeap) {}

  f32(length: number): Float32Array { return this.keep(this.heap.f32(length)); }
  i32(length: number): Int32Array { return this.keep(this.heap.i32(length)); }
  u16(length: number): Uint16Array { return this.keep(this.heap.u16(length)); }

  /** Frees every view of the group; none may be used afterwards. */
  release(): void {
    for (const view of this.views) this.heap.release(view);
    this.views.length = 0;
  }

  private keep<T extends HeapView>(view: T): T {
    this.views.push(view);
    return view;
  }
}
