// The blob server: answers blob-chunk requests of admitted peers from a BlobSource (a node's
// store, or the coordinator's checkpoint folder). Anything else is refused with a reason.
import type { BlobChunk, BlobChunkRequest } from '../../proto/index.ts';
import { RefusedError, type Rpc } from '../p2p/index.ts';
import type { BlobSource } from './store.ts';

export interface BlobServerComponents {
  rpc: Pick<Rpc, 'handle'>;
  source: BlobSource;
  /** Whether a peer (its id) may fetch: only peers admitted to the swarm. */
  admitted(peer: string): boolean;
}

/** Chunk requests served at once, from all peers together: each holds up to 4 MiB in memory; more get a busy reply. */
const DEFAULT_MAX_CONCURRENT = 16;

export async function serveBlobs(components: BlobServerComponents, options: { maxConcurrent?: number } = {}): Promise<void> {
  const { rpc, source, admitted } = components;
  await rpc.handle('blobChunk', (request, { peer }) => readChunk(source, admitted, peer.toString(), request), {
    maxConcurrent: options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT,
  });
}

async function readChunk(source: BlobSource, admitted: (peer: string) => boolean, peer: string, request: BlobChunkRequest): Promise<BlobChunk> {
  const { blob, offset, length } = request;
  if (!admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to this swarm`);
  const size = await source.size(blob);
  if (size === undefined) throw new RefusedError(`blob ${blob} is not held here`);
  if (offset + length > size) throw new RefusedError(`blob ${blob}: bytes ${offset}..${offset + length} run past its ${size} bytes`);
  return { blob, offset, data: await source.read(blob, offset, length) };
}
