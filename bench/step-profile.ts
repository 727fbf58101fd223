// Where a training step of the reference config spends its time: every kernel call is timed
// (wrapped on the Kernels object, so nothing in the model changes) over a few steps, and the
// table groups them: integer/fp32 base products, LoRA's rank-r products, attention, the rest,
// with their share of the step and GFLOPS; "between kernels" is the JavaScript around them.
// Run: npx tsx bench/step-profile.ts [--mode full|lora] [--base f32|q8|q4] [--path fp32|int]
//      [--threads N] [--checkpointing] [--activations f32|bf16] [--steps N] [--by-shape]
import { parseArgs } from 'node:util';
import { createKernels, type Kernels } from '../src/kernels/index.ts';
import type { ActivationStorage } from '../src/model/expert.ts';
import { uniform } from '../src/model/init.ts';
import { Model, type ModelOptions } from '../src/model/model.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { BATCH, LORA, REFERENCE_CONFIG, SEQ } from './reference.ts';
import { printTable } from './table.ts';

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'lora' }, base: { type: 'string', default: 'q4' }, path: { type: 'string', default: 'int' },
    threads: { type: 'string', default: '2' }, checkpointing: { type: 'boolean', default: false },
    activations: { type: 'string', default: 'f32' },
    steps: { type: 'string', default: '5' },
    'by-shape': { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const steps = Number(values.steps);
const activationStorage = values.activations as ActivationStorage;
if (activationStorage !== 'f32' && activationStorage !== 'bf16') {
  throw new Error(`--activations takes f32 or bf16, got ${values.activations}`);
}
if (!(Number.isInteger(threads) && threads >= 1) || !(Number.isInteger(steps) && steps >= 1)) {
  throw new Error('--threads and --steps take positive integers');
}

interface Tally { ms: number; calls: number; flops: number }
const tallies = new Map<string, Tally>();
let timing = false;
/** Calls in progress: a kernel method calling another (qint.forward → its product) is timed once, as the outer. */
let depth = 0;

/** A name for the call: kernel family and, with --by-shape or for products, the operand shape. */
function describeCall(family: string, method: string, args: unknown[]): { key: string; flops: number } {
  const [first, second, , fourth] = args as [Record<string, number & boolean>, { rows: number; cols: number }, unknown, number];
  if (family === 'gemm') {
    const { m, n, k, transA, transB } = first;
    const rankR = Math.min(m, n, k) <= LORA.rank;
    const shape = ` m${m} n${n} k${k}${transA ? ' ᵀA' : ''}${transB ? ' ᵀB' : ''}`;
    const rankNote = rankR ? ` (rank ≤ ${LORA.rank}: LoRA, router)` : '';
    return { key: `fp32 GEMM${rankNote}${values['by-shape'] ? shape : ''}`, flops: 2 * m * n * k };
  }
  if ((family === 'qint' || family === 'quant') && (method === 'forward' || method === 'backward')) {
    const w = second;
    const shape = values['by-shape'] ? ` m${fourth} n${w.rows} k${w.cols}` : '';
    return { key: `${family === 'qint' ? 'integer' : 'fp32'}-path base ${method}${shape}`, flops: 2 * fourth * w.rows * w.cols };
  }
  return { key: `${family}.${method}`, flops: 0 };
}

/** Wraps every method of the kernel families to add its wall time to `tallies` while `timing`. */
function instrument(kernels: Kernels): void {
  for (const family of ['gemm', 'ops', 'quant', 'qint'] as const) {
    const target = kernels[family] as unknown as Record<string, (...args: unknown[]) => unknown>;
    for (const method of Object.getOwnPropertyNames(Object.getPrototypeOf(target))) {
      if (method === 'constructor' || typeof target[method] !== 'function') continue;
      const original = target[method].bind(target);
      target[method] = (...args: unknown[]) => {
        if (!timing || depth > 0) return original(...args);
        depth++;
        const t0 = performance.now();
        let result: unknown;
        try {
          result = original(...args);
        } finally {
          depth--;
        }
        const { key, flops } = describeCall(family, method, args);
        const tally = tallies.get(key) ?? { ms: 0, calls: 0, flops: 0 };
        tally.ms += performance.now() - t0;
        tally.calls++;
        tally.flops += flops;
        tallies.set(key, tally);
        return result;
      };
    }
  }
}

const kernels = await createKernels({ threads });
instrument(kernels);
const options: ModelOptions = values.mode === 'full'
  ? { mode: 'full', checkpointing: values.checkpointing, activationStorage }
  : {
    mode: 'lora', lora: LORA, baseFormat: values.base as 'f32' | 'q8' | 'q4', basePath: values.path as 'fp32' | 'int',
    checkpointing: values.checkpointing, activationStorage,
  };
const model = new Model(kernels, REFERENCE_CONFIG, options);
const optimizer = new AdamW(kernels, model.params.trainable());
const random = uniform(7);
const stream = Int32Array.from({ length: BATCH * SEQ + 1 }, () => Math.floor(random() * REFERENCE_CONFIG.vocabSize));
const step = async () => {
  model.params.zeroGrads();
  await model.trainStep(stream.subarray(0, BATCH * SEQ), stream.subarray(1), BATCH, SEQ);
  optimizer.update(1e-3);
};
await step(); // warm-up: buffers grow, the quantized transposes are made
timing = true;
const t0 = performance.now();
for (let s = 0; s < steps; s++) await step();
const stepMs = (performance.now() - t0) / steps;
timing = false;
await kernels.close();

const inKernels = [...tallies.values()].reduce((sum, t) => sum + t.ms, 0) / steps;
const rows = [...tallies].sort((a, b) => b[1].ms - a[1].ms).map(([key, t]) => [
  key, (t.ms / steps).toFixed(1), `${((100 * t.ms) / steps / stepMs).toFixed(1)}%`, (t.calls / steps).toFixed(0),
  t.flops ? (t.flops / t.ms / 1e6).toFixed(1) : '',
]);
const betweenKernels = stepMs - inKernels;
rows.push(['between kernels (JavaScript)', betweenKernels.toFixed(1), `${((100 * betweenKernels) / stepMs).toFixed(1)}%`, '', '']);
const loraBase = values.mode === 'lora' ? ` ${values.base} ${values.path} path` : '';
console.log(`${values.mode}${loraBase}, ${threads} thread(s)${values.checkpointing ? ', checkpointing' : ''}, `
  + `${activationStorage} activations: ${stepMs.toFixed(1)} ms per step = ${((BATCH * SEQ) / stepMs * 1e3).toFixed(0)} tokens/s `
  + `(mean of ${steps} steps, timing overhead included)\n`);
printTable(['kernel calls', 'ms/step', 'of step', 'calls/step', 'GFLOPS'], rows);
