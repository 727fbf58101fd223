// Temporary: node/experts.ts still imports the f16/bf16 conversions from here while another branch
// edits it; they live in proto/half.ts. Delete this file when that import points there.
export { decodeHalves, encodeHalves } from '../../proto/half.ts';
