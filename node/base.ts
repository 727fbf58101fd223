// A node's side of a job's base checkpoint: the manifest from the join reply checked against the
// coordinator's peer id, the groups this node holds fetched into its blob store, the store served to peers.
import type { BaseManifest, JobBase } from '../proto/index.ts';
import type { F32Tensor, ModelConfig } from '../src/model/config.ts';
import type { Rpc } from '../src/p2p/index.ts';
import {
  BlobStore, openManifest, serveBlobs, tensorsOfGroups, WeightFetcher, type FetchReport, type WeightSource,
} from '../src/weights/index.ts';

export interface NodeBaseComponents {
  rpc: Pick<Rpc, 'request' | 'handle'>;
  /** The node's data directory: blobs live in <dataDir>/blobs/ (see BlobStore). */
  dataDir: string;
  /** Whether a peer may fetch blobs from this node (admitted to the swarm). */
  admitted(peer: string): boolean;
}

/** What one fetch did, as the node's `weights` event reports it. */
export interface WeightsSummary {
  base: string;
  groups: string[];
  fetchedBytes: number;
  /** Verified bytes by source peer id. */
  bytesBySource: Record<string, number>;
  cachedBlobs: number;
  resumedBytes: number;
  /** Chunks a source failed (refused, bad bytes, stalled), each followed by another source. */
  sourceFailures: number;
  seconds: number;
}

export class NodeBase {
  private constructor(
    readonly id: string,
    readonly manifest: BaseManifest,
    private readonly fetcher: WeightFetcher,
  ) {}

  /**
   * Checks the join reply's base (a ManifestError when it is malformed or `coordinator` did not sign it),
   * then serves this node's blob store to admitted peers: every blob verified here can help another node.
   */
  static async open(base: JobBase, coordinator: string, components: NodeBaseComponents): Promise<NodeBase> {
    const { manifest, id } = openManifest(base.manifest, base.signature, coordinator, base.id);
    const store = new BlobStore(components.dataDir);
    await serveBlobs({ rpc: components.rpc, source: store, admitted: components.admitted });
    return new NodeBase(id, manifest, new WeightFetcher({ rpc: components.rpc, store }));
  }

  /** The model config the base was built for (checked by jobConfig). */
  get config(): ModelConfig {
    return this.manifest.config as unknown as ModelConfig;
  }

  /**
   * The base tensors of `groups` ("trunk", "expert.L.E"), a group at a time, each asked of its own sources in
   * order (in one queue over all groups, nodes starting together ask each other for more blobs none has yet,
   * and fetched ~30% slower in bench/swarm-lora.ts). The tensors are read from the store and decoded to f32 one at a time as
   * the caller iterates, so the model quantizes a base that would not fit in memory as f32.
   */
  async fetch(
    groups: readonly string[], sourcesOf: (group: string) => WeightSource[],
  ): Promise<{ tensors: Iterable<[string, F32Tensor]>; summary: WeightsSummary }> {
    const t0 = performance.now();
    const wanted = tensorsOfGroups(this.manifest, groups);
    const report: FetchReport = { bytesBySource: new Map(), fetchedBytes: 0, cachedBlobs: 0, resumedBytes: 0, failures: [] };
    for (const group of groups) {
      const part = await this.fetcher.fetchBlobs(wanted.filter((t) => t.group === group), this.manifest.chunkBytes, sourcesOf(group));
      for (const [peer, bytes] of part.bytesBySource) report.bytesBySource.set(peer, (report.bytesBySource.get(peer) ?? 0) + bytes);
      report.fetchedBytes += part.fetchedBytes;
      report.cachedBlobs += part.cachedBlobs;
      report.resumedBytes += part.resumedBytes;
      report.failures.push(...part.failures);
    }
    const summary: WeightsSummary = {
      base: this.id, groups: [...groups], fetchedBytes: report.fetchedBytes, bytesBySource: Object.fromEntries(report.bytesBySource),
      cachedBlobs: report.cachedBlobs, resumedBytes: report.resumedBytes, sourceFailures: report.failures.length,
      seconds: (performance.now() - t0) / 1e3,
    };
    return { tensors: this.fetcher.decoded(wanted), summary };
  }
}
