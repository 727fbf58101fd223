// Tensors on the wire: { dtype, shape, data } with data the raw little-endian bytes, so a
// tensor costs no conversion to send and a view (or one aligned copy) to use.
import { Type, type Static } from '@sinclair/typebox';

export const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2, I32: 4, I8: 1, U8: 1 } as const;
export type DType = keyof typeof DTYPE_BYTES;
const DTYPES = Object.keys(DTYPE_BYTES) as DType[];

export const MAX_RANK = 8;

export const TensorSchema = Type.Object({
  dtype: Type.Union(DTYPES.map((d) => Type.Literal(d))),
  shape: Type.Array(Type.Integer({ minimum: 0, maximum: 2 ** 32 }), { maxItems: MAX_RANK }),
  data: Type.Uint8Array(),
});
export type Tensor = Static<typeof TensorSchema>;

// Typed-array views below use the host's byte order; the wire is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('swarmtrain needs a little-endian host');

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Why the tensor's byte length disagrees with shape × dtype size, or undefined when it agrees. */
export function tensorMismatch(tensor: Tensor): string | undefined {
  const want = elementCount(tensor.shape) * DTYPE_BYTES[tensor.dtype];
  if (tensor.data.byteLength === want) return undefined;
  return `${tensor.dtype} tensor of shape [${tensor.shape.join(', ')}] needs ${want} bytes, got ${tensor.data.byteLength}`;
}

/** Wraps f32 values as a wire tensor without copying. */
export function f32Tensor(shape: number[], values: Float32Array): Tensor {
  if (elementCount(shape) !== values.length) throw new RangeError(`shape [${shape.join(', ')}] does not hold ${values.length} values`);
  return { dtype: 'F32', shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

/** The values of an F32 tensor: a view when the bytes are 4-aligned, else an aligned copy. */
export function tensorF32(tensor: Tensor): Float32Array {
  if (tensor.dtype !== 'F32') throw new TypeError(`expected an F32 tensor, got ${tensor.dtype}`);
  const mismatch = tensorMismatch(tensor);
  if (mismatch !== undefined) throw new RangeError(mismatch);
  const { data } = tensor;
  if (data.byteOffset % 4 === 0) return new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  return new Float32Array(new Uint8Array(data).buffer); // copies (Buffer.slice would not)
}
