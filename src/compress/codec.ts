// The update codec interface. A codec turns one tensor's delta (f32 values of a known shape)
// into a few wire tensors ("parts", each named by a suffix of the tensor's name) and back.
// Senders keep per-(group, tensor) state between rounds (the error-feedback residual, the
// low-rank warm start) in a CodecState they own. Receivers decode untrusted bytes: every size,
// index and scale is checked against the shape the receiver expects, which also bounds every
// allocation, and anything wrong throws CodecError.
import { elementCount, tensorMismatch, DTYPE_BYTES, type DType, type NamedTensor, type Tensor } from '../../proto/index.ts';

/** The only error a decoder throws, whatever the input. */
export class CodecError extends Error {
  override name = 'CodecError';
}

/** One wire tensor of an encoded delta; its name on the wire is the tensor's name + suffix. */
export interface CodecPart {
  /** '' or ':' followed by a word, e.g. ':q', ':scale'. */
  suffix: string;
  tensor: Tensor;
}

/**
 * Sender-side state of one tensor of one group, kept between rounds by the caller (start with
 * `{}`; drop it when the group's holders or codec change).
 */
export interface CodecState {
  /** Error feedback: what earlier rounds computed but did not send. */
  residual?: Float32Array;
  /** PowerSGD: the last round's right factor, the next round's power-iteration start. */
  lowRankQ?: Float32Array;
}

export interface Codec {
  /** Canonical spec (parseCodecSpec reads it back), carried as ParameterDelta.codec. */
  readonly spec: string;
  /** Encodes `delta` (row-major, `shape`); reads and updates `state`. Throws RangeError on bad arguments. */
  encode(delta: Float32Array, shape: readonly number[], state: CodecState): CodecPart[];
  /**
   * Decodes parts into a new array of `shape`, or into `into` (that many values, overwritten) when the codec can: the
   * returned array is the one. Throws CodecError on anything malformed.
   */
  decode(parts: readonly CodecPart[], shape: readonly number[], into?: Float32Array): Float32Array;
  /** decode() writes into the `into` it is given (a receiver then keeps arrays to decode into round after round). */
  readonly decodesInto?: true;
  /**
   * Optional: encode() and what decode() will give of its parts, in one pass (a sender averages with the latter);
   * into `into` when given, which may be `delta` itself.
   */
  encodeDecoded?(
    delta: Float32Array, shape: readonly number[], state: CodecState, into?: Float32Array,
  ): { parts: CodecPart[]; decoded: Float32Array };
}

/** Checks the caller's arguments of Codec.encode. */
export function checkDelta(spec: string, delta: Float32Array, shape: readonly number[]): void {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) throw new RangeError(`${spec}: bad shape [${shape.join(', ')}]`);
  if (elementCount(shape) !== delta.length) throw new RangeError(`${spec}: shape [${shape.join(', ')}] does not hold ${delta.length} values`);
}

/** Throws RangeError at the first non-finite value: encoding NaN or Inf would corrupt every receiver. */
export function checkFinite(spec: string, values: Float32Array): void {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) throw nonFiniteDelta(spec, values[i], i);
}

/** The error for a delta's non-finite `value` at `index` (for encoders that find it on their own pass). */
export function nonFiniteDelta(spec: string, value: number, index: number): RangeError {
  return new RangeError(`${spec}: delta has a non-finite value ${value} at ${index}`);
}

/**
 * Error feedback: adds `delta` into the state's residual (created zeroed on first use) and
 * returns that buffer, which the codec then reduces by what it sends. On a non-finite sum the
 * residual is dropped and RangeError thrown.
 */
export function accumulateResidual(spec: string, state: CodecState, delta: Float32Array): Float32Array {
  const residual = (state.residual ??= new Float32Array(delta.length));
  if (residual.length !== delta.length) throw new RangeError(`${spec}: residual of ${residual.length} values, delta of ${delta.length}: state of another tensor`);
  for (let i = 0; i < delta.length; i++) {
    const sum = (residual[i] += delta[i]);
    if (!Number.isFinite(sum)) {
      state.residual = undefined;
      throw new RangeError(`${spec}: delta + residual is non-finite (${sum}) at ${i}; residual dropped`);
    }
  }
  return residual;
}

export function partTensor(dtype: DType, shape: number[], data: ArrayBufferView): Tensor {
  return { dtype, shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

type View<T> = { new (buffer: ArrayBufferLike, byteOffset: number, length: number): T; new (length: number): T; BYTES_PER_ELEMENT: number };

/**
 * The parts of one tensor by suffix, checked against what the codec expects: exactly the
 * listed suffixes (optional ones may be absent), no duplicates, no others.
 */
export class PartReader {
  private readonly bySuffix = new Map<string, Tensor>();

  constructor(
    private readonly spec: string,
    parts: readonly CodecPart[],
    required: readonly string[],
    optional: readonly string[] = [],
  ) {
    for (const { suffix, tensor } of parts) {
      if (!required.includes(suffix) && !optional.includes(suffix)) throw new CodecError(`${spec}: unexpected part "${suffix}"`);
      if (this.bySuffix.has(suffix)) throw new CodecError(`${spec}: part "${suffix}" appears twice`);
      this.bySuffix.set(suffix, tensor);
    }
    for (const suffix of required) if (!this.bySuffix.has(suffix)) throw new CodecError(`${spec}: part "${suffix}" is missing`);
  }

  has(suffix: string): boolean {
    return this.bySuffix.has(suffix);
  }

  /**
   * The values of a part after checking its dtype, shape (undefined: any 1-D length up to
   * `maxLength`) and byte length: a view when aligned, else an aligned copy.
   */
  read<T>(suffix: string, dtype: DType, ctor: View<T>, shape: readonly number[] | { maxLength: number }): T {
    const tensor = this.bySuffix.get(suffix);
    if (!tensor) throw new CodecError(`${this.spec}: part "${suffix}" is missing`);
    const where = `${this.spec}: part "${suffix}"`;
    if (tensor.dtype !== dtype) throw new CodecError(`${where} must be ${dtype}, got ${tensor.dtype}`);
    if ('maxLength' in shape) {
      if (tensor.shape.length !== 1 || tensor.shape[0] > shape.maxLength) {
        throw new CodecError(`${where} must be 1-D with at most ${shape.maxLength} elements, got [${tensor.shape.join(', ')}]`);
      }
    } else if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
      throw new CodecError(`${where} must have shape [${shape.join(', ')}], got [${tensor.shape.join(', ')}]`);
    }
    const mismatch = tensorMismatch(tensor);
    if (mismatch !== undefined) throw new CodecError(`${where}: ${mismatch}`);
    const { data } = tensor;
    const length = data.byteLength / DTYPE_BYTES[dtype];
    if (data.byteOffset % ctor.BYTES_PER_ELEMENT === 0) return new ctor(data.buffer, data.byteOffset, length);
    return new ctor(new Uint8Array(data).buffer, 0, length);
  }
}

/** Bytes a delta takes on the wire (tensor data; names and framing add a few dozen per part). */
export function encodedBytes(parts: readonly { tensor: Tensor }[]): number {
  return parts.reduce((n, p) => n + p.tensor.data.byteLength, 0);
}

export interface DeltaTensor {
  name: string;
  shape: readonly number[];
}

function checkName(name: string): void {
  if (name.includes(':')) throw new RangeError(`tensor name ${name} contains ':', which separates part suffixes`);
}

/** Encodes the deltas of a group's tensors as named wire parts (`name` + suffix). */
export function encodeTensors(codec: Codec, tensors: readonly (DeltaTensor & { delta: Float32Array; state: CodecState })[]): NamedTensor[] {
  return tensors.flatMap(({ name, shape, delta, state }) => {
    checkName(name);
    return codec.encode(delta, shape, state).map(({ suffix, tensor }) => ({ name: name + suffix, tensor }));
  });
}

/**
 * encodeTensors, and what a receiver's decodeTensors will give of its parts: from the codec's
 * encodeDecoded when it has one, else by decoding them. `inPlace`: a codec with encodeDecoded
 * writes them over the deltas (which the caller no longer needs) instead of into new arrays.
 */
export function encodeTensorsDecoded(
  codec: Codec, tensors: readonly (DeltaTensor & { delta: Float32Array; state: CodecState })[], inPlace = false,
): { message: NamedTensor[]; decoded: Float32Array[] } {
  const { encodeDecoded } = codec;
  if (!encodeDecoded) {
    const message = encodeTensors(codec, tensors);
    return { message, decoded: decodeTensors(codec, tensors, message) };
  }
  const message: NamedTensor[] = [];
  const decoded = tensors.map(({ name, shape, delta, state }) => {
    checkName(name);
    const encoded = encodeDecoded.call(codec, delta, shape, state, inPlace ? delta : undefined);
    for (const { suffix, tensor } of encoded.parts) message.push({ name: name + suffix, tensor });
    return encoded.decoded;
  });
  return { message, decoded };
}

/**
 * Decodes named wire parts into one array per expected tensor, in order (into `into`'s arrays when the codec can).
 * Parts are grouped by the name before the first ':'; a part of no expected tensor throws CodecError.
 */
export function decodeTensors(
  codec: Codec, tensors: readonly DeltaTensor[], parts: readonly NamedTensor[], into?: readonly Float32Array[],
): Float32Array[] {
  const byTensor = new Map<string, CodecPart[]>(tensors.map((t) => (checkName(t.name), [t.name, []])));
  for (const { name, tensor } of parts) {
    const colon = name.indexOf(':');
    const base = colon < 0 ? name : name.slice(0, colon);
    const list = byTensor.get(base);
    if (!list) throw new CodecError(`${codec.spec}: part ${name} belongs to no tensor of the group`);
    list.push({ suffix: name.slice(base.length), tensor });
  }
  return tensors.map(({ name, shape }, i) => {
    try {
      return codec.decode(byTensor.get(name)!, shape, into?.[i]);
    } catch (err) {
      if (err instanceof CodecError) err.message = `${name}: ${err.message}`;
      throw err;
    }
  });
}
