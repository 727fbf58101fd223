// A kernel pool worker: instantiates the kernel module on the shared memory, then waits
// on its control slot for jobs posted by the main thread (see pool.ts for the layout).
// Plain JavaScript so it starts without a TypeScript loader.
import { parentPort, workerData } from 'node:worker_threads';

const { module, memory, controlPtr, argsPtr, scratchPtr, kernelNames, slots, maxArgs, spins } = workerData;
const instance = new WebAssembly.Instance(module, { env: { memory, abort() { throw new Error('kernel abort'); } } });
const kernels = kernelNames.map((name) => instance.exports[name]);
const control = new Int32Array(memory.buffer, controlPtr, slots);
const args = new Float64Array(memory.buffer, argsPtr, maxArgs);
const [SEQ, DONE, KERNEL, ARGC, BEGIN, END, STATUS] = [0, 1, 2, 3, 4, 5, 6];
parentPort.postMessage('ready');

let seen = 0;
for (;;) {
  let seq = Atomics.load(control, SEQ);
  for (let i = 0; seq === seen && i < spins; i++) seq = Atomics.load(control, SEQ);
  if (seq === seen) { Atomics.wait(control, SEQ, seen); continue; }
  seen = seq;
  const kernel = Atomics.load(control, KERNEL);
  if (kernel < 0) break;
  const argv = Array.from(args.subarray(0, control[ARGC]));
  try {
    kernels[kernel](...argv, control[BEGIN], control[END], scratchPtr);
    control[STATUS] = 0;
  } catch {
    control[STATUS] = 1; // the main thread reports which kernel trapped
  }
  Atomics.store(control, DONE, seq);
  Atomics.notify(control, DONE);
}
