// The base manifest and the blob store without a network: hashes against node:crypto over the
// written parameters, the same id whatever the file layout, signatures, tampering, torn partials.
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestCanonicalBytes, type BaseManifest } from '../../proto/index.ts';
import { BlobStore, buildManifest, ChunkMismatchError, ManifestError, openManifest, signManifest, tensorsOfGroups } from '../../src/weights/index.ts';
import { f32Sha256, randomParams, TINY, writeCheckpoint, writeShardedCheckpoint } from './checkpoints.ts';

const CHUNK = 256;
const params = randomParams(TINY, 7);
let root: string;
let built: Awaited<ReturnType<typeof buildManifest>>;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'swarmtrain-manifest-'));
  await writeCheckpoint(join(root, 'classic'), params);
  built = await buildManifest(join(root, 'classic'), CHUNK);
});
afterAll(() => rm(root, { recursive: true, force: true }));

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('base manifest', () => {
  it('lists every parameter with its group, shape, bytes, sha256 and chunk sha256s of the written values', () => {
    const { manifest } = built;
    expect(manifest.tensors.map((t) => t.name)).toEqual([...params.keys()]);
    expect(manifest.config).toEqual(TINY);
    for (const t of manifest.tensors) {
      const { data, shape } = params.get(t.name)!;
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      expect(t.shape).toEqual(shape);
      expect(t.bytes).toBe(bytes.length);
      expect(t.sha256).toBe(f32Sha256(data));
      const chunks = [];
      for (let at = 0; at < bytes.length; at += CHUNK) chunks.push(sha(bytes.subarray(at, at + CHUNK)));
      expect(t.chunks).toEqual(chunks);
      const expert = /^layers\.(\d+)\.experts\.(\d+)\./.exec(t.name);
      expect(t.group).toBe(expert ? `expert.${expert[1]}.${expert[2]}` : 'trunk');
    }
    expect(built.id).toBe(sha(manifestCanonicalBytes(manifest)));
  });

  it('has the same id for the same weights stored packed or sharded', async () => {
    await writeCheckpoint(join(root, 'packed'), params, true);
    await writeShardedCheckpoint(join(root, 'sharded'), params);
    expect((await buildManifest(join(root, 'packed'), CHUNK)).id).toBe(built.id);
    expect((await buildManifest(join(root, 'sharded'), CHUNK)).id).toBe(built.id);
    expect((await buildManifest(join(root, 'classic'), 512)).id).not.toBe(built.id);
  });

  it('picks the tensors of groups and refuses a group it does not have', () => {
    const picked = tensorsOfGroups(built.manifest, ['expert.1.2']).map((t) => t.name);
    expect(picked).toEqual(['layers.1.experts.2.gate', 'layers.1.experts.2.up', 'layers.1.experts.2.down']);
    expect(() => tensorsOfGroups(built.manifest, ['trunk', 'expert.1.9'])).toThrow(/no tensors of group\(s\) expert\.1\.9/);
  });

  it('serves the checkpoint bytes of each blob, and refuses a range of an unknown blob', async () => {
    const t = built.manifest.tensors.find((x) => x.name === 'layers.0.experts.3.down')!;
    expect(await built.blobs.size(t.sha256)).toBe(t.bytes);
    const { data } = params.get(t.name)!;
    expect(await built.blobs.read(t.sha256, 100, 50)).toEqual(new Uint8Array(data.buffer).subarray(100, 150));
    expect(await built.blobs.size('0'.repeat(64))).toBeUndefined();
  });
});

describe('manifest signatures', () => {
  async function coordinator() {
    const key = await generateKeyPair('Ed25519');
    return { key, peer: peerIdFromPrivateKey(key).toString() };
  }
  const clone = (): BaseManifest => structuredClone(built.manifest);

  it('accepts the signed manifest, whatever key order it was decoded in, and checks the id asked for', async () => {
    const { key, peer } = await coordinator();
    const { id, signature } = signManifest(key, built.manifest);
    expect(id).toBe(built.id);
    const reordered = JSON.parse(JSON.stringify({ tensors: clone().tensors, chunkBytes: CHUNK, config: TINY, format: built.manifest.format }));
    expect(openManifest(reordered, signature, peer, id).id).toBe(id);
    expect(() => openManifest(clone(), signature, peer, '0'.repeat(64))).toThrow(/not the base 0{64}/);
  });

  it('refuses a tampered manifest, a forged signature and a malformed one', async () => {
    const { key, peer } = await coordinator();
    const other = await coordinator();
    const { signature } = signManifest(key, built.manifest);
    const swapped = clone();
    swapped.tensors[3].sha256 = swapped.tensors[4].sha256; // a bad peer swaps in other bytes
    expect(() => openManifest(swapped, signature, peer)).toThrow(ManifestError);
    expect(() => openManifest(swapped, signature, peer)).toThrow(/not signed by the coordinator/);
    const flipped = signature.slice();
    flipped[5] ^= 1;
    expect(() => openManifest(clone(), flipped, peer)).toThrow(/not signed/);
    expect(() => openManifest(clone(), signManifest(other.key, built.manifest).signature, peer)).toThrow(/not signed/);
    const wrongBytes = clone();
    wrongBytes.tensors[0].bytes += 4;
    expect(() => openManifest(wrongBytes, signature, peer)).toThrow(/is 4096 bytes, not 4100/);
    const fewerChunks = clone();
    fewerChunks.tensors[0].chunks.pop();
    expect(() => openManifest(fewerChunks, signature, peer)).toThrow(/make 16 chunks, 15 listed/);
    expect(() => openManifest({ ...clone(), chunkBytes: 'x' }, signature, peer)).toThrow(/manifest: \/chunkBytes/);
    const badGroup = clone();
    badGroup.tensors[0].group = 'expert.01.2';
    expect(() => openManifest(badGroup, signature, peer)).toThrow(/not a group id/);
  });
});

describe('blob store', () => {
  const embed = () => built.manifest.tensors[0];
  const bytesOf = (name: string) => {
    const { data } = params.get(name)!;
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  };

  it('keeps a blob under its sha256 only once every chunk and the whole check out', async () => {
    const store = new BlobStore(join(root, 'store-a'));
    const spec = embed();
    const bytes = bytesOf(spec.name);
    const writer = (await store.resume(spec, CHUNK))!;
    expect(writer.verifiedBytes).toBe(0);
    await expect(writer.append(bytes.subarray(0, CHUNK - 1))).rejects.toThrow(/got 255 bytes, expected 256/);
    const wrong = bytes.slice(0, CHUNK);
    wrong[0] ^= 1;
    await expect(writer.append(wrong)).rejects.toBeInstanceOf(ChunkMismatchError);
    for (let at = 0; at < bytes.length; at += CHUNK) {
      expect(await store.size(spec.sha256)).toBeUndefined(); // no half blob under its name
      await writer.append(bytes.subarray(at, at + CHUNK));
    }
    await writer.commit();
    expect(await readFile(store.path(spec.sha256))).toEqual(Buffer.from(bytes));
    expect(await store.resume(spec, CHUNK)).toBeUndefined();
  });

  it('resumes from the verified prefix of a partial file and drops a torn chunk', async () => {
    const dir = join(root, 'store-b');
    const store = new BlobStore(dir);
    const spec = embed();
    const bytes = bytesOf(spec.name);
    const first = (await store.resume(spec, CHUNK))!;
    await first.append(bytes.subarray(0, CHUNK));
    await first.append(bytes.subarray(CHUNK, 2 * CHUNK));
    await first.close();
    // A crash mid-write: half of chunk 2 and garbage after it.
    const partial = join(dir, 'blobs', 'partial', spec.sha256);
    await writeFile(partial, Buffer.concat([bytes.subarray(0, 2 * CHUNK + 100), Buffer.alloc(500, 7)]));
    const second = (await new BlobStore(dir).resume(spec, CHUNK))!;
    expect(second.nextChunk).toBe(2);
    expect(second.verifiedBytes).toBe(2 * CHUNK);
    expect((await stat(partial)).size).toBe(2 * CHUNK);
    for (let at = 2 * CHUNK; at < bytes.length; at += CHUNK) await second.append(bytes.subarray(at, at + CHUNK));
    await second.commit();
    expect(sha(await readFile(store.path(spec.sha256)))).toBe(spec.sha256);
  });

  it('refuses names that are not a sha256', () => {
    const store = new BlobStore(join(root, 'store-c'));
    expect(() => store.path('../../etc/passwd')).toThrow(/not a sha256/);
  });
});
