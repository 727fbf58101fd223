// Simulated volunteers: real libp2p hosts speaking the real coordinator protocol (join, heartbeat,
// lease, lease report) with no model and no training: a leased batch is "trained" by waiting. Used by
// test/coordinator/sim.test.ts and bench/volunteers.ts to load one coordinator with hundreds of nodes.
// Lives beside local-swarm.ts because, like it, it drives a swarm from outside and needs only proto/ and src/p2p.
import '../p2p/polyfill.ts'; // before any libp2p import
import { tcp, type TCPSocketOptions } from '@libp2p/tcp';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { TcpSocketConnectOpts } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import {
  applyPlanDelta, JOIN_TIMEOUT_MS, msgpackCodec, planSigningBytes, PROTOCOL_VERSION,
  type JoinRequest, type Plan, type RequestOf, type ResponseOf,
} from '../../proto/index.ts';
import { backoffMs, createHost, RefusedError, Rpc, signedBy, type Host } from '../p2p/index.ts';

export interface SimOptions {
  /** The coordinator's multiaddr, ending in /p2p/<peerId> (its key signs the plans). */
  coordinator: string;
  token?: string;
  /** What each node offers the planner: enough for the trunk, or the coordinator refuses it. */
  memoryBytes: number;
  gemmGflops?: number;
  /** How long "training" one batch takes. */
  trainMs: number;
  /** Batches asked for per lease. Default 1. */
  maxBatches?: number;
  /** Wait before asking again when no batch was granted. Default 500. */
  idleMs?: number;
  /** Check every plan's signature, as a real node does. Default true. */
  verifyPlans?: boolean;
  /** Deadline of one request but a join (JOIN_TIMEOUT_MS, as a real node's). Default 10000. */
  timeoutMs?: number;
  /**
   * Dial from a loopback address of this node's own, 127.<sourceNet>.x.y (all of 127.0.0.0/8 is this machine), as
   * volunteers come from many addresses: the coordinator limits new connections per address (100 a second).
   * Default: dial from 127.0.0.1.
   */
  sourceNet?: number;
  /**
   * Joins in flight at once in this process; the others wait their turn before sending theirs. A process simulating
   * hundreds of volunteers shakes hands for all of them on one event loop: all at once, the handshakes outlast the join
   * timeout and are thrown away and started again. Default: no limit.
   */
  joinsAtOnce?: number;
}

/** What every simulated node of one process records: round trips in ms per request, and bytes of heartbeat replies. */
export class SimStats {
  readonly roundTrips: Record<Timed, number[]> = { join: [], heartbeat: [], lease: [], leaseReport: [] };
  heartbeatReplyBytes = 0;
  heartbeatRequestBytes = 0;
  plansReceived = 0;
  /** Of those, how many came as deltas. */
  planDeltas = 0;
  badPlans = 0;
  /** Requests that failed, by protocol and reason (busy, timeout, ...). */
  readonly failures: Record<string, number> = {};
  /** Batch ids each node reported as completed and the coordinator accepted. */
  readonly completed: number[] = [];
  /** Batch ids whose report got no answer (lost, or the node vanished meanwhile): the coordinator may have taken them. */
  readonly unacknowledged: number[] = [];
  reportsRefused = 0;
  /** The longest heartbeat period the coordinator told a node (it stretches it as the swarm grows). */
  longestHeartbeatMs = 0;
}

type Timed = 'join' | 'heartbeat' | 'lease' | 'leaseReport';

/** The longest pause between join attempts: a simulated crowd keeps asking within the bench's minute. */
const JOIN_BACKOFF_MAX_MS = 8000;

/** Joins of this process in flight, and those waiting for one of them to end (see SimOptions.joinsAtOnce). */
let joinsInFlight = 0;
const waitingToJoin: (() => void)[] = [];

/** Waits for a join's turn under `limit`; returns the function that ends the turn. */
async function joinTurn(limit: number | undefined): Promise<() => void> {
  if (limit === undefined) return () => {};
  if (joinsInFlight < limit) joinsInFlight++;
  else await new Promise<void>((resolve) => waitingToJoin.push(resolve)); // handed the turn of a join that ended
  return () => {
    const next = waitingToJoin.shift();
    if (next) next();
    else joinsInFlight--;
  };
}

/** Nodes started in this process: the n-th dials from the n-th address of its sourceNet. */
let nodesStarted = 0;

/** The n-th source address of `net` (250 per third byte, none ending in 0 or 255): 64,000 per net. */
function sourceAddress(net: number, n: number): string {
  if (!Number.isInteger(net) || net < 1 || net > 254) throw new RangeError(`sim: sourceNet must be an integer in [1, 254], got ${net}`);
  if (n >= 250 * 256) throw new RangeError(`sim: more than ${250 * 256} nodes from 127.${net}.0.0/16`);
  return `127.${net}.${Math.floor(n / 250)}.${1 + (n % 250)}`;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** One simulated volunteer: joins, heartbeats every heartbeatMs, leases, waits, reports; leaves on stop(). */
export class SimNode {
  readonly rpc: Rpc;
  private readonly target: Multiaddr;
  private readonly coordinatorId: string;
  private jobId?: string;
  private plan?: Plan;
  private heartbeatMs = 1000;
  private heartbeat?: NodeJS.Timeout;
  stopping = false;
  /** The job is over (or the swarm closed). */
  done = false;
  joinedAt?: number;
  /** A plan rebuilt from a delta did not check out: the next heartbeat asks for the whole plan, as a real node does. */
  private wantWholePlan = false;
  private loop?: Promise<void>;
  /** Ends the waits of a stopping node. */
  private readonly stopped = new AbortController();

  private constructor(readonly host: Host, private readonly options: SimOptions, private readonly stats: SimStats) {
    this.rpc = new Rpc({ transport: host, codec: msgpackCodec, onReject: () => {} });
    this.target = multiaddr(options.coordinator);
    this.coordinatorId = this.target.getComponents().at(-1)!.value!;
  }

  /** A node on its own host (dialing only: nobody calls a node that holds nothing); join and the loops start at once. */
  static async start(options: SimOptions, stats: SimStats): Promise<SimNode> {
    // @libp2p/tcp hands dialOpts to net.connect as they are, localAddress included (its type names only a few).
    const dialOpts: TCPSocketOptions & Pick<TcpSocketConnectOpts, 'localAddress'> = {};
    if (options.sourceNet !== undefined) dialOpts.localAddress = sourceAddress(options.sourceNet, nodesStarted++);
    const host = await createHost({ listen: [], transports: [tcp({ dialOpts })] });
    const node = new SimNode(host, options, stats);
    node.loop = node.run().catch((err) => {
      node.stats.failures.run = (node.stats.failures.run ?? 0) + 1;
      if (!node.stopping) console.error(`[sim ${node.id.slice(-6)}] ${(err as Error).message}`);
    });
    return node;
  }

  get id(): string {
    return this.host.peerId.toString();
  }

  get planVersion(): number {
    return this.plan?.version ?? 0;
  }

  /** An address of this node's (it listens nowhere: the port says so), as the coordinator requires: ending in /p2p/<id>. */
  private get addrs(): string[] {
    return [`/ip4/127.0.0.1/tcp/1/p2p/${this.id}`];
  }

  private joinRequest(): JoinRequest {
    return {
      version: PROTOCOL_VERSION, nodeId: this.id, token: this.options.token ?? '', cores: 1, gemmGflops: this.options.gemmGflops ?? 10,
      memoryBytes: this.options.memoryBytes, addrs: this.addrs,
    };
  }

  private sleep(ms: number): Promise<void> {
    return delay(ms, undefined, { signal: this.stopped.signal }).catch(() => {});
  }

  private async timed<P extends Timed>(protocol: P, message: RequestOf<P>): Promise<ResponseOf<P>> {
    const t0 = performance.now();
    try {
      const timeout = protocol === 'join' ? JOIN_TIMEOUT_MS : this.options.timeoutMs ?? 10_000;
      const reply = await this.rpc.request(this.target, protocol, message, { timeout });
      this.stats.roundTrips[protocol].push(performance.now() - t0);
      return reply;
    } catch (err) {
      // A stopping node's requests fail as its own host closes under them: not the coordinator's failures.
      if (!this.stopping) {
        const why = `${protocol}: ${err instanceof RefusedError ? err.reason : (err as Error).name}`;
        this.stats.failures[why] = (this.stats.failures[why] ?? 0) + 1;
      }
      throw err;
    }
  }

  /** Takes a plan whose signature checks out; false (counted) when it does not. */
  private accept(plan: Plan, signature: Uint8Array | undefined): boolean {
    this.stats.plansReceived++;
    const unsigned = () => !(signature && signedBy(this.coordinatorId, planSigningBytes(this.jobId!, plan), signature));
    if (this.options.verifyPlans !== false && unsigned()) {
      this.stats.badPlans++;
      return false;
    }
    this.plan = plan;
    return true;
  }

  /** Joins until admitted (or the swarm is closed); false when there is nothing to join. */
  private async join(): Promise<boolean> {
    for (let attempt = 0; !this.stopping; attempt++) {
      const endTurn = await joinTurn(this.options.joinsAtOnce);
      let reply;
      try {
        if (this.stopping) break;
        reply = await this.timed('join', this.joinRequest());
      } catch {
        // Busy (a crowd joining at once) or unreachable: asked again below after a jittered, growing pause, as a crowd must.
      } finally {
        endTurn();
      }
      if (!reply) {
        await this.sleep(backoffMs(attempt, 1000, JOIN_BACKOFF_MAX_MS));
        continue;
      }
      if (reply.admitted) {
        this.jobId = reply.job.jobId;
        this.setHeartbeatMs(reply.heartbeatMs);
        this.accept(reply.plan, reply.planSignature);
        this.joinedAt ??= Date.now();
        return true;
      }
      if (reply.closed || !reply.retryMs) return false;
      await this.sleep(reply.retryMs);
    }
    return false;
  }

  private async beat(): Promise<void> {
    const message = {
      jobId: this.jobId!, step: 0, tokensPerSecond: 0, bytesSent: 0, bytesReceived: 0, staleness: 0, droppedExpertCalls: 0,
      planVersion: this.wantWholePlan ? 0 : this.planVersion, addrs: this.addrs, // every heartbeat, as a real node's
    };
    try {
      const reply = await this.timed('heartbeat', message);
      this.stats.heartbeatRequestBytes += msgpackCodec.encodeRequest('heartbeat', message).byteLength;
      this.stats.heartbeatReplyBytes += msgpackCodec.encodeReply('heartbeat', { ok: reply }).byteLength;
      if (reply.heartbeatMs !== undefined) this.setHeartbeatMs(reply.heartbeatMs);
      let plan = reply.plan;
      if (reply.planDelta) {
        this.stats.planDeltas++;
        try {
          plan = applyPlanDelta(this.plan!, reply.planDelta);
        } catch {
          this.wantWholePlan = true;
        }
      }
      if (plan && plan.version > this.planVersion) this.wantWholePlan = !this.accept(plan, reply.planSignature);
      if (reply.stop) this.done = true;
      else if (!reply.accepted && reply.reason === 'rejoin') await this.join();
    } catch {
      // counted in stats.failures; the next beat tries again
    }
  }

  private setHeartbeatMs(ms: number): void {
    this.heartbeatMs = ms;
    this.stats.longestHeartbeatMs = Math.max(this.stats.longestHeartbeatMs, ms);
  }

  private startHeartbeat(): void {
    const loop = async () => {
      await this.beat();
      if (!this.stopping && !this.done) this.heartbeat = setTimeout(loop, this.heartbeatMs);
    };
    // Spread over one period, so nodes that joined together do not beat together.
    this.heartbeat = setTimeout(loop, Math.random() * this.heartbeatMs);
  }

  private async run(): Promise<void> {
    if (!(await this.join())) {
      this.done = true;
      return;
    }
    this.startHeartbeat();
    const { trainMs, maxBatches = 1, idleMs = 500 } = this.options;
    while (!this.stopping && !this.done) {
      let grant;
      try {
        grant = await this.timed('lease', { jobId: this.jobId!, maxBatches });
      } catch {
        await this.sleep(idleMs);
        continue;
      }
      if (grant.done) break;
      if (grant.batchIds.length === 0) {
        await this.sleep(idleMs);
        continue;
      }
      await this.sleep(trainMs * grant.batchIds.length);
      if (this.stopping) break; // left mid-batch: the batch is not done
      await this.report(grant.leaseId, grant.batchIds, false);
    }
    this.done = true;
  }

  private async report(leaseId: number, completedBatchIds: number[], leaving: boolean): Promise<void> {
    try {
      const ack = await this.timed('leaseReport', { jobId: this.jobId!, leaseId, completedBatchIds, leaving });
      if (ack.accepted) this.stats.completed.push(...completedBatchIds);
      else this.stats.reportsRefused++;
    } catch {
      // a lost report: the lease expires and its batches are handed out again, unless the report itself got through
      this.stats.unacknowledged.push(...completedBatchIds);
    }
  }

  /**
   * Leaves: with `gracefully`, tells the coordinator (its leases go back to the pool at once, the batch
   * under way is not reported), else just vanishes (the coordinator declares it dead a timeout later).
   */
  async stop(gracefully = true): Promise<void> {
    this.stopping = true;
    this.stopped.abort();
    clearTimeout(this.heartbeat);
    if (gracefully && this.jobId && !this.done) await this.report(0, [], true);
    await this.host.stop();
    await this.loop;
  }
}
