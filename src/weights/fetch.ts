// The weight fetcher: brings the tensors of some groups of a base into the store, chunk by chunk
// from an ordered list of sources, checking every chunk against the manifest and failing over on any fault.
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { readFileSync } from 'node:fs';
import { chunkRange, type BaseManifest, type BlobChunk, type ManifestTensor } from '../../proto/index.ts';
import { decodeTensor } from '../io/safetensors.ts';
import type { F32Tensor } from '../model/config.ts';
import { RefusedError, RpcError, type DialTarget, type Rpc } from '../p2p/index.ts';
import { tensorsOfGroups } from './manifest.ts';
import { ChunkMismatchError, type BlobSpec, type BlobStore, type BlobWriter } from './store.ts';

/** A peer that may hold blobs: the coordinator, or a node that fetched them before. */
export interface WeightSource {
  peer: string;
  /** Multiaddrs to dial (ending in /p2p/<peer>); empty: the host's peer store must know the peer. */
  addrs: readonly string[];
}

/** A source that failed a chunk, and why: truncated, hash, echo, refused, busy, timeout, malformed, remote, ... */
export interface SourceFailure {
  peer: string;
  blob: string;
  offset: number;
  reason: string;
  message: string;
}

export interface FetchReport {
  /** Verified bytes taken from each source, by peer id. */
  bytesBySource: Map<string, number>;
  fetchedBytes: number;
  /** Blobs already complete in the store. */
  cachedBlobs: number;
  /** Bytes of partial downloads kept from an earlier attempt. */
  resumedBytes: number;
  failures: SourceFailure[];
}

/** Some blob could not be fetched from any source; what was verified stays in the store for the next attempt. */
export class FetchError extends Error {
  override name = 'FetchError';
  constructor(
    message: string,
    readonly report: FetchReport,
  ) {
    super(message);
  }
}

export interface WeightFetcherComponents {
  rpc: Pick<Rpc, 'request'>;
  store: BlobStore;
}

export interface WeightFetcherInit {
  /** Deadline of one chunk request: a source stalling longer is cut off and the next one asked. Default 30 s. */
  chunkTimeoutMs?: number;
  /** Blobs downloaded at once. Default 2 (with the pipeline, 8 requests in flight: a server serves 16 at once). */
  concurrency?: number;
  /** Chunk requests of one blob in flight to its source at once, so a round trip does not idle the link. Default 4. */
  pipeline?: number;
}

/** A busy source (at its limit of requests served at once) is asked again after this pause, up to this many times in a row. */
const BUSY_BACKOFF_MS = 100;
const BUSY_RETRIES = 50;

export interface FetchResult {
  /** The tensors asked for, by canonical name, as f32 (what the model's loader takes). */
  tensors: Map<string, F32Tensor>;
  report: FetchReport;
}

/** One fetch's view of its sources: those cut off for misbehaving, with the first reason. */
interface FetchState {
  sources: readonly WeightSource[];
  cutOff: Map<string, string>;
  report: FetchReport;
  signal?: AbortSignal;
}

export class WeightFetcher {
  private readonly rpc: Pick<Rpc, 'request'>;
  private readonly store: BlobStore;
  private readonly chunkTimeoutMs: number;
  private readonly concurrency: number;
  private readonly pipeline: number;
  /** Downloads under way, by blob: a second fetch of the same blob waits for the first instead of writing beside it. */
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(components: WeightFetcherComponents, init: WeightFetcherInit = {}) {
    this.rpc = components.rpc;
    this.store = components.store;
    this.chunkTimeoutMs = init.chunkTimeoutMs ?? 30_000;
    this.concurrency = init.concurrency ?? 2;
    this.pipeline = init.pipeline ?? 4;
  }

  /** Fetches the tensors of `groups` ("trunk", "expert.L.E") of a checked manifest (see openManifest). */
  fetchGroups(manifest: BaseManifest, groups: readonly string[], sources: readonly WeightSource[], signal?: AbortSignal): Promise<FetchResult> {
    return this.fetchTensors(manifest, tensorsOfGroups(manifest, groups), sources, signal);
  }

  async fetchTensors(
    manifest: BaseManifest, tensors: readonly ManifestTensor[], sources: readonly WeightSource[], signal?: AbortSignal,
  ): Promise<FetchResult> {
    const report = await this.fetchBlobs(tensors, manifest.chunkBytes, sources, signal);
    return { tensors: new Map(this.decoded(tensors)), report };
  }

  /**
   * The tensors (fetched into the store before) as f32, read and decoded one at a time as the caller
   * iterates: a base far larger than memory in f32 can be quantized tensor by tensor.
   */
  *decoded(tensors: readonly ManifestTensor[]): Generator<[string, F32Tensor]> {
    for (const t of tensors) {
      const bytes = readFileSync(this.store.path(t.sha256));
      if (bytes.byteLength !== t.bytes) {
        throw new RangeError(`blob ${t.sha256}: ${bytes.byteLength} bytes in the store, ${t.bytes} expected`);
      }
      const { data } = decodeTensor({ dtype: t.dtype, shape: t.shape, begin: 0, end: t.bytes }, bytes);
      yield [t.name, { shape: [...t.shape], data: data as Float32Array }]; // F32, F16 and BF16 decode to f32
    }
  }

  /**
   * Brings blobs (checked chunk by chunk against their specs) into the store from the first source that
   * serves each chunk; read them with the store after. Throws FetchError when every source fails one.
   */
  async fetchBlobs(
    specs: readonly BlobSpec[], chunkBytes: number, sources: readonly WeightSource[], signal?: AbortSignal,
  ): Promise<FetchReport> {
    const report: FetchReport = { bytesBySource: new Map(), fetchedBytes: 0, cachedBlobs: 0, resumedBytes: 0, failures: [] };
    const state: FetchState = { sources, cutOff: new Map(), report, signal };
    // Identical tensors (norms all ones, say) are one blob.
    const queue = [...new Map(specs.map((spec) => [spec.sha256, spec])).values()];
    const worker = async () => {
      for (let blob = queue.shift(); blob !== undefined; blob = queue.shift()) await this.downloadOnce(blob, chunkBytes, state);
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, queue.length) }, worker));
    return report;
  }

  private async downloadOnce(spec: BlobSpec, chunkBytes: number, state: FetchState): Promise<void> {
    const running = this.inFlight.get(spec.sha256);
    if (running) return running;
    const download = this.download(spec, chunkBytes, state).finally(() => this.inFlight.delete(spec.sha256));
    this.inFlight.set(spec.sha256, download);
    return download;
  }

  private async download(spec: BlobSpec, chunkBytes: number, state: FetchState): Promise<void> {
    const writer = await this.store.resume(spec, chunkBytes);
    if (writer === undefined) {
      state.report.cachedBlobs++;
      return;
    }
    state.report.resumedBytes += writer.verifiedBytes;
    const lacking = new Set<string>(); // sources that refused this blob (they may serve others)
    let busyReplies = 0; // in a row, without a chunk in between
    try {
      while (!writer.done) {
        const source = state.sources.find((s) => !state.cutOff.has(s.peer) && !lacking.has(s.peer));
        if (source === undefined) throw this.exhausted(spec, writer, state);
        const before = writer.nextChunk;
        const fault = await this.fetchRun(source, writer, state);
        if (fault === undefined) continue;
        if (writer.nextChunk > before) busyReplies = 0;
        state.report.failures.push(fault.failure);
        if (fault.failure.reason === 'busy' && ++busyReplies <= BUSY_RETRIES) {
          await sleep(BUSY_BACKOFF_MS, state.signal);
          continue;
        }
        // A refusal (not held, not admitted) concerns this blob; bad bytes, stalls and resets end the source's part in this fetch.
        if (fault.refused) lacking.add(source.peer);
        else if (!state.cutOff.has(source.peer)) state.cutOff.set(source.peer, fault.failure.reason);
      }
      await writer.commit();
    } finally {
      await writer.close();
    }
  }

  /**
   * Asks `source` for the writer's remaining chunks, up to `pipeline` requests in flight, and appends
   * them in order; stops at the first fault, which it returns (the requests still out are cancelled).
   */
  private async fetchRun(
    source: WeightSource, writer: BlobWriter, state: FetchState,
  ): Promise<{ failure: SourceFailure; refused: boolean } | undefined> {
    const { sha256: blob, bytes, chunks } = writer.spec;
    const chunkBytes = writer.chunkBytes;
    const cancel = new AbortController();
    const signal = state.signal ? AbortSignal.any([state.signal, cancel.signal]) : cancel.signal;
    const target = dialTarget(source);
    const inFlight: { offset: number; length: number; reply: Promise<BlobChunk> }[] = [];
    let asked = writer.nextChunk;
    try {
      while (!writer.done) {
        for (; inFlight.length < this.pipeline && asked < chunks.length; asked++) {
          const { offset, length } = chunkRange(bytes, chunkBytes, asked);
          const reply = this.rpc.request(target, 'blobChunk', { blob, offset, length }, { timeout: this.chunkTimeoutMs, signal });
          reply.catch(() => {}); // awaited in order below; one failing meanwhile is not unhandled
          inFlight.push({ offset, length, reply });
        }
        const { offset, length, reply } = inFlight.shift()!;
        const chunk = await reply;
        if (chunk.blob !== blob || chunk.offset !== offset) {
          throw new ChunkMismatchError('hash', `asked for blob ${blob} at ${offset}, got ${chunk.blob} at ${chunk.offset}`);
        }
        await writer.append(chunk.data);
        state.report.bytesBySource.set(source.peer, (state.report.bytesBySource.get(source.peer) ?? 0) + length);
        state.report.fetchedBytes += length;
      }
      return undefined;
    } catch (err) {
      if (state.signal?.aborted) throw err;
      if (!(err instanceof RpcError) && !(err instanceof ChunkMismatchError)) throw err; // our own fault (disk): not the source's
      const reason = err instanceof ChunkMismatchError ? (err.reason === 'length' ? 'truncated' : 'hash') : err.reason;
      const { offset } = writer.nextRange();
      return { failure: { peer: source.peer, blob, offset, reason, message: err.message }, refused: err instanceof RefusedError };
    } finally {
      cancel.abort();
      await Promise.allSettled(inFlight.map((r) => r.reply));
    }
  }

  private exhausted(spec: BlobSpec, writer: BlobWriter, state: FetchState): FetchError {
    const faults = state.sources.map((s) => `${s.peer}: ${state.cutOff.get(s.peer) ?? 'refused'}`);
    const why = state.sources.length === 0 ? 'no sources given' : `every source failed (${faults.join('; ')})`;
    return new FetchError(`blob ${spec.sha256}: ${writer.verifiedBytes} of ${spec.bytes} bytes verified; ${why}`, state.report);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
  });
}

function dialTarget(source: WeightSource): DialTarget {
  return source.addrs.length > 0 ? source.addrs.map((a) => multiaddr(a)) : peerIdFromString(source.peer);
}
