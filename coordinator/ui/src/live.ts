// The swarm as the UI knows it, kept live: a snapshot from the read routes, then the event stream
// applied to it. The stream reconnects by itself; every (re)connection reloads the snapshot and the
// watched jobs' metrics, so a coordinator restart (its event numbers start over) loses nothing.
// Listeners hear of changes at most every FLUSH_MS, however fast events come; the node list is
// also re-read every NODE_REFRESH_MS (heartbeats and traffic have no events of their own).
import type {
  CheckpointView, JobView, MetricPoint, NodeView, Placement, SwarmEvent, SwarmInfo,
} from '../../api/service.ts';
import { ApiError, getJson, withToken } from './api.ts';
import { appendPoint } from './logic/job-metrics.ts';

/** Samples asked of the metrics route: enough for a chart as wide as a screen, kept small to send. */
export const METRIC_POINTS = 2000;
const FLUSH_MS = 100;
/** Node events come on joins and departures only: heartbeats, traffic and slowness are read this often. */
const NODE_REFRESH_MS = 5000;
const RECONNECT_MS = { first: 1000, max: 15_000 };
const EVENT_TYPES: SwarmEvent['type'][] = ['job', 'job-deleted', 'metrics', 'node', 'plan', 'checkpoint'];

export type Connection = 'connecting' | 'live' | 'reconnecting' | 'unauthorized';

export interface LiveState {
  connection: Connection;
  swarm?: SwarmInfo;
  nodes: NodeView[];
  jobs: JobView[];
  /** By job id, for the watched jobs (and any job a plan event names). */
  placements: Record<string, Placement>;
  /** By job id, for the watched jobs; a new array on each change (the chart redraws on a new one). */
  metrics: Record<string, MetricPoint[]>;
  checkpoints: Record<string, CheckpointView[]>;
}

function upsert<T>(list: T[], item: T, same: (a: T, b: T) => boolean): T[] {
  const index = list.findIndex((existing) => same(existing, item));
  return index < 0 ? [...list, item] : list.map((existing, i) => (i === index ? item : existing));
}

export class LiveSwarm {
  state: LiveState = { connection: 'connecting', nodes: [], jobs: [], placements: {}, metrics: {}, checkpoints: {} };
  private readonly listeners = new Set<(state: LiveState) => void>();
  private readonly watched = new Set<string>();
  /** Each watched job's samples, appended in place; copied into the state when flushed. */
  private readonly series = new Map<string, MetricPoint[]>();
  private readonly grownSeries = new Set<string>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private source: EventSource | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private retryMs = RECONNECT_MS.first;
  private readonly nodeTimer = setInterval(() => void this.refreshNodes(), NODE_REFRESH_MS);

  constructor(private token: string | undefined) {}

  subscribe(listener: (state: LiveState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private update(change: Partial<LiveState>): void {
    this.state = { ...this.state, ...change };
    this.flushTimer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  private flush(): void {
    this.flushTimer = undefined;
    if (this.grownSeries.size > 0) {
      const metrics = { ...this.state.metrics };
      for (const jobId of this.grownSeries) metrics[jobId] = [...(this.series.get(jobId) ?? [])];
      this.grownSeries.clear();
      this.state = { ...this.state, metrics };
    }
    for (const listener of this.listeners) listener(this.state);
  }

  /** Loads the snapshot, then follows the stream (with a new token: from scratch). */
  start(token = this.token): void {
    this.stop();
    this.token = token;
    this.update({ connection: 'connecting' });
    this.connect();
  }

  stop(): void {
    this.source?.close();
    this.source = undefined;
    clearTimeout(this.retryTimer);
  }

  private async refreshNodes(): Promise<void> {
    if (this.source?.readyState !== EventSource.OPEN) return;
    try {
      this.update({ nodes: await getJson<NodeView[]>('/api/nodes', this.token) });
    } catch {
      // The stream's own error handling reports a coordinator that went away.
    }
  }

  /** Keeps `jobId`'s metrics, placement and checkpoints loaded and live. */
  watch(jobId: string): void {
    if (this.watched.has(jobId)) return;
    this.watched.add(jobId);
    void this.loadJob(jobId);
  }

  private connect(): void {
    const source = new EventSource(withToken('/api/events', this.token));
    this.source = source;
    source.onopen = () => {
      this.retryMs = RECONNECT_MS.first;
      void this.resync();
    };
    source.onerror = () => {
      if (this.source !== source) return;
      this.update({ connection: 'reconnecting' });
      // EventSource retries a dropped stream itself, but gives up on an HTTP error (a restart's 502/503, a 401).
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
        this.retryMs = Math.min(RECONNECT_MS.max, this.retryMs * 2);
        void this.resync(); // tells a 401 (log in) from a coordinator that is down
      }
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => this.apply(JSON.parse((message as MessageEvent<string>).data) as SwarmEvent));
    }
  }

  /** Reloads everything the stream may have missed. */
  private async resync(): Promise<void> {
    try {
      const [swarm, nodes, jobs] = await Promise.all([
        getJson<SwarmInfo>('/api/swarm', this.token),
        getJson<NodeView[]>('/api/nodes', this.token),
        getJson<JobView[]>('/api/jobs', this.token),
      ]);
      const live = this.source?.readyState === EventSource.OPEN;
      this.update({ swarm, nodes, jobs, connection: live ? 'live' : 'reconnecting' });
      if (swarm.runningJob) this.watched.add(swarm.runningJob);
      await Promise.all([...this.watched].map((jobId) => this.loadJob(jobId)));
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        this.stop();
        this.update({ connection: 'unauthorized' });
      }
    }
  }

  private async loadJob(jobId: string): Promise<void> {
    const base = `/api/jobs/${encodeURIComponent(jobId)}`;
    const placementBefore = this.state.placements[jobId];
    const [points, placement, checkpoints] = await Promise.all([
      getJson<{ points: MetricPoint[] }>(`${base}/metrics?points=${METRIC_POINTS}`, this.token).then((body) => body.points, () => undefined),
      getJson<Placement>(`${base}/placement`, this.token).catch(() => undefined), // none unless running
      getJson<CheckpointView[]>(`${base}/checkpoints`, this.token).catch(() => []),
    ]);
    if (points === undefined) return; // deleted meanwhile, or the coordinator is down: the next resync tries again
    // Samples that came over the stream while the routes answered stay.
    const lastLoaded = points[points.length - 1]?.at ?? -Infinity;
    this.series.set(jobId, [...points, ...(this.series.get(jobId) ?? []).filter((point) => point.at > lastLoaded)]);
    this.grownSeries.add(jobId);
    // A plan event that came while the routes answered is newer than what they said.
    const { [jobId]: current, ...otherPlacements } = this.state.placements;
    const latest = current !== placementBefore ? current : placement;
    this.update({
      placements: latest ? { ...this.state.placements, [jobId]: latest } : otherPlacements,
      checkpoints: { ...this.state.checkpoints, [jobId]: checkpoints },
    });
  }

  private apply(event: SwarmEvent): void {
    if (this.state.connection !== 'live') this.update({ connection: 'live' });
    switch (event.type) {
      case 'job':
        this.update({ jobs: upsert(this.state.jobs, event.job, (a, b) => a.id === b.id) });
        if (event.job.state === 'running') this.watch(event.job.id);
        return;
      case 'job-deleted':
        this.update({ jobs: this.state.jobs.filter((job) => job.id !== event.jobId) });
        return;
      case 'metrics': {
        const points = this.series.get(event.jobId);
        if (points && appendPoint(points, event.point)) {
          this.grownSeries.add(event.jobId);
          this.update({});
        }
        return;
      }
      case 'node':
        this.update({ nodes: upsert(this.state.nodes, event.node, (a, b) => a.nodeId === b.nodeId) });
        return;
      case 'plan': {
        const current = this.state.placements[event.placement.jobId];
        if (!current || event.placement.version >= current.version) {
          this.update({ placements: { ...this.state.placements, [event.placement.jobId]: event.placement } });
        }
        return;
      }
      case 'checkpoint': {
        const others = (this.state.checkpoints[event.jobId] ?? []).filter((checkpoint) => checkpoint.round !== event.checkpoint.round);
        this.update({ checkpoints: { ...this.state.checkpoints, [event.jobId]: [...others, event.checkpoint] } });
        return;
      }
    }
  }
}
