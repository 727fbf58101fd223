// Experts across the swarm: SwarmRemoteExperts, a node's transport to the experts other nodes hold (the model's
// RemoteExperts port), and expert rows on the wire; expert-server.ts answers peers' calls for those held here.
import {
  f32Tensor, MAX_EXPERT_CALLS, tensorF32, tensorMismatch, type ExpertCall, type ExpertCalls, type ExpertPrecision, type ExpertReplies,
  type JobSpec, type Tensor,
} from '../proto/index.ts';
import { decodeHalves, encodeHalves } from '../proto/half.ts';
import type { Rows } from '../src/kernels/index.ts';
import type { RemoteExperts } from '../src/model/hosted.ts';
import { TurnBatches, type DialTarget, type Rpc } from '../src/p2p/index.ts';

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
  /** Requests those calls travelled in: a layer's calls to one holder in one direction go together. */
  requests: number;
  /** Calls that went to another holder after one failed. */
  failovers: number;
  /** Calls that no holder answered. */
  unanswered: number;
  /** Backward calls sent again with their input: the holder no longer kept their forward's. */
  inputsResent: number;
  /** Calls from other nodes served here. */
  served: number;
  /** Milliseconds of this node's training with a remote expert call in flight. */
  remoteWaitMs: number;
  /** Milliseconds spent answering peers' calls (decoding, computing, encoding). */
  servingMs: number;
}

export const newExpertStats = (): ExpertStats =>
  ({ remoteCalls: 0, requests: 0, failovers: 0, unanswered: 0, inputsResent: 0, served: 0, remoteWaitMs: 0, servingMs: 0 });

export interface SwarmRemoteExpertsComponents {
  rpc: Pick<Rpc, 'request'>;
  /** Codes rows for the wire and fingerprints them. */
  rows: Rows;
  directory: Pick<ExpertDirectory, 'holders' | 'address'>;
}

export interface SwarmRemoteExpertsOptions {
  jobId: string;
  self: string;
  hidden: number;
  timeoutMs: number;
  /** Forward rows (and the input a backward carries again when the holder did not keep it). */
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

/** The rows an expert call carries (its `tensor` and `scales`), and a backward's input or the forward it names. */
type ExpertPayload = WireRows & Pick<ExpertCall, 'input' | 'inputScales' | 'forwardCall'>;

/** Rows as they travel: the tensor and, for I8 codes, their F32 scales [rows, blocks per row]. */
export interface WireRows {
  tensor: Tensor;
  scales?: Tensor;
}

/**
 * Rows for the wire, copied out of the heap (its views sit on shared memory), as f32, bf16 or int8
 * codes with one scale per row (coded by the kernels: src/kernels/rows.ts): bench/bytes.ts measured a
 * scale per 32 values at 0.85-0.87× the error of one per row (0.48% against 0.55% of the rows' norm)
 * for 1.09× the bytes at hidden 128.
 */
export function wireRows(kernels: Rows, rows: number, hidden: number, values: Float32Array, precision: ExpertPrecision): WireRows {
  const shape = [rows, hidden];
  const view = values.subarray(0, rows * hidden);
  if (precision === 'bf16') return { tensor: { dtype: 'BF16', shape, data: encodeHalves(view, 'BF16') } };
  if (precision === 'f32') return { tensor: f32Tensor(shape, Float32Array.from(view)) };
  const { codes, scales } = kernels.quantizeI8(view, rows, hidden);
  return { tensor: { dtype: 'I8', shape, data: bytesOf(codes) }, scales: f32Tensor([rows, 1], scales) };
}

const bytesOf = (view: ArrayBufferView) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);

/**
 * The rows of a peer's F32, BF16 or I8 (with `scales`) tensor, as f32, or a reason to refuse it: in a new array, or in
 * the first rows × hidden floats of `into` (which a refused tensor may have partly overwritten).
 */
export function rowsOf(
  kernels: Rows, { tensor, scales }: WireRows, rows: number, hidden: number, into?: Float32Array,
): Float32Array | string {
  if (tensor.dtype !== 'F32' && tensor.dtype !== 'BF16' && tensor.dtype !== 'I8') return `expected F32, BF16 or I8 rows, got ${tensor.dtype}`;
  if (tensor.shape.length !== 2 || tensor.shape[0] !== rows || tensor.shape[1] !== hidden) {
    return `expected shape [${rows}, ${hidden}], got [${tensor.shape.join(', ')}]`;
  }
  const mismatch = tensorMismatch(tensor);
  if (mismatch !== undefined) return mismatch;
  if (tensor.dtype !== 'I8' && scales) return `${tensor.dtype} rows carry no scales`;
  const out = into?.subarray(0, rows * hidden);
  // An I8 value is at most 127 × its scale, which int8Rows bounds: no value needs a look.
  if (tensor.dtype === 'I8') return int8Rows(kernels, tensor, scales, rows, hidden, out ?? new Float32Array(rows * hidden));
  let values = tensor.dtype === 'BF16' ? decodeHalves(tensor.data, 'BF16') : tensorF32(tensor);
  if (out && values !== out) values = (out.set(values), out);
  for (let i = 0; i < values.length; i++) {
    if (!(Math.abs(values[i]) <= MAX_ROW_MAGNITUDE)) return `${Number.isFinite(values[i]) ? 'out-of-range' : 'non-finite'} value ${values[i]} at ${i}`;
  }
  return values;
}

/** Largest scale of I8 rows: 127 of it is the largest magnitude accepted. */
const MAX_ROW_SCALE = MAX_ROW_MAGNITUDE / 127;

/**
 * Decodes I8 codes (−127..127) times their block's scale, after checking the scales: F32, one
 * per block of a divisor of the row, each ≥ 0 (0: a block of zeros, e.g. a zero gradient) and
 * at most MAX_ROW_SCALE (a sender's scale is its block's largest magnitude / 127).
 */
function int8Rows(
  kernels: Rows, codes: Tensor, scales: Tensor | undefined, rows: number, hidden: number, values: Float32Array,
): Float32Array | string {
  if (!scales) return 'I8 rows need their scales';
  const blocks = scales.shape[1];
  if (scales.dtype !== 'F32' || scales.shape.length !== 2 || scales.shape[0] !== rows || !(blocks > 0 && hidden % blocks === 0)) {
    return `expected F32 scales [${rows}, a divisor of ${hidden}], got ${scales.dtype} [${scales.shape.join(', ')}]`;
  }
  const mismatch = tensorMismatch(scales);
  if (mismatch !== undefined) return `scales: ${mismatch}`;
  const scaleValues = tensorF32(scales);
  for (let i = 0; i < scaleValues.length; i++) {
    const scale = scaleValues[i];
    if (!(scale >= 0 && scale <= MAX_ROW_SCALE)) {
      return `${Number.isFinite(scale) ? 'out-of-range' : 'non-finite'} scale ${scale} at ${i} (scales are 0..${MAX_ROW_SCALE})`;
    }
  }
  const { data } = codes;
  const bad = kernels.dequantizeI8(new Int8Array(data.buffer, data.byteOffset, data.byteLength), scaleValues, rows, hidden, blocks, values);
  return bad < 0 ? values : `code -128 at ${bad} (codes are -127..127)`;
}

type Direction = ExpertCalls['direction'];

/** A holder refused one call of a batch (the others may have been answered). */
class CallRefused extends Error {
  constructor(message: string, readonly needsInput: boolean) {
    super(message);
  }
}

/** Calls to one holder in one direction waiting to go as one request. */
interface Batch {
  target: DialTarget;
  direction: Direction;
  calls: ExpertCall[];
  waiting: { into: Float32Array; resolve: () => void; reject: (error: unknown) => void }[];
}

/** A forward a holder answered: the backward on the same rows goes there first, naming it instead of sending the input again. */
interface AnsweredForward {
  rows: number;
  fingerprint: number;
  peer: string;
  call: number;
}

/** Answered forwards remembered per expert: a step's forward, its recomputation under checkpointing, and a second lane's. */
const ANSWERED_PER_EXPERT = 4;

/**
 * Calls an expert's holders over the expert protocols, failing over to the next holder when one
 * does not answer in time (or answers garbage); when none answers, the call resolves false and
 * the MoE layer drops that expert for those tokens. The calls to one holder that the model starts
 * together (a layer's, in one direction) travel as one request; a backward goes first to the
 * holder that answered its forward, which kept that forward's input.
 */
export class SwarmRemoteExperts implements RemoteExperts {
  readonly stats: ExpertStats = newExpertStats();
  /** The step of the caller's training loop, carried in calls for the holder's logs. */
  step = 0;
  private calls = 0;
  private inFlight = 0;
  private waitStart = 0;
  /** Per direction and holder: the calls of this turn not sent yet. */
  private readonly batches = new TurnBatches<Batch>((batch) => void this.send(batch));
  /** Per expert ("layer.expert"): its latest answered forwards, newest last. */
  private readonly answered = new Map<string, AnsweredForward[]>();

  private readonly rpc: SwarmRemoteExpertsComponents['rpc'];
  private readonly rows: Rows;
  private readonly directory: SwarmRemoteExpertsComponents['directory'];

  constructor(components: SwarmRemoteExpertsComponents, private readonly options: SwarmRemoteExpertsOptions) {
    this.rpc = components.rpc;
    this.rows = components.rows;
    this.directory = components.directory;
  }

  async forward(layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean> {
    const { hidden, precision } = this.options;
    const payload = wireRows(this.rows, rows, hidden, x, precision);
    const print = this.rows.fingerprint(x.subarray(0, rows * hidden));
    const answer = await this.remote('forward', layer, expert, rows, undefined,
      (peer, target, call) => this.ask(peer, target, 'forward', { ...call, ...payload }, y));
    if (!answer) return false;
    const answered = this.answered.get(`${layer}.${expert}`) ?? [];
    answered.push({ rows, fingerprint: print, peer: answer.peer, call: answer.call });
    if (answered.length > ANSWERED_PER_EXPERT) answered.shift();
    this.answered.set(`${layer}.${expert}`, answered);
    return true;
  }

  async backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean> {
    const { hidden, precision, gradientPrecision } = this.options;
    const gradient = wireRows(this.rows, rows, hidden, dy, gradientPrecision);
    const forward = this.takeAnswered(layer, expert, rows, x.subarray(0, rows * hidden));
    let withInput: ExpertPayload | undefined;
    // The input goes in the forward's precision, so a holder without it recomputes the very forward it answered.
    const inputPayload = () => {
      if (!withInput) {
        const input = wireRows(this.rows, rows, hidden, x, precision);
        withInput = { ...gradient, input: input.tensor, inputScales: input.scales };
      }
      return withInput;
    };
    const answer = await this.remote('backward', layer, expert, rows, forward?.peer, async (peer, target, call) => {
      if (peer === forward?.peer) {
        try {
          return await this.ask(peer, target, 'backward', { ...call, ...gradient, forwardCall: forward.call }, dx);
        } catch (err) {
          if (!(err instanceof CallRefused && err.needsInput)) throw err;
          this.stats.inputsResent++;
        }
      }
      return this.ask(peer, target, 'backward', { ...call, ...inputPayload() }, dx);
    });
    return answer !== undefined;
  }

  /** The answered forward of these rows (the newest, when several forwards had them), forgotten once its backward is on the way. */
  private takeAnswered(layer: number, expert: number, rows: number, x: Float32Array): AnsweredForward | undefined {
    const answered = this.answered.get(`${layer}.${expert}`);
    if (!answered) return undefined;
    const print = this.rows.fingerprint(x);
    const index = answered.findLastIndex((f) => f.rows === rows && f.fingerprint === print);
    return index < 0 ? undefined : answered.splice(index, 1)[0];
  }

  /**
   * Tries the expert's holders in turn: `first` (a backward's forward holder) when it still holds the expert, else
   * starting at a rotating one, to spread load.
   */
  private async remote(
    direction: Direction, layer: number, expert: number, rows: number, first: string | undefined,
    ask: (peer: string, target: DialTarget, call: Omit<ExpertCall, 'tensor'>) => Promise<void>,
  ): Promise<{ peer: string; call: number } | undefined> {
    const { jobId, self, log } = this.options;
    const others = this.directory.holders(layer, expert).filter((peer) => peer !== self);
    const call = ++this.calls;
    const holders = first !== undefined && others.includes(first)
      ? [first, ...others.filter((peer) => peer !== first)]
      : others.map((_, attempt) => others[(call + attempt) % others.length]);
    // Wall time with at least one remote call in flight (concurrent calls overlap).
    if (this.inFlight++ === 0) this.waitStart = performance.now();
    try {
      for (let attempt = 0; attempt < holders.length; attempt++) {
        const peer = holders[attempt];
        const target = this.directory.address(peer);
        if (!target) continue;
        if (attempt > 0) this.stats.failovers++;
        try {
          await ask(peer, target, { jobId, step: this.step, call, layer, expert, rows });
          return { peer, call };
        } catch (err) {
          log?.(`expert ${layer}.${expert} ${direction} via ${peer} failed: ${(err as Error).message}`);
        }
      }
      this.stats.unanswered++;
      return undefined;
    } finally {
      if (--this.inFlight === 0) this.stats.remoteWaitMs += performance.now() - this.waitStart;
    }
  }

  /**
   * Sends a call to a holder in one request with the other calls to that holder in the same direction issued in this
   * turn (the MoE layer issues all of a layer's calls before awaiting any); resolves once the call's rows are in `into`
   * (a failed call may have left part of a bad reply there).
   */
  private ask(peer: string, target: DialTarget, direction: Direction, call: ExpertCall, into: Float32Array): Promise<void> {
    this.stats.remoteCalls++;
    const batch = this.batches.batch(
      `${direction} ${peer}`, () => ({ target, direction, calls: [], waiting: [] }), (open) => open.calls.length < MAX_EXPERT_CALLS,
    );
    return new Promise((resolve, reject) => {
      batch.calls.push(call);
      batch.waiting.push({ into, resolve, reject });
    });
  }

  /** One request for a batch; each call settles with its rows, its refusal, or the request's failure. */
  private async send({ target, direction, calls, waiting }: Batch): Promise<void> {
    const { hidden, timeoutMs } = this.options;
    this.stats.requests++;
    let replies: ExpertReplies;
    try {
      replies = await this.rpc.request(target, 'expertCalls', { direction, calls }, { timeout: timeoutMs });
    } catch (err) {
      for (const { reject } of waiting) reject(err);
      return;
    }
    const answers = new Map(replies.answers.map((answer) => [answer.call, answer]));
    const refusals = new Map(replies.refusals.map((refusal) => [refusal.call, refusal]));
    calls.forEach(({ call, rows }, i) => {
      const answer = answers.get(call);
      const refusal = refusals.get(call);
      const values = answer ? rowsOf(this.rows, answer, rows, hidden, waiting[i].into) : undefined;
      if (values instanceof Float32Array) waiting[i].resolve();
      else if (values !== undefined) waiting[i].reject(new Error(`bad reply: ${values}`));
      else if (refusal) waiting[i].reject(new CallRefused(`refused: ${refusal.reason}`, refusal.needsInput === true));
      else waiting[i].reject(new Error('the reply left the call out'));
    });
  }
}
