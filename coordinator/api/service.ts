// The port between the coordinator's HTTP API (and its web UI) and the swarm it runs: everything a
// route may read or change, as plain data. coordinator/service.ts implements it over the job store
// and the libp2p swarm; the route tests drive the API with an in-memory implementation.
import type { JobSpec } from '../../proto/index.ts';

export const JOB_STATES = ['queued', 'running', 'paused', 'done', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

/**
 * What a client asks for: any JobSpec field but the id (the coordinator names jobs), each optional
 * (the demo job's value is the default), plus a base model and a corpus named by the coordinator.
 */
export type JobRequest = Partial<Omit<JobSpec, 'jobId' | 'corpus'>> & {
  /** Shown in lists; default: the job id. */
  name?: string;
  /** A model folder of the coordinator's models directory (see models()); absent: train from scratch. */
  base?: string;
  /** A bundled corpus or one uploaded with addCorpus (see corpora()). */
  corpus?: string;
};

export interface JobView {
  id: string;
  name: string;
  state: JobState;
  spec: JobSpec;
  base?: string;
  createdAt: number;
  startedAt?: number;
  endedAt?: number;
  /** Why it failed, or what the last state change said. */
  error?: string;
  completed: number;
  total: number;
  /** Seconds to the end at the recent pace; absent when not running or too early to tell. */
  etaSeconds?: number;
  /** The adapter or checkpoint is written and may be downloaded. */
  hasResult: boolean;
}

/** One sample of a job's metrics (all nodes together), taken every few seconds while it runs. */
export interface MetricPoint {
  at: number;
  completed: number;
  /** Mean training loss of the nodes' last steps. */
  loss?: number;
  /** Held-out loss, when a node evaluated it. */
  heldOut?: number;
  tokensPerSecond: number;
  nodes: number;
  /** Totals over the job's nodes since they joined it. */
  bytesSent: number;
  bytesReceived: number;
  refusedUpdates: number;
  droppedExpertCalls: number;
  /** Mean local steps since the last averaging. */
  staleness: number;
  /** Parameter updates the nodes encoded, in bytes, and the same updates as plain f32: raw / encoded is the compression ratio. */
  updateBytes?: number;
  updateRawBytes?: number;
}

export type NodeStatus = 'training' | 'idle' | 'slow' | 'gone';

export interface NodeView {
  nodeId: string;
  status: NodeStatus;
  cores: number;
  gemmGflops: number;
  memoryBytes: number;
  /** Resident memory of the node's process, as it last reported. */
  memoryUsedBytes?: number;
  /** Bytes live on its kernel heap (weights, optimizer state, activations), as it last reported. */
  heapUsedBytes?: number;
  /** Present when its share of the job fits its budget only with gradient checkpointing, which it then runs. */
  checkpointing?: true;
  addrs: string[];
  /** The job it trains, when it does. */
  jobId?: string;
  experts: { layer: number; expert: number }[];
  step: number;
  loss?: number;
  tokensPerSecond: number;
  bytesSent: number;
  bytesReceived: number;
  flaggedPeers: string[];
  lastSeen: number;
  firstSeen: number;
}

/** Layers × experts of a job's model, each cell with its holders. */
export interface Placement {
  jobId: string;
  version: number;
  numLayers: number;
  numExperts: number;
  replication: number;
  cells: { layer: number; expert: number; holders: string[] }[];
  degraded?: string;
}

export interface CheckpointView {
  round: number;
  completed: number;
  createdAt: number;
  bytes: number;
}

/** A set of files to send as one archive. */
export interface FileSet {
  /** The archive's top folder. */
  name: string;
  files: { name: string; path: string; bytes: number }[];
}

export interface SwarmInfo {
  peerId: string;
  /** Multiaddrs nodes join (`swarmtrain node --join ...`). */
  addrs: string[];
  version: string;
  joinTokenRequired: boolean;
  runningJob?: string;
}

/** Counters for Prometheus, read on each scrape. */
export interface SwarmCounters {
  jobs: Record<JobState, number>;
  nodesAlive: number;
  leasesOutstanding: number;
  completedBatches: number;
  tokensPerSecond: number;
  bytesSent: number;
  bytesReceived: number;
  refusedUpdates: number;
}

/** Everything the live event stream carries; `seq` grows by one per event of this process. */
export type SwarmEvent = { seq: number; at: number } & (
  | { type: 'job'; job: JobView }
  | { type: 'job-deleted'; jobId: string }
  | { type: 'metrics'; jobId: string; point: MetricPoint }
  | { type: 'node'; change: 'joined' | 'rejoined' | 'left' | 'died'; node: NodeView }
  | { type: 'plan'; placement: Placement }
  | { type: 'checkpoint'; jobId: string; checkpoint: CheckpointView }
);

export type ServiceErrorCode = 'invalid' | 'not-found' | 'conflict' | 'too-large';

/** A request the service turns down: 400 invalid (naming `field`), 404 not-found, 409 conflict (wrong state), 413 too-large. */
export class ServiceError extends Error {
  override name = 'ServiceError';
  constructor(readonly code: ServiceErrorCode, message: string, readonly field?: string) {
    super(message);
  }
}

export interface SwarmService {
  swarm(): SwarmInfo;
  counters(): SwarmCounters;

  /** Validates the request against what only the service knows (model, corpus, tokenizer), queues the job. */
  createJob(request: JobRequest): Promise<JobView>;
  listJobs(): JobView[];
  getJob(id: string): JobView | undefined;
  pauseJob(id: string): JobView;
  resumeJob(id: string): JobView;
  /** Keeps what was checkpointed. */
  cancelJob(id: string): JobView;
  /** Only a job that is not running or paused; removes its files too. */
  deleteJob(id: string): void;
  /** At most `points` samples spread over the job's whole run (downsampled when there are more). */
  metrics(id: string, points: number): MetricPoint[];
  checkpoints(id: string): CheckpointView[];
  checkpointFiles(id: string, round: number): FileSet | undefined;
  /** The PEFT adapter or Hugging Face checkpoint, with the tokenizer; undefined until written. */
  result(id: string): FileSet | undefined;
  /** Text from the job's latest checkpoint (or its base, before the first). */
  sample(id: string, request: { prompt: string; maxTokens: number; temperature: number }): Promise<{ text: string; round: number }>;

  nodes(): NodeView[];
  placement(jobId: string): Placement | undefined;

  /** Bundled corpora and uploaded ones. */
  corpora(): { name: string; bytes: number; bundled: boolean }[];
  /** Takes the file at `path` (a .txt, or .jsonl with a `text` field per line) as corpus `name`; the file is moved. */
  addCorpus(name: string, path: string): Promise<{ name: string; bytes: number; bundled: boolean }>;
  /** Model folders under the coordinator's models directory. */
  models(): { name: string; bytes: number }[];
  /** Takes uploaded files (config.json, tokenizer.json, safetensors and their index) as model folder `name`; the files are moved. */
  addModel(name: string, files: { name: string; path: string }[]): Promise<{ name: string; bytes: number }>;

  /** Calls `listener` for every event from now on; returns the unsubscribe. */
  subscribe(listener: (event: SwarmEvent) => void): () => void;
}
