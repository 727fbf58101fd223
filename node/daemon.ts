// The volunteer daemon: one libp2p host and identity for the node's whole life, in a swarm across
// jobs. It asks the coordinator to join; admitted to a job, it runs that job's session (session.ts)
// to its end and asks again; with no job running it waits, as long as the coordinator says, and asks
// again. A coordinator that cannot be reached (restarting, or the network) is asked again with
// backoff, each failure reported, until `giveUpAfterMs` without an answer. Everything that happens is
// reported through onEvent.
import { multiaddr } from '@multiformats/multiaddr';
import {
  JOIN_TIMEOUT_MS, msgpackCodec, PROTOCOL_VERSION, type JoinRequest, type JoinResponse, type ProtocolName, type RequestOf, type ResponseOf,
} from '../proto/index.ts';
import { createKernels, type Kernels } from '../src/kernels/index.ts';
import { backoffMs, createHost, Rpc, type DialTarget, type Host, type Rejection, type RequestOptions } from '../src/p2p/index.ts';
import type { AveragingFault } from './averaging/index.ts';
import { CoordinatorUnreachableError, JobSession, JoinRefusedError, unanswered, type Volunteer } from './session.ts';
import { advertisedAddrs, nodeHostOptions, reportLinks, type NodeNetworkOptions } from './links.ts';
import { countingCodec, type Traffic } from './traffic.ts';

export { CoordinatorUnreachableError, HELD_OUT_BATCHES, JoinRefusedError } from './session.ts';

/** This machine's matmul speed, measured with the node's kernel threads. */
async function measuredGemmGflops(threads: number): Promise<number> {
  const kernels = await createKernels({ threads });
  try {
    return measureGemm(kernels);
  } finally {
    await kernels.close();
  }
}

export interface NodeOptions extends NodeNetworkOptions {
  /** The coordinator's multiaddr, ending in /p2p/<peerId>. */
  join: string;
  token?: string;
  /** Memory this node gives the job, in bytes. */
  memoryBytes: number;
  threads?: number;
  /** The matmul speed (GFLOP/s) the planner shares experts by; measured at start when absent. */
  gemmGflops?: number;
  /** Keeps the node's identity across restarts. */
  keyFile?: string;
  /** Where base checkpoints' blobs are kept (default: swarmtrain-data beside the key file, else in the working directory). */
  dataDir?: string;
  /** Give up (CoordinatorUnreachableError) after this long without an answer from the coordinator. Default 600000. */
  giveUpAfterMs?: number;
  onEvent?: (event: NodeEvent) => void;
  /** Called after each heartbeat the coordinator answered (a sign of life too frequent for onEvent). */
  onHeartbeat?: () => void;
  /** Test hooks: sleep this long after every step (a slow node), or send corrupted updates (a bad node). */
  stepDelayMs?: number;
  fault?: AveragingFault;
}

export type NodeEvent = { event: string } & Record<string, unknown>;

const MAX_BACKOFF_MS = 30_000;

/** GEMM speed of this node (all its threads), for the shard planner's weighting. */
function measureGemm(kernels: Kernels): number {
  const n = 256;
  const a = kernels.heap.f32(n * n);
  const c = kernels.heap.f32(n * n);
  a.fill(0.5);
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    kernels.gemm.gemm({ a, b: a, c, m: n, n, k: n });
    best = Math.min(best, performance.now() - t0);
  }
  kernels.heap.release(a);
  kernels.heap.release(c);
  return (2 * n ** 3) / (best / 1e3) / 1e9;
}

export class NodeDaemon implements Volunteer {
  readonly self: string;
  private session?: JobSession;
  private stopping = false;
  /** Wakes a wait between joins when the node is stopped. */
  private wake?: () => void;
  /** When the coordinator last answered, and whether the node said it could not reach it. */
  private lastAnswer = Date.now();
  private unreachable = false;
  /** The first join's reply when it said to wait (start() turns other refusals into errors). */
  private pending?: JoinResponse;

  private constructor(
    readonly options: NodeOptions,
    readonly host: Host,
    readonly rpc: Rpc,
    readonly coordinator: DialTarget,
    readonly coordinatorId: string,
    readonly gemmGflops: number,
    readonly traffic: Traffic,
  ) {
    this.self = host.peerId.toString();
  }

  /**
   * Starts the host and asks to join: a refusal (other than "wait") is a JoinRefusedError, a coordinator
   * never reached a CoordinatorUnreachableError.
   */
  static async start(options: NodeOptions): Promise<NodeDaemon> {
    const coordinator = multiaddr(options.join);
    const coordinatorId = coordinator.getComponents().findLast((c) => c.name === 'p2p')?.value;
    if (coordinatorId === undefined) {
      throw new Error(`${options.join} does not end in /p2p/<the coordinator's peer id>, which checks the plans it signs`);
    }
    const gemmGflops = options.gemmGflops ?? await measuredGemmGflops(options.threads ?? 1);
    const emit = options.onEvent ?? (() => {});
    // Relaying for others (node/links.ts) admits the peers of the running job's newest plan, known once the daemon exists.
    let daemon: NodeDaemon | undefined;
    const host = await createHost(nodeHostOptions(options, (peer) => daemon?.admits(peer) === true, emit));
    reportLinks(host, emit);
    const traffic: Traffic = { sent: 0, received: 0 };
    const rpc = new Rpc({
      transport: host,
      codec: countingCodec(msgpackCodec, traffic),
      onReject: (rejection: Rejection) => emit({ event: 'rejected', ...rejection }),
      onTransfer: (transfer) => emit({ event: 'transfer', ...transfer }),
    });
    // Peers' expert calls on one stream per peer (CHANNEL), as this node's own requests to them and to its coordinator.
    await rpc.handleChannel(['expertCalls']);
    daemon = new NodeDaemon(options, host, rpc, coordinator, coordinatorId, gemmGflops, traffic);
    try {
      // The first job's set-up counts as starting: a plan its coordinator did not sign, a bad base, are refusals.
      const reply = await daemon.join();
      if (reply.admitted) daemon.session = await JobSession.open(daemon, reply);
      else daemon.pending = reply;
    } catch (err) {
      await daemon.close();
      throw err;
    }
    return daemon;
  }

  joinRequest(): JoinRequest {
    return {
      version: PROTOCOL_VERSION, nodeId: this.self, token: this.options.token ?? '', cores: this.options.threads ?? 1,
      gemmGflops: this.gemmGflops, memoryBytes: this.options.memoryBytes, addrs: advertisedAddrs(this.host),
    };
  }

  /** Whether `peer` is in the running job's newest plan (a node that relays admits only those). */
  admits(peer: string): boolean {
    return this.session?.admits(peer) === true;
  }

  /**
   * A request to the coordinator. A failure to reach it is reported once (then its return), and past
   * `giveUpAfterMs` without any answer it becomes a CoordinatorUnreachableError, which ends the node.
   */
  async ask<P extends ProtocolName>(target: DialTarget, protocol: P, message: RequestOf<P>, options?: RequestOptions): Promise<ResponseOf<P>> {
    try {
      const reply = await this.rpc.request(target, protocol, message, options);
      this.lastAnswer = Date.now();
      if (this.unreachable) this.emit({ event: 'coordinator-back' });
      this.unreachable = false;
      return reply;
    } catch (err) {
      if (!unanswered(err)) throw err;
      const silentMs = Date.now() - this.lastAnswer;
      const giveUpAfterMs = this.options.giveUpAfterMs ?? 600_000;
      if (silentMs > giveUpAfterMs) {
        const seconds = Math.round(silentMs / 1000);
        throw new CoordinatorUnreachableError('timeout', `the coordinator did not answer for ${seconds} s (${err.message}); giving up`);
      }
      if (!this.unreachable) this.emit({ event: 'coordinator-unreachable', reason: err.message, giveUpInMs: giveUpAfterMs - silentMs });
      this.unreachable = true;
      throw err;
    }
  }

  /** Runs job after job until stop(), a closed swarm, or a coordinator gone for good. */
  async run(): Promise<void> {
    let idle = false;
    while (!this.stopping) {
      if (!this.session) {
        const reply = this.pending ?? await this.join();
        this.pending = undefined;
        if (this.stopping) break;
        if (!reply.admitted) {
          if (reply.closed) break;
          if (!idle) this.emit({ event: 'idle', reason: reply.reason });
          idle = true;
          await this.pause(reply.retryMs ?? 1000);
          continue;
        }
        idle = false;
        this.session = await JobSession.open(this, reply);
      }
      try {
        await this.session.run();
      } finally {
        await this.session.close();
        this.session = undefined;
      }
    }
  }

  /** Asks to join until the coordinator answers: admitted, told to wait, or refused (a JoinRefusedError). */
  private async join(): Promise<JoinResponse> {
    for (let attempt = 0; ; attempt++) {
      try {
        const reply = await this.ask(this.coordinator, 'join', this.joinRequest(), { timeout: JOIN_TIMEOUT_MS });
        if (!reply.admitted && reply.retryMs === undefined && !reply.closed) {
          throw new JoinRefusedError(`the coordinator refused this node: ${reply.reason}`);
        }
        return reply;
      } catch (err) {
        if (!unanswered(err)) throw err;
        await this.pause(backoffMs(attempt, 1000, MAX_BACKOFF_MS));
      }
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private emit(event: NodeEvent): void {
    this.options.onEvent?.(event);
  }

  /** Asks the current session to stop after its batch (it hands its leases back), and the node to leave. */
  stop(): void {
    this.stopping = true;
    this.session?.stop();
    this.wake?.();
  }

  async close(): Promise<void> {
    this.stop();
    await this.session?.close();
    await this.host.stop();
  }
}
