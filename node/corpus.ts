// A node's side of a job on the operator's own text: the corpus blob the job names, fetched into the
// node's blob store (chunks checked against the job's hashes) from peers or the coordinator, then decoded.
import { MAX_BLOB_CHUNK_BYTES, type JobSpec } from '../proto/index.ts';
import type { Rpc } from '../src/p2p/index.ts';
import type { JobText } from '../src/train/job.ts';
import { decodeCorpus } from '../src/train/text-corpus.ts';
import { BlobStore, serveBlobs, WeightFetcher, type WeightSource } from '../src/weights/index.ts';

export interface JobTextComponents {
  rpc: Pick<Rpc, 'request' | 'handle'>;
  /** The node's data directory: the blob lands in <dataDir>/blobs/ (see BlobStore), where a restart finds it. */
  dataDir: string;
  /** Whether a peer may fetch from this node's store. */
  admitted(peer: string): boolean;
  /** Serve the store to peers here: false when something else (the job's base) already does. */
  serve: boolean;
}

/** What the node's `corpus` event reports. */
export interface JobTextSummary {
  sha256: string;
  documents: number;
  fetchedBytes: number;
  cached: boolean;
  bytesBySource: Record<string, number>;
}

export async function fetchJobText(
  spec: JobSpec, sources: readonly WeightSource[], components: JobTextComponents,
): Promise<{ text: JobText; summary: JobTextSummary }> {
  const blob = spec.corpusBlob;
  if (blob === undefined) throw new Error(`job ${spec.jobId} has no corpus blob`);
  const chunks = Math.ceil(blob.bytes / MAX_BLOB_CHUNK_BYTES);
  if (blob.chunks.length !== chunks) {
    throw new Error(`job ${spec.jobId}: its corpus blob of ${blob.bytes} bytes lists ${blob.chunks.length} chunks, not ${chunks}`);
  }
  const store = new BlobStore(components.dataDir);
  if (components.serve) await serveBlobs({ rpc: components.rpc, source: store, admitted: components.admitted });
  const report = await new WeightFetcher({ rpc: components.rpc, store }).fetchBlobs([blob], MAX_BLOB_CHUNK_BYTES, sources);
  const documents = decodeCorpus(await store.read(blob.sha256, 0, blob.bytes));
  return {
    text: { sha256: blob.sha256, documents },
    summary: {
      sha256: blob.sha256, documents: documents.length, fetchedBytes: report.fetchedBytes, cached: report.cachedBlobs > 0,
      bytesBySource: Object.fromEntries(report.bytesBySource),
    },
  };
}
