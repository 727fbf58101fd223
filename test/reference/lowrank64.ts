// Plain float64 references for the low-rank codec. Used only by tests.

/** Eigenvalues of a symmetric n×n matrix (row-major), by cyclic Jacobi rotations, ascending. */
export function symmetricEigenvalues64(matrix: ArrayLike<number>, n: number): Float64Array {
  const a = Float64Array.from(matrix);
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        // The rotation that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.4.1).
        const tau = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(tau || 1) / (Math.abs(tau) + Math.sqrt(1 + tau * tau));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k];
          const aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
    }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = a[i * n + i];
  return values.sort();
}

/**
 * ‖M − M_r‖_F for the best rank-r approximation M_r of M [m×n] (Eckart–Young): the square root
 * of the sum of all but the r largest eigenvalues of MᵀM.
 */
export function bestRankError64(matrix: ArrayLike<number>, m: number, n: number, r: number): number {
  const gram = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < m; k++) s += matrix[k * n + i] * matrix[k * n + j];
      gram[i * n + j] = s;
    }
  }
  const eigenvalues = symmetricEigenvalues64(gram, n);
  let rest = 0;
  for (let i = 0; i < n - r; i++) rest += Math.max(0, eigenvalues[i]);
  return Math.sqrt(rest);
}
