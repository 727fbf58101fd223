// Argument checks shared by the kernel wrappers: a wrong size must throw here, before a
// kernel reads or writes past an array in the shared memory.
import type { HeapView, KernelHeap } from './heap.ts';

export function checkDims(what: string, dims: Record<string, number>): void {
  for (const [name, value] of Object.entries(dims)) {
    if (!Number.isInteger(value) || value < 0) throw new RangeError(`${what}: ${name} must be a non-negative integer, got ${value}`);
  }
}

/** Returns the pointer of `view`, checking it lives in the heap and holds at least `need` elements. */
export function heapPtr(heap: KernelHeap, what: string, name: string, view: HeapView, need: number): number {
  const ptr = heap.pointer(view, `${what}: ${name}`);
  if (view.length < need) throw new RangeError(`${what}: ${name} has ${view.length} elements, needs ${need}`);
  return ptr;
}
