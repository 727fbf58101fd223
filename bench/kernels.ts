// Kernel throughput: GFLOPS of each product at M=256 and K=N in {256, 512, 1024}, for both
// builds and 1 and 2 threads, with ratios against baselines measured in the same run
// (naive JS, and the fp32 GEMM of the same build and thread count), since these machines
// are noisy. Run: npm run bench:kernels [-- --quick]
import { createKernels, type BuildName, type Kernels } from '../src/kernels/index.ts';
import { printTable } from './table.ts';

const M = 256;
const sizes = process.argv.includes('--quick') ? [256] : [256, 512, 1024];
const REPS = 7;

/** Best-of-REPS seconds for one call of `run` (after one warm-up call). */
function time(run: () => void): number {
  run();
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    run();
    best = Math.min(best, performance.now() - t0);
  }
  return best / 1e3;
}

/** The baseline: a plain triple loop in JavaScript over Float32Arrays (i-p-j order). */
function naiveGemm(a: Float32Array, b: Float32Array, c: Float32Array, m: number, n: number, k: number): void {
  c.fill(0);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const aip = a[i * k + p];
      for (let j = 0; j < n; j++) c[i * n + j] += aip * b[p * n + j];
    }
  }
}

interface Row { op: string; build: string; threads: number; size: number; gflops: number }

function benchBuild(kern: Kernels, size: number, rows: Row[]): void {
  const { heap } = kern;
  const n = size;
  const k = size;
  const flops = 2 * M * n * k;
  const a = heap.f32(M * k);
  const b = heap.f32(k * n);
  const c = heap.f32(M * n);
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i);
  for (let i = 0; i < b.length; i++) b[i] = Math.cos(i);
  const add = (op: string, run: () => void) =>
    rows.push({ op, build: kern.info.build, threads: kern.info.threads, size, gflops: flops / time(run) / 1e9 });
  add('fp32 A·B', () => kern.gemm.gemm({ a, b, c, m: M, n, k }));
  add('fp32 A·Bᵀ', () => kern.gemm.gemm({ a, b, c, m: M, n, k, transB: true }));
  add('fp32 Aᵀ·B', () => kern.gemm.gemm({ a, b, c, m: M, n, k, transA: true }));
  // Frozen weight W [n, k]: forward y = x·Wᵀ (x = a, y = c) and backward dx = dy·W (dy = c, dx = a).
  for (const bits of [8, 4] as const) {
    const w = kern.quant.quantize(b, n, k, bits);
    const wT = kern.qint.transposeQuantized(w, { bits });
    add(`q${bits} fwd fp32 path`, () => kern.quant.matmulT(a, w, c, M));
    add(`q${bits} bwd fp32 path`, () => kern.quant.matmulBackward(c, w, a, M));
    add(`q${bits} fwd int path`, () => kern.qint.forward(a, w, c, M));
    add(`q${bits} bwd int path`, () => kern.qint.backward(c, wT, a, M));
    for (const q of [w, wT]) { heap.release(q.q); heap.release(q.scales); }
  }
  for (const v of [a, b, c]) heap.release(v);
}

const rows: Row[] = [];
const naive: Record<number, number> = {};
for (const size of sizes) {
  const a = new Float32Array(M * size).map((_, i) => Math.sin(i));
  const b = new Float32Array(size * size).map((_, i) => Math.cos(i));
  const c = new Float32Array(M * size);
  naive[size] = (2 * M * size * size) / time(() => naiveGemm(a, b, c, M, size, size)) / 1e9;
  rows.push({ op: 'naive JS A·B', build: '-', threads: 1, size, gflops: naive[size] });
}
for (const build of ['simd', 'relaxed'] as BuildName[]) {
  for (const threads of [1, 2]) {
    const kern = await createKernels({ build, threads });
    for (const size of sizes) benchBuild(kern, size, rows);
    await kern.close();
  }
}

const fp32 = (r: Row) => rows.find((x) => x.op === 'fp32 A·B' && x.build === r.build && x.threads === r.threads && x.size === r.size);
const same = (r: Row, changes: Partial<Row>) => rows.find((x) => x.op === r.op && x.size === r.size &&
  x.build === (changes.build ?? r.build) && x.threads === (changes.threads ?? r.threads));
printTable(
  ['op', 'build', 'threads', 'K=N', 'GFLOPS', '× naive JS', '× fp32 A·B', '× 1 thread', '× plain simd'],
  rows.map((r) => {
    const oneThread = r.threads > 1 ? same(r, { threads: 1 }) : undefined;
    const plain = r.build === 'relaxed' ? same(r, { build: 'simd' }) : undefined;
    const base = fp32(r);
    return [
      r.op, r.build, String(r.threads), String(r.size), r.gflops.toFixed(1),
      (r.gflops / naive[r.size]).toFixed(1),
      base && base !== r ? (r.gflops / base.gflops).toFixed(2) : '',
      oneThread ? (r.gflops / oneThread.gflops).toFixed(2) : '',
      plain ? (r.gflops / plain.gflops).toFixed(2) : '',
    ];
  }),
);
