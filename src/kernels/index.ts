// The kernels: one object holding the heap (tensors live in the shared WASM memory),
// which build and thread count are in use, and the kernel families.
import { DeltaPasses } from './deltas.ts';
import { Gemm } from './gemm.ts';
import { Ops } from './ops.ts';
import { Quant } from './quant.ts';
import { QInt } from './qint.ts';
import { Rows } from './rows.ts';
import { KernelRuntime, type KernelInfo, type KernelOptions } from './runtime.ts';
import type { KernelHeap } from './heap.ts';

export type { KernelOptions, KernelInfo, BuildName } from './runtime.ts';
export type { GemmArgs } from './gemm.ts';
export type { RopeTable } from './ops.ts';
export type { QuantMatmulOptions } from './quant.ts';
export type { QIntOptions } from './qint.ts';
export type { QuantizedTensor, QuantBits } from './quantized.ts';
export type { Rows } from './rows.ts';
export type { DeltaPasses } from './deltas.ts';

export interface Kernels {
  readonly info: KernelInfo;
  readonly heap: KernelHeap;
  readonly gemm: Gemm;
  readonly ops: Ops;
  readonly quant: Quant;
  readonly qint: QInt;
  readonly rows: Rows;
  /** An averaging round's per-value passes (src/averaging/passes.ts's RoundPasses). */
  readonly deltas: DeltaPasses;
  close(): Promise<void>;
}

export async function createKernels(options: KernelOptions = {}): Promise<Kernels> {
  const rt = await KernelRuntime.load(options);
  return {
    info: rt.info,
    heap: rt.heap,
    gemm: new Gemm(rt),
    ops: new Ops(rt),
    quant: new Quant(rt),
    qint: new QInt(rt),
    rows: new Rows(rt),
    deltas: new DeltaPasses(rt),
    close: () => rt.close(),
  };
}
