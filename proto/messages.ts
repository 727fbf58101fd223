// Every message the swarm exchanges, as TypeBox schemas: the schema is both the runtime check
// (compiled in codec.ts; a job file's by validateJob here) and, through Static<>, the TypeScript
// type. Strings, arrays and numbers are bounded so a valid message is also a small one; tensors
// are bounded by the size caps.
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { JobError } from './errors.ts';
import { MAX_INDEX } from './group.ts';
import { BaseManifestSchema, MAX_BLOB_CHUNK_BYTES, Sha256Hex } from './manifest.ts';
import { TensorSchema } from './tensor.ts';

const Count = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const NonNegative = Type.Number({ minimum: 0 });
/** Job ids, group ids and the like: short, printable, no spaces. */
const Id = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:-]+$' });
/** A libp2p peer id in its string form (base58btc or base32 CID). */
const PeerIdText = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9]+$' });
const TensorName = Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9._:/-]+$' });
/** The longest reason (a refusal, an error, a degraded plan) a message carries. */
export const MAX_REASON_LENGTH = 1024;
const Reason = Type.String({ maxLength: MAX_REASON_LENGTH });

/** `text` cut to fit a reason field, marked with "..." where it was cut. */
export function truncateReason(text: string): string {
  return text.length <= MAX_REASON_LENGTH ? text : `${text.slice(0, MAX_REASON_LENGTH - 3)}...`;
}
/** How often a node heartbeats, in ms. */
const HeartbeatPeriod = Type.Integer({ minimum: 100, maximum: 3_600_000 });
/** Milliseconds since the Unix epoch. */
const Timestamp = Count;
const Index = Type.Integer({ minimum: 0, maximum: MAX_INDEX });

export const NamedTensorSchema = Type.Object({ name: TensorName, tensor: TensorSchema });
export type NamedTensor = Static<typeof NamedTensorSchema>;
const Parts = Type.Array(NamedTensorSchema, { maxItems: 4096 });

// --- join: a node asks the coordinator to admit it -------------------------------------------

export const JoinRequestSchema = Type.Object({
  /** PROTOCOL_VERSION of the sender; checked before anything else (see codec.ts). */
  version: Type.String({ maxLength: 32 }),
  nodeId: PeerIdText,
  /** Shared secret of the swarm (may be empty on an open swarm). */
  token: Type.String({ maxLength: 512 }),
  cores: Type.Integer({ minimum: 1, maximum: 4096 }),
  /** Measured GEMM speed of the node, all cores. */
  gemmGflops: Type.Number({ minimum: 0, maximum: 1e6 }),
  /** Memory the node will spend on the job. */
  memoryBytes: Count,
  /** Multiaddrs other nodes dial to reach this one (expert calls, averaging, state), ending in /p2p/<nodeId>. */
  addrs: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 16 }),
});
export type JoinRequest = Static<typeof JoinRequestSchema>;

export const ExpertRefSchema = Type.Object({ layer: Index, expert: Index });
export type ExpertRef = Static<typeof ExpertRefSchema>;

/** How an expert call's rows travel: f32, bf16, or int8 codes with a scale per block of each row. */
export const ExpertPrecisionSchema = Type.Union([Type.Literal('f32'), Type.Literal('bf16'), Type.Literal('int8')]);
export type ExpertPrecision = Static<typeof ExpertPrecisionSchema>;

/**
 * What a job trains and how: the model (a ModelConfig, checked by the node with its own
 * validation), the data, the schedule and the averaging. Every node builds the same model and
 * the same micro-batches from it, so a batch id means the same tokens everywhere.
 */
export const JobSpecSchema = Type.Object({
  jobId: Id,
  model: Type.Record(Type.String({ maxLength: 64 }), Type.Union([Type.Number(), Type.Boolean()]), { maxProperties: 64 }),
  mode: Type.Union([Type.Literal('full'), Type.Literal('lora')]),
  lora: Type.Optional(Type.Object({
    rank: Type.Integer({ minimum: 1, maximum: 4096 }),
    alpha: Type.Number({ exclusiveMinimum: 0, maximum: 1e6 }),
    /**
     * true: A stays at its seeded init (the same on every node) and only B trains (LoRA-FA), so averaging B averages the
     * update B·A exactly. Default false: A and B train and are averaged apart; bench/lora-averaging.ts measures the gap
     * ‖mean(BᵢAᵢ) − mean(Bᵢ)·mean(Aᵢ)‖/‖mean(BᵢAᵢ)‖ at ~1% (vanishing over rounds), while a frozen A costs more held-out loss.
     */
    freezeA: Type.Optional(Type.Boolean()),
    /** The matrices that get an adapter, by short name (src/model/config.ts LORA_MODULES); default all of them. */
    targets: Type.Optional(Type.Array(
      Type.Union([
        Type.Literal('q'), Type.Literal('k'), Type.Literal('v'), Type.Literal('o'), Type.Literal('gate'), Type.Literal('up'), Type.Literal('down'),
      ]), { minItems: 1, maxItems: 7, uniqueItems: true },
    )),
  })),
  baseFormat: Type.Union([Type.Literal('f32'), Type.Literal('q8'), Type.Literal('q4')]),
  basePath: Type.Union([Type.Literal('fp32'), Type.Literal('int')]),
  /** How experts and attention keep their largest activations for the backward: f32 (default), or bf16 (half the memory). */
  activations: Type.Optional(Type.Union([Type.Literal('f32'), Type.Literal('bf16')])),
  /** Seed of the initial weights, the data order and the held-out split. */
  seed: Count,
  /** A bundled corpus (src/train/corpus.ts); with corpusBlob, a label of the operator's text. */
  corpus: Type.String({ minLength: 1, maxLength: 64 }),
  /**
   * The operator's own text, set by the coordinator (--corpus): a blob of its documents (src/train/text-corpus.ts)
   * that nodes fetch in MAX_BLOB_CHUNK_BYTES chunks from the coordinator or peers, each chunk checked against `chunks`.
   */
  corpusBlob: Type.Optional(Type.Object({ sha256: Sha256Hex, bytes: Count, chunks: Type.Array(Sha256Hex, { maxItems: 4096 }) })),
  /** Use only documents [from, to) of the corpus (small jobs and tests). */
  documents: Type.Optional(Type.Object({ from: Count, to: Count })),
  batchSize: Type.Integer({ minimum: 1, maximum: 65536 }),
  seqLen: Type.Integer({ minimum: 1, maximum: 65536 }),
  heldOutFraction: Type.Number({ minimum: 0, exclusiveMaximum: 1 }),
  /** Micro-batches the job trains in all (over every node), in epochs of the train split; batch ids are global indices epoch·perEpoch + id. */
  totalBatches: Count,
  /** Nodes the job expects: training starts when this many have joined, and each node's learning-rate schedule spans totalBatches / expectedNodes steps. */
  expectedNodes: Type.Integer({ minimum: 1, maximum: 4096 }),
  lr: Type.Number({ minimum: 0, maximum: 10 }),
  minLr: Type.Number({ minimum: 0, maximum: 10 }),
  warmupSteps: Count,
  /** sync: every step, gradients are averaged over all holders (a data-parallel step); periodic: parameter deltas every `every` local steps. */
  averaging: Type.Object({
    mode: Type.Union([Type.Literal('sync'), Type.Literal('periodic')]),
    every: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
    deadlineMs: Type.Integer({ minimum: 1, maximum: 3_600_000 }),
    /** periodic: how deltas travel (a src/compress codec spec, e.g. "topk-int8:0.01"); default "f32". */
    codec: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    /** periodic: codec for expert groups, when it differs from `codec`. */
    expertCodec: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    /** periodic: the outer step, θ ← θ + lr·(Nesterov momentum of the mean delta); default lr 1, momentum 0 (plain averaging). */
    outerLr: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 10 })),
    outerMomentum: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1 })),
    /** mean, or coordinate-wise trimmed mean (drops the `trim` fraction at each end) against poisoned updates. */
    aggregator: Type.Optional(Type.Union([Type.Literal('mean'), Type.Literal('trimmed-mean')])),
    trim: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 0.5 })),
    /** A delta whose norm exceeds this many times the group's median recent norm is dropped and its sender flagged (default 10). */
    maxNormRatio: Type.Optional(Type.Number({ exclusiveMinimum: 1, maximum: 1e6 })),
    /**
     * periodic: how holders exchange deltas. all-to-all (the default): each sends its whole delta
     * to every other holder, (N−1)× the delta per round. reduce-scatter: holder i aggregates part i
     * of everyone's delta and sends the result back to all, ≈ 2× the delta per round whatever N.
     * groups: each round the holders split into small groups of at most `groupSize` (Moshpit
     * averaging, src/averaging/groups.ts), each averaging its members' parameters by reduce-scatter:
     * ≈ 2(G−1)/G × the parameters' message per round whatever N, the rounds mixing the groups. It
     * averages values, not deltas, so only value-faithful codecs go (f32, f16, int8-block).
     */
    topology: Type.Optional(Type.Union([Type.Literal('all-to-all'), Type.Literal('reduce-scatter'), Type.Literal('groups')])),
    /**
     * periodic: a round's deltas travel while the next `every` steps train, and its result lands on top of
     * them (the steps since the boundary are kept), instead of training waiting for the round: the
     * transfer and a slow peer's lag hide behind compute. At most one round is under way. Default false.
     */
    overlap: Type.Optional(Type.Boolean()),
    /** topology groups: the most holders a round's group has (default 4). */
    groupSize: Type.Optional(Type.Integer({ minimum: 2, maximum: 64 })),
  }),
  /** Deadline of one expert call before the caller fails over to another holder. */
  expertTimeoutMs: Type.Integer({ minimum: 1, maximum: 3_600_000 }),
  /**
   * How expert activations travel to and from remote holders: int8 with an f32 scale per row (the
   * default) sends ~0.52× bf16's bytes, bf16 half of f32's, f32 keeps remote experts bit-faithful.
   */
  expertPrecision: Type.Optional(ExpertPrecisionSchema),
  /** How the gradients of expert calls (a backward's output gradient and its reply) travel; default: expertPrecision. */
  expertGradientPrecision: Type.Optional(ExpertPrecisionSchema),
  /**
   * Each micro-batch trains as two halves by sequence at the same time, so a node computes one half's attention
   * while the other's experts are remote (src/model/model.ts, splitBatch); the load-balancing loss is then per half.
   */
  splitBatch: Type.Optional(Type.Boolean()),
});
export type JobSpec = Static<typeof JobSpecSchema>;
export type Averaging = JobSpec['averaging'];

const jobChecker = TypeCompiler.Compile(JobSpecSchema);
/** Codecs that encode every value (not a sparse or low-rank sketch), so parameters themselves may travel in them. */
const VALUE_CODECS = ['f32', 'f16', 'int8-block'];

/** The first codec of `averaging` that would send parameters mostly as zeros (sparse, low-rank), if any: groups refuse it. */
export function sparseCodecOf(averaging: Pick<Averaging, 'codec' | 'expertCodec'>): string | undefined {
  return [averaging.codec, averaging.expertCodec].find((spec) => spec !== undefined && !VALUE_CODECS.includes(spec.split(':')[0]));
}

/**
 * Checks untrusted JSON against JobSpec, once, where a job enters (a file, a request); the error
 * names `where` and the first offending field. Checks that need the tokenizer or the corpus are
 * src/train/job.ts's (jobConfig, jobDocuments).
 */
export function validateJob(value: unknown, where = 'job'): JobSpec {
  if (jobChecker.Check(value)) {
    const sparse = sparseCodecOf(value.averaging);
    if (value.averaging.topology === 'groups' && sparse) {
      throw new JobError(`${where}: /averaging: topology "groups" averages parameters, which codec "${sparse}" would mostly zero; `
        + `use ${VALUE_CODECS.join(', ')}`);
    }
    return value;
  }
  const error = jobChecker.Errors(value).First();
  throw new JobError(`${where}: ${error?.path || '/'}: ${error?.message ?? 'does not match the job schema'}`);
}

/** Where everything lives: the holders of each expert, and how to reach each node. */
export const PlanSchema = Type.Object({
  /** Bumped on every re-plan, so a stale plan can be told apart. */
  version: Count,
  experts: Type.Array(Type.Object({
    layer: Index,
    expert: Index,
    holders: Type.Array(PeerIdText, { maxItems: 256 }),
    /**
     * Nodes that held the expert in the previous version and gave it up while staying in the swarm: a new
     * holder copies the state from them (they keep serving it a while), so a move keeps the expert's training.
     */
    handover: Type.Optional(Type.Array(PeerIdText, { maxItems: 256 })),
  }), { maxItems: 65536 }),
  peers: Type.Array(Type.Object({ peerId: PeerIdText, addrs: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 16 }) }), { maxItems: 4096 }),
  /** Why some expert has fewer holders than the job's replication, when it does. */
  degraded: Type.Optional(Reason),
});
export type Plan = Static<typeof PlanSchema>;

/**
 * What changed from plan version `from` (which the node holds) to `version`: experts whose holders changed, peers added or
 * whose addresses changed, peers gone, and the new plan's `degraded`. plan.ts's applyPlanDelta rebuilds the whole plan,
 * which the signature sent with the delta covers. A heartbeat carries this instead of the whole plan (~140 bytes per node).
 */
export const PlanDeltaSchema = Type.Object({
  from: Count,
  version: Count,
  experts: PlanSchema.properties.experts,
  peers: PlanSchema.properties.peers,
  gone: Type.Array(PeerIdText, { maxItems: 4096 }),
  degraded: Type.Optional(Reason),
});
export type PlanDelta = Static<typeof PlanDeltaSchema>;

/** The coordinator's Ed25519 signature of planSigningBytes(jobId, plan), checked by nodes against its peer id. */
const PlanSignature = Type.Uint8Array({ maxByteLength: 256 });

/** A job's pretrained base: its manifest, the manifest's id and the coordinator's signature of that id (manifestSigningBytes). */
export const JobBaseSchema = Type.Object({
  id: Sha256Hex,
  manifest: BaseManifestSchema,
  signature: Type.Uint8Array({ maxByteLength: 256 }),
});
export type JobBase = Static<typeof JobBaseSchema>;

export const JoinResponseSchema = Type.Union([
  Type.Object({
    admitted: Type.Literal(true),
    version: Type.String({ maxLength: 32 }),
    job: JobSpecSchema,
    /** The job's tokenizer, a Hugging Face tokenizer.json. */
    tokenizer: Type.String({ maxLength: 16 * 1024 * 1024 }),
    plan: PlanSchema,
    planSignature: PlanSignature,
    heartbeatMs: HeartbeatPeriod,
    /** Micro-batches the job has trained so far: above 0, a joining node fetches current state from its peers. */
    completedBatches: Count,
    /** The checkpoint the job starts from (its tensors travel as blobs); absent: the job trains from the seeded init. */
    base: Type.Optional(JobBaseSchema),
  }),
  Type.Object({
    admitted: Type.Literal(false),
    version: Type.String({ maxLength: 32 }),
    reason: Reason,
    /** Not now (no job is running, or this one has no room for the node): ask again after this long. */
    retryMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
    /** The swarm is over (a one-job coordinator whose job ended): leave. */
    closed: Type.Optional(Type.Boolean()),
  }),
]);
export type JoinResponse = Static<typeof JoinResponseSchema>;

// --- heartbeat: a node's progress, kept by the coordinator as its nodes' latest stats -------

export const HeartbeatSchema = Type.Object({
  jobId: Id,
  step: Count,
  /** Training loss of the last step; absent before the first one. */
  loss: Type.Optional(Type.Number()),
  /** The node's latest held-out loss, when it has evaluated one. */
  heldOut: Type.Optional(Type.Number()),
  /** The node process's resident memory. */
  rssBytes: Type.Optional(Count),
  /** Bytes live on its kernel heap (weights, optimizer state, activations, scratch): what its memory budget mostly bounds. */
  heapBytes: Type.Optional(Count),
  /** Bytes of the parameter updates it encoded, and the same updates as plain f32 (their ratio is the compression). */
  updateBytes: Type.Optional(Count),
  updateRawBytes: Type.Optional(Count),
  tokensPerSecond: NonNegative,
  bytesSent: Count,
  bytesReceived: Count,
  /** Local steps since the node's parameters were last averaged. */
  staleness: Count,
  /** Expert calls that no replica answered (their tokens dropped the expert). */
  droppedExpertCalls: Count,
  /** The plan version the node runs on; the reply carries a newer plan when there is one. */
  planVersion: Count,
  /** Updates from peers this node refused (NaN/Inf, wrong shape, norm far outside the group's), and the peers that sent them. */
  refusedUpdates: Type.Optional(Count),
  flaggedPeers: Type.Optional(Type.Array(PeerIdText, { maxItems: 256 })),
  /** The node's addresses now (they change: a relay reservation, an address found reachable), as in its join. */
  addrs: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 16 })),
  /** Rows its routers sent each expert since its last heartbeat, at index layer · numExperts + expert (the plan balances them). */
  expertRows: Type.Optional(Type.Array(Count, { maxItems: 65536 })),
});
export type Heartbeat = Static<typeof HeartbeatSchema>;

export const HeartbeatReplySchema = Type.Object({
  accepted: Type.Boolean(),
  /** Heartbeat at this period from now on: the coordinator stretches it as the swarm grows (absent: keep the current one). */
  heartbeatMs: Type.Optional(HeartbeatPeriod),
  reason: Type.Optional(Reason),
  /** A newer plan than the heartbeat's planVersion, whole (when the coordinator no longer has the node's version)... */
  plan: Type.Optional(PlanSchema),
  /** ...or as the changes from the node's version. */
  planDelta: Type.Optional(PlanDeltaSchema),
  /** Present with `plan` or `planDelta`: the signature of the whole new plan. */
  planSignature: Type.Optional(PlanSignature),
  /** The job is over (or the node was removed): stop training and leave. */
  stop: Type.Boolean(),
});
export type HeartbeatReply = Static<typeof HeartbeatReplySchema>;

/** Reply to messages that need only a yes or no. */
export const AckSchema = Type.Object({ accepted: Type.Boolean(), reason: Type.Optional(Reason) });
export type Ack = Static<typeof AckSchema>;

// --- leases: micro-batches handed out with a deadline -----------------------------------------

export const LeaseRequestSchema = Type.Object({ jobId: Id, maxBatches: Type.Integer({ minimum: 1, maximum: 1024 }) });
export type LeaseRequest = Static<typeof LeaseRequestSchema>;

export const LeaseGrantSchema = Type.Object({
  jobId: Id,
  leaseId: Count,
  /** Empty when no batch is available right now. */
  batchIds: Type.Array(Count, { maxItems: 1024 }),
  /** After this the batches are handed to another node. */
  deadline: Timestamp,
  /** Every batch of the job is trained: nothing more will be granted. */
  done: Type.Boolean(),
  /** The coordinator's plan version: a node on an older plan fetches the new one before training. */
  planVersion: Count,
});
export type LeaseGrant = Static<typeof LeaseGrantSchema>;

export const LeaseReportSchema = Type.Object({
  jobId: Id,
  leaseId: Count,
  completedBatchIds: Type.Array(Count, { maxItems: 1024 }),
  /** The node is shutting down: its unfinished batches go back to the pool now. */
  leaving: Type.Optional(Type.Boolean()),
});
export type LeaseReport = Static<typeof LeaseReportSchema>;

// --- expert calls: tokens routed to an expert hosted elsewhere ------------------------------

/**
 * One direction of an expert call. Forward: the request holds the expert's input rows
 * [rows, hidden] and the response its output. Backward: the request holds the output
 * gradient and either, in `input`, the forward's input again (so any holder can serve it) or,
 * in `forwardCall`, the forward this holder answered and kept; the response holds the input
 * gradient.
 */
export const ExpertCallSchema = Type.Object({
  jobId: Id,
  step: Count,
  /** Chosen by the caller, unique among its calls in flight. */
  call: Count,
  layer: Index,
  expert: Index,
  rows: Type.Integer({ minimum: 0, maximum: 2 ** 24 }),
  tensor: TensorSchema,
  /** I8 `tensor`: its F32 scales, [rows, blocks per row]; a value is its code × its block's scale. */
  scales: Type.Optional(TensorSchema),
  /** Backward requests: the forward's input rows, shaped like `tensor`. */
  input: Type.Optional(TensorSchema),
  /** I8 `input`: its scales, as `scales`. */
  inputScales: Type.Optional(TensorSchema),
  /**
   * Backward requests in a batch (expertCalls), instead of `input`: the `call` of the forward on the same rows that
   * this holder answered, whose input and activations it kept. A holder that no longer has them refuses the call
   * with `needsInput`, and the caller sends it again with its input.
   */
  forwardCall: Type.Optional(Count),
});
export type ExpertCall = Static<typeof ExpertCallSchema>;

/** Calls in one expertCalls request: a layer's calls to one holder in one direction (a layer has at most 1024 experts). */
export const MAX_EXPERT_CALLS = 1024;

/** Several calls to one holder, all forward or all backward, each answered or refused on its own. */
export const ExpertCallsSchema = Type.Object({
  direction: Type.Union([Type.Literal('forward'), Type.Literal('backward')]),
  calls: Type.Array(ExpertCallSchema, { minItems: 1, maxItems: MAX_EXPERT_CALLS }),
});
export type ExpertCalls = Static<typeof ExpertCallsSchema>;

/** A call of a batch the holder would not answer. */
export const ExpertRefusalSchema = Type.Object({
  call: Count,
  reason: Reason,
  /** A backward named a forward (`forwardCall`) whose input this holder no longer keeps: send it with its input. */
  needsInput: Type.Optional(Type.Boolean()),
});
export type ExpertRefusal = Static<typeof ExpertRefusalSchema>;

/** The reply to ExpertCalls: every call of the request, once, among the answers (its result rows) or the refusals. */
export const ExpertRepliesSchema = Type.Object({
  answers: Type.Array(ExpertCallSchema, { maxItems: MAX_EXPERT_CALLS }),
  refusals: Type.Array(ExpertRefusalSchema, { maxItems: MAX_EXPERT_CALLS }),
});
export type ExpertReplies = Static<typeof ExpertRepliesSchema>;

// --- averaging: parameter deltas between the holders of a group ------------------------------

export const ParameterDeltaSchema = Type.Object({
  jobId: Id,
  /** "trunk" or "expert.<layer>.<expert>" (group.ts builds and parses them). */
  group: Id,
  round: Count,
  /** Local steps the sender took since the round's base: the receiver weights by staleness. */
  steps: Count,
  /** How the parts encode the delta (a codec of src/compress, e.g. "f32" or "int8-block32"). */
  codec: Id,
  parts: Parts,
  /** Which part of the group's delta this is (src/averaging/partition.ts); absent: all of it. */
  part: Type.Optional(Type.Object({ index: Index, count: Type.Integer({ minimum: 1, maximum: 2 ** 20 }) })),
  /**
   * reduce-scatter: "reduce", a holder's part of its delta for the part's owner; "gather", the
   * owner's aggregate of the part for every holder. Absent: all-to-all.
   */
  phase: Type.Optional(Type.Union([Type.Literal('reduce'), Type.Literal('gather')])),
  /** reduce: the L2 norm of the sender's whole delta, what the owner's outlier screen judges. */
  norm: Type.Optional(NonNegative),
});
export type ParameterDelta = Static<typeof ParameterDeltaSchema>;

/** The most deltas one `deltas` request carries. */
export const MAX_DELTAS_PER_REQUEST = 256;

/** Deltas of several groups for one holder, posted in the same turn (a round's groups), in one request. */
export const ParameterDeltasSchema = Type.Object({
  deltas: Type.Array(ParameterDeltaSchema, { minItems: 1, maxItems: MAX_DELTAS_PER_REQUEST }),
});
export type ParameterDeltas = Static<typeof ParameterDeltasSchema>;

/** The deltas of a `deltas` request the holder refused, by index, each with its reason; the others were taken. */
export const DeltaRefusalsSchema = Type.Object({
  refusals: Type.Array(Type.Object({ index: Index, reason: Reason }), { maxItems: MAX_DELTAS_PER_REQUEST }),
});
export type DeltaRefusals = Static<typeof DeltaRefusalsSchema>;

// --- state fetch: a new or returning node loads the newest parameters -----------------------

export const StateRequestSchema = Type.Object({
  jobId: Id,
  group: Id,
  /** The tensors wanted; empty asks only for the list (fetch large groups a few names at a time). */
  names: Type.Array(TensorName, { maxItems: 4096 }),
});
export type StateRequest = Static<typeof StateRequestSchema>;

export const StateResponseSchema = Type.Object({
  jobId: Id,
  group: Id,
  round: Count,
  /** Every tensor name the group has. */
  available: Type.Array(TensorName, { maxItems: 4096 }),
  parts: Parts,
});
export type StateResponse = Static<typeof StateResponseSchema>;

// --- blobs: a base checkpoint's tensors by sha256, a chunk at a time ---------------------------

/** Bytes [offset, offset + length) of the blob named by its sha256 (a tensor of a signed base manifest). */
export const BlobChunkRequestSchema = Type.Object({
  blob: Sha256Hex,
  offset: Count,
  length: Type.Integer({ minimum: 1, maximum: MAX_BLOB_CHUNK_BYTES }),
});
export type BlobChunkRequest = Static<typeof BlobChunkRequestSchema>;

/** The bytes asked for; the requester checks their length and sha256 against the manifest. */
export const BlobChunkSchema = Type.Object({
  blob: Sha256Hex,
  offset: Count,
  data: Type.Uint8Array({ maxByteLength: MAX_BLOB_CHUNK_BYTES }),
});
export type BlobChunk = Static<typeof BlobChunkSchema>;

// --- error replies --------------------------------------------------------------------------

/** relay-limit: the reply is larger than the relayed connection it would travel on may still carry. */
export const ERROR_CODES = ['malformed', 'too-large', 'version', 'refused', 'busy', 'internal', 'relay-limit'] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** What a responder sends instead of a response when it will not or cannot answer. */
export const ErrorReplySchema = Type.Object({
  code: Type.Union(ERROR_CODES.map((c) => Type.Literal(c))),
  message: Reason,
});
export type ErrorReply = Static<typeof ErrorReplySchema>;
