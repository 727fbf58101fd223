// Named parameters on the kernel heap. A trainable parameter has a gradient buffer of the same
// size; a frozen one (the base in LoRA mode) has none. Names and shapes are the canonical ones
// of src/model/config.ts, so checkpoints, HF I/O and the shard planner all speak the same keys.
import type { Kernels } from '../kernels/index.ts';
import type { F32Tensor } from './config.ts';

export interface Param {
  name: string;
  shape: number[];
  value: Float32Array;
  /** Present when the parameter is trained. */
  grad?: Float32Array;
}

export function sizeOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export class ParamStore {
  private readonly params = new Map<string, Param>();

  constructor(private readonly kernels: Kernels) {}

  add(name: string, shape: number[], trainable: boolean): Param {
    if (this.params.has(name)) throw new Error(`parameter ${name} defined twice`);
    const n = sizeOf(shape);
    const param: Param = { name, shape, value: this.kernels.heap.f32(n), grad: trainable ? this.kernels.heap.f32(n) : undefined };
    this.params.set(name, param);
    return param;
  }

  get(name: string): Param {
    const param = this.params.get(name);
    if (!param) throw new Error(`no parameter named ${name}`);
    return param;
  }

  has(name: string): boolean {
    return this.params.has(name);
  }

  all(): Param[] {
    return [...this.params.values()];
  }

  trainable(): Param[] {
    return this.all().filter((p) => p.grad);
  }

  zeroGrads(): void {
    for (const p of this.params.values()) p.grad?.fill(0);
  }

  /** Copies values in by name, checking every shape; names absent from `tensors` are left as they are. */
  load(tensors: Map<string, F32Tensor>, { strict = true } = {}): void {
    for (const [name, tensor] of tensors) {
      const param = this.params.get(name);
      if (!param) {
        if (strict) throw new Error(`checkpoint has a tensor ${name} that the model does not`);
        continue;
      }
      if (tensor.shape.join('x') !== param.shape.join('x')) {
        throw new Error(`tensor ${name}: shape [${tensor.shape}] does not match the model's [${param.shape}]`);
      }
      param.value.set(tensor.data);
    }
  }

  /** Copies of the values (optionally only some parameters), as tensors for saving. */
  snapshot(filter: (p: Param) => boolean = () => true): Map<string, F32Tensor> {
    const out = new Map<string, F32Tensor>();
    for (const p of this.params.values()) if (filter(p)) out.set(p.name, { shape: [...p.shape], data: Float32Array.from(p.value) });
    return out;
  }

  /** Drops one parameter, returning its buffers to the heap. */
  remove(name: string): void {
    const p = this.get(name);
    this.kernels.heap.release(p.value);
    if (p.grad) this.kernels.heap.release(p.grad);
    this.params.delete(name);
  }

  /** Returns every buffer to the heap. */
  release(): void {
    for (const p of this.params.values()) {
      this.kernels.heap.release(p.value);
      if (p.grad) this.kernels.heap.release(p.grad);
    }
    this.params.clear();
  }
}
