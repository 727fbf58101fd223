// Experts across the swarm: SwarmRemoteExperts, a node's transport to the experts other nodes hold
// (the model's RemoteExperts port), and serveExperts, which answers peers' calls for those held here.
import { f32Tensor, tensorF32, tensorMismatch, type ExpertCall, type ExpertPrecision, type JobSpec, type Tensor } from '../proto/index.ts';
import { decodeHalves, encodeHalves } from '../proto/half.ts';
import { CodecError } from '../src/compress/codec.ts';
import { dequantizeBlocks, quantizeBlocks } from '../src/compress/int8-block.ts';
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
  /** Milliseconds spent answering peers' calls (decoding, computing, encoding). */
  servingMs: number;
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
  /** Forward rows (and the input a backward carries again). */
  precision: ExpertPrecision;
  /** A backward's output gradient and its reply. */
  gradientPrecision: ExpertPrecision;
  log?: (message: string) => void;
}

export type { ExpertPrecision };

/**
 * Rows travel in this precision when a job names none: int8 rows are 0.52× bf16's bytes (0.53× of a node's traffic), and
 * bench/bytes.ts saw no held-out loss difference beyond the runs' noise (within 0.3% of bf16's).
 */
const DEFAULT_EXPERT_PRECISION: ExpertPrecision = 'int8';

/** A job's precisions of expert calls: forward rows, and gradients (those of the forward unless named). */
export function expertPrecisions(
  job: Pick<JobSpec, 'expertPrecision' | 'expertGradientPrecision'>,
): Pick<SwarmRemoteExpertsOptions, 'precision' | 'gradientPrecision'> {
  const precision = job.expertPrecision ?? DEFAULT_EXPERT_PRECISION;
  return { precision, gradientPrecision: job.expertGradientPrecision ?? precision };
}

/**
 * Largest magnitude accepted in a peer's rows. Finite but huge values (a faulty or hostile
 * peer) would overflow the holder's accumulated weight gradients to Infinity; no sane
 * activation or gradient comes near it.
 */
export const MAX_ROW_MAGNITUDE = 1e8;

/** The rows an expert call carries (its `tensor` and `scales`). */
type ExpertPayload = WireRows & Pick<ExpertCall, 'input' | 'inputScales'>;

/** Rows as they travel: the tensor and, for I8 codes, their F32 scales [rows, blocks per row]. */
export interface WireRows {
  tensor: Tensor;
  scales?: Tensor;
}

/**
 * Rows for the wire, copied out of the heap (its views sit on shared memory), as f32, bf16 or int8
 * codes with one scale per row: bench/bytes.ts measured a scale per 32 values at 0.85-0.87× the
 * error of one per row (0.48% against 0.55% of the rows' norm) for 1.09× the bytes at hidden 128.
 */
export function wireRows(rows: number, hidden: number, values: Float32Array, precision: ExpertPrecision): WireRows {
  const shape = [rows, hidden];
  const view = values.subarray(0, rows * hidden);
  if (precision === 'bf16') return { tensor: { dtype: 'BF16', shape, data: encodeHalves(view, 'BF16') } };
  if (precision === 'f32') return { tensor: f32Tensor(shape, Float32Array.from(view)) };
  const codes = new Int8Array(view.length);
  const scales = new Float32Array(rows);
  quantizeBlocks(view, hidden, codes, scales);
  return { tensor: { dtype: 'I8', shape, data: bytesOf(codes) }, scales: f32Tensor([rows, 1], scales) };
}

const bytesOf = (view: ArrayBufferView) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);

/** The rows of a peer's F32, BF16 or I8 (with `scales`) tensor, as f32, or a reason to refuse it. */
export function rowsOf({ tensor, scales }: WireRows, rows: number, hidden: number): Float32Array | string {
  if (tensor.dtype !== 'F32' && tensor.dtype !== 'BF16' && tensor.dtype !== 'I8') return `expected F32, BF16 or I8 rows, got ${tensor.dtype}`;
  if (tensor.shape.length !== 2 || tensor.shape[0] !== rows || tensor.shape[1] !== hidden) {
    return `expected shape [${rows}, ${hidden}], got [${tensor.shape.join(', ')}]`;
  }
  const mismatch = tensorMismatch(tensor);
  if (mismatch !== undefined) return mismatch;
  if (tensor.dtype !== 'I8' && scales) return `${tensor.dtype} rows carry no scales`;
  const values = tensor.dtype === 'I8' ? int8Rows(tensor, scales, rows, hidden)
    : tensor.dtype === 'BF16' ? decodeHalves(tensor.data, 'BF16') : tensorF32(tensor);
  if (typeof values === 'string') return values;
  for (let i = 0; i < values.length; i++) {
    if (!(Math.abs(values[i]) <= MAX_ROW_MAGNITUDE)) return `${Number.isFinite(values[i]) ? 'out-of-range' : 'non-finite'} value ${values[i]} at ${i}`;
  }
  return values;
}

/**
 * Decodes I8 codes (−127..127) times their block's scale, after checking the scales: F32, one
 * per block of a divisor of the row, each finite and ≥ 0 (0: a block of zeros, e.g. a zero gradient).
 */
function int8Rows(codes: Tensor, scales: Tensor | undefined, rows: number, hidden: number): Float32Array | string {
  if (!scales) return 'I8 rows need their scales';
  const blocks = scales.shape[1];
  if (scales.dtype !== 'F32' || scales.shape.length !== 2 || scales.shape[0] !== rows || !(blocks > 0 && hidden % blocks === 0)) {
    return `expected F32 scales [${rows}, a divisor of ${hidden}], got ${scales.dtype} [${scales.shape.join(', ')}]`;
  }
  const mismatch = tensorMismatch(scales);
  if (mismatch !== undefined) return `scales: ${mismatch}`;
  const data = codes.data;
  const values = new Float32Array(rows * hidden);
  try {
    dequantizeBlocks('int8 rows', new Int8Array(data.buffer, data.byteOffset, data.byteLength), tensorF32(scales), hidden / blocks, values);
  } catch (err) {
    if (err instanceof CodecError) return err.message;
    throw err;
  }
  return values;
}

/** A holder answers in the precision it was called with. */
const precisionOf = (tensor: Tensor): ExpertPrecision => (tensor.dtype === 'BF16' ? 'bf16' : tensor.dtype === 'I8' ? 'int8' : 'f32');

/**
 * Calls an expert's holders over the expert protocols, failing over to the next holder when one
 * does not answer in time (or answers garbage); when none answers, the call resolves false and
 * the MoE layer drops that expert for those tokens.
 */
export class SwarmRemoteExperts implements RemoteExperts {
  readonly stats: ExpertStats = { remoteCalls: 0, failovers: 0, unanswered: 0, served: 0, remoteWaitMs: 0, servingMs: 0 };
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
    const reply = await this.remote('expertForward', layer, expert, rows, wireRows(rows, hidden, x, precision));
    if (reply) y.set(reply);
    return reply !== undefined;
  }

  async backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean> {
    const { hidden, precision, gradientPrecision } = this.options;
    // The input goes in the forward's precision, so the holder recomputes the very forward it answered.
    const input = wireRows(rows, hidden, x, precision);
    const payload = { ...wireRows(rows, hidden, dy, gradientPrecision), input: input.tensor, inputScales: input.scales };
    const reply = await this.remote('expertBackward', layer, expert, rows, payload);
    if (reply) dx.set(reply);
    return reply !== undefined;
  }

  /** Tries the expert's holders in turn (starting at a rotating one, to spread load). */
  private async remote(
    protocol: 'expertForward' | 'expertBackward', layer: number, expert: number, rows: number, payload: ExpertPayload,
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
    protocol: 'expertForward' | 'expertBackward', layer: number, expert: number, rows: number, payload: ExpertPayload,
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
        const values = rowsOf(reply, rows, hidden);
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
  // The call's header with the result rows, in the precision the call's `tensor` came in.
  const reply = ({ jobId, step, call, layer, expert, rows, tensor }: ExpertCall, values: Float32Array): ExpertCall =>
    ({ jobId, step, call, layer, expert, rows, ...wireRows(rows, hidden, values, precisionOf(tensor)) });
  const check = (call: ExpertCall, peer: string) => {
    if (!directory.admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (call.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${call.jobId}`);
    const expert = experts.servingExpert(call.layer, call.expert);
    if (!expert) throw new RefusedError(`expert ${call.layer}.${call.expert} is not held here`);
    const load = (buffer: GrowableBuffer, rows: WireRows) => {
      const values = rowsOf(rows, call.rows, hidden);
      if (typeof values === 'string') throw new RefusedError(values);
      const view = buffer.rows(call.rows);
      view.set(values);
      return view;
    };
    return { expert, load };
  };
  const timed = (answer: () => ExpertCall): ExpertCall => {
    const t0 = performance.now();
    try {
      return answer();
    } finally {
      stats.servingMs += performance.now() - t0;
    }
  };
  await rpc.handle('expertForward', (call, { peer }) => timed(() => {
    const { expert, load } = check(call, peer.toString());
    const input = load(x, call);
    const y = out.rows(call.rows);
    expert.forward(input, y, call.rows);
    stats.served++;
    return reply(call, y);
  }), { maxConcurrent: 64 });
  await rpc.handle('expertBackward', (call, { peer }) => timed(() => {
    const { expert, load } = check(call, peer.toString());
    if (!call.input) throw new RefusedError('a backward call carries the forward input');
    const input = load(x, { tensor: call.input, scales: call.inputScales });
    const grad = load(dy, call);
    const dx = out.rows(call.rows);
    expert.keepInputsOf(input, call.rows); // refills the activations the backward reads
    expert.backward(input, grad, dx, call.rows);
    stats.served++;
    return reply(call, dx);
  }), { maxConcurrent: 64 });
}
