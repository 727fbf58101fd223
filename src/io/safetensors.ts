// Safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON mapping each tensor name to { dtype, shape, data_offsets }
// (plus an optional "__metadata__" string map), then the tensor bytes. Offsets are relative to
// the end of the header. Files come from peers and downloads, so the header is checked as
// strictly as the reference implementation does: a file it would reject is rejected here too,
// with a message that names the problem.
import { open, rename, rm } from 'node:fs/promises';
import { decodeHalves, encodeHalves } from '../../proto/half.ts';

export type FloatDType = 'F32' | 'F16' | 'BF16';
export type DType = FloatDType | 'I8' | 'U8';

/** A tensor in memory. F16/BF16 are held as f32 (converted on read, rounded on write). */
export type Tensor =
  | { dtype: FloatDType; shape: number[]; data: Float32Array }
  | { dtype: 'I8'; shape: number[]; data: Int8Array }
  | { dtype: 'U8'; shape: number[]; data: Uint8Array };

/** Where a tensor's bytes lie, relative to the start of the data section. */
export interface TensorEntry {
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  metadata: Record<string, string>;
  entries: Map<string, TensorEntry>;
  /** Byte offset of the data section in the file: 8 + header length. */
  dataStart: number;
}

export interface SafetensorsContents {
  metadata: Record<string, string>;
  tensors: Map<string, Tensor>;
}

export const DTYPE_BYTES: Readonly<Record<DType, number>> = { F32: 4, F16: 2, BF16: 2, I8: 1, U8: 1 };
/** The reference implementation refuses headers above 100 MB; so do we. */
export const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = '__metadata__';

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

// Typed-array views below read and write the host's byte order; safetensors is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('swarmtrain needs a little-endian host');

function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_BYTES, value);
}

function isNonNegativeInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Reads and checks the header length N from the first 8 bytes of a file of `fileSize` bytes. */
function headerLength(first: Uint8Array, fileSize: number, source: string): number {
  if (fileSize < 8) throw new SafetensorsError(`${source}: truncated: ${fileSize} bytes, too short for the 8-byte header length`);
  const n = new DataView(first.buffer, first.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(`${source}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (8 + Number(n) > fileSize) {
    throw new SafetensorsError(`${source}: header length ${n} runs past the end of the file (${fileSize} bytes)`);
  }
  return Number(n);
}

function parseEntry(name: string, raw: unknown, source: string): TensorEntry {
  const where = `${source}: tensor "${name}"`;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new SafetensorsError(`${where}: entry must be an object`);
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (!isDType(dtype)) {
    throw new SafetensorsError(`${where}: unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
    throw new SafetensorsError(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt) || offsets[0] > offsets[1]) {
    throw new SafetensorsError(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const bytes = elementCount(shape) * DTYPE_BYTES[dtype];
  const [begin, end] = offsets as [number, number];
  if (!Number.isSafeInteger(bytes) || bytes !== end - begin) {
    throw new SafetensorsError(
      `${where}: shape [${shape.join(', ')}] of ${dtype} needs ${bytes} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
    );
  }
  return { dtype, shape: [...shape], begin, end };
}

/**
 * Parses and validates the header. `start` holds at least the first 8 + N bytes of a file of
 * `fileSize` bytes (a whole file in memory, or just its head when reading from disk).
 */
export function parseSafetensorsHeader(start: Uint8Array, fileSize: number, source = 'safetensors'): SafetensorsHeader {
  const n = headerLength(start, fileSize, source);
  if (start.length < 8 + n) throw new SafetensorsError(`${source}: truncated inside the ${n}-byte header`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(start.subarray(8, 8 + n));
  } catch {
    throw new SafetensorsError(`${source}: header is not valid UTF-8`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(`${source}: header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new SafetensorsError(`${source}: header must be a JSON object`);

  const metadata: Record<string, string> = {};
  const entries = new Map<string, TensorEntry>();
  for (const [name, raw] of Object.entries(json)) {
    if (name === METADATA_KEY) {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || !Object.values(raw).every((v) => typeof v === 'string')) {
        throw new SafetensorsError(`${source}: ${METADATA_KEY} must map strings to strings`);
      }
      Object.assign(metadata, raw);
    } else {
      entries.set(name, parseEntry(name, raw, source));
    }
  }

  // The tensors must tile the data section exactly: in offset order, each begins where the
  // previous one ended, and the last ends at the end of the file.
  const dataBytes = fileSize - 8 - n;
  const ordered = [...entries].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous = '';
  for (const [name, { begin, end }] of ordered) {
    if (end > dataBytes) {
      throw new SafetensorsError(
        `${source}: tensor "${name}": data_offsets [${begin}, ${end}] run past the end of the data section (${dataBytes} bytes; file truncated?)`,
      );
    }
    if (begin < cursor) throw new SafetensorsError(`${source}: tensors "${previous}" and "${name}" overlap (byte ${begin} < ${cursor})`);
    if (begin > cursor) throw new SafetensorsError(`${source}: ${begin - cursor} unused bytes before tensor "${name}" (tensors must be contiguous)`);
    cursor = end;
    previous = name;
  }
  if (cursor !== dataBytes) throw new SafetensorsError(`${source}: ${dataBytes - cursor} bytes after the last tensor (tensors must fill the data section)`);
  return { metadata, entries, dataStart: 8 + n };
}

/** Converts a tensor's raw little-endian bytes to its in-memory form (copies). */
export function decodeTensor(entry: TensorEntry, bytes: Uint8Array): Tensor {
  const shape = [...entry.shape];
  switch (entry.dtype) {
    case 'F32': {
      const data = new Float32Array(bytes.length / 4);
      new Uint8Array(data.buffer).set(bytes);
      return { dtype: 'F32', shape, data };
    }
    case 'F16':
    case 'BF16':
      return { dtype: entry.dtype, shape, data: decodeHalves(bytes, entry.dtype) };
    case 'I8':
      return { dtype: 'I8', shape, data: new Int8Array(bytes.slice().buffer) };
    case 'U8':
      return { dtype: 'U8', shape, data: bytes.slice() };
  }
}

/** Parses a whole safetensors file held in memory. */
export function decodeSafetensors(bytes: Uint8Array, source = 'safetensors buffer'): SafetensorsContents {
  const header = parseSafetensorsHeader(bytes, bytes.length, source);
  const tensors = new Map<string, Tensor>();
  for (const [name, entry] of header.entries) {
    tensors.set(name, decodeTensor(entry, bytes.subarray(header.dataStart + entry.begin, header.dataStart + entry.end)));
  }
  return { metadata: header.metadata, tensors };
}

type FileHandle = Awaited<ReturnType<typeof open>>;

async function readExactly(file: FileHandle, path: string, length: number, position: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  const { bytesRead } = await file.read(buf, 0, length, position);
  if (bytesRead !== length) throw new SafetensorsError(`${path}: truncated while reading (file changed size?)`);
  return buf;
}

async function readHeaderOf(file: FileHandle, path: string): Promise<SafetensorsHeader> {
  const { size } = await file.stat();
  const first = await readExactly(file, path, Math.min(8, size), 0);
  return parseSafetensorsHeader(await readExactly(file, path, 8 + headerLength(first, size, path), 0), size, path);
}

/** Reads and checks only the header of a safetensors file (where each tensor's bytes lie). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const file = await open(path, 'r');
  try {
    return await readHeaderOf(file, path);
  } finally {
    await file.close();
  }
}

/** Reads a safetensors file tensor by tensor (no whole-file buffer, so files over 2 GiB work). */
export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  const file = await open(path, 'r');
  try {
    const header = await readHeaderOf(file, path);
    const tensors = new Map<string, Tensor>();
    for (const [name, entry] of header.entries) {
      tensors.set(name, decodeTensor(entry, await readExactly(file, path, entry.end - entry.begin, header.dataStart + entry.begin)));
    }
    return { metadata: header.metadata, tensors };
  } finally {
    await file.close();
  }
}

function tensorBytes(name: string, tensor: Tensor): Uint8Array {
  const where = `tensor "${name}"`;
  if (!isDType(tensor.dtype)) throw new SafetensorsError(`${where}: unknown dtype ${JSON.stringify(tensor.dtype)}`);
  if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeInt)) {
    throw new SafetensorsError(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(tensor.shape)}`);
  }
  const wanted = { F32: Float32Array, F16: Float32Array, BF16: Float32Array, I8: Int8Array, U8: Uint8Array }[tensor.dtype];
  if (!(tensor.data instanceof wanted)) throw new SafetensorsError(`${where}: ${tensor.dtype} data must be a ${wanted.name}`);
  if (tensor.data.length !== elementCount(tensor.shape)) {
    throw new SafetensorsError(`${where}: shape [${tensor.shape.join(', ')}] needs ${elementCount(tensor.shape)} values, data has ${tensor.data.length}`);
  }
  if (tensor.dtype === 'F16' || tensor.dtype === 'BF16') return encodeHalves(tensor.data, tensor.dtype);
  return new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
}

/**
 * Lays a file out: header bytes (length prefix + JSON padded with spaces to a multiple of 8)
 * and the tensor bytes in data order. Data is ordered by element size, widest first, so every
 * tensor starts aligned to its element size; JSON keys are sorted by name.
 */
function layout(tensors: Iterable<[string, Tensor]>, metadata: Record<string, string> | undefined): Uint8Array[] {
  const items = [...tensors].map(([name, tensor]) => {
    if (name === METADATA_KEY || name === '') throw new SafetensorsError(`tensor name ${JSON.stringify(name)} is reserved`);
    return { name, tensor, bytes: tensorBytes(name, tensor) };
  });
  if (new Set(items.map((i) => i.name)).size !== items.length) throw new SafetensorsError('duplicate tensor names');
  for (const [key, value] of Object.entries(metadata ?? {})) {
    if (typeof value !== 'string') throw new SafetensorsError(`metadata "${key}" must be a string, got ${typeof value}`);
  }
  const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const dataOrder = [...items].sort((a, b) => DTYPE_BYTES[b.tensor.dtype] - DTYPE_BYTES[a.tensor.dtype] || byName(a, b));
  const offsets = new Map<string, [number, number]>();
  let cursor = 0;
  for (const item of dataOrder) {
    offsets.set(item.name, [cursor, cursor + item.bytes.length]);
    cursor += item.bytes.length;
  }
  // No prototype, so a tensor named "__proto__" is just a key.
  const header: Record<string, unknown> = Object.create(null);
  if (metadata) header[METADATA_KEY] = metadata;
  for (const { name, tensor } of [...items].sort(byName)) {
    header[name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: offsets.get(name) };
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  return [head, ...dataOrder.map((i) => i.bytes)];
}

/** Encodes tensors (and optional string metadata) as a safetensors file in memory. */
export function encodeSafetensors(tensors: Iterable<[string, Tensor]>, metadata?: Record<string, string>): Uint8Array {
  const parts = layout(tensors, metadata);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Writes a safetensors file through a temporary name, so a crash never leaves a partial file at `path`. */
export async function writeSafetensors(path: string, tensors: Iterable<[string, Tensor]>, metadata?: Record<string, string>): Promise<void> {
  const parts = layout(tensors, metadata);
  const temporary = `${path}.${process.pid}.partial`;
  const file = await open(temporary, 'w');
  try {
    for (const part of parts) {
      for (let done = 0; done < part.length; ) done += (await file.write(part, done)).bytesWritten;
    }
    await file.sync();
  } catch (err) {
    await file.close();
    await rm(temporary, { force: true });
    throw err;
  }
  await file.close();
  await rename(temporary, path);
}
