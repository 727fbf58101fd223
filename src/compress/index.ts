// Update codecs for averaging: see codec.ts for the interface and registry.ts for the names.
export * from './codec.ts';
export * from './registry.ts';
export { f16Codec, f32Codec } from './float.ts';
export { int8BlockCodec, jsBlockCoder, type BlockCoder } from './int8-block.ts';
export { topkInt8Codec } from './topk.ts';
export { powerSgdCodec } from './powersgd.ts';
export { topKIndices } from './select.ts';
