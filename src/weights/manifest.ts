// A base checkpoint's manifest, built from a Hugging Face folder (every canonical parameter's
// bytes, sha256 and chunk sha256s), its id and signature, and the blobs the coordinator serves from the folder.
import type { PrivateKey } from '@libp2p/interface';
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import {
  checkManifest, chunkRange, groupId, manifestCanonicalBytes, manifestSigningBytes, MANIFEST_FORMAT, MAX_BLOB_CHUNK_BYTES, ProtocolError,
  type BaseManifest, type ManifestTensor,
} from '../../proto/index.ts';
import { detectLayout, hfSource, hfWeightFiles, HfFormatError, readHfConfig } from '../io/hf.ts';
import { DTYPE_BYTES, readSafetensorsHeader, type DType } from '../io/safetensors.ts';
import { expertOf, parameterShapes } from '../model/config.ts';
import { signedBy, signSync } from '../p2p/signing.ts';
import type { BlobSource } from './store.ts';

/** A manifest that is malformed, does not match its id, or is not signed by the coordinator. */
export class ManifestError extends Error {
  override name = 'ManifestError';
}

export const sha256Hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export function manifestId(manifest: BaseManifest): string {
  return sha256Hex(manifestCanonicalBytes(manifest));
}

/** The coordinator's signature of the manifest id, with its identity key. */
export function signManifest(key: PrivateKey, manifest: BaseManifest): { id: string; signature: Uint8Array } {
  const id = manifestId(manifest);
  return { id, signature: signSync(key, manifestSigningBytes(id)) };
}

/**
 * Checks an untrusted manifest: its schema and sizes, that it is the base `expectedId` names
 * (when given), and that `coordinator` (a peer id) signed its id. Throws ManifestError.
 */
export function openManifest(
  value: unknown, signature: Uint8Array, coordinator: string, expectedId?: string,
): { manifest: BaseManifest; id: string } {
  let manifest: BaseManifest;
  try {
    manifest = checkManifest(value);
  } catch (err) {
    if (err instanceof ProtocolError) throw new ManifestError(err.message);
    throw err;
  }
  const id = manifestId(manifest);
  if (expectedId !== undefined && id !== expectedId) {
    throw new ManifestError(`manifest: its id is ${id}, not the base ${expectedId} that was asked for`);
  }
  if (!signedBy(coordinator, manifestSigningBytes(id), signature)) {
    throw new ManifestError(`manifest ${id}: not signed by the coordinator ${coordinator}`);
  }
  return { manifest, id };
}

/** The manifest's tensors of `groups` ("trunk", "expert.L.E"); a group with no tensor is an error (a wrong plan or base). */
export function tensorsOfGroups(manifest: BaseManifest, groups: readonly string[]): ManifestTensor[] {
  const wanted = new Set(groups);
  const picked = manifest.tensors.filter((t) => wanted.has(t.group));
  const found = new Set(picked.map((t) => t.group));
  const missing = [...wanted].filter((g) => !found.has(g));
  if (missing.length > 0) throw new ManifestError(`manifest: no tensors of group(s) ${missing.join(', ')}`);
  return picked;
}

/** Where a blob's bytes lie in the checkpoint folder, or zeros where the layout stores nothing. */
type Location = { path: string; offset: number; bytes: number } | { zeros: number };

/** Serves blobs from the checkpoint folder the manifest was built from (the coordinator's side). */
export class CheckpointBlobs implements BlobSource {
  constructor(private readonly locations: ReadonlyMap<string, Location>) {}

  async size(blob: string): Promise<number | undefined> {
    const location = this.locations.get(blob);
    return location === undefined ? undefined : 'zeros' in location ? location.zeros : location.bytes;
  }

  async read(blob: string, offset: number, length: number): Promise<Uint8Array> {
    const location = this.locations.get(blob);
    if (location === undefined) throw new RangeError(`blob ${blob} is not in this checkpoint`);
    return readLocation(location, offset, length);
  }
}

async function readLocation(location: Location, offset: number, length: number): Promise<Uint8Array> {
  if ('zeros' in location) return new Uint8Array(length);
  const { path } = location;
  const position = location.offset + offset;
  const file = await open(path, 'r');
  try {
    const buf = new Uint8Array(length);
    const { bytesRead } = await file.read(buf, 0, length, position);
    if (bytesRead !== length) throw new Error(`${path}: ${bytesRead} of ${length} bytes at ${position} (file changed?)`);
    return buf;
  } finally {
    await file.close();
  }
}

/**
 * Builds the manifest of a Hugging Face folder (config.json and model.safetensors or its shards):
 * one entry per canonical parameter, in parameterShapes order, hashed straight from the files
 * in chunks of `chunkBytes` (default 4 MiB). Returns the blobs to serve beside it.
 */
export async function buildManifest(
  dir: string, chunkBytes = MAX_BLOB_CHUNK_BYTES,
): Promise<{ manifest: BaseManifest; id: string; blobs: CheckpointBlobs }> {
  const { config, family } = await readHfConfig(dir);
  const files = new Map<string, { path: string; dataStart: number; entry: { dtype: DType; shape: number[]; begin: number } }>();
  for (const [path, keys] of await hfWeightFiles(dir)) {
    const header = await readSafetensorsHeader(path);
    for (const key of keys ?? header.entries.keys()) {
      const entry = header.entries.get(key);
      if (!entry) throw new HfFormatError(`${dir}: ${key} is mapped to ${path}, which does not contain it`);
      files.set(key, { path, dataStart: header.dataStart, entry });
    }
  }
  const layout = detectLayout(family, files.keys());
  const tensors: ManifestTensor[] = [];
  const locations = new Map<string, Location>();
  for (const [name, shape] of parameterShapes(config)) {
    const source = hfSource(config, layout, name, shape);
    const owner = expertOf(name);
    const group = groupId(owner ? { kind: 'expert', ...owner } : { kind: 'trunk' });
    const elements = shape.reduce((a, b) => a * b, 1);
    let location: Location;
    let dtype: ManifestTensor['dtype'] = 'F32';
    if (source === undefined) {
      location = { zeros: elements * DTYPE_BYTES.F32 };
    } else {
      const file = files.get(source.key);
      if (!file) throw new HfFormatError(`${dir}: missing tensor ${source.key}`);
      const { entry } = file;
      if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
        throw new HfFormatError(`${dir}: tensor ${source.key} is ${entry.dtype}; quantized checkpoints are not supported`);
      }
      if (entry.shape.join() !== source.keyShape.join()) {
        const [has, implied] = [entry.shape, source.keyShape].map((s) => `[${s.join(', ')}]`);
        throw new HfFormatError(`${dir}: tensor ${source.key} has shape ${has}, the config implies ${implied}`);
      }
      dtype = entry.dtype;
      const width = DTYPE_BYTES[dtype];
      location = { path: file.path, offset: file.dataStart + entry.begin + source.from * width, bytes: (source.to - source.from) * width };
    }
    const bytes = 'zeros' in location ? location.zeros : location.bytes;
    const hashes = await hashBlob((offset, length) => readLocation(location, offset, length), bytes, chunkBytes);
    tensors.push({ name, group, dtype, shape, bytes, sha256: hashes.whole, chunks: hashes.chunks });
    if (!locations.has(hashes.whole)) locations.set(hashes.whole, location);
  }
  const manifest: BaseManifest = { format: MANIFEST_FORMAT, config: { ...config }, chunkBytes, tensors };
  return { manifest: checkManifest(manifest), id: manifestId(manifest), blobs: new CheckpointBlobs(locations) };
}

/** The sha256 of a blob and of each of its chunks, read chunk by chunk. */
async function hashBlob(
  read: (offset: number, length: number) => Promise<Uint8Array>, bytes: number, chunkBytes: number,
): Promise<{ whole: string; chunks: string[] }> {
  const whole = createHash('sha256');
  const chunks: string[] = [];
  for (let index = 0; index * chunkBytes < bytes; index++) {
    const { offset, length } = chunkRange(bytes, chunkBytes, index);
    const data = await read(offset, length);
    whole.update(data);
    chunks.push(sha256Hex(data));
  }
  return { whole: whole.digest('hex'), chunks };
}
