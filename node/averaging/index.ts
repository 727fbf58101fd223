// Averaging between the holders of each parameter group ("trunk": every node; "expert.L.E": that
// expert's replicas): the interface the daemon's training hooks call, and the strategy a job picks.
//   sync      every step, before the optimizer: gradients are averaged in f32, so holders that
//             start equal stay equal (a data-parallel step; used to check the swarm against one
//             process). See sync.ts.
//   periodic  every `every` local steps (DiLoCo-style): compressed parameter deltas, averaged and
//             applied through an outer step; nobody waits for a slow holder. With `overlap`, a
//             round travels while the next steps train and lands on top of them. See periodic.ts.
// The arithmetic lives in src/averaging; exchange.ts moves the bytes and checks what arrives.
import type { Averaging } from '../../proto/index.ts';
import type { RoundPasses } from '../../src/averaging/index.ts';
import type { F32Tensor } from '../../src/model/config.ts';
import type { Param } from '../../src/model/params.ts';
import type { DialTarget, Rpc } from '../../src/p2p/index.ts';
import { PeriodicAveraging } from './periodic.ts';
import { SyncAveraging } from './sync.ts';

export interface GroupDirectory {
  /** Peer ids holding the group (this node included when it does). */
  members(group: string): readonly string[];
  address(peerId: string): DialTarget | undefined;
  admitted(peerId: string): boolean;
}

/** What an averager works with, passed in (js-libp2p "components" style). */
export interface AveragingComponents {
  rpc: Rpc;
  directory: GroupDirectory;
  /** The trainable parameters of each group held here, in a fixed order. */
  groups: () => Map<string, Param[]>;
  /** Who runs a round's per-value passes: a node's kernels.deltas (default jsPasses, as in tests). */
  passes?: RoundPasses;
}

/** Test hooks that make this node a bad peer. */
export type AveragingFault = 'nan' | 'scale1000';

export interface AveragingOptions extends Averaging {
  jobId: string;
  self: string;
  /** Fetches a group's current state from a peer (for a holder that fell behind). */
  fetchState?: (group: string, peer: string) => Promise<Map<string, F32Tensor> | undefined>;
  fault?: AveragingFault;
  /** Largest message a part of a delta may take (default TENSOR_MESSAGE_CAP; tests lower it). */
  messageCap?: number;
  log?: (message: string) => void;
}

export interface AveragingStats {
  rounds: number;
  /** Contributions from other holders used in rounds (late ones included). */
  received: number;
  /** Of those, contributions from an earlier round (weighted down by staleness). */
  late: number;
  /** Awaited holders (in step and keeping pace) whose contribution was not there by the deadline. */
  missing: number;
  /** Contributions refused (see exchange.ts and src/averaging/screen.ts); their senders are flagged. */
  refused: number;
  flagged: Set<string>;
  /** Groups reloaded from a peer after falling behind. */
  resyncs: number;
  /** reduce-scatter: parts whose owner's result did not come, aggregated by the fallback owner instead. */
  fallbacks: number;
  /** Bytes of the updates this node encoded for the wire, and what they would be as plain f32: the codec's compression. */
  encodedBytes: number;
  rawBytes: number;
  /** reduce-scatter: parts no result came for: this node kept its own delta there for the round. */
  unaveraged: number;
}

/** What the daemon calls; sync and periodic averaging are its two strategies. */
export interface Averager {
  readonly stats: AveragingStats;
  /** Starts answering peers' contributions. */
  serve(): Promise<void>;
  /** After the local backward of step `step` (0-based), before the optimizer. */
  afterBackward(step: number): Promise<void>;
  /** After the optimizer update that ends local step `step` (0-based). */
  afterUpdate(step: number): Promise<void>;
  /** Applies the rounds still under way (overlap), waiting for them within their deadline: before the job's last evaluation. */
  settle(): Promise<void>;
  /** Local steps taken since this node's last round, after `steps` steps (reported in heartbeats). */
  staleness(steps: number): number;
  /** Starts a group's rounds from its current parameters (at the start of training, and when the node takes it on). */
  track(group: string, params: Param[]): void;
  /** Forgets a group's round state (the node gave it up, or took it on with fresh state). */
  resetGroup(group: string): void;
}

export function createAverager(components: AveragingComponents, options: AveragingOptions): Averager {
  return options.mode === 'sync' ? new SyncAveraging(components, options) : new PeriodicAveraging(components, options);
}
