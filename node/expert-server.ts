// The holder's side of expert calls: serveExperts answers admitted peers' calls for the experts held here, keeping
// each forward's input and activations (KeptForwards, bounded) so its backward need not carry the input again.
import { truncateReason, type ExpertCall, type ExpertPrecision, type ExpertReplies, type Tensor } from '../proto/index.ts';
import type { Kernels } from '../src/kernels/index.ts';
import type { KeptForward, SwigluExpert } from '../src/model/expert.ts';
import type { HostedExperts } from '../src/model/hosted.ts';
import { GrowableBuffer } from '../src/model/linear.ts';
import { RefusedError, type Rpc } from '../src/p2p/index.ts';
import { rowsOf, wireRows, type ExpertDirectory, type ExpertStats, type WireRows } from './experts.ts';

/** A holder answers in the precision it was called with. */
const precisionOf = (tensor: Tensor): ExpertPrecision => (tensor.dtype === 'BF16' ? 'bf16' : tensor.dtype === 'I8' ? 'int8' : 'f32');

export interface ExpertServerComponents {
  rpc: Rpc;
  kernels: Kernels;
  /** The experts hosted here (the model's), whose serving replicas answer the calls. */
  experts: Pick<HostedExperts, 'servingExpert'>;
  directory: ExpertDirectory;
  /** Counts the calls served (`served`). */
  stats: ExpertStats;
}

export interface ExpertServerOptions {
  jobId: string;
  hidden: number;
  /** Bytes of served forwards kept for their backwards (default DEFAULT_KEPT_FORWARD_BYTES). */
  keptForwardBytes?: number;
}

/**
 * Bytes of served forwards a holder keeps by default: at the demo job's width a row costs 2.5 kB (input, gate·x and up·x
 * in f32), and a peer's step sends ~4k rows here (batch 8 × 128 tokens, 2 experts each, 4 layers, half of them held
 * here): 10 MB, so this is about six of its steps (a backward needs only its own step's).
 */
export const DEFAULT_KEPT_FORWARD_BYTES = 64 * 2 ** 20;

/** What a holder kept of a forward it answered, for that forward's backward. */
interface KeptCall {
  step: number;
  layer: number;
  expert: number;
  rows: number;
  /** The serving replica that ran it: an expert given up and taken on again has another. */
  replica: SwigluExpert;
  /** The input rows as decoded, in the kernel heap (as `kept` is). */
  input: Float32Array;
  kept: KeptForward;
  bytes: number;
}

/** A backward named a forward whose input this holder does not keep (evicted, given up, or never answered here). */
class InputNotKept extends RefusedError {}

/**
 * The forwards a holder answered, by caller and call, the oldest dropped beyond a cap on their bytes. A dropped
 * forward is released (its heap copies freed); a taken one is the taker's to release.
 */
export class KeptForwards {
  private readonly calls = new Map<string, KeptCall>();
  private keptBytes = 0;

  constructor(private readonly capBytes: number, private readonly release: (kept: KeptCall) => void) {}

  get bytes(): number {
    return this.keptBytes;
  }

  get size(): number {
    return this.calls.size;
  }

  keep(peer: string, call: number, kept: KeptCall): void {
    this.drop(`${peer} ${call}`);
    this.calls.set(`${peer} ${call}`, kept);
    this.keptBytes += kept.bytes;
    for (const key of this.calls.keys()) {
      if (this.keptBytes <= this.capBytes) break;
      this.drop(key);
    }
  }

  /** The forward a backward names, if kept here for the same expert and rows (kept no longer: the caller releases it). */
  take(peer: string, { forwardCall, step, layer, expert, rows }: ExpertCall): KeptCall | undefined {
    const key = `${peer} ${forwardCall}`;
    const kept = this.calls.get(key);
    const same = kept && kept.step === step && kept.layer === layer && kept.expert === expert && kept.rows === rows;
    if (!same) {
      this.drop(key);
      return undefined;
    }
    this.calls.delete(key);
    this.keptBytes -= kept.bytes;
    return kept;
  }

  /** Drops the kept forwards of an expert given up here. */
  forget(layer: number, expert: number): void {
    for (const [key, kept] of this.calls) if (kept.layer === layer && kept.expert === expert) this.drop(key);
  }

  private drop(key: string): void {
    const kept = this.calls.get(key);
    if (!kept) return;
    this.calls.delete(key);
    this.keptBytes -= kept.bytes;
    this.release(kept);
  }
}

/** A node's side of the expert protocols: `forget` drops what it kept for an expert the node gives up. */
export interface ExpertServer {
  kept: KeptForwards;
  forget(layer: number, expert: number): void;
}

/**
 * Serves the expert protocols for the experts this node holds, to admitted peers only. A forward's
 * input and activations are kept (bounded) for its backward, which then needs only the output
 * gradient; a backward that carries the input recomputes the forward from it. Either way the
 * backward adds the expert's weight gradients here.
 */
export async function serveExperts(
  components: ExpertServerComponents, { jobId, hidden, keptForwardBytes = DEFAULT_KEPT_FORWARD_BYTES }: ExpertServerOptions,
): Promise<ExpertServer> {
  const { rpc, kernels, experts, directory, stats } = components;
  const x = new GrowableBuffer(kernels, hidden);
  const dy = new GrowableBuffer(kernels, hidden);
  const out = new GrowableBuffer(kernels, hidden);
  const release = ({ input, replica, kept: forwardKept }: KeptCall) => {
    kernels.heap.release(input);
    replica.releaseForward(forwardKept);
  };
  const kept = new KeptForwards(keptForwardBytes, release);
  // The call's header with the result rows, in the precision the call's `tensor` came in.
  const reply = ({ jobId, step, call, layer, expert, rows, tensor }: ExpertCall, values: Float32Array): ExpertCall =>
    ({ jobId, step, call, layer, expert, rows, ...wireRows(kernels.rows, rows, hidden, values, precisionOf(tensor)) });
  const admit = (peer: string) => {
    if (!directory.admitted(peer)) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
  };
  const holding = (call: ExpertCall) => {
    if (call.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${call.jobId}`);
    // A caller skips an expert no row chose; an empty call would claim an empty region of the replica's slab.
    if (call.rows < 1) throw new RefusedError('a call of no rows');
    const expert = experts.servingExpert(call.layer, call.expert);
    if (!expert) throw new RefusedError(`expert ${call.layer}.${call.expert} is not held here`);
    return expert;
  };
  const decode = (rows: WireRows, count: number, into?: Float32Array) => {
    const values = rowsOf(kernels.rows, rows, count, hidden, into);
    if (typeof values === 'string') throw new RefusedError(values);
    return values;
  };
  const timed = <T>(answer: () => T): T => {
    const t0 = performance.now();
    try {
      return answer();
    } finally {
      stats.servingMs += performance.now() - t0;
    }
  };
  const forward = (call: ExpertCall, peer: string): ExpertCall => {
    const expert = holding(call);
    const { step, layer, rows } = call;
    // The input decodes into heap memory of its own, kept with the forward's activations for its backward.
    const input = kernels.heap.f32(rows * hidden, false);
    const y = out.rows(rows);
    let forwardKept;
    try {
      decode(call, rows, input);
      expert.forward(input, y, rows);
      forwardKept = expert.saveForward(rows);
    } catch (err) {
      kernels.heap.release(input);
      throw err;
    }
    const bytes = input.byteLength + forwardKept.bytes;
    kept.keep(peer, call.call, { step, layer, expert: call.expert, rows, replica: expert, input, kept: forwardKept, bytes });
    stats.served++;
    return reply(call, y);
  };
  const backward = (call: ExpertCall, peer: string): ExpertCall => {
    const expert = holding(call);
    const grad = decode(call, call.rows, dy.rows(call.rows));
    let input: Float32Array;
    let keptInput: Float32Array | undefined;
    if (call.input) {
      input = decode({ tensor: call.input, scales: call.inputScales }, call.rows, x.rows(call.rows));
      expert.keepInputsOf(input, call.rows); // refills the activations the backward reads
    } else {
      const forwardKept = kept.take(peer, call);
      if (forwardKept?.replica !== expert) {
        if (forwardKept) release(forwardKept); // kept by a replica of the expert given up since
        throw new InputNotKept(`expert ${call.layer}.${call.expert}: the input of forward call ${call.forwardCall} is not kept here`);
      }
      expert.restoreForward(forwardKept.kept); // takes the activations over
      input = keptInput = forwardKept.input;
    }
    const dx = out.rows(call.rows);
    try {
      expert.backward(input, grad, dx, call.rows);
    } finally {
      if (keptInput) kernels.heap.release(keptInput);
    }
    stats.served++;
    return reply(call, dx);
  };
  await rpc.handle('expertCalls', ({ direction, calls }, { peer }) => timed(() => {
    const caller = peer.toString();
    admit(caller);
    const answer = direction === 'forward' ? forward : backward;
    const replies: ExpertReplies = { answers: [], refusals: [] };
    for (const call of calls) {
      try {
        replies.answers.push(answer(call, caller));
      } catch (err) {
        if (!(err instanceof RefusedError)) throw err;
        const needsInput = err instanceof InputNotKept ? { needsInput: true } : {};
        replies.refusals.push({ call: call.call, reason: truncateReason(err.message), ...needsInput });
      }
    }
    return replies;
  }), { maxConcurrent: 64 });
  // One call per request, as peers before expertCalls sent them.
  const single = (answer: typeof forward) => (call: ExpertCall, { peer }: { peer: { toString(): string } }) =>
    timed(() => (admit(peer.toString()), answer(call, peer.toString())));
  await rpc.handle('expertForward', single(forward), { maxConcurrent: 64 });
  await rpc.handle('expertBackward', single(backward), { maxConcurrent: 64 });
  return { kept, forget: (layer, expert) => kept.forget(layer, expert) };
}
