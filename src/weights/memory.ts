// Blobs held in memory (a job's corpus at the coordinator): their spec (sha256 and per-chunk sha256s,
// what a fetcher checks) and a BlobSource over them; and one source made of several (base and corpus).
import { chunkRange, MAX_BLOB_CHUNK_BYTES } from '../../proto/index.ts';
import { sha256Hex } from './manifest.ts';
import type { BlobSource, BlobSpec } from './store.ts';

/** The sha256 of `data` and of each of its `chunkBytes` slices. */
export function blobSpecOf(data: Uint8Array, chunkBytes = MAX_BLOB_CHUNK_BYTES): BlobSpec {
  const chunks: string[] = [];
  for (let index = 0; index * chunkBytes < data.byteLength; index++) {
    const { offset, length } = chunkRange(data.byteLength, chunkBytes, index);
    chunks.push(sha256Hex(data.subarray(offset, offset + length)));
  }
  return { sha256: sha256Hex(data), bytes: data.byteLength, chunks };
}

export class MemoryBlobs implements BlobSource {
  private readonly blobs = new Map<string, Uint8Array>();

  /** Keeps `data` under its sha256 and returns its spec. */
  add(data: Uint8Array): BlobSpec {
    const spec = blobSpecOf(data);
    this.blobs.set(spec.sha256, data);
    return spec;
  }

  async size(blob: string): Promise<number | undefined> {
    return this.blobs.get(blob)?.byteLength;
  }

  async read(blob: string, offset: number, length: number): Promise<Uint8Array> {
    const data = this.blobs.get(blob);
    if (data === undefined) throw new RangeError(`blob ${blob} is not held in memory`);
    return data.subarray(offset, offset + length);
  }
}

/** One source answering from the first of `sources` that holds a blob. */
export function joinBlobSources(sources: readonly BlobSource[]): BlobSource {
  const holder = async (blob: string) => {
    for (const source of sources) if ((await source.size(blob)) !== undefined) return source;
    return undefined;
  };
  return {
    size: async (blob) => (await holder(blob))?.size(blob),
    read: async (blob, offset, length) => {
      const source = await holder(blob);
      if (source === undefined) throw new RangeError(`blob ${blob} is not held here`);
      return source.read(blob, offset, length);
    },
  };
}
