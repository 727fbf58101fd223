// A plain MessagePack encoder and decoder for tests, written from the spec
// (https://github.com/msgpack/msgpack/blob/master/spec.md) independently of msgpackr and of
// proto/msgpack.ts. The encoder always picks the widest form (map32, str32, bin32, int64, ...),
// the opposite of msgpackr, so decoding its output exercises every length width.

export type Plain = null | boolean | number | string | Uint8Array | Plain[] | { [key: string]: Plain };

export function encodeWide(value: Plain): Uint8Array {
  const out: number[] = [];
  const u32 = (n: number) => out.push((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  const bytes = (b: Uint8Array) => {
    u32(b.length);
    for (const x of b) out.push(x);
  };
  const write = (v: Plain): void => {
    if (v === null) out.push(0xc0);
    else if (typeof v === 'boolean') out.push(v ? 0xc3 : 0xc2);
    else if (typeof v === 'number') {
      const view = new DataView(new ArrayBuffer(8));
      if (Number.isSafeInteger(v)) {
        out.push(v < 0 ? 0xd3 : 0xcf);
        view.setBigInt64(0, BigInt(v));
      } else {
        out.push(0xcb);
        view.setFloat64(0, v);
      }
      for (let i = 0; i < 8; i++) out.push(view.getUint8(i));
    } else if (typeof v === 'string') {
      out.push(0xdb);
      bytes(new TextEncoder().encode(v));
    } else if (v instanceof Uint8Array) {
      out.push(0xc6);
      bytes(v);
    } else if (Array.isArray(v)) {
      out.push(0xdd);
      u32(v.length);
      v.forEach(write);
    } else {
      const entries = Object.entries(v);
      out.push(0xdf);
      u32(entries.length);
      for (const [key, item] of entries) {
        write(key);
        write(item);
      }
    }
  };
  write(value);
  return new Uint8Array(out);
}

/** Decodes one plain value; throws on anything else or on trailing bytes. */
export function decodePlain(input: Uint8Array): Plain {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  let pos = 0;
  const take = (n: number) => {
    if (pos + n > input.length) throw new Error('truncated');
    pos += n;
    return pos - n;
  };
  const uint = (n: number) => {
    const at = take(n);
    return n === 1 ? view.getUint8(at) : n === 2 ? view.getUint16(at) : n === 4 ? view.getUint32(at) : Number(view.getBigUint64(at));
  };
  const int = (n: number) => {
    const at = take(n);
    return n === 1 ? view.getInt8(at) : n === 2 ? view.getInt16(at) : n === 4 ? view.getInt32(at) : Number(view.getBigInt64(at));
  };
  const str = (n: number) => new TextDecoder().decode(input.subarray(take(n), pos));
  const array = (n: number): Plain[] => Array.from({ length: n }, () => read());
  const map = (n: number) => {
    const object: { [key: string]: Plain } = {};
    for (let i = 0; i < n; i++) {
      const key = read();
      if (typeof key !== 'string') throw new Error('non-string key');
      object[key] = read();
    }
    return object;
  };
  const read = (): Plain => {
    const t = view.getUint8(take(1));
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t <= 0x8f) return map(t & 0x0f);
    if (t <= 0x9f) return array(t & 0x0f);
    if (t <= 0xbf) return str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: case 0xc5: case 0xc6: {
        const n = uint(1 << (t - 0xc4));
        return input.slice(take(n), pos);
      }
      case 0xca: return view.getFloat32(take(4));
      case 0xcb: return view.getFloat64(take(8));
      case 0xcc: case 0xcd: case 0xce: case 0xcf: return uint(1 << (t - 0xcc));
      case 0xd0: case 0xd1: case 0xd2: case 0xd3: return int(1 << (t - 0xd0));
      case 0xd9: case 0xda: case 0xdb: return str(uint(1 << (t - 0xd9)));
      case 0xdc: case 0xdd: return array(uint(t === 0xdc ? 2 : 4));
      case 0xde: case 0xdf: return map(uint(t === 0xde ? 2 : 4));
      default: throw new Error(`not plain msgpack: 0x${t.toString(16)}`);
    }
  };
  const value = read();
  if (pos !== input.length) throw new Error('trailing bytes');
  return value;
}
