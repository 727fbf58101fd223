// An in-memory SwarmService for the HTTP API's tests and the web UI's development: jobs follow the
// real state rules and emit events; tests drive progress by hand (advance, finish, addCheckpoint).
import { mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ServiceError, type CheckpointView, type FileSet, type JobRequest, type JobState, type JobView, type MetricPoint, type NodeView,
  type Placement, type SwarmCounters, type SwarmEvent, type SwarmInfo, type SwarmService,
} from '../../coordinator/api/service.ts';
import { JobError, validateJob } from '../../proto/index.ts';
import { demoJob } from '../../src/harness/demo-job.ts';
import { CORPUS_NAMES } from '../../src/train/corpus.ts';

type EventBody = SwarmEvent extends infer E ? (E extends SwarmEvent ? Omit<E, 'seq' | 'at'> : never) : never;

interface JobRecord {
  view: JobView;
  points: MetricPoint[];
  checkpoints: { view: CheckpointView; files: FileSet }[];
  result?: FileSet;
}

const ACTIVE: readonly JobState[] = ['running', 'paused'];

export class FakeSwarmService implements SwarmService {
  /** Where uploads, checkpoints and results live; removed by close(). */
  readonly dir = mkdtempSync(join(tmpdir(), 'swarmtrain-fake-'));
  private readonly jobs = new Map<string, JobRecord>();
  private readonly nodeViews = new Map<string, NodeView>();
  private readonly placements = new Map<string, Placement>();
  private readonly uploadedCorpora = new Map<string, number>();
  private readonly modelFolders = new Map<string, number>();
  private readonly listeners = new Set<(event: SwarmEvent) => void>();
  private nextJob = 1;
  private seq = 0;
  /** The clock of every timestamp; tests may replace it. */
  now: () => number = Date.now;

  /** Live subscriptions: the SSE route must drop its own when a client goes. */
  get subscriberCount(): number {
    return this.listeners.size;
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  swarm(): SwarmInfo {
    const running = this.listJobs().find((job) => job.state === 'running');
    return {
      peerId: '12D3KooWFakeCoordinator', addrs: ['/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWFakeCoordinator'], version: 'fake',
      joinTokenRequired: true, ...(running ? { runningJob: running.id } : {}),
    };
  }

  counters(): SwarmCounters {
    const jobs = { queued: 0, running: 0, paused: 0, done: 0, failed: 0, cancelled: 0 };
    for (const { view } of this.jobs.values()) jobs[view.state]++;
    const nodes = [...this.nodeViews.values()];
    const alive = nodes.filter((node) => node.status !== 'gone');
    return {
      jobs, nodesAlive: alive.length, leasesOutstanding: alive.filter((node) => node.status === 'training').length,
      completedBatches: [...this.jobs.values()].reduce((sum, { view }) => sum + view.completed, 0),
      tokensPerSecond: alive.reduce((sum, node) => sum + node.tokensPerSecond, 0),
      bytesSent: nodes.reduce((sum, node) => sum + node.bytesSent, 0),
      bytesReceived: nodes.reduce((sum, node) => sum + node.bytesReceived, 0),
      refusedUpdates: 0,
    };
  }

  async createJob(request: JobRequest): Promise<JobView> {
    const { name, base, corpus = 'moby-dick', ...fields } = request;
    if (!this.corpora().some((known) => known.name === corpus)) throw new ServiceError('invalid', `unknown corpus "${corpus}"`, 'corpus');
    if (base !== undefined && !this.modelFolders.has(base)) throw new ServiceError('invalid', `unknown base model "${base}"`, 'base');
    const id = `job-${this.nextJob++}`;
    let spec;
    try {
      spec = validateJob({ ...demoJob(200, 1), ...fields, jobId: id, corpus }, 'request');
    } catch (err) {
      if (err instanceof JobError) throw new ServiceError('invalid', err.message);
      throw err;
    }
    const view: JobView = {
      id, name: name ?? id, state: 'queued', spec, createdAt: this.now(), completed: 0, total: spec.totalBatches, hasResult: false,
      ...(base === undefined ? {} : { base }),
    };
    this.jobs.set(id, { view, points: [], checkpoints: [] });
    this.emit({ type: 'job', job: view });
    // As the real service: the answer is the queued job; it starts right after when nothing else runs.
    this.startNext();
    return view;
  }

  listJobs(): JobView[] {
    return [...this.jobs.values()].map(({ view }) => view);
  }

  getJob(id: string): JobView | undefined {
    return this.jobs.get(id)?.view;
  }

  pauseJob(id: string): JobView {
    return this.transition(id, ['running'], 'paused');
  }

  resumeJob(id: string): JobView {
    return this.transition(id, ['paused'], 'running');
  }

  cancelJob(id: string): JobView {
    const view = this.transition(id, ['queued', 'running', 'paused'], 'cancelled');
    this.startNext();
    return view;
  }

  deleteJob(id: string): void {
    const { view } = this.record(id);
    if (ACTIVE.includes(view.state)) throw new ServiceError('conflict', `job ${id} is ${view.state}: cancel it first`);
    this.jobs.delete(id);
    this.placements.delete(id);
    rmSync(join(this.dir, 'jobs', id), { recursive: true, force: true });
    this.emit({ type: 'job-deleted', jobId: id });
  }

  metrics(id: string, points: number): MetricPoint[] {
    return this.record(id).points.slice(-points);
  }

  checkpoints(id: string): CheckpointView[] {
    return this.record(id).checkpoints.map(({ view }) => view);
  }

  checkpointFiles(id: string, round: number): FileSet | undefined {
    return this.record(id).checkpoints.find(({ view }) => view.round === round)?.files;
  }

  result(id: string): FileSet | undefined {
    return this.record(id).result;
  }

  async sample(id: string, request: { prompt: string; maxTokens: number; temperature: number }): Promise<{ text: string; round: number }> {
    const { view, checkpoints } = this.record(id);
    const latest = checkpoints.at(-1);
    if (latest === undefined && view.base === undefined) throw new ServiceError('conflict', `job ${id} has no checkpoint yet`);
    // Deterministic stand-in text: the prompt, then maxTokens words.
    const words = Array.from({ length: request.maxTokens }, (_, i) => `w${i}`);
    return { text: `${request.prompt} ${words.join(' ')}`, round: latest?.view.round ?? 0 };
  }

  nodes(): NodeView[] {
    return [...this.nodeViews.values()];
  }

  placement(jobId: string): Placement | undefined {
    return this.placements.get(jobId);
  }

  corpora(): { name: string; bytes: number; bundled: boolean }[] {
    const bundled = CORPUS_NAMES.map((name) => ({ name, bytes: 0, bundled: true }));
    return [...bundled, ...[...this.uploadedCorpora].map(([name, bytes]) => ({ name, bytes, bundled: false }))];
  }

  async addCorpus(name: string, path: string): Promise<{ name: string; bytes: number; bundled: boolean }> {
    if (this.corpora().some((corpus) => corpus.name === name)) throw new ServiceError('conflict', `corpus "${name}" exists`, 'name');
    const bytes = statSync(path).size;
    if (bytes === 0) throw new ServiceError('invalid', 'the corpus file is empty', 'file');
    this.moveInto(join('corpora', name), [{ name: 'corpus.txt', path }]);
    this.uploadedCorpora.set(name, bytes);
    return { name, bytes, bundled: false };
  }

  models(): { name: string; bytes: number }[] {
    return [...this.modelFolders].map(([name, bytes]) => ({ name, bytes }));
  }

  async addModel(name: string, files: { name: string; path: string }[]): Promise<{ name: string; bytes: number }> {
    if (this.modelFolders.has(name)) throw new ServiceError('conflict', `model "${name}" exists`, 'name');
    for (const needed of ['config.json', 'tokenizer.json']) {
      if (!files.some((file) => file.name === needed)) throw new ServiceError('invalid', `a model needs ${needed}`, 'files');
    }
    if (!files.some((file) => file.name.endsWith('.safetensors'))) throw new ServiceError('invalid', 'a model needs .safetensors weights', 'files');
    const bytes = files.reduce((sum, file) => sum + statSync(file.path).size, 0);
    this.moveInto(join('models', name), files);
    this.modelFolders.set(name, bytes);
    return { name, bytes };
  }

  subscribe(listener: (event: SwarmEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // --- test controls -----------------------------------------------------------------------

  /** The running job trains `batches` more (capped at its total): a metrics point and a job event; done at the total. */
  advance(id: string, batches: number, sample: Partial<MetricPoint> = {}): JobView {
    const record = this.record(id);
    if (record.view.state !== 'running') throw new Error(`fake: job ${id} is ${record.view.state}, not running`);
    const completed = Math.min(record.view.total, record.view.completed + batches);
    const point: MetricPoint = {
      at: this.now(), completed, loss: 5 - completed / record.view.total, tokensPerSecond: 1000, nodes: this.nodeViews.size,
      bytesSent: completed * 1000, bytesReceived: completed * 1000, refusedUpdates: 0, droppedExpertCalls: 0, staleness: 1, ...sample,
    };
    record.points.push(point);
    record.view = { ...record.view, completed, etaSeconds: (record.view.total - completed) / 10 };
    this.emit({ type: 'metrics', jobId: id, point });
    if (completed < record.view.total) {
      this.emit({ type: 'job', job: record.view });
      return record.view;
    }
    return this.finish(id, 'done', { 'adapter_config.json': '{"r":8}', 'adapter_model.safetensors': Buffer.from([1, 2, 3, 0, 255]) });
  }

  /** Ends the job: done with these result files, or failed with an error. */
  finish(id: string, state: 'done' | 'failed', result: Record<string, string | Buffer> = {}, error?: string): JobView {
    const record = this.record(id);
    if (state === 'done') record.result = this.writeFiles(id, join('jobs', id, 'result'), result);
    const { etaSeconds: _, ...rest } = record.view;
    record.view = { ...rest, state, endedAt: this.now(), hasResult: state === 'done', ...(error === undefined ? {} : { error }) };
    this.emit({ type: 'job', job: record.view });
    this.startNext();
    return record.view;
  }

  addCheckpoint(id: string, round: number, files: Record<string, string | Buffer>): CheckpointView {
    const record = this.record(id);
    const fileSet = this.writeFiles(`${id}-round-${round}`, join('jobs', id, 'checkpoints', String(round)), files);
    const view = { round, completed: record.view.completed, createdAt: this.now(), bytes: fileSet.files.reduce((sum, f) => sum + f.bytes, 0) };
    record.checkpoints.push({ view, files: fileSet });
    this.emit({ type: 'checkpoint', jobId: id, checkpoint: view });
    return view;
  }

  /** A node joins (or changes): the view is completed with plausible defaults. */
  setNode(node: Partial<NodeView> & { nodeId: string }, change: 'joined' | 'rejoined' | 'left' | 'died' = 'joined'): NodeView {
    const view: NodeView = {
      status: 'idle', cores: 2, gemmGflops: 40, memoryBytes: 2 ** 31, addrs: [`/ip4/127.0.0.1/tcp/5000/p2p/${node.nodeId}`], experts: [],
      step: 0, tokensPerSecond: 0, bytesSent: 0, bytesReceived: 0, flaggedPeers: [], lastSeen: this.now(), firstSeen: this.now(), ...node,
    };
    this.nodeViews.set(view.nodeId, view);
    this.emit({ type: 'node', change, node: view });
    return view;
  }

  setPlacement(placement: Placement): void {
    this.placements.set(placement.jobId, placement);
    this.emit({ type: 'plan', placement });
  }

  /** Sends any event (with the next seq). */
  emit(body: EventBody): SwarmEvent {
    const event = { ...body, seq: ++this.seq, at: this.now() } as SwarmEvent;
    for (const listener of [...this.listeners]) listener(event);
    return event;
  }

  // --- inside --------------------------------------------------------------------------------

  private record(id: string): JobRecord {
    const record = this.jobs.get(id);
    if (record === undefined) throw new ServiceError('not-found', `no job ${id}`);
    return record;
  }

  private transition(id: string, from: readonly JobState[], to: JobState): JobView {
    const record = this.record(id);
    const { state } = record.view;
    if (!from.includes(state)) throw new ServiceError('conflict', `job ${id} is ${state}: only a ${from.join(' or ')} job can be made ${to}`);
    const ended = to === 'cancelled' ? { endedAt: this.now() } : {};
    record.view = { ...record.view, state: to, ...ended };
    this.emit({ type: 'job', job: record.view });
    return record.view;
  }

  /** One job at a time: the oldest queued one starts when none is running or paused. */
  private startNext(): void {
    const views = this.listJobs();
    if (views.some((view) => ACTIVE.includes(view.state))) return;
    const next = this.jobs.get(views.find((view) => view.state === 'queued')?.id ?? '');
    if (next === undefined) return;
    next.view = { ...next.view, state: 'running', startedAt: this.now() };
    this.emit({ type: 'job', job: next.view });
  }

  private writeFiles(name: string, folder: string, contents: Record<string, string | Buffer>): FileSet {
    const dir = join(this.dir, folder);
    mkdirSync(dir, { recursive: true });
    const files = Object.entries(contents).map(([file, content]) => {
      writeFileSync(join(dir, file), content);
      return { name: file, path: join(dir, file), bytes: Buffer.byteLength(content) };
    });
    return { name, files };
  }

  private moveInto(folder: string, files: { name: string; path: string }[]): void {
    const dir = join(this.dir, folder);
    mkdirSync(dir, { recursive: true });
    for (const file of files) renameSync(file.path, join(dir, file.name));
  }
}
