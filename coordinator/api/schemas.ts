// TypeBox schemas of the HTTP API: the job request (derived from proto's JobSpecSchema) and the views
// the routes answer with. Each is proved at compile time to match the port's type in service.ts.
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { JobSpecSchema } from '../../proto/index.ts';
import type {
  CheckpointView, JobRequest, JobView, MetricPoint, NodeView, Placement, SwarmInfo,
} from './service.ts';

const Count = Type.Integer({ minimum: 0 });
const Timestamp = Type.Number({ minimum: 0, description: 'milliseconds since the Unix epoch' });
const Bytes = Type.Number({ minimum: 0 });

/** The schema with every object in it closed to unknown properties (records, which list none, stay open). */
function closed<T extends TSchema>(schema: T): T {
  const properties = schema.properties as Record<string, TSchema> | undefined;
  if (properties !== undefined) {
    const inner = Object.fromEntries(Object.entries(properties).map(([key, property]) => [key, closed(property)]));
    return { ...schema, properties: inner, additionalProperties: false };
  }
  if (Array.isArray(schema.anyOf)) return { ...schema, anyOf: schema.anyOf.map((option: TSchema) => closed(option)) };
  return schema;
}

/** POST /api/jobs: any JobSpec field but jobId and corpus, each optional, plus name, base and corpus; nothing else, at any depth. */
export const JobRequestSchema = closed(Type.Composite([
  Type.Partial(Type.Omit(JobSpecSchema, ['jobId', 'corpus'])),
  Type.Object({
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'shown in lists; default: the job id' })),
    base: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'a model folder (GET /api/models)' })),
    corpus: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'a corpus (GET /api/corpora)' })),
  }),
]));

export const JobStateSchema = Type.Union([
  Type.Literal('queued'), Type.Literal('running'), Type.Literal('paused'), Type.Literal('done'), Type.Literal('failed'), Type.Literal('cancelled'),
]);

export const JobViewSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: JobStateSchema,
  spec: JobSpecSchema,
  base: Type.Optional(Type.String()),
  createdAt: Timestamp,
  startedAt: Type.Optional(Timestamp),
  endedAt: Type.Optional(Timestamp),
  error: Type.Optional(Type.String()),
  completed: Count,
  total: Count,
  etaSeconds: Type.Optional(Type.Number({ minimum: 0 })),
  hasResult: Type.Boolean(),
});

export const MetricPointSchema = Type.Object({
  at: Timestamp,
  completed: Count,
  loss: Type.Optional(Type.Number()),
  heldOut: Type.Optional(Type.Number()),
  tokensPerSecond: Type.Number(),
  nodes: Count,
  bytesSent: Bytes,
  bytesReceived: Bytes,
  refusedUpdates: Count,
  droppedExpertCalls: Count,
  staleness: Type.Number(),
  updateBytes: Type.Optional(Bytes),
  updateRawBytes: Type.Optional(Bytes),
});

const ExpertCell = Type.Object({ layer: Count, expert: Count });

export const NodeViewSchema = Type.Object({
  nodeId: Type.String(),
  status: Type.Union([Type.Literal('training'), Type.Literal('idle'), Type.Literal('slow'), Type.Literal('gone')]),
  cores: Count,
  gemmGflops: Type.Number(),
  memoryBytes: Bytes,
  memoryUsedBytes: Type.Optional(Bytes),
  heapUsedBytes: Type.Optional(Bytes),
  checkpointing: Type.Optional(Type.Literal(true)),
  addrs: Type.Array(Type.String()),
  jobId: Type.Optional(Type.String()),
  experts: Type.Array(ExpertCell),
  step: Count,
  loss: Type.Optional(Type.Number()),
  tokensPerSecond: Type.Number(),
  bytesSent: Bytes,
  bytesReceived: Bytes,
  flaggedPeers: Type.Array(Type.String()),
  lastSeen: Timestamp,
  firstSeen: Timestamp,
});

export const PlacementSchema = Type.Object({
  jobId: Type.String(),
  version: Count,
  numLayers: Count,
  numExperts: Count,
  replication: Count,
  cells: Type.Array(Type.Object({ layer: Count, expert: Count, holders: Type.Array(Type.String()) })),
  degraded: Type.Optional(Type.String()),
});

export const CheckpointViewSchema = Type.Object({ round: Count, completed: Count, createdAt: Timestamp, bytes: Bytes });

export const SwarmInfoSchema = Type.Object({
  peerId: Type.String(),
  addrs: Type.Array(Type.String()),
  version: Type.String(),
  joinTokenRequired: Type.Boolean(),
  runningJob: Type.Optional(Type.String()),
});

export const CorpusSchema = Type.Object({ name: Type.String(), bytes: Bytes, bundled: Type.Boolean() });
export const ModelSchema = Type.Object({ name: Type.String(), bytes: Bytes });

/** Names of uploaded corpora and models: a folder or file name of the coordinator's, so no paths. */
export const UploadNameSchema = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' });

/** The files a model folder may hold (a Hugging Face checkpoint). */
export const MODEL_FILE = /^(config\.json|tokenizer\.json|tokenizer_config\.json|model\.safetensors\.index\.json|[\w.-]+\.safetensors)$/;

/** What POST /api/jobs/:id/sample uses for a field the request leaves out. */
export const SAMPLE_DEFAULTS = { maxTokens: 64, temperature: 0.8 } as const;

export const SampleRequestSchema = Type.Object({
  prompt: Type.String({ maxLength: 4096 }),
  maxTokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 512, default: SAMPLE_DEFAULTS.maxTokens })),
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2, default: SAMPLE_DEFAULTS.temperature })),
}, { additionalProperties: false });
export const SampleSchema = Type.Object({ text: Type.String(), round: Count });

/** The error body of every 4xx and 5xx. */
export const ErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  error: Type.String(),
  message: Type.String(),
  field: Type.Optional(Type.String({ description: 'the offending field, e.g. body/lr' })),
});

// Compile-time proofs: a schema that drifts from the port's type fails `tsc` here.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Proved<T extends true> = T;
export type SchemaProofs = [
  Proved<Same<Static<typeof JobRequestSchema>, JobRequest>>,
  Proved<Same<Static<typeof JobViewSchema>, JobView>>,
  Proved<Same<Static<typeof MetricPointSchema>, MetricPoint>>,
  Proved<Same<Static<typeof NodeViewSchema>, NodeView>>,
  Proved<Same<Static<typeof PlacementSchema>, Placement>>,
  Proved<Same<Static<typeof CheckpointViewSchema>, CheckpointView>>,
  Proved<Same<Static<typeof SwarmInfoSchema>, SwarmInfo>>,
];
