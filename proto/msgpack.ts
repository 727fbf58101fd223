// Plain MessagePack: maps with string keys, arrays, strings, binaries, numbers, booleans and
// nil. msgpackr also decodes its own extensions (records, Sets, Errors, typed arrays, ...)
// whatever the options say, so peer bytes are scanned first and anything else is refused.
import { Packr, type Options } from 'msgpackr';

/** Deeper than any message we define; bounds the work a hostile nesting can cause. */
export const MAX_DEPTH = 16;

const packr = new Packr({
  useRecords: false,
  mapsAsObjects: true,
  // An absent optional field must not become msgpackr's `undefined` extension.
  skipValues: [undefined],
  // Other encoders write large integers as uint64/int64: numbers when safe, else bigints (refused by the schemas).
  int64AsType: 'auto',
} as Options & { skipValues: unknown[]; int64AsType: 'auto' });

export function packPlain(value: unknown): Uint8Array {
  return packr.pack(value);
}

/** Decodes bytes after checking they are one plain MessagePack value; throws Error with a reason otherwise. */
export function unpackPlain(bytes: Uint8Array): unknown {
  const problem = plainMsgpackProblem(bytes);
  if (problem !== undefined) throw new Error(problem);
  return packr.unpack(bytes);
}

const EXTENSION_NAMES: Record<number, string> = { 0x72: 'msgpackr record definition', 0xff: 'timestamp' };

interface Container {
  remaining: number; // values still to read (a map counts keys and values)
  isMap: boolean;
}

/** Why `bytes` is not exactly one plain MessagePack value, or undefined when it is. */
export function plainMsgpackProblem(bytes: Uint8Array): string | undefined {
  try {
    scanPlain(bytes);
    return undefined;
  } catch (err) {
    if (err instanceof ScanError) return err.message;
    throw err;
  }
}

class ScanError extends Error {}

function scanPlain(bytes: Uint8Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.byteLength;
  const stack: Container[] = [{ remaining: 1, isMap: false }]; // the top level holds one value
  let pos = 0;
  const take = (n: number): number => {
    if (pos + n > end) throw new ScanError(`truncated at byte ${pos}: needs ${n} more bytes, ${end - pos} left`);
    const at = pos;
    pos += n;
    return at;
  };
  const length = (n: 1 | 2 | 4): number => {
    const at = take(n);
    return n === 1 ? bytes[at] : n === 2 ? view.getUint16(at) : view.getUint32(at);
  };

  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.remaining === 0) {
      stack.pop();
      continue;
    }
    const expectKey = top.isMap && top.remaining % 2 === 0;
    top.remaining--;

    const at = take(1);
    const token = bytes[at];
    let payload = 0; // bytes after the header
    let children = -1; // >= 0 for arrays, 2 x entries for maps
    let isMap = false;
    let isString = false;
    if (token <= 0x7f || token >= 0xe0) {
      // positive or negative fixint
    } else if (token <= 0x8f) {
      [children, isMap] = [2 * (token & 0x0f), true];
    } else if (token <= 0x9f) {
      children = token & 0x0f;
    } else if (token <= 0xbf) {
      [payload, isString] = [token & 0x1f, true];
    } else if (token === 0xc0 || token === 0xc2 || token === 0xc3) {
      // nil, false, true
    } else if (token >= 0xca && token <= 0xd3) {
      payload = NUMBER_BYTES[token - 0xca]; // float32/64, uint8..64, int8..64
    } else if (token >= 0xc4 && token <= 0xc6) {
      payload = length(LENGTH_BYTES[token - 0xc4]); // bin 8/16/32
    } else if (token >= 0xd9 && token <= 0xdb) {
      [payload, isString] = [length(LENGTH_BYTES[token - 0xd9]), true]; // str 8/16/32
    } else if (token === 0xdc || token === 0xdd) {
      children = length(token === 0xdc ? 2 : 4); // array 16/32
    } else if (token === 0xde || token === 0xdf) {
      [children, isMap] = [2 * length(token === 0xde ? 2 : 4), true]; // map 16/32
    } else if ((token >= 0xd4 && token <= 0xd8) || (token >= 0xc7 && token <= 0xc9)) {
      const typeAt = token >= 0xd4 ? at + 1 : at + 1 + (1 << (token - 0xc7));
      const name = typeAt < end ? (EXTENSION_NAMES[bytes[typeAt]] ?? `type ${view.getInt8(typeAt)}`) : 'truncated';
      throw new ScanError(`MessagePack extension (${name}) at byte ${at}: only plain maps, arrays, strings, binaries, numbers, booleans and nil are allowed`);
    } else {
      throw new ScanError(`byte 0x${token.toString(16)} at ${at} is not a MessagePack value`);
    }
    if (expectKey && !isString) throw new ScanError(`map key at byte ${at} is not a string`);
    take(payload);
    if (children >= 0) {
      // Every value takes at least one byte: a count beyond the bytes left is a lie.
      if (children > end - pos) throw new ScanError(`truncated or corrupt: container at byte ${at} claims ${children} values but only ${end - pos} bytes follow`);
      if (stack.length > MAX_DEPTH) throw new ScanError(`nesting deeper than ${MAX_DEPTH} at byte ${at}`);
      stack.push({ remaining: children, isMap });
    }
  }
  if (pos !== end) throw new ScanError(`${end - pos} trailing bytes after the message`);
}

// Payload sizes of 0xca..0xd3: float32, float64, uint8, uint16, uint32, uint64, int8, int16, int32, int64.
const NUMBER_BYTES = [4, 8, 1, 2, 4, 8, 1, 2, 4, 8];
const LENGTH_BYTES = [1, 2, 4] as const;
