import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../proto/half.ts';
import { decodeSafetensors, encodeSafetensors, readSafetensors, writeSafetensors, type Tensor } from '../../src/io/safetensors.ts';
import { rng } from '../helpers.ts';
import { bf16Value, halfValue } from '../reference/safetensors64.ts';

/** Checks `bits` is the correctly rounded encoding of x: no neighbour is nearer; ties go to an even mantissa. */
function expectNearest(x: number, bits: number, value: (h: number) => number, maxFinite: number): void {
  const y = value(bits);
  if (Math.abs(x) > maxFinite && !Number.isFinite(y)) return; // overflow region, checked separately
  const err = Math.abs(y - x);
  for (const neighbour of [bits - 1, bits + 1]) {
    if ((neighbour & 0x7fff) > (maxFinite === 65504 ? 0x7bff : 0x7f7f) || neighbour < 0) continue;
    if ((bits & 0x7fff) === 0 && neighbour === bits - 1) continue; // below +0 is -0's side
    const other = Math.abs(value(neighbour) - x);
    expect(other >= err, `x=${x}: ${bits.toString(16)} (err ${err}) vs ${neighbour.toString(16)} (err ${other})`).toBe(true);
    if (other === err) expect(bits & 1, `tie at x=${x} must round to even`).toBe(0);
  }
}

describe('16-bit floats', () => {
  it('decode every half value as the IEEE definition says', () => {
    for (let h = 0; h < 65536; h++) {
      const want = halfValue(h);
      if (Number.isNaN(want)) expect(f16BitsToF32(h)).toBeNaN();
      else expect(f16BitsToF32(h)).toBe(want);
    }
  });

  it('re-encode every non-NaN half value to the same bits, and keep NaN a NaN', () => {
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(halfValue(h))) expect(halfValue(f32ToF16Bits(f16BitsToF32(h)))).toBeNaN();
      else expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
  });

  it('round f32 to the nearest half, ties to even, overflowing to infinity', () => {
    const random = rng(11);
    const xs = [1 / 3, -2.5e-8, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -25, 65504, 65519.99,
      1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -14 * (1 - 2 ** -11)];
    for (let i = 0; i < 20000; i++) xs.push(Math.fround(random() * 2 ** Math.floor(random() * 40 - 26)));
    for (const x of xs) expectNearest(Math.fround(x), f32ToF16Bits(x), halfValue, 65504);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(-1e9)).toBe(0xfc00);
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // tie between 0 and the smallest subnormal: even wins
    expect(f32ToF16Bits(-0)).toBe(0x8000);
  });

  it('round f32 to the nearest bfloat16, ties to even', () => {
    const random = rng(12);
    const xs = [1 / 3, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -7.1e-39, 3.3e38];
    for (let i = 0; i < 20000; i++) xs.push(Math.fround(random() * 2 ** Math.floor(random() * 200 - 100)));
    for (const x of xs) {
      const bits = f32ToBf16Bits(x);
      expect(bf16BitsToF32(bits)).toBe(bf16Value(bits));
      expectNearest(Math.fround(x), bits, bf16Value, 3.3895313892515355e38);
    }
    expect(bf16Value(f32ToBf16Bits(NaN))).toBeNaN();
    expect(f32ToBf16Bits(Infinity)).toBe(0x7f80);
  });
});

/** Tensors of every dtype, with values each dtype holds exactly. */
function sampleTensors(): Map<string, Tensor> {
  const random = rng(5);
  const float = (n: number, quantum: number) => Float32Array.from({ length: n }, () => Math.round(random() * 100) * quantum);
  return new Map<string, Tensor>([
    ['w.f32', { dtype: 'F32', shape: [3, 5], data: Float32Array.from({ length: 15 }, () => random()) }],
    ['w.f16', { dtype: 'F16', shape: [7], data: float(7, 0.125) }],
    ['w.bf16', { dtype: 'BF16', shape: [2, 3, 1], data: float(6, 2 ** -6) }],
    ['q.i8', { dtype: 'I8', shape: [9], data: Int8Array.from({ length: 9 }, (_, i) => i * 31 - 128) }],
    ['q.u8', { dtype: 'U8', shape: [3, 1], data: Uint8Array.from([0, 128, 255]) }],
    ['scalar', { dtype: 'F32', shape: [], data: Float32Array.of(-4.5) }],
    ['empty', { dtype: 'F16', shape: [0, 4], data: new Float32Array(0) }],
  ]);
}

function headerOf(bytes: Uint8Array): { length: number; text: string } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { length, text: new TextDecoder().decode(bytes.subarray(8, 8 + length)) };
}

describe('safetensors round trip', () => {
  it('returns every dtype, shape and value, and the metadata', () => {
    const input = sampleTensors();
    const { tensors, metadata } = decodeSafetensors(encodeSafetensors(input, { format: 'pt', note: 'ü' }));
    expect(metadata).toEqual({ format: 'pt', note: 'ü' });
    expect([...tensors.keys()].sort()).toEqual([...input.keys()].sort());
    for (const [name, t] of input) expect(tensors.get(name), name).toEqual(t);
  });

  it('rounds F16/BF16 data on write to the nearest representable value', () => {
    const data = Float32Array.of(1 / 3, 70000, -1e-9, 1 + 2 ** -9);
    const { tensors } = decodeSafetensors(
      encodeSafetensors([['h', { dtype: 'F16', shape: [4], data }], ['b', { dtype: 'BF16', shape: [4], data }]]),
    );
    expect([...tensors.get('h')!.data]).toEqual([...data].map((x) => halfValue(f32ToF16Bits(x))));
    expect([...tensors.get('b')!.data]).toEqual([...data].map((x) => bf16Value(f32ToBf16Bits(x))));
    expect(tensors.get('h')!.data[1]).toBe(Infinity);
  });

  it('writes a header padded with spaces to 8 bytes, keys sorted, widest dtypes first, data contiguous', () => {
    const bytes = encodeSafetensors(sampleTensors(), { format: 'pt' });
    const { length, text } = headerOf(bytes);
    expect(length % 8).toBe(0);
    expect(text).toMatch(/^\{.*\} *$/);
    const json = JSON.parse(text) as Record<string, { dtype: string; data_offsets: [number, number] }>;
    const names = Object.keys(json).filter((k) => k !== '__metadata__');
    expect(names).toEqual([...names].sort());
    const byOffset = names.map((n) => json[n])
      .sort((a, b) => a.data_offsets[0] - b.data_offsets[0] || a.data_offsets[1] - b.data_offsets[1]);
    const sizes = byOffset.map((e) => ({ F32: 4, F16: 2, BF16: 2, I8: 1, U8: 1 })[e.dtype]!);
    expect(sizes).toEqual([...sizes].sort((a, b) => b - a));
    for (const e of byOffset) expect(e.data_offsets[0] % ({ F32: 4, F16: 2, BF16: 2 }[e.dtype] ?? 1)).toBe(0);
    expect(byOffset.at(-1)!.data_offsets[1]).toBe(bytes.length - 8 - length);
  });

  it('keeps odd tensor names as plain keys', () => {
    const t: Tensor = { dtype: 'U8', shape: [1], data: Uint8Array.of(7) };
    const { tensors } = decodeSafetensors(encodeSafetensors([['__proto__', t], ['7', t]]));
    expect([...tensors.keys()].sort()).toEqual(['7', '__proto__']);
  });

  it('rejects tensors that do not match their description when writing', () => {
    const enc = (t: unknown, name = 'x') => () => encodeSafetensors([[name, t as Tensor]]);
    expect(enc({ dtype: 'F32', shape: [2, 2], data: new Float32Array(3) }))
      .toThrow(/tensor "x": shape \[2, 2\] needs 4 values, data has 3/);
    expect(enc({ dtype: 'I8', shape: [2], data: new Uint8Array(2) })).toThrow(/I8 data must be a Int8Array/);
    expect(enc({ dtype: 'F64', shape: [1], data: new Float64Array(1) })).toThrow(/unknown dtype "F64"/);
    expect(enc({ dtype: 'U8', shape: [-1], data: new Uint8Array(0) })).toThrow(/shape must be an array of non-negative integers/);
    expect(enc({ dtype: 'U8', shape: [0], data: new Uint8Array(0) }, '__metadata__')).toThrow(/reserved/);
    expect(() => encodeSafetensors([], { n: 1 as unknown as string })).toThrow(/metadata "n" must be a string/);
  });
});

describe('safetensors files on disk', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'swarmtrain-st-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads back what was written, leaving no temporary file', async () => {
    const path = join(dir, 'model.safetensors');
    const input = sampleTensors();
    await writeSafetensors(path, input, { format: 'pt' });
    expect(await readdir(dir)).toEqual(['model.safetensors']);
    expect(new Uint8Array(await readFile(path))).toEqual(encodeSafetensors(input, { format: 'pt' }));
    const { tensors, metadata } = await readSafetensors(path);
    expect(metadata).toEqual({ format: 'pt' });
    for (const [name, t] of input) expect(tensors.get(name), name).toEqual(t);
  });

  it('names the file and the problem for a truncated file', async () => {
    const path = join(dir, 'cut.safetensors');
    const whole = encodeSafetensors(sampleTensors());
    await writeFile(path, whole.subarray(0, whole.length - 3));
    await expect(readSafetensors(path)).rejects.toThrow(
      'cut.safetensors: tensor "q.u8": data_offsets [99, 102] run past the end of the data section (99 bytes; file truncated?)',
    );
    await writeFile(path, whole.subarray(0, 5));
    await expect(readSafetensors(path)).rejects.toThrow(/cut\.safetensors: truncated: 5 bytes/);
  });
});

/** A file with the given header (object or raw text), `dataBytes` zero bytes of data, and optionally a forged length. */
function rawFile(header: unknown, dataBytes: number, forgedLength?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.length + dataBytes);
  new DataView(bytes.buffer).setBigUint64(0, forgedLength ?? BigInt(json.length), true);
  bytes.set(json, 8);
  return bytes;
}

describe('corrupt safetensors are rejected with a clear error', () => {
  const f32 = (begin: number, end: number, shape = [(end - begin) / 4]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });
  const invalidUtf8 = rawFile('{"\u00ff": 1}', 0);
  invalidUtf8[10] = 0xff; // the two UTF-8 bytes of ÿ become an invalid sequence
  invalidUtf8[11] = 0xfe;
  const cases: [string, Uint8Array, RegExp][] = [
    ['too short for the length', new Uint8Array(7), /truncated: 7 bytes, too short for the 8-byte header length/],
    ['header length past EOF', rawFile({ a: f32(0, 4) }, 4, 1000n), /header length 1000 runs past the end of the file/],
    ['header length over the limit', rawFile({}, 0, 2n ** 40n), /header length 1099511627776 exceeds the 100000000-byte limit/],
    ['bad JSON', rawFile('{"a": {"dtype": "F32",', 0), /header is not valid JSON/],
    ['JSON that is not an object', rawFile('[1, 2]', 0), /header must be a JSON object/],
    ['invalid UTF-8', invalidUtf8, /header is not valid UTF-8/],
    ['unknown dtype', rawFile({ a: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, 4),
      /tensor "a": unsupported dtype "F8_E4M3" \(supported: F32, F16, BF16, I8, U8\)/],
    ['shape/size mismatch', rawFile({ a: f32(0, 20, [2, 3]) }, 20),
      /tensor "a": shape \[2, 3\] of F32 needs 24 bytes but data_offsets \[0, 20\] span 20/],
    ['overlapping ranges', rawFile({ a: f32(0, 8), b: f32(4, 12) }, 12), /tensors "a" and "b" overlap/],
    ['offsets past the data', rawFile({ a: f32(0, 8), b: f32(8, 16) }, 12),
      /tensor "b": data_offsets \[8, 16\] run past the end of the data section \(12 bytes/],
    ['a gap between tensors', rawFile({ a: f32(0, 4), b: f32(8, 12) }, 12), /4 unused bytes before tensor "b"/],
    ['bytes after the last tensor', rawFile({ a: f32(0, 4) }, 8), /4 bytes after the last tensor/],
    ['negative dimension', rawFile({ a: { dtype: 'U8', shape: [-1], data_offsets: [0, 0] } }, 0),
      /tensor "a": shape must be an array of non-negative integers/],
    ['reversed offsets', rawFile({ a: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } }, 4), /data_offsets must be \[begin, end\]/],
    ['entry not an object', rawFile({ a: 3 }, 0), /tensor "a": entry must be an object/],
    ['metadata not strings', rawFile({ __metadata__: { n: 1 } }, 0), /__metadata__ must map strings to strings/],
  ];
  it.each(cases)('%s', (_, bytes, message) => {
    expect(() => decodeSafetensors(bytes, 'bad.safetensors')).toThrow(message);
    expect(() => decodeSafetensors(bytes, 'bad.safetensors')).toThrow(/^bad\.safetensors: /);
  });

  it('accepts the same layouts when they are valid', () => {
    const { tensors } = decodeSafetensors(rawFile({
      __metadata__: { k: 'v' }, b: f32(4, 12), a: f32(0, 4), z: { dtype: 'U8', shape: [0], data_offsets: [12, 12] },
    }, 12));
    expect([...tensors.keys()].sort()).toEqual(['a', 'b', 'z']);
  });
});
