// The protocols of the swarm: one request and one response per stream, each with its libp2p
// protocol id, schemas, size caps and the checks a schema cannot express; and the channel, one
// long-lived stream per node carrying the small requests it sends its coordinator all the time.
import type { Static, TSchema } from '@sinclair/typebox';
import { ProtocolError } from './errors.ts';
import {
  AckSchema,
  BlobChunkRequestSchema,
  BlobChunkSchema,
  DeltaRefusalsSchema,
  ExpertCallSchema,
  ExpertCallsSchema,
  ExpertRepliesSchema,
  HeartbeatReplySchema,
  HeartbeatSchema,
  JoinRequestSchema,
  JoinResponseSchema,
  LeaseGrantSchema,
  LeaseReportSchema,
  LeaseRequestSchema,
  MAX_DELTAS_PER_REQUEST,
  ParameterDeltaSchema,
  ParameterDeltasSchema,
  StateRequestSchema,
  StateResponseSchema,
  type ExpertCall,
  type ExpertCalls,
  type ExpertReplies,
  type ParameterDelta,
  type NamedTensor,
} from './messages.ts';
import { MAX_BLOB_CHUNK_BYTES } from './manifest.ts';
import { tensorMismatch, type Tensor } from './tensor.ts';
import { PROTOCOL_VERSION, parseVersion } from './version.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
/**
 * Tensor-carrying messages. A group's state is fetched a few tensors at a time (StateRequest.names);
 * a parameter delta larger than this travels in parts (ParameterDelta.part, cut by rows).
 */
export const TENSOR_MESSAGE_CAP = 64 * MiB;
/** Room for an error reply (message up to 1024 characters of UTF-8) in every response. */
const SMALL_REPLY_CAP = 8 * KiB;

export interface ProtocolSpec<Req extends TSchema = TSchema, Res extends TSchema = TSchema> {
  /** libp2p protocol id, /swarmtrain/<name>/<version>. */
  id: string;
  request: Req;
  response: Res;
  maxRequestBytes: number;
  maxResponseBytes: number;
  /** The message carries `version`, checked before the schema so an old or new peer gets a clear refusal. */
  versioned?: boolean;
  /** Carries large transfers (parameter deltas, state, base weights): a requester prefers a direct connection to a relayed one. */
  bulk?: boolean;
  // Checks beyond the schema; they throw ProtocolError. (Method syntax: a spec of any schema
  // pair is then usable as a ProtocolSpec<TSchema, TSchema>.)
  checkRequest?(message: Static<Req>): void;
  checkResponse?(message: Static<Res>): void;
}

const define = <Req extends TSchema, Res extends TSchema>(spec: ProtocolSpec<Req, Res>) => spec;
const MAJOR = parseVersion(PROTOCOL_VERSION)!.major;
const idOf = (name: string) => `/swarmtrain/${name}/${MAJOR}`;

function checkTensor(tensor: Tensor, where: string): void {
  const mismatch = tensorMismatch(tensor);
  if (mismatch !== undefined) throw new ProtocolError('tensor', `${where}: ${mismatch}`);
}

function checkParts(parts: NamedTensor[]): void {
  const seen = new Set<string>();
  for (const { name, tensor } of parts) {
    if (seen.has(name)) throw new ProtocolError('schema', `parts: "${name}" appears twice`);
    seen.add(name);
    checkTensor(tensor, `parts: "${name}"`);
  }
}

/** A protocol error of one delta of a `deltas` request, named by its index. */
function inDelta(index: number, check: () => void): void {
  try {
    check();
  } catch (err) {
    if (err instanceof ProtocolError) throw new ProtocolError(err.reason, `deltas[${index}]: ${err.message}`);
    throw err;
  }
}

function checkDelta(delta: ParameterDelta): void {
  checkParts(delta.parts);
  if (delta.part && delta.part.index >= delta.part.count) {
    throw new ProtocolError('schema', `part: index ${delta.part.index} is not below count ${delta.part.count}`);
  }
  if (delta.phase && !delta.part) throw new ProtocolError('schema', `part: a ${delta.phase} message names its part`);
  if (delta.phase === 'reduce' && delta.norm === undefined) {
    throw new ProtocolError('schema', 'norm: a reduce message states its delta\'s norm');
  }
}

/** Checks one tensor of rows of an expert call and, for I8 rows, its scales' shape. */
function checkRows(tensor: Tensor, scales: Tensor | undefined, rows: number, where: string): void {
  if (tensor.dtype !== 'F32' && tensor.dtype !== 'F16' && tensor.dtype !== 'BF16' && tensor.dtype !== 'I8') {
    throw new ProtocolError('tensor', `${where}: expert rows are F32, F16, BF16 or I8, got ${tensor.dtype}`);
  }
  if (tensor.shape.length !== 2 || tensor.shape[0] !== rows) {
    throw new ProtocolError('tensor', `${where}: shape must be [rows=${rows}, hidden], got [${tensor.shape.join(', ')}]`);
  }
  checkTensor(tensor, where);
  if (tensor.dtype !== 'I8') {
    if (scales) throw new ProtocolError('tensor', `${where}: only I8 rows carry scales`);
    return;
  }
  if (!scales) throw new ProtocolError('tensor', `${where}: I8 rows need their scales`);
  const hidden = tensor.shape[1];
  const blocks = scales.shape[1];
  if (scales.dtype !== 'F32' || scales.shape.length !== 2 || scales.shape[0] !== rows || !(blocks > 0 && hidden % blocks === 0)) {
    throw new ProtocolError('tensor', `${where}: scales of [${rows}, ${hidden}] I8 rows are F32 [${rows}, a divisor of ${hidden}], `
      + `got ${scales.dtype} [${scales.shape.join(', ')}]`);
  }
  checkTensor(scales, `${where} scales`);
}

function checkExpertCall(call: ExpertCall): void {
  checkRows(call.tensor, call.scales, call.rows, 'tensor');
}

function checkExpertBackward(call: ExpertCall): void {
  checkExpertCall(call);
  if (!call.input) throw new ProtocolError('schema', 'input: an expert backward request carries the forward input');
  checkRows(call.input, call.inputScales, call.rows, 'input');
}

/** Call ids appear once per message: they match answers to calls. */
function checkDistinctCalls(calls: readonly { call: number }[], where: string): void {
  const seen = new Set<number>();
  for (const { call } of calls) {
    if (seen.has(call)) throw new ProtocolError('schema', `${where}: call ${call} appears twice`);
    seen.add(call);
  }
}

/** A protocol error of one call of a batch, named by its index (the whole batch is refused as malformed). */
function inCall<T>(index: number, check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof ProtocolError) throw new ProtocolError(err.reason, `calls[${index}]: ${err.message}`);
    throw err;
  }
}

/** A forward carries rows; a backward its output gradient and either the forward's input or the forward's call at this holder. */
function checkExpertCalls({ direction, calls }: ExpertCalls): void {
  checkDistinctCalls(calls, 'calls');
  calls.forEach((call, index) => inCall(index, () => {
    checkExpertCall(call);
    if (direction === 'forward') {
      if (call.input || call.inputScales || call.forwardCall !== undefined) {
        throw new ProtocolError('schema', 'a forward call carries no input and no forwardCall');
      }
      return;
    }
    if (call.input) checkRows(call.input, call.inputScales, call.rows, 'input');
    if ((call.input === undefined) === (call.forwardCall === undefined)) {
      throw new ProtocolError('schema', 'a backward call carries either the forward input or its forwardCall');
    }
  }));
}

function checkExpertReplies({ answers, refusals }: ExpertReplies): void {
  checkDistinctCalls([...answers, ...refusals], 'answers and refusals');
  answers.forEach((answer, index) => inCall(index, () => checkExpertCall(answer)));
}

export const PROTOCOLS = {
  /** The handshake: its id and its `version` field never change, so any two versions can refuse each other clearly. */
  join: define({
    id: '/swarmtrain/join/1',
    request: JoinRequestSchema,
    response: JoinResponseSchema,
    maxRequestBytes: 16 * KiB,
    maxResponseBytes: 24 * MiB,
    versioned: true,
  }),
  heartbeat: define({
    id: idOf('heartbeat'),
    request: HeartbeatSchema,
    response: HeartbeatReplySchema,
    maxRequestBytes: 16 * KiB, // with up to 16 addresses
    maxResponseBytes: 4 * MiB,
  }),
  lease: define({
    id: idOf('lease'),
    request: LeaseRequestSchema,
    response: LeaseGrantSchema,
    maxRequestBytes: 1 * KiB,
    maxResponseBytes: 16 * KiB,
  }),
  leaseReport: define({
    id: idOf('lease-report'),
    request: LeaseReportSchema,
    response: AckSchema,
    maxRequestBytes: 16 * KiB,
    maxResponseBytes: SMALL_REPLY_CAP,
  }),
  expertForward: define({
    id: idOf('expert-forward'),
    request: ExpertCallSchema,
    response: ExpertCallSchema,
    maxRequestBytes: TENSOR_MESSAGE_CAP,
    maxResponseBytes: TENSOR_MESSAGE_CAP,
    checkRequest: checkExpertCall,
    checkResponse: checkExpertCall,
  }),
  expertBackward: define({
    id: idOf('expert-backward'),
    request: ExpertCallSchema,
    response: ExpertCallSchema,
    maxRequestBytes: TENSOR_MESSAGE_CAP,
    maxResponseBytes: TENSOR_MESSAGE_CAP,
    checkRequest: checkExpertBackward,
    checkResponse: checkExpertCall,
  }),
  /** Expert calls to one holder in one turn of a layer, forward or backward, in one request (the model's calls coalesced). */
  expertCalls: define({
    id: idOf('expert-calls'),
    request: ExpertCallsSchema,
    response: ExpertRepliesSchema,
    maxRequestBytes: TENSOR_MESSAGE_CAP,
    maxResponseBytes: TENSOR_MESSAGE_CAP,
    checkRequest: checkExpertCalls,
    checkResponse: checkExpertReplies,
  }),
  delta: define({
    id: idOf('delta'),
    bulk: true,
    request: ParameterDeltaSchema,
    response: AckSchema,
    maxRequestBytes: TENSOR_MESSAGE_CAP,
    maxResponseBytes: SMALL_REPLY_CAP,
    checkRequest: checkDelta,
  }),
  deltas: define({
    id: idOf('deltas'),
    bulk: true,
    request: ParameterDeltasSchema,
    response: DeltaRefusalsSchema,
    maxRequestBytes: TENSOR_MESSAGE_CAP,
    maxResponseBytes: MAX_DELTAS_PER_REQUEST * 1100, // a refusal: its index and a reason of at most 1 KiB
    checkRequest: ({ deltas }) => deltas.forEach((delta, index) => inDelta(index, () => checkDelta(delta))),
  }),
  state: define({
    id: idOf('state'),
    bulk: true,
    request: StateRequestSchema,
    response: StateResponseSchema,
    maxRequestBytes: 2 * MiB,
    maxResponseBytes: TENSOR_MESSAGE_CAP,
    checkResponse: (state) => checkParts(state.parts),
  }),
  /** A chunk of a base checkpoint's tensor, from the coordinator or any peer that holds it. */
  blobChunk: define({
    id: idOf('blob-chunk'),
    bulk: true,
    request: BlobChunkRequestSchema,
    response: BlobChunkSchema,
    maxRequestBytes: 1 * KiB,
    maxResponseBytes: MAX_BLOB_CHUNK_BYTES + 1 * KiB,
  }),
};

export type ProtocolName = keyof typeof PROTOCOLS;
export type RequestOf<P extends ProtocolName> = Static<(typeof PROTOCOLS)[P]['request']>;
export type ResponseOf<P extends ProtocolName> = Static<(typeof PROTOCOLS)[P]['response']>;
export const PROTOCOL_NAMES = Object.keys(PROTOCOLS) as ProtocolName[];

/**
 * The requests a peer sends another all the time (a node's heartbeats, leases and lease reports to its coordinator,
 * its expert calls to the experts' holders) also travel on one long-lived stream per pair of peers, a channel: a
 * stream per request cost each end ~1.1-1.3 ms of CPU in libp2p (yamux, multistream-select, the close), a message on
 * an open stream ~0.2-0.3 ms. A request frame is the protocol's index in `protocols` (one byte) followed by the
 * request as that protocol encodes it, under that protocol's cap; the replies come back in the order of the
 * requests, each as that protocol's reply. The protocols' own streams stay served, for peers that do not speak the
 * channel. Appended only: a protocol's index is its name on the wire.
 */
const CHANNEL_PROTOCOLS = ['heartbeat', 'lease', 'leaseReport', 'expertCalls'] as const satisfies readonly ProtocolName[];
export const CHANNEL = {
  id: idOf('channel'),
  protocols: CHANNEL_PROTOCOLS,
  maxReplyFrameBytes: Math.max(...CHANNEL_PROTOCOLS.map((name) => PROTOCOLS[name].maxResponseBytes)),
};
export type ChannelProtocol = (typeof CHANNEL.protocols)[number];

/** The index of a protocol's requests on the channel, or undefined for a protocol that does not travel on it. */
export function channelIndex(protocol: ProtocolName): number | undefined {
  const index = (CHANNEL.protocols as readonly ProtocolName[]).indexOf(protocol);
  return index < 0 ? undefined : index;
}

/**
 * How long a node waits for a join's reply, dial included: a crowd joining at once queues behind each other's
 * handshakes and shared re-plan, and giving up sooner threw the handshake away only to start another (a reply
 * may also carry megabytes of tokenizer over a slow link).
 */
export const JOIN_TIMEOUT_MS = 30_000;
