// The content-addressed blob store under a node's data directory: <dataDir>/blobs/sha256/<hex>
// holds only verified blobs; <dataDir>/blobs/partial/<hex> the verified prefix of a download in progress.
import { createHash, type Hash } from 'node:crypto';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkRange } from '../../proto/index.ts';
import { sha256Hex } from './manifest.ts';

/** Where the blob server reads from: a node's store, or the coordinator's checkpoint folder. */
export interface BlobSource {
  /** The blob's byte length, or undefined when it is not held here. */
  size(blob: string): Promise<number | undefined>;
  read(blob: string, offset: number, length: number): Promise<Uint8Array>;
}

/** What the store needs to know of a blob to check it as it arrives (a manifest tensor has these). */
export interface BlobSpec {
  sha256: string;
  bytes: number;
  chunks: readonly string[];
}

/** A chunk that does not match the manifest: wrong length (truncated) or wrong sha256. */
export class ChunkMismatchError extends Error {
  override name = 'ChunkMismatchError';
  constructor(
    readonly reason: 'length' | 'hash',
    message: string,
  ) {
    super(message);
  }
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

type FileHandle = Awaited<ReturnType<typeof open>>;

export class BlobStore implements BlobSource {
  private readonly complete: string;
  private readonly partial: string;

  constructor(dataDir: string) {
    this.complete = join(dataDir, 'blobs', 'sha256');
    this.partial = join(dataDir, 'blobs', 'partial');
  }

  /** Path of the verified blob (which may not exist yet). */
  path(blob: string): string {
    if (!SHA256_HEX.test(blob)) throw new RangeError(`not a sha256 in lowercase hex: ${JSON.stringify(blob)}`);
    return join(this.complete, blob);
  }

  async size(blob: string): Promise<number | undefined> {
    if (!SHA256_HEX.test(blob)) return undefined;
    try {
      return (await stat(this.path(blob))).size;
    } catch {
      return undefined;
    }
  }

  async read(blob: string, offset: number, length: number): Promise<Uint8Array> {
    const file = await open(this.path(blob), 'r');
    try {
      return await readExactly(file, offset, length, this.path(blob));
    } finally {
      await file.close();
    }
  }

  /**
   * Starts the download of `spec` in `chunkBytes` chunks, or resumes it: the partial file's
   * chunks are checked again and kept up to the first that fails (a crash may have torn the last one).
   * Returns undefined when the blob is already complete here.
   */
  async resume(spec: BlobSpec, chunkBytes: number): Promise<BlobWriter | undefined> {
    if ((await this.size(spec.sha256)) === spec.bytes) return undefined;
    await mkdir(this.partial, { recursive: true });
    await mkdir(this.complete, { recursive: true });
    const partialPath = join(this.partial, spec.sha256);
    // Not append mode: Linux ignores positions there, and a torn chunk is overwritten in place.
    const file = await open(partialPath, 'r+').catch(() => open(partialPath, 'w+'));
    const whole = createHash('sha256');
    let chunk = 0;
    try {
      const { size } = await file.stat();
      for (; chunk < spec.chunks.length; chunk++) {
        const { offset, length } = chunkRange(spec.bytes, chunkBytes, chunk);
        if (offset + length > size) break;
        const data = await readExactly(file, offset, length, partialPath);
        if (sha256Hex(data) !== spec.chunks[chunk]) break;
        whole.update(data);
      }
      await file.truncate(chunk === spec.chunks.length ? spec.bytes : chunkRange(spec.bytes, chunkBytes, chunk).offset);
    } catch (err) {
      await file.close();
      throw err;
    }
    return new BlobWriter(spec, chunkBytes, file, partialPath, this.path(spec.sha256), whole, chunk);
  }
}

/** Appends verified chunks of one blob to its partial file, then moves it under its name. */
export class BlobWriter {
  constructor(
    readonly spec: BlobSpec,
    readonly chunkBytes: number,
    private readonly file: FileHandle,
    private readonly partialPath: string,
    private readonly finalPath: string,
    private readonly whole: Hash,
    /** The next chunk wanted: chunks before it are verified and on disk. */
    public nextChunk: number,
  ) {}

  /** Bytes kept from before this writer (or written by it so far). */
  get verifiedBytes(): number {
    return this.nextChunk === this.spec.chunks.length ? this.spec.bytes : chunkRange(this.spec.bytes, this.chunkBytes, this.nextChunk).offset;
  }

  get done(): boolean {
    return this.nextChunk === this.spec.chunks.length;
  }

  /** Where the next chunk lies in the blob. */
  nextRange(): { offset: number; length: number } {
    return chunkRange(this.spec.bytes, this.chunkBytes, this.nextChunk);
  }

  /** Checks `data` against the next chunk's length and sha256 (ChunkMismatchError) and appends it. */
  async append(data: Uint8Array): Promise<void> {
    const { offset, length } = this.nextRange();
    const where = `blob ${this.spec.sha256} chunk ${this.nextChunk} (bytes ${offset}..${offset + length})`;
    if (data.byteLength !== length) throw new ChunkMismatchError('length', `${where}: got ${data.byteLength} bytes, expected ${length}`);
    if (sha256Hex(data) !== this.spec.chunks[this.nextChunk]) throw new ChunkMismatchError('hash', `${where}: sha256 does not match the manifest`);
    for (let done = 0; done < length; ) done += (await this.file.write(data, done, length - done, offset + done)).bytesWritten;
    this.whole.update(data);
    this.nextChunk++;
  }

  /** Checks the whole blob's sha256, flushes it and gives it its name; the writer is closed after. */
  async commit(): Promise<void> {
    if (!this.done) throw new Error(`blob ${this.spec.sha256}: commit before the last chunk`);
    const digest = this.whole.digest('hex');
    if (digest !== this.spec.sha256) {
      // Every chunk matched yet the whole does not: the manifest contradicts itself. Start over next time.
      await this.file.close();
      await rm(this.partialPath, { force: true });
      throw new ChunkMismatchError('hash', `blob ${this.spec.sha256}: the chunks' bytes hash to ${digest} (inconsistent manifest)`);
    }
    await this.file.sync();
    await this.file.close();
    await rename(this.partialPath, this.finalPath);
  }

  /** Stops writing; the verified prefix stays for the next attempt. */
  async close(): Promise<void> {
    await this.file.close().catch(() => {});
  }
}

async function readExactly(file: FileHandle, position: number, length: number, path: string): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  for (let done = 0; done < length; ) {
    const { bytesRead } = await file.read(buf, done, length - done, position + done);
    if (bytesRead === 0) throw new RangeError(`${path}: ends before byte ${position + length}`);
    done += bytesRead;
  }
  return buf;
}
