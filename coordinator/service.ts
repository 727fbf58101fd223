// The coordinator as a service (SwarmService, the port the HTTP API and web UI use) over a data
// directory: coordinator.db (the job store), coordinator.key (its libp2p identity), models/<name>/
// (Hugging Face folders jobs may start from), corpora/<name>.txt|.jsonl (uploaded text) and
// jobs/<id>/ (each job's tokenizer.json, checkpoints/ and result/). Jobs are checked when created
// (their tokenizer is made then and kept), queued in the store and run by the swarm one at a time.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { extname, join, relative } from 'node:path';
import { JobError, PROTOCOL_VERSION, validateJob, type JobSpec } from '../proto/index.ts';
import { demoJob } from '../src/harness/demo-job.ts';
import { CORPUS_NAMES } from '../src/train/corpus.ts';
import { continuation, loadGenerator } from '../src/train/cli.ts';
import type { ModelConfig } from '../src/model/config.ts';
import { jobConfig, jobDocuments } from '../src/train/job.ts';
import { CorpusError, loadTextCorpus, type TextCorpus } from '../src/train/text-corpus.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { tokenizerFromJson, type Tokenizer } from '../src/train/tokenizers/index.ts';
import { buildManifest } from '../src/weights/index.ts';
import {
  JOB_STATES, ServiceError, type CheckpointView, type FileSet, type JobRequest, type JobView, type MetricPoint, type NodeStatus,
  type NodeView, type Placement, type SwarmCounters, type SwarmEvent, type SwarmInfo, type SwarmService,
} from './api/service.ts';
import { latestCheckpoint } from './checkpoints.ts';
import { jobOnText } from './corpus.ts';
import { writeResult } from './result.ts';
import { prepareJob, type DistributiveOmit, type JobAssets } from './run.ts';
import { CoordinatorServer, type CoordinatorEvent, type CoordinatorOptions } from './server.ts';
import { JobStore, StateConflictError, type JobRow } from './store.ts';
import type { StoredShardPlan } from './planner.ts';

export type ServiceOptions = Omit<CoordinatorOptions, 'job' | 'tokenizer' | 'base' | 'assets' | 'store' | 'keyFile' | 'dataDir'> & {
  dataDir: string;
};

/** Vocabulary of the tokenizer trained for a job without a base that names none. */
const DEFAULT_VOCAB = 1024;
const MODEL_FILE = /^(config\.json|tokenizer\.json|tokenizer_config\.json|model\.safetensors\.index\.json|[\w.-]+\.safetensors)$/;
const NAME = /^[A-Za-z0-9][\w.-]{0,63}$/;

const fail = (code: ServiceError['code'], message: string, field?: string): never => {
  throw new ServiceError(code, message, field);
};

/** Every file under `dir`, as paths relative to it. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

function fileSet(name: string, dir: string): FileSet {
  return { name, files: filesUnder(dir).map((file) => ({ name: file, path: join(dir, file), bytes: statSync(join(dir, file)).size })) };
}

const folderBytes = (dir: string) => filesUnder(dir).reduce((total, file) => total + statSync(join(dir, file)).size, 0);

export class CoordinatorService implements SwarmService {
  private server!: CoordinatorServer;
  private readonly listeners = new Set<(event: SwarmEvent) => void>();
  private seq = 0;

  private constructor(private readonly dataDir: string, readonly store: JobStore, private readonly options: ServiceOptions) {}

  static async start(options: ServiceOptions): Promise<CoordinatorService> {
    const { dataDir } = options;
    for (const dir of ['models', 'corpora', 'jobs']) mkdirSync(join(dataDir, dir), { recursive: true });
    const store = JobStore.open(join(dataDir, 'coordinator.db'));
    const service = new CoordinatorService(dataDir, store, options);
    try {
      service.server = await CoordinatorServer.start({
        ...options, store, dataDir, keyFile: join(dataDir, 'coordinator.key'),
        assets: (row) => service.assets(row),
        onEvent: (event) => service.onEvent(event),
      });
    } catch (err) {
      store.close();
      throw err;
    }
    return service;
  }

  get coordinator(): CoordinatorServer {
    return this.server;
  }

  async stop(): Promise<void> {
    await this.server.stop();
    this.store.close();
  }

  swarm(): SwarmInfo {
    const running = this.server.current;
    return {
      peerId: this.server.peerId, addrs: this.server.addrs, version: PROTOCOL_VERSION, joinTokenRequired: this.options.joinToken !== '',
      ...(running ? { runningJob: running.id } : {}),
    };
  }

  counters(): SwarmCounters {
    const jobs = Object.fromEntries(JOB_STATES.map((state) => [state, 0])) as SwarmCounters['jobs'];
    for (const job of this.store.jobs()) jobs[job.state]++;
    const run = this.server.current;
    const stats = run?.membership.alive().flatMap((node) => (node.stats ? [node.stats] : [])) ?? [];
    const total = (pick: (s: (typeof stats)[number]) => number) => stats.reduce((a, s) => a + pick(s), 0);
    return {
      jobs, nodesAlive: this.nodes().filter((node) => node.status !== 'gone').length, leasesOutstanding: run?.leases.leased ?? 0,
      completedBatches: run?.leases.completed ?? 0, tokensPerSecond: total((s) => s.tokensPerSecond),
      bytesSent: total((s) => s.bytesSent), bytesReceived: total((s) => s.bytesReceived), refusedUpdates: total((s) => s.refusedUpdates ?? 0),
    };
  }

  // --- jobs ------------------------------------------------------------------------------------

  async createJob(request: JobRequest): Promise<JobView> {
    const { name, base, corpus, ...fields } = request;
    const id = `job-${randomUUID().slice(0, 8)}`;
    const defaults = demoJob(fields.totalBatches ?? 64, fields.expectedNodes ?? 1);
    const candidate = { ...defaults, ...fields, jobId: id, corpus: corpus ?? defaults.corpus };
    if (base === undefined && candidate.model.vocabSize === undefined) candidate.model = { ...candidate.model, vocabSize: DEFAULT_VOCAB };
    let spec: JobSpec;
    try {
      spec = validateJob(candidate, 'job');
    } catch (err) {
      const field = /^job: \/([^:]+):/.exec((err as Error).message)?.[1];
      return fail('invalid', (err as Error).message, field);
    }
    const baseDir = base === undefined ? undefined : this.modelDir(base);
    const jobDir = join(this.dataDir, 'jobs', id);
    try {
      const text = this.uploadedCorpus(spec.corpus);
      const own = text && jobOnText(spec, text);
      const tokenizer = baseDir ? this.baseTokenizer(baseDir, base!)
        : BpeTokenizer.train(jobDocuments(own?.job ?? spec, own?.text).documents, { vocabSize: Number(spec.model.vocabSize) });
      const manifest = baseDir ? (await buildManifest(baseDir)).manifest : undefined;
      prepareJob(own?.job ?? spec, tokenizer, this.options.replication ?? 2, manifest, own?.text);
      await mkdir(jobDir, { recursive: true });
      await writeFile(join(jobDir, 'tokenizer.json'), JSON.stringify(tokenizer.toHuggingFace()));
    } catch (err) {
      await rm(jobDir, { recursive: true, force: true });
      if (err instanceof ServiceError) throw err;
      return fail('invalid', err instanceof JobError ? err.message : `job: ${(err as Error).message}`);
    }
    this.store.addJob({ id, name: name ?? id, spec, ...(base === undefined ? {} : { base }), createdAt: Date.now() });
    this.publish({ type: 'job', job: this.view(this.store.job(id)!) });
    void this.server.schedule();
    return this.view(this.store.job(id)!);
  }

  listJobs(): JobView[] {
    return this.store.jobs().map((row) => this.view(row));
  }

  getJob(id: string): JobView | undefined {
    const row = this.store.job(id);
    return row && this.view(row);
  }

  pauseJob(id: string): JobView {
    return this.change(id, () => this.server.pause(id));
  }

  resumeJob(id: string): JobView {
    return this.change(id, () => this.server.resume(id));
  }

  cancelJob(id: string): JobView {
    const { state } = this.row(id);
    if (state === 'done' || state === 'failed' || state === 'cancelled') fail('conflict', `job ${id} is ${state}: it cannot be cancelled`);
    // The state changes at once; the run's protocols and checkpoints under way are wound down after.
    this.server.cancel(id).catch((err: Error) => console.error(`[coordinator] cancelling ${id}:`, err));
    return this.view(this.row(id));
  }

  deleteJob(id: string): void {
    const row = this.row(id);
    if (row.state === 'running' || row.state === 'paused') fail('conflict', `job ${id} is ${row.state}: cancel it first`);
    this.store.deleteJob(id);
    rmSync(join(this.dataDir, 'jobs', id), { recursive: true, force: true });
    this.publish({ type: 'job-deleted', jobId: id });
  }

  metrics(id: string, points: number): MetricPoint[] {
    this.row(id);
    return this.store.metrics(id, points);
  }

  checkpoints(id: string): CheckpointView[] {
    this.row(id);
    return this.store.checkpoints(id);
  }

  checkpointFiles(id: string, round: number): FileSet | undefined {
    this.row(id);
    const dir = join(this.dataDir, 'jobs', id, 'checkpoints', String(round));
    return existsSync(join(dir, 'manifest.json')) ? fileSet(`${id}-checkpoint-${round}`, dir) : undefined;
  }

  result(id: string): FileSet | undefined {
    this.row(id);
    const dir = join(this.dataDir, 'jobs', id, 'result');
    return existsSync(dir) ? fileSet(`${id}-result`, dir) : undefined;
  }

  /** From the job's result once written, else its newest checkpoint turned into a result in a temporary folder. */
  async sample(id: string, request: { prompt: string; maxTokens: number; temperature: number }): Promise<{ text: string; round: number }> {
    const row = this.row(id);
    const jobDir = join(this.dataDir, 'jobs', id);
    const { checkpoint } = await latestCheckpoint(join(jobDir, 'checkpoints'));
    let dir = join(jobDir, 'result');
    let temporary: string | undefined;
    if (!existsSync(dir)) {
      if (!checkpoint) return fail('conflict', `job ${id} has no checkpoint yet to sample from`);
      temporary = dir = await mkdtemp(join(tmpdir(), 'swarmtrain-sample-'));
      const assets = await this.assets(row);
      await writeResult(dir, {
        job: row.spec, config: jobConfig(row.spec, assets.tokenizer, assets.base?.manifest.config as ModelConfig | undefined),
        groups: checkpoint.groups, tokenizerJson: JSON.stringify(assets.tokenizer.toHuggingFace()),
        ...(assets.base ? { baseModel: assets.base.name } : {}),
      });
    }
    const lora = row.spec.mode === 'lora';
    const baseDir = lora ? (row.base === undefined ? join(dir, 'base') : this.modelDir(row.base)) : dir;
    const loaded = await loadGenerator(baseDir, join(dir, 'tokenizer.json'), lora ? dir : undefined, 1);
    try {
      const text = await continuation(loaded.model, loaded.tokenizer, request.prompt, {
        maxNewTokens: request.maxTokens, temperature: request.temperature, topP: 0.95, seed: Date.now() % 2 ** 31,
      });
      return { text, round: checkpoint?.manifest.round ?? 0 };
    } finally {
      await loaded.kernels.close();
      if (temporary) await rm(temporary, { recursive: true, force: true });
    }
  }

  // --- swarm -----------------------------------------------------------------------------------

  nodes(): NodeView[] {
    const run = this.server.current;
    const now = Date.now();
    const heartbeatMs = this.options.heartbeatMs ?? 1000;
    return this.server.swarmNodes().map((node) => {
      const member = run?.membership.get(node.nodeId);
      const training = member?.status === 'alive';
      const status: NodeStatus = training
        ? (now - member.lastSeen > 3 * heartbeatMs ? 'slow' : 'training')
        : (now - node.lastSeen <= 5 * heartbeatMs ? 'idle' : 'gone');
      const stats = training ? member.stats : undefined;
      return {
        nodeId: node.nodeId, status, cores: node.cores, gemmGflops: node.gemmGflops, memoryBytes: node.memoryBytes, addrs: node.addrs,
        ...(stats?.rssBytes === undefined ? {} : { memoryUsedBytes: stats.rssBytes }),
        ...(stats?.heapBytes === undefined ? {} : { heapUsedBytes: stats.heapBytes }),
        ...(training && run!.plan?.checkpointing.includes(node.nodeId) ? { checkpointing: true as const } : {}),
        ...(training ? { jobId: run!.id } : {}),
        experts: training ? (run!.plan?.nodes.get(node.nodeId) ?? []).map(({ layer, expert }) => ({ layer, expert })) : [],
        step: stats?.step ?? 0, ...(stats?.loss === undefined ? {} : { loss: stats.loss }), tokensPerSecond: stats?.tokensPerSecond ?? 0,
        bytesSent: stats?.bytesSent ?? 0, bytesReceived: stats?.bytesReceived ?? 0, flaggedPeers: stats?.flaggedPeers ?? [],
        lastSeen: training ? Math.max(member.lastSeen, node.lastSeen) : node.lastSeen, firstSeen: node.firstSeen,
      };
    });
  }

  placement(jobId: string): Placement | undefined {
    this.row(jobId);
    const stored = this.store.plan<StoredShardPlan>(jobId);
    if (!stored) return undefined;
    const { plan } = stored;
    const numExperts = Math.max(...plan.experts.map((e) => e.expert)) + 1;
    return {
      jobId, version: plan.version, numLayers: plan.experts.length / numExperts, numExperts, replication: plan.replication,
      cells: plan.experts.map(({ layer, expert, holders }) => ({ layer, expert, holders: [...holders] })),
      ...(plan.degraded ? { degraded: plan.degraded.reason } : {}),
    };
  }

  // --- corpora and models ----------------------------------------------------------------------

  corpora(): { name: string; bytes: number; bundled: boolean }[] {
    const uploaded = readdirSync(join(this.dataDir, 'corpora')).map((file) => ({
      name: file.replace(/\.(txt|jsonl)$/, ''), bytes: statSync(join(this.dataDir, 'corpora', file)).size, bundled: false,
    }));
    return [...CORPUS_NAMES.map((name) => ({ name, bytes: 0, bundled: true })), ...uploaded];
  }

  async addCorpus(name: string, path: string): Promise<{ name: string; bytes: number; bundled: boolean }> {
    if (!NAME.test(name)) fail('invalid', `corpus name "${name}" must be letters, digits, '.', '_' or '-' (at most 64)`, 'name');
    if (this.corpora().some((c) => c.name === name)) fail('conflict', `a corpus named ${name} exists already`);
    const ext = extname(path) === '.jsonl' ? '.jsonl' : '.txt';
    const target = join(this.dataDir, 'corpora', `${name}${ext}`);
    await rename(path, target);
    return { name, bytes: statSync(target).size, bundled: false };
  }

  models(): { name: string; bytes: number }[] {
    return readdirSync(join(this.dataDir, 'models'), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => ({ name: entry.name, bytes: folderBytes(join(this.dataDir, 'models', entry.name)) }));
  }

  async addModel(name: string, files: { name: string; path: string }[]): Promise<{ name: string; bytes: number }> {
    if (!NAME.test(name)) fail('invalid', `model name "${name}" must be letters, digits, '.', '_' or '-' (at most 64)`, 'name');
    const dir = join(this.dataDir, 'models', name);
    if (existsSync(dir)) fail('conflict', `a model named ${name} exists already`);
    for (const file of files) {
      if (!MODEL_FILE.test(file.name)) fail('invalid', `${file.name} is not a file of a Hugging Face checkpoint folder`, 'files');
    }
    if (!files.some((f) => f.name === 'config.json')) fail('invalid', 'a model needs its config.json', 'files');
    const staging = `${dir}.partial`;
    await mkdir(staging, { recursive: true });
    try {
      for (const file of files) await rename(file.path, join(staging, file.name));
      await buildManifest(staging); // the folder must load: config, tensors, shapes
      await rename(staging, dir);
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      return fail('invalid', `model ${name}: ${(err as Error).message}`, 'files');
    }
    return { name, bytes: folderBytes(dir) };
  }

  subscribe(listener: (event: SwarmEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // --- helpers ---------------------------------------------------------------------------------

  private row(id: string): JobRow {
    return this.store.job(id) ?? fail('not-found', `no job ${id}`);
  }

  private change(id: string, act: () => JobRow): JobView {
    this.row(id);
    try {
      return this.view(act());
    } catch (err) {
      if (err instanceof StateConflictError) fail('conflict', err.message);
      throw err;
    }
  }

  private modelDir(name: string): string {
    const dir = join(this.dataDir, 'models', name);
    if (!NAME.test(name) || !existsSync(join(dir, 'config.json'))) fail('invalid', `no model ${name} in the coordinator's models folder`, 'base');
    return dir;
  }

  private baseTokenizer(dir: string, name: string): Tokenizer {
    const path = join(dir, 'tokenizer.json');
    if (!existsSync(path)) fail('invalid', `model ${name} has no tokenizer.json`, 'base');
    return tokenizerFromJson(JSON.parse(readFileSync(path, 'utf8')));
  }

  /** The text of an uploaded corpus; undefined for a bundled one (the job names it, every node has it). */
  private uploadedCorpus(name: string): TextCorpus | undefined {
    if ((CORPUS_NAMES as readonly string[]).includes(name)) return undefined;
    const file = ['.txt', '.jsonl'].map((ext) => join(this.dataDir, 'corpora', `${name}${ext}`)).find((path) => existsSync(path));
    if (!NAME.test(name) || file === undefined) {
      return fail('invalid', `unknown corpus "${name}" (known: ${this.corpora().map((c) => c.name).join(', ')})`, 'corpus');
    }
    try {
      return loadTextCorpus(file);
    } catch (err) {
      return fail('invalid', err instanceof CorpusError ? err.message : `corpus ${name}: ${(err as Error).message}`, 'corpus');
    }
  }

  /** A queued job's tokenizer (made when it was created), base checkpoint and uploaded text. */
  private async assets(row: JobRow): Promise<JobAssets> {
    const tokenizer = tokenizerFromJson(JSON.parse(readFileSync(join(this.dataDir, 'jobs', row.id, 'tokenizer.json'), 'utf8')));
    const corpus = this.uploadedCorpus(row.spec.corpus);
    const withCorpus = corpus ? { corpus } : {};
    if (row.base === undefined) return { tokenizer, ...withCorpus };
    const dir = this.modelDir(row.base);
    const { manifest, blobs } = await buildManifest(dir);
    return { tokenizer, base: { manifest, blobs, name: dir }, ...withCorpus };
  }

  private view(row: JobRow): JobView {
    const run = this.server?.current?.id === row.id ? this.server.current : undefined;
    const completed = run ? run.leases.completed : this.store.completed(row.id).length;
    const total = row.spec.totalBatches;
    // The pace over the whole run so far (its first and newest samples): only a running job has an ETA.
    const recent = row.state === 'running' ? this.store.metrics(row.id, 2) : [];
    const [a, b] = [recent[0], recent.at(-1)];
    const rate = a && b && b.at > a.at ? (b.completed - a.completed) / ((b.at - a.at) / 1000) : 0;
    return {
      id: row.id, name: row.name, state: row.state, spec: row.spec, ...(row.base === undefined ? {} : { base: row.base }),
      createdAt: row.createdAt, ...(row.startedAt === undefined ? {} : { startedAt: row.startedAt }),
      ...(row.endedAt === undefined ? {} : { endedAt: row.endedAt }), ...(row.error === undefined ? {} : { error: row.error }),
      completed, total, ...(rate > 0 ? { etaSeconds: (total - completed) / rate } : {}),
      hasResult: existsSync(join(this.dataDir, 'jobs', row.id, 'result')),
    };
  }

  private onEvent(event: CoordinatorEvent): void {
    this.options.onEvent?.(event);
    switch (event.event) {
      case 'job': case 'progress': {
        const id = event.event === 'job' ? event.jobId : this.server?.current?.id;
        const row = id === undefined ? undefined : this.store.job(id);
        if (row) this.publish({ type: 'job', job: this.view(row) });
        break;
      }
      case 'metrics':
        this.publish({ type: 'metrics', jobId: event.jobId, point: event.point });
        break;
      case 'joined': case 'rejoined': case 'left': case 'died': {
        const node = this.server ? this.nodes().find((n) => n.nodeId === event.node) : undefined;
        if (node) this.publish({ type: 'node', change: event.event, node });
        break;
      }
      case 'plan': {
        const run = this.server?.current;
        const placement = run && this.placement(run.id);
        if (placement) this.publish({ type: 'plan', placement });
        break;
      }
      case 'checkpoint': {
        const run = this.server?.current;
        if (!run) break;
        const checkpoint = { round: event.round, completed: event.completed, createdAt: event.at, bytes: event.bytes };
        this.store.addCheckpoint(run.id, checkpoint);
        // Older checkpoints pruned from disk leave the index too.
        for (const { round } of this.store.checkpoints(run.id)) {
          if (!existsSync(join(this.dataDir, 'jobs', run.id, 'checkpoints', String(round)))) this.store.removeCheckpoint(run.id, round);
        }
        this.publish({ type: 'checkpoint', jobId: run.id, checkpoint });
        break;
      }
    }
  }

  private publish(event: DistributiveOmit<SwarmEvent, 'seq' | 'at'>): void {
    const full = { ...event, seq: ++this.seq, at: Date.now() } as SwarmEvent;
    for (const listener of this.listeners) {
      try {
        listener(full);
      } catch (err) {
        console.error('[coordinator] event subscriber failed:', err);
      }
    }
  }
}
