import { expect, it } from 'vitest';
import { KernelHeap } from '../../src/kernels/heap.ts';

const newHeap = () => new KernelHeap(new WebAssembly.Memory({ initial: 2, maximum: 64, shared: true }));

it('hands out zeroed views, also where a freed view left its values', () => {
  const heap = newHeap();
  const first = heap.f32(100).fill(7);
  heap.release(first);
  const again = heap.f32(100);
  expect(again.byteOffset).toBe(first.byteOffset);
  expect(again).toEqual(new Float32Array(100));
});

it('copies a view into the heap exactly, over a freed view\'s values, and frees the copy', () => {
  const heap = newHeap();
  const before = heap.allocatedBytes;
  heap.release(heap.f32(300).fill(-3));
  const source = Float32Array.from({ length: 257 }, (_, i) => Math.sin(i));
  const copy = heap.copyOf(source);
  expect(heap.contains(copy)).toBe(true);
  expect(copy).toEqual(source);
  source[0] = 42; // a copy, not a view of it
  expect(copy[0]).toBe(0);
  const halves = heap.copyOf(Uint16Array.of(1, 65535, 3));
  expect(halves).toEqual(Uint16Array.of(1, 65535, 3));
  heap.release(copy);
  heap.release(halves);
  expect(heap.allocatedBytes).toBe(before);
  expect(heap.contains(source)).toBe(false);
});
