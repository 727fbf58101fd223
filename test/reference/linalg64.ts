// Plain-JS float64 references for the kernels. Used only by tests: simple loops, no tricks.

/** C = op(A)·op(B) in float64 (+ C0 when given), op as in the kernel's GemmArgs. */
export function gemm64(
  a: ArrayLike<number>, b: ArrayLike<number>, m: number, n: number, k: number,
  { transA = false, transB = false, c0 }: { transA?: boolean; transB?: boolean; c0?: ArrayLike<number> } = {},
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = c0 ? c0[i * n + j] : 0;
      for (let p = 0; p < k; p++) s += (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = s;
    }
  }
  return c;
}
