// The kernels: one object holding the heap (tensors live in the shared WASM memory),
// which build and thread count are in use, and the kernel families.
import { Gemm } from './gemm.ts';
import { KernelRuntime, type KernelInfo, type KernelOptions } from './runtime.ts';
import type { KernelHeap } from './heap.ts';

export type { KernelOptions, KernelInfo, BuildName } from './runtime.ts';
export type { GemmArgs } from './gemm.ts';

export interface Kernels {
  readonly info: KernelInfo;
  readonly heap: KernelHeap;
  readonly gemm: Gemm;
  close(): Promise<void>;
}

export async function createKernels(options: KernelOptions = {}): Promise<Kernels> {
  const rt = await KernelRuntime.load(options);
  return {
    info: rt.info,
    heap: rt.heap,
    gemm: new Gemm(rt),
    close: () => rt.close(),
  };
}
