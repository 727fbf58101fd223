// The manifest of a base checkpoint: each tensor's name, group, dtype, shape, bytes, sha256 and
// per-chunk sha256s, its canonical encoding (whose sha256 is the manifest id) and what the coordinator signs.
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ProtocolError } from './errors.ts';
import { parseGroupId } from './group.ts';
import { DTYPE_BYTES, elementCount, MAX_RANK } from './tensor.ts';

const KiB = 1024;
/** The largest chunk a blob travels in: one chunk is one response, well under TENSOR_MESSAGE_CAP. */
export const MAX_BLOB_CHUNK_BYTES = 4 * KiB * KiB;
export const MANIFEST_FORMAT = 'swarmtrain/base-manifest/1';
const SIGNING_DOMAIN = 'swarmtrain/base-manifest-id/1';

/** A sha256 in lowercase hex: blob names, chunk checks, manifest ids. */
export const Sha256Hex = Type.String({ minLength: 64, maxLength: 64, pattern: '^[0-9a-f]{64}$' });

export const ManifestTensorSchema = Type.Object({
  /** Canonical parameter name (src/model/config.ts). */
  name: Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9._:/-]+$' }),
  /** "trunk" or "expert.<layer>.<expert>" (group.ts). */
  group: Type.String({ minLength: 1, maxLength: 64 }),
  dtype: Type.Union([Type.Literal('F32'), Type.Literal('F16'), Type.Literal('BF16')]),
  shape: Type.Array(Type.Integer({ minimum: 0, maximum: 2 ** 32 }), { maxItems: MAX_RANK }),
  bytes: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
  /** Of the whole tensor's little-endian bytes: the blob's name in every store. */
  sha256: Sha256Hex,
  /** Of each chunkBytes-long slice in order (the last may be shorter), so every chunk is checked as it arrives. */
  chunks: Type.Array(Sha256Hex, { maxItems: 1 << 20 }),
});
export type ManifestTensor = Static<typeof ManifestTensorSchema>;

export const BaseManifestSchema = Type.Object({
  format: Type.Literal(MANIFEST_FORMAT),
  /** The canonical ModelConfig of the checkpoint. */
  config: Type.Record(Type.String({ maxLength: 64 }), Type.Union([Type.Number(), Type.Boolean()]), { maxProperties: 64 }),
  chunkBytes: Type.Integer({ minimum: 1, maximum: MAX_BLOB_CHUNK_BYTES }),
  tensors: Type.Array(ManifestTensorSchema, { maxItems: 1 << 20 }),
});
export type BaseManifest = Static<typeof BaseManifestSchema>;

const manifestChecker = TypeCompiler.Compile(BaseManifestSchema);

/** Checks an untrusted manifest: schema, then what a schema cannot say. Throws ProtocolError. */
export function checkManifest(value: unknown): BaseManifest {
  if (!manifestChecker.Check(value)) {
    const error = manifestChecker.Errors(value).First();
    throw new ProtocolError('schema', `manifest: ${error?.path || '/'}: ${error?.message ?? 'does not match the manifest schema'}`);
  }
  const names = new Set<string>();
  for (const tensor of value.tensors) {
    const where = `manifest: tensor "${tensor.name}"`;
    if (names.has(tensor.name)) throw new ProtocolError('schema', `${where} appears twice`);
    names.add(tensor.name);
    if (parseGroupId(tensor.group) === undefined) {
      throw new ProtocolError('schema', `${where}: group ${JSON.stringify(tensor.group)} is not a group id`);
    }
    const bytes = elementCount(tensor.shape) * DTYPE_BYTES[tensor.dtype];
    if (bytes !== tensor.bytes) {
      throw new ProtocolError('tensor', `${where}: ${tensor.dtype} [${tensor.shape.join(', ')}] is ${bytes} bytes, not ${tensor.bytes}`);
    }
    const chunks = Math.ceil(bytes / value.chunkBytes);
    if (tensor.chunks.length !== chunks) {
      throw new ProtocolError('schema', `${where}: ${bytes} bytes make ${chunks} chunks, ${tensor.chunks.length} listed`);
    }
  }
  return value;
}

/**
 * The canonical encoding: UTF-8 JSON without whitespace, object keys sorted, tensors in the
 * manifest's order. Its sha256 is the manifest id, whatever key order a decoder produced.
 */
export function manifestCanonicalBytes(manifest: BaseManifest): Uint8Array {
  return new TextEncoder().encode(canonicalJson(manifest));
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const keys = Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** What the coordinator signs for a base: its manifest id under a domain of its own (no plan signature can pass for it). */
export function manifestSigningBytes(manifestId: string): Uint8Array {
  return new TextEncoder().encode(`${SIGNING_DOMAIN}\n${manifestId}`);
}

/** Where chunk `index` of a blob of `bytes` lies, in chunks of `chunkBytes`. */
export function chunkRange(bytes: number, chunkBytes: number, index: number): { offset: number; length: number } {
  const offset = index * chunkBytes;
  return { offset, length: Math.min(chunkBytes, bytes - offset) };
}
