// Kernel throughput: GFLOPS of each product at M=256 and K=N in {256, 512, 1024}, for both
// builds and 1 and 2 threads, with ratios against baselines measured in the same run
// (naive JS, and the fp32 GEMM of the same build and thread count), since these machines
// are noisy; then the six skinny products of one LoRA linear in a training step, and one expert call's
// products at the row counts a swarm's calls carry.
// Run: npm run bench:kernels [-- --quick]
import type { GemmArgs } from '../src/kernels/gemm.ts';
import { createKernels, type BuildName, type Kernels } from '../src/kernels/index.ts';
import { printTable } from './table.ts';

const M = 256;
const sizes = process.argv.includes('--quick') ? [256] : [256, 512, 1024];
const REPS = 7;

/** Best-of-REPS seconds for one call of `run` (after a warm-up), timing `calls` calls at a time. */
function time(run: () => void, calls = 1): number {
  run();
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) run();
    best = Math.min(best, (performance.now() - t0) / calls);
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

/** A measured row: each op (and size) is measured for each build and thread count. */
interface Measured { op: string; build: string; threads: number; size?: number; gflops: number }
interface Row extends Measured { size: number }

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

/** A heap matrix of sin(0), sin(1), ... */
function sines(kern: Kernels, length: number): Float32Array {
  const v = kern.heap.f32(length);
  for (let i = 0; i < length; i++) v[i] = Math.sin(i);
  return v;
}

/** One LoRA linear (rows × IN → OUT, rank R) as in a training step: forward, then gradients. */
const LORA = { rows: 512, in: 256, out: 512, rank: 8 };
const LORA_CALLS = 50; // a product takes tens of microseconds

interface LoraRow extends Measured { shape: string }

function benchLora(kern: Kernels, rows: LoraRow[]): void {
  const { heap } = kern;
  const { rows: t, in: d, out: o, rank: r } = LORA;
  const lengths = [t * d, r * d, o * r, t * r, t * o, t * o, r * d, o * r, t * d];
  const [x, a, b, xa, y, dy, dA, dB, dx] = lengths.map((length) => sines(kern, length));
  const products: [string, GemmArgs][] = [
    ['xa = x·Aᵀ', { a: x, b: a, c: xa, m: t, n: r, k: d, transB: true }],
    ['y += xa·Bᵀ', { a: xa, b, c: y, m: t, n: o, k: r, transB: true, accumulate: true }],
    ['dB += dyᵀ·xa', { a: dy, b: xa, c: dB, m: o, n: r, k: t, transA: true, accumulate: true }],
    ['dxa = dy·B', { a: dy, b, c: xa, m: t, n: r, k: o }],
    ['dA += dxaᵀ·x', { a: xa, b: x, c: dA, m: r, n: d, k: t, transA: true, accumulate: true }],
    ['dx += dxa·A', { a: xa, b: a, c: dx, m: t, n: d, k: r, accumulate: true }],
  ];
  const add = (op: string, shape: string, flops: number, run: () => void) =>
    rows.push({ op, shape, build: kern.info.build, threads: kern.info.threads, gflops: flops / time(run, LORA_CALLS) / 1e9 });
  for (const [op, args] of products) add(op, `${args.m}×${args.n}×${args.k}`, 2 * args.m * args.n * args.k, () => kern.gemm.gemm(args));
  const flops = products.reduce((sum, [, { m, n, k }]) => sum + 2 * m * n * k, 0);
  add('all six', '-', flops, () => { for (const [, args] of products) kern.gemm.gemm(args); });
  for (const v of [x, a, b, xa, y, dy, dA, dB, dx]) heap.release(v);
}

/**
 * Calls of the demo job's experts (hidden 128, expert hidden 256): forward x·Wᵀ through gate, up and down, and the
 * backward's dx = dy·W through the three, at the rows a call carries: one node's whole share of a step (256), a half
 * batch's or a peer's (128), fewer when routing is uneven. The calls go round 16 experts, whose 6 MB of weights do
 * not stay in a core's cache, as in training: every call packs its expert's three weights again.
 */
const EXPERT = { hidden: 128, expertHidden: 256, experts: 16 };
const EXPERT_ROWS = [32, 128, 256];

function benchExpertCalls(kern: Kernels, rows: Row[]): void {
  const { hidden: h, expertHidden: f, experts } = EXPERT;
  const weights = Array.from({ length: experts }, () => [f * h, f * h, h * f].map((length) => sines(kern, length)));
  for (const m of EXPERT_ROWS) {
    const [x, g, u, y] = [m * h, m * f, m * f, m * h].map((length) => sines(kern, length));
    const call = ([wGate, wUp, wDown]: Float32Array[]) => [
      { a: x, b: wGate, c: g, m, n: f, k: h, transB: true },
      { a: x, b: wUp, c: u, m, n: f, k: h, transB: true },
      { a: g, b: wDown, c: y, m, n: h, k: f, transB: true },
      { a: y, b: wDown, c: g, m, n: f, k: h },
      { a: g, b: wGate, c: x, m, n: h, k: f },
      { a: u, b: wUp, c: x, m, n: h, k: f, accumulate: true },
    ] satisfies GemmArgs[];
    const products = weights.flatMap(call);
    const flops = products.reduce((sum, { m, n, k }) => sum + 2 * m * n * k, 0);
    const run = () => { for (const args of products) kern.gemm.gemm(args); };
    const gflops = flops / time(run) / 1e9;
    rows.push({ op: 'expert calls fwd + dx', size: m, build: kern.info.build, threads: kern.info.threads, gflops });
    for (const v of [x, g, u, y]) kern.heap.release(v);
  }
  for (const v of weights.flat()) kern.heap.release(v);
}

const rows: Row[] = [];
const loraRows: LoraRow[] = [];
const expertRows: Row[] = []; // size: the rows of the call
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
    benchLora(kern, loraRows);
    benchExpertCalls(kern, expertRows);
    await kern.close();
  }
}

/** The '× 1 thread' and '× plain simd' cells of r: its speed against the same op's other rows. */
function speedups(list: Measured[], r: Measured): string[] {
  const same = (changes: Partial<Measured>) => list.find((x) => x.op === r.op && x.size === r.size &&
    x.build === (changes.build ?? r.build) && x.threads === (changes.threads ?? r.threads));
  const oneThread = r.threads > 1 ? same({ threads: 1 }) : undefined;
  const plain = r.build === 'relaxed' ? same({ build: 'simd' }) : undefined;
  return [oneThread ? (r.gflops / oneThread.gflops).toFixed(2) : '', plain ? (r.gflops / plain.gflops).toFixed(2) : ''];
}

const fp32 = (r: Row) => rows.find((x) => x.op === 'fp32 A·B' && x.build === r.build && x.threads === r.threads && x.size === r.size);
printTable(
  ['op', 'build', 'threads', 'K=N', 'GFLOPS', '× naive JS', '× fp32 A·B', '× 1 thread', '× plain simd'],
  rows.map((r) => {
    const base = fp32(r);
    return [
      r.op, r.build, String(r.threads), String(r.size), r.gflops.toFixed(1),
      (r.gflops / naive[r.size]).toFixed(1),
      base && base !== r ? (r.gflops / base.gflops).toFixed(2) : '',
      ...speedups(rows, r),
    ];
  }),
);

console.log(`\nLoRA products, rows ${LORA.rows}, in ${LORA.in}, out ${LORA.out}, rank ${LORA.rank} (op(A) m×k · op(B) k×n):`);
printTable(
  ['op', 'm×n×k', 'build', 'threads', 'GFLOPS', '× 1 thread', '× plain simd'],
  loraRows.map((r) => [r.op, r.shape, r.build, String(r.threads), r.gflops.toFixed(1), ...speedups(loraRows, r)]),
);

const { hidden, expertHidden, experts } = EXPERT;
console.log(`\nExpert calls' products (hidden ${hidden}, expert hidden ${expertHidden}, ${experts} experts in turn), by a call's rows:`);
const wholeShare = (r: Row) => expertRows.find((x) => x.size === 256 && x.build === r.build && x.threads === r.threads)!;
printTable(
  ['op', 'rows', 'build', 'threads', 'GFLOPS', '× 256 rows', '× 1 thread', '× plain simd'],
  expertRows.map((r) => [
    r.op, String(r.size), r.build, String(r.threads), r.gflops.toFixed(1), (r.gflops / wholeShare(r).gflops).toFixed(2),
    ...speedups(expertRows, r),
  ]),
);
