// Entry point of the kernel module: everything exported here becomes a WASM export.
// Kernels take raw pointers into the shared memory and never allocate: the TypeScript
// runtime owns the heap. Parallel kernels take a work range [begin, end) last-but-one
// and the calling thread's scratch pointer, as the worker pool calls them.
export { gemm_f32, gemm_scratch_bytes } from './gemm';
export { qint_gemm, qint_transpose_quantized, qint_max_k, qint_scratch_bytes } from './qint';
