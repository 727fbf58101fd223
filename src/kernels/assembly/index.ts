// Entry point of the kernel module: everything exported here becomes a WASM export.
// Kernels take raw pointers into the shared memory and never allocate: the TypeScript
// runtime owns the heap. Parallel kernels take a work range [begin, end) last-but-one
// and the calling thread's scratch pointer, as the worker pool calls them.
export { gemm_f32, gemm_f32_rows, gemm_scratch_bytes } from './gemm';
export { qint_pack_x, qint_gemm, qint_transpose_quantized, qint_max_k, qint_a_panel_bytes, qint_scratch_bytes } from './qint';
export {
  quantize_q8, quantize_q4, dequantize_q8, dequantize_q4,
  gemm_q8_t, gemm_q4_t, gemm_q8_n, gemm_q4_n,
  dot_f32_t, dot_q8_t, dot_q4_t, dot_scratch_bytes_per_k,
} from './quant';
export {
  rmsnorm_fwd, rmsnorm_bwd_dx, rmsnorm_bwd_dw, rope_apply, softmax_fwd, softmax_bwd, swiglu_fwd, swiglu_bwd,
  attention_fwd, attention_bwd, attention_reduce_kv, attention_scratch_need, cross_entropy, topk_fwd, topk_bwd,
  adamw, add_f32, axpy_f32, scale_f32, f32_to_bf16, bf16_to_f32, sum_squares_blocks,
  gather_rows, scatter_add_rows, scale_rows, row_dots, add_bias, bias_grad,
} from './ops';
export { quantize_rows_i8, dequantize_rows_i8, fingerprint_words } from './rows';
export { sub_f32, mean_of_two_f32, mean_of_two_unit_f32, apply_outer_f32, quantize_blocks_i8, sum_squares_f64 } from './deltas';
