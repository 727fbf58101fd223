// Loads the kernel module and runs its kernels on the main thread plus a pool of workers,
// all sharing one WebAssembly.Memory. Two builds come from the same source: plain SIMD
// and relaxed SIMD (fused multiply-add, ~25% faster where the engine validates it; on
// Node 20 it needs a V8 flag set before compiling).
//
// Parallel kernels split a range of work items (output column panels, rows, ...) into one
// contiguous chunk per thread; each thread writes only its own outputs and every element
// is computed in the same order whatever the split, so results are bit-identical for any
// thread count.
import { readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import { KernelHeap } from './heap.ts';

export type BuildName = 'simd' | 'relaxed';

export interface KernelOptions {
  /** Threads to run parallel kernels on, main thread included (default 1). */
  threads?: number;
  /** Which build to load; 'auto' takes relaxed SIMD where the engine supports it. */
  build?: BuildName | 'auto';
}

export interface KernelInfo {
  build: BuildName;
  threads: number;
  relaxedAvailable: boolean;
}

/** Scratch each thread owns for packing panels and quantizing activations. */
export const SCRATCH_BYTES = 4 << 20;
/** The kernel heap is one wasm32 memory: 65536 pages of 64 KiB at most, whatever the machine has. */
export const MAX_HEAP_BYTES = 2 ** 32;
const SLOTS = 16; // control Int32 slots per worker (one 64-byte line)
const MAX_ARGS = 24;
const SPINS = 20_000; // polls before a waiting thread sleeps: keeps back-to-back kernels cheap
const [SEQ, DONE, KERNEL, ARGC, BEGIN, END, STATUS] = [0, 1, 2, 3, 4, 5, 6];

type WasmFunction = (...args: number[]) => number;

interface PoolWorker {
  worker: Worker;
  control: Int32Array;
  args: Float64Array;
}

const buildDir = new URL('./build/', import.meta.url);
let liftoffOff = false;

/**
 * Liftoff is V8's baseline wasm tier: kernels would start there and run ~35% slower until
 * the optimizing compile finishes in the background, which on a busy 2-core machine can
 * take most of a benchmark or a training step. Set once, before the first compile.
 */
function disableLiftoff(): void {
  if (liftoffOff) return;
  setFlagsFromString('--no-liftoff');
  liftoffOff = true;
}

/**
 * Whether this engine accepts the module, enabling relaxed SIMD first where it is off by default
 * (before Node 22). V8 dropped the flag once the feature shipped and prints an error for a flag it
 * does not know, so it is set only when validation fails without it.
 */
function validates(name: BuildName, bytes: Uint8Array<ArrayBuffer>): boolean {
  if (WebAssembly.validate(bytes)) return true;
  if (name !== 'relaxed') return false;
  setFlagsFromString('--experimental-wasm-relaxed-simd');
  return WebAssembly.validate(bytes);
}

async function compileBuild(name: BuildName): Promise<WebAssembly.Module | undefined> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = new Uint8Array(await readFile(new URL(`${name}.wasm`, buildDir)));
  } catch {
    throw new Error(`kernels: src/kernels/build/${name}.wasm is missing; run \`npm install\` or \`npm run build:kernels\``);
  }
  disableLiftoff();
  if (!validates(name, bytes)) return undefined;
  return WebAssembly.compile(bytes);
}

export class KernelRuntime {
  private readonly pool: PoolWorker[] = [];
  private readonly kernelIndex = new Map<string, number>();
  private readonly fns = new Map<string, WasmFunction>();
  private readonly scratch: number[] = [];
  private seq = 0;
  private closed = false;

  private constructor(
    readonly info: KernelInfo,
    readonly memory: WebAssembly.Memory,
    readonly heap: KernelHeap,
    exports: WebAssembly.Exports,
  ) {
    for (const [name, value] of Object.entries(exports)) {
      if (typeof value === 'function') this.fns.set(name, value as WasmFunction);
    }
  }

  static async load(options: KernelOptions = {}): Promise<KernelRuntime> {
    const threads = options.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) {
      throw new RangeError(`kernels: threads must be an integer from 1 to 64, got ${threads}`);
    }
    const wanted = options.build ?? 'auto';
    const relaxed = wanted === 'simd' ? undefined : await compileBuild('relaxed');
    if (wanted === 'relaxed' && !relaxed) throw new Error('kernels: this engine does not support relaxed SIMD');
    const build: BuildName = relaxed ? 'relaxed' : 'simd';
    const module = relaxed ?? (await compileBuild('simd'));
    if (!module) throw new Error('kernels: this engine does not support WebAssembly SIMD');

    const memory = new WebAssembly.Memory({ initial: 16, maximum: MAX_HEAP_BYTES / 65536, shared: true });
    const instance = await WebAssembly.instantiate(module, {
      env: { memory, abort: () => { throw new Error('kernel abort'); } },
    });
    const heap = new KernelHeap(memory);
    const runtime = new KernelRuntime(
      { build, threads, relaxedAvailable: relaxed !== undefined || (await compileBuild('relaxed')) !== undefined },
      memory, heap, instance.exports,
    );
    runtime.checkScratchNeeds();
    for (let t = 0; t < threads; t++) runtime.scratch.push(heap.allocBytes(SCRATCH_BYTES));
    await runtime.startWorkers(module);
    return runtime;
  }

  /** A raw kernel export; throws if the module has none of that name. */
  fn(name: string): WasmFunction {
    const f = this.fns.get(name);
    if (!f) throw new Error(`kernels: the module exports no kernel '${name}' (stale build? run npm run build:kernels)`);
    return f;
  }

  /** Scratch pointer of the main thread, for serial kernels that need one. */
  get mainScratch(): number {
    return this.scratch[0];
  }

  /**
   * Runs kernel `name(...args, begin, end, scratch)` over work items [0, items), split into
   * chunks that are multiples of `grain` items, one per thread. Uses fewer threads when
   * there are fewer chunks or when `serial` is set (small jobs, where waking workers costs
   * more than it saves).
   */
  parallel(name: string, args: number[], items: number, grain = 1, serial = false): void {
    if (this.closed) throw new Error('kernels: runtime is closed');
    const f = this.fn(name);
    const units = Math.ceil(items / grain);
    const threads = serial ? 1 : Math.min(this.info.threads, units);
    if (threads <= 1) {
      f(...args, 0, items, this.scratch[0]);
      return;
    }
    if (args.length > MAX_ARGS) throw new Error(`kernels: ${name} takes more than ${MAX_ARGS} arguments`);
    const kernel = this.kernelIndex.get(name)!;
    const bound = (t: number) => Math.min(items, Math.floor((t * units) / threads) * grain);
    const seq = ++this.seq;
    for (let t = 1; t < threads; t++) {
      const { control, args: argv } = this.pool[t - 1];
      argv.set(args);
      control[KERNEL] = kernel;
      control[ARGC] = args.length;
      control[BEGIN] = bound(t);
      control[END] = bound(t + 1);
      Atomics.store(control, SEQ, seq);
      Atomics.notify(control, SEQ);
    }
    let mainError: unknown;
    try {
      f(...args, 0, bound(1), this.scratch[0]);
    } catch (error) {
      mainError = error;
    }
    const failed: string[] = [];
    for (let t = 1; t < threads; t++) {
      const worker = this.pool[t - 1];
      const { control } = worker;
      for (let i = 0; Atomics.load(control, DONE) !== seq && i < SPINS; i++);
      for (let done = Atomics.load(control, DONE); done !== seq; done = Atomics.load(control, DONE)) {
        Atomics.wait(control, DONE, done, 100);
      }
      if (control[STATUS] !== 0) failed.push(`worker ${t}`);
    }
    if (mainError) throw mainError;
    if (failed.length) throw new Error(`kernels: ${name} trapped on ${failed.join(', ')}`);
  }

  /** Stops the workers. The heap views stay readable; kernels can no longer run. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const { control, worker } of this.pool) {
      control[KERNEL] = -1;
      Atomics.store(control, SEQ, ++this.seq);
      Atomics.notify(control, SEQ);
      await worker.terminate();
    }
  }

  private checkScratchNeeds(): void {
    for (const [name, f] of this.fns) {
      if (!name.endsWith('_scratch_bytes')) continue;
      const need = f();
      if (need > SCRATCH_BYTES) throw new Error(`kernels: ${name} needs ${need} bytes of scratch, more than ${SCRATCH_BYTES}`);
    }
  }

  private async startWorkers(module: WebAssembly.Module): Promise<void> {
    const kernelNames = [...this.fns.keys()];
    kernelNames.forEach((name, i) => this.kernelIndex.set(name, i));
    for (let t = 1; t < this.info.threads; t++) {
      const controlPtr = this.heap.allocBytes(SLOTS * 4);
      const argsPtr = this.heap.allocBytes(MAX_ARGS * 8);
      const worker = new Worker(new URL('./pool-worker.mjs', import.meta.url), {
        workerData: {
          module, memory: this.memory, controlPtr, argsPtr, scratchPtr: this.scratch[t],
          kernelNames, slots: SLOTS, maxArgs: MAX_ARGS, spins: SPINS,
        },
      });
      const entry: PoolWorker = {
        worker,
        control: new Int32Array(this.memory.buffer, controlPtr, SLOTS),
        args: new Float64Array(this.memory.buffer, argsPtr, MAX_ARGS),
      };
      await new Promise<void>((resolve, reject) => {
        worker.once('message', () => resolve()); // posted once its module instance exists
        worker.once('error', reject);
      });
      worker.unref(); // an idle pool must not keep the process alive
      this.pool.push(entry);
    }
  }
}
