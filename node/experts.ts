// Experts across the swarm: SwarmRemoteExperts, a node's transport to the experts other nodes hold
// (the model's RemoteExperts port), and serveExperts, which answers peers' calls for those held here.
import { f32Tensor, tensorF32, type ExpertCall, type JobSpec, type Tensor } from '../proto/index.ts';
import { decodeHalves, encodeHalves } from '../proto/half.ts';
import type { Kernels } from '../src/kernels/index.ts';
import type { HostedExperts, RemoteExperts } from '../src/model/hosted.ts';
import { GrowableBuffer } from '../src/model/linear.ts';
import { RefusedError, type DialTarget, type Rpc } from '../src/p2p/index.ts';

/** Who holds what, from the coordinator's current plan. */
export interface ExpertDirectory {
  /** Peer ids holding the expert (this node included when it does). */
  holders(layer: number, expert: number): readonly string[];
  /** How to dial a peer. */
  address(peerId: string): DialTarget | undefined;
  /** Whether a peer is admitted to the job (only they may call our experts). */
  admitted(peerId: string): boolean;
}

/** The transport's counters (the calls that ran locally are the model's: HostedExperts.localCalls). */
export interface ExpertStats {
  remoteCalls: number;
  /** Calls that went to another holder after one failed. */
  failovers: number;
  /** Calls that no holder answered. */
  unanswered: number;
  /** Calls from other nodes served here. */
  served: number;
  /** Milliseconds of this node's training with a remote expert call in flight. */
  remoteWaitMs: number;
}

export interface SwarmRemoteExpertsComponents {
  rpc: Pick<Rpc, 'request'>;
  directory: Pick<ExpertDirectory, 'holders' | 'address'>;
}

export interface SwarmRemoteExpertsOptions {
  jobId: string;
  self: string;
  hidden: number;
  timeoutMs: number;
  precision: ExpertPrecision;
  log?: (message: string) => void;
}

export type ExpertPrecision = NonNullable<JobSpec['expertPrecision']>;

/**
 * Largest magnitude accepted in a peer's rows. Finite but huge values (a faulty or hostile
 * peer) would overflow the holder's accumulated weight gradients to Infinity; no sane
 * activation or gradient comes near it.
 */
export const MAX_ROW_MAGNITUDE = 1e8;

/** Rows for the wire, copied out of the heap (its views sit on shared memory), as f32 or rounded to bf16. */
export function wireRows(rows: number, hidden: number, values: Float32Array, precision: ExpertPrecision): Tensor {
  const shape = [rows, hidden];
  const view = values.subarray(0, rows * hidden);
  return precision === 'bf16' ? { dtype: 'BF16', shape, data: encodeHalves(view, 'BF16') } : f32Tensor(shape, Float32Array.from(view));
}

/** The rows of a peer's F32 or BF16 tensor, as f32, or a reason to refuse it. */
export function rowsOf(tensor: Tensor, rows: number, hidden: number): Float32Array | string {
  if (tensor.dtype !== 'F32' && tensor.dtype !== 'BF16') return `expected F32 or BF16 rows, got ${tensor.dtype}`;
  if (tensor.shape.length !== 2 || tensor.shape[0] !== rows || tensor.shape[1] !== hidden) {
    return `expected shape [${rows}, ${hidden}], got [${tensor.shape.join(', ')}]`;
  }
  const values = tensor.dtype === 'BF16' ? decodeHalves(tensor.data, 'BF16') : tensorF32(tensor);
  for (let i = 0; i < values.length; i++) {
    if (!(Math.abs(values[i]) <= MAX_ROW_MAGNITUDE)) return `${Number.isFinite(values[i]) ? 'out-of-range' : 'non-finite'} value ${values[i]} at ${i}`;
  }
  return values;
}

/** A holder answers in the precision it was called with. */
const precisionOf = (tensor: Tensor): ExpertPrecision => (tensor.dtype === 'BF16' ? 'bf16' : 'f32');

/**
 * Calls an expert's holders over the expert protocols, failing over to the next holder when one
 * does not answer in time (or answers garbage); when none answers, the call resolves false and
 * the MoE layer drops that expert for those tokens.
 */
export class SwarmRemoteExperts implements RemoteExperts {
  readonly stats: ExpertStats = { remoteCalls: 0, failovers: 0, unanswered: 0, served: 0, remoteWaitMs: 0 };
  /** The step of the caller's training loop, carried in calls for the holder's logs. */
  step = 0;
  private calls = 0;
  private inFlight = 0;
  private waitStart = 0;

  private readonly rpc: SwarmRemoteExpertsComponents['rpc'];
  private readonly directory: SwarmRemoteExpertsComponents['directory'];

  constructor(components: SwarmRemoteExpertsComponents, private readonly options: SwarmRemoteExpertsOptions) {
    this.rpc = components.rpc;
    this.directory = components.directory;
  }

  async forward(layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean> {
    const { hidden, precision } = this.options;
    const reply = await this.remote('expertForward', layer, expert, rows, { tensor: wireRows(rows, hidden, x, precision) });
    if (reply) y.set(reply);
    return reply !== undefined;
  }

  async backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean> {
    const { hidden, precision } = this.options;
    const payload = { tensor: wireRows(rows, hidden, dy, precision), input: wireRows(rows, hidden, x, precision) };
    const reply = await this.remote('expertBackward', layer, expert, rows, payload);
    if (reply) dx.set(reply);
    return reply !== undefined;
  }

  /** Tries the expert's holders in turn (starting at a rotating one, to spread load). */
  private async remote(
    protocol: 'expertForward' | 'expertBackward', layer: number, expert: number, rows: number, payload: Pick<ExpertCall, 'tensor' | 'input'>,
  ): Promise<Float32Array | undefined> {
    const holders = this.directory.holders(layer, expert).filter((peer) => peer !== this.options.self);
    const call = ++this.calls;
    // Wall time with at least one remote call in flight (concurrent calls overlap).
    if (this.inFlight++ === 0) this.waitStart = performance.now();
    try {
      return await this.tryHolders(protocol, layer, expert, rows, payload, holders, call);
    } finally {
      if (--this.inFlight === 0) this.stats.remoteWaitMs += performance.now() - this.waitStart;
    }
  }

  private async tryHolders(
    protocol: 'expertForward' | 'expertBackward', layer: number, expert: number, rows: number, payload: Pick<ExpertCall, 'tensor' | 'input'>,
    holders: string[], call: number,
  ): Promise<Float32Array | undefined> {
    const { jobId, hidden, timeoutMs, log } = this.options;
    for (let attempt = 0; attempt < holders.length; attempt++) {
      const peer = holders[(call + attempt) % holders.length];
      const target = this.directory.address(peer);
      if (!target) continue;
      if (attempt > 0) this.stats.failovers++;
      try {
        this.stats.remoteCalls++;
        const reply = await this.rpc.request(target, protocol, { jobId, step: this.step, call, layer, expert, rows, ...payload }, { timeout: timeoutMs });
        const values = rowsOf(reply.tensor, rows, hidden);
        if (typeof values === 'string') throw new Error(`bad reply: ${values}`);
        return values;
      } catch (err) {
        log?.(`expert ${layer}.${expert} ${protocol} via ${peer} failed: ${(err as Error).message}`);
      }
    }
    this.stats.unanswered++;
    return undefined;
  }
}

export interface ExpertServerComponents {
  rpc: Rpc;
  kernels: Kernels;
  /** The experts hosted here (the model's), whose serving replicas answer the calls. */
  experts: Pick<HostedExperts, 'servingExpert'>;
  directory: ExpertDirectory;
  /** Counts the calls served (`served`). */
  stats: ExpertStats;
}

/**
 * Serves the expert protocols for the experts this node holds, to admitted peers only. A
 * backward recomputes the forward from the input it carries (holders keep no state between
 * calls) and adds the expert's weight gradients here.
 */
export async function serveExperts(
  components: ExpertServerComponents, { jobId, hidden }: { jobId: string; hidden: number },
): Promise<void> {
  const { rpc, kernels, experts, directory, stats } = components;
  const x = new GrowableBuffer(kernels, hidden);
  const dy = new GrowableBuffer(kernels, hidden);
  const out = new GrowableBuffer(kernels, hidden);
  const check = (call: ExpertCall, peer: string) => {
    if (!directory.admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (call.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${call.jobId}`);
    const expert = experts.servingExpert(call.layer, call.expert);
    if (!expert) throw new RefusedError(`expert ${call.layer}.${call.expert} is not held here`);
    const load = (buffer: GrowableBuffer, tensor: Tensor) => {
      const values = rowsOf(tensor, call.rows, hidden);
      if (typeof values === 'string') throw new RefusedError(values);
      const view = buffer.rows(call.rows);
      view.set(values);
      return view;
    };
    return { expert, load };
  };
  await rpc.handle('expertForward', (call, { peer }) => {
    const { expert, load } = check(call, peer.toString());
    const input = load(x, call.tensor);
    const y = out.rows(call.rows);
    expert.forward(input, y, call.rows);
    stats.served++;
    return { ...call, tensor: wireRows(call.rows, hidden, y, precisionOf(call.tensor)) };
  }, { maxConcurrent: 64 });
  await rpc.handle('expertBackward', (call, { peer }) => {
    const { expert, load } = check(call, peer.toString());
    if (!call.input) throw new RefusedError('a backward call carries the forward input');
    const input = load(x, call.input);
    const grad = load(dy, call.tensor);
    const dx = out.rows(call.rows);
    expert.forward(input, dx, call.rows); // refills the activations the backward reads
    expert.backward(input, grad, dx, call.rows);
    stats.served++;
    return { jobId: call.jobId, step: call.step, call: call.call, layer: call.layer, expert: call.expert, rows: call.rows, tensor: wireRows(call.rows, hidden, dx, precisionOf(call.tensor)) };
  }, { maxConcurrent: 64 });
}
