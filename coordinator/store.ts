// The coordinator's memory across restarts: one SQLite file (better-sqlite3, WAL) in its data
// directory holding the job queue and every state change, the nodes seen, each running job's live
// leases and completed micro-batches (a report's completions and lease changes are one transaction),
// its last plan, metrics over time and the checkpoints index. Schema changes are numbered
// migrations applied in order on open (PRAGMA user_version says how far a file is).
import Database from 'better-sqlite3';
import type { JobSpec } from '../proto/index.ts';
import type { CheckpointView, JobState, MetricPoint } from './api/service.ts';

const MIGRATIONS: string[] = [
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE jobs (
     id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, name TEXT NOT NULL, spec TEXT NOT NULL, base TEXT,
     state TEXT NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER, ended_at INTEGER, error TEXT,
     next_lease_id INTEGER NOT NULL DEFAULT 1);
   CREATE TABLE transitions (job_id TEXT NOT NULL, at INTEGER NOT NULL, from_state TEXT, to_state TEXT NOT NULL, reason TEXT);
   CREATE TABLE nodes (
     node_id TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, cores INTEGER NOT NULL,
     gemm_gflops REAL NOT NULL, memory_bytes INTEGER NOT NULL, addrs TEXT NOT NULL);
   CREATE TABLE completed (job_id TEXT NOT NULL, batch_id INTEGER NOT NULL, node_id TEXT NOT NULL, at INTEGER NOT NULL,
     PRIMARY KEY (job_id, batch_id));
   CREATE TABLE leases (job_id TEXT NOT NULL, lease_id INTEGER NOT NULL, node_id TEXT NOT NULL, batch_ids TEXT NOT NULL,
     PRIMARY KEY (job_id, lease_id));
   CREATE TABLE plans (job_id TEXT PRIMARY KEY, version INTEGER NOT NULL, plan TEXT NOT NULL, members TEXT NOT NULL);
   CREATE TABLE metrics (job_id TEXT NOT NULL, at INTEGER NOT NULL, point TEXT NOT NULL);
   CREATE INDEX metrics_by_job ON metrics (job_id, at);
   CREATE TABLE checkpoints (job_id TEXT NOT NULL, round INTEGER NOT NULL, completed INTEGER NOT NULL, created_at INTEGER NOT NULL,
     bytes INTEGER NOT NULL, PRIMARY KEY (job_id, round));`,
];

/** Which state may follow which; anything else is a conflict. */
const TRANSITIONS: Record<JobState, JobState[]> = {
  queued: ['running', 'cancelled'],
  running: ['paused', 'done', 'failed', 'cancelled'],
  paused: ['running', 'cancelled', 'failed'],
  done: [],
  failed: [],
  cancelled: [],
};

export interface JobRow {
  id: string;
  seq: number;
  name: string;
  spec: JobSpec;
  base?: string;
  state: JobState;
  createdAt: number;
  startedAt?: number;
  endedAt?: number;
  error?: string;
  /** The lease id the next grant takes: ids never repeat within a job, restarts included. */
  nextLeaseId: number;
}

export interface StoredLease {
  leaseId: number;
  nodeId: string;
  batchIds: number[];
}

/** A node as last seen joining: enough to take it back after a restart without asking it again. */
export interface StoredNode {
  nodeId: string;
  firstSeen: number;
  lastSeen: number;
  cores: number;
  gemmGflops: number;
  memoryBytes: number;
  addrs: string[];
}

/** A job's plan as last announced, and the nodes it was made for. */
export interface StoredPlan<P> {
  version: number;
  plan: P;
  members: string[];
}

export class StateConflictError extends Error {
  override name = 'StateConflictError';
}

interface RawJob {
  id: string; seq: number; name: string; spec: string; base: string | null; state: JobState; created_at: number;
  started_at: number | null; ended_at: number | null; error: string | null; next_lease_id: number;
}

const jobRow = (raw: RawJob): JobRow => ({
  id: raw.id, seq: raw.seq, name: raw.name, spec: JSON.parse(raw.spec) as JobSpec, state: raw.state, createdAt: raw.created_at,
  nextLeaseId: raw.next_lease_id,
  ...(raw.base === null ? {} : { base: raw.base }),
  ...(raw.started_at === null ? {} : { startedAt: raw.started_at }),
  ...(raw.ended_at === null ? {} : { endedAt: raw.ended_at }),
  ...(raw.error === null ? {} : { error: raw.error }),
});

export class JobStore {
  /** Statements by their SQL, prepared once: a lease or a report writes on every request. */
  private readonly statements = new Map<string, Database.Statement>();

  private constructor(private readonly db: Database.Database) {}

  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) this.statements.set(text, (statement = this.db.prepare(text)));
    return statement;
  }

  /** Opens (creating and migrating) the store at `path`; ':memory:' keeps it in memory only. */
  static open(path: string): JobStore {
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    // WAL with NORMAL syncs at checkpoints: a power cut may lose the last commits, a killed process loses nothing.
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      db.close();
      throw new Error(`${path}: the store is at schema version ${version}, newer than this coordinator's ${MIGRATIONS.length}`);
    }
    db.transaction(() => {
      for (let v = version; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${MIGRATIONS.length}`);
    })();
    return new JobStore(db);
  }

  close(): void {
    this.db.close();
  }

  meta(key: string): string | undefined {
    return (this.sql('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  // --- jobs --------------------------------------------------------------------------------

  addJob(job: { id: string; name: string; spec: JobSpec; base?: string; createdAt: number }): JobRow {
    const seq = (this.sql('SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM jobs').get() as { seq: number }).seq;
    this.db.transaction(() => {
      this.sql('INSERT INTO jobs (id, seq, name, spec, base, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(job.id, seq, job.name, JSON.stringify(job.spec), job.base ?? null, 'queued', job.createdAt);
      this.sql('INSERT INTO transitions (job_id, at, from_state, to_state) VALUES (?, ?, NULL, ?)').run(job.id, job.createdAt, 'queued');
    })();
    return this.job(job.id)!;
  }

  job(id: string): JobRow | undefined {
    const raw = this.sql('SELECT * FROM jobs WHERE id = ?').get(id) as RawJob | undefined;
    return raw && jobRow(raw);
  }

  /** Every job, oldest first. */
  jobs(): JobRow[] {
    return (this.sql('SELECT * FROM jobs ORDER BY seq').all() as RawJob[]).map(jobRow);
  }

  /** The job holding the swarm (running or paused), if any. */
  activeJob(): JobRow | undefined {
    const raw = this.sql("SELECT * FROM jobs WHERE state IN ('running', 'paused') ORDER BY seq LIMIT 1").get() as RawJob | undefined;
    return raw && jobRow(raw);
  }

  nextQueued(): JobRow | undefined {
    const raw = this.sql("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").get() as RawJob | undefined;
    return raw && jobRow(raw);
  }

  /** Moves a job to `to` if its state allows it (else StateConflictError), recording when and why. */
  transition(id: string, to: JobState, at: number, reason?: string): JobRow {
    const job = this.job(id);
    if (!job) throw new Error(`no job ${id}`);
    if (!TRANSITIONS[job.state].includes(to)) throw new StateConflictError(`job ${id} is ${job.state}: it cannot become ${to}`);
    this.db.transaction(() => {
      this.sql('INSERT INTO transitions (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)')
        .run(id, at, job.state, to, reason ?? null);
      const ended = TRANSITIONS[to].length === 0;
      this.sql(`UPDATE jobs SET state = ?, error = COALESCE(?, error),
        started_at = CASE WHEN ? = 'running' AND started_at IS NULL THEN ? ELSE started_at END,
        ended_at = CASE WHEN ? THEN ? ELSE ended_at END WHERE id = ?`)
        .run(to, to === 'failed' ? (reason ?? null) : null, to, at, ended ? 1 : 0, at, id);
      // An ended job's live leases mean nothing any more.
      if (ended) this.sql('DELETE FROM leases WHERE job_id = ?').run(id);
    })();
    return this.job(id)!;
  }

  transitions(id: string): { at: number; from?: JobState; to: JobState; reason?: string }[] {
    const rows = this.sql('SELECT at, from_state, to_state, reason FROM transitions WHERE job_id = ? ORDER BY rowid').all(id) as
      { at: number; from_state: JobState | null; to_state: JobState; reason: string | null }[];
    return rows.map((r) => ({
      at: r.at, to: r.to_state, ...(r.from_state ? { from: r.from_state } : {}), ...(r.reason ? { reason: r.reason } : {}),
    }));
  }

  deleteJob(id: string): void {
    this.db.transaction(() => {
      for (const table of ['jobs', 'transitions', 'completed', 'leases', 'plans', 'metrics', 'checkpoints']) {
        this.sql(`DELETE FROM ${table} WHERE ${table === 'jobs' ? 'id' : 'job_id'} = ?`).run(id);
      }
    })();
  }

  // --- nodes -------------------------------------------------------------------------------

  saveNode(node: Omit<StoredNode, 'firstSeen'>): void {
    this.sql(`INSERT INTO nodes (node_id, first_seen, last_seen, cores, gemm_gflops, memory_bytes, addrs) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (node_id) DO UPDATE SET last_seen = excluded.last_seen, cores = excluded.cores, gemm_gflops = excluded.gemm_gflops,
      memory_bytes = excluded.memory_bytes, addrs = excluded.addrs`)
      .run(node.nodeId, node.lastSeen, node.lastSeen, node.cores, node.gemmGflops, node.memoryBytes, JSON.stringify(node.addrs));
  }

  nodes(): StoredNode[] {
    const rows = this.sql('SELECT * FROM nodes ORDER BY first_seen').all() as {
      node_id: string; first_seen: number; last_seen: number; cores: number; gemm_gflops: number; memory_bytes: number; addrs: string;
    }[];
    return rows.map((r) => ({
      nodeId: r.node_id, firstSeen: r.first_seen, lastSeen: r.last_seen, cores: r.cores, gemmGflops: r.gemm_gflops,
      memoryBytes: r.memory_bytes, addrs: JSON.parse(r.addrs) as string[],
    }));
  }

  // --- a running job's leases ------------------------------------------------------------------

  /** Completed batch ids of a job, ascending. */
  completed(jobId: string): number[] {
    return (this.sql('SELECT batch_id FROM completed WHERE job_id = ? ORDER BY batch_id').pluck().all(jobId) as number[]);
  }

  /** Completed micro-batches per node. */
  completedBy(jobId: string): Map<string, number> {
    const rows = this.sql('SELECT node_id, COUNT(*) AS n FROM completed WHERE job_id = ? GROUP BY node_id').all(jobId) as
      { node_id: string; n: number }[];
    return new Map(rows.map((r) => [r.node_id, r.n]));
  }

  leases(jobId: string): StoredLease[] {
    const rows = this.sql('SELECT lease_id, node_id, batch_ids FROM leases WHERE job_id = ? ORDER BY lease_id').all(jobId) as
      { lease_id: number; node_id: string; batch_ids: string }[];
    return rows.map((r) => ({ leaseId: r.lease_id, nodeId: r.node_id, batchIds: JSON.parse(r.batch_ids) as number[] }));
  }

  /**
   * One change to a job's leases, atomically: batches completed (by `nodeId`), leases that now hold
   * `batchIds` (an empty list deletes the lease), and the next lease id.
   */
  updateLeases(
    jobId: string, change: { completed?: { nodeId: string; batchIds: number[]; at: number }; leases: StoredLease[]; nextLeaseId?: number },
  ): void {
    this.db.transaction(() => {
      const { completed } = change;
      if (completed) {
        const insert = this.sql('INSERT INTO completed (job_id, batch_id, node_id, at) VALUES (?, ?, ?, ?)');
        for (const id of completed.batchIds) insert.run(jobId, id, completed.nodeId, completed.at);
      }
      const remove = this.sql('DELETE FROM leases WHERE job_id = ? AND lease_id = ?');
      const upsert = this.sql(`INSERT INTO leases (job_id, lease_id, node_id, batch_ids) VALUES (?, ?, ?, ?)
        ON CONFLICT (job_id, lease_id) DO UPDATE SET batch_ids = excluded.batch_ids`);
      for (const lease of change.leases) {
        if (lease.batchIds.length === 0) remove.run(jobId, lease.leaseId);
        else upsert.run(jobId, lease.leaseId, lease.nodeId, JSON.stringify(lease.batchIds));
      }
      if (change.nextLeaseId !== undefined) this.sql('UPDATE jobs SET next_lease_id = ? WHERE id = ?').run(change.nextLeaseId, jobId);
    })();
  }

  // --- plans, metrics, checkpoints -------------------------------------------------------------

  savePlan<P>(jobId: string, stored: StoredPlan<P>): void {
    this.sql(`INSERT INTO plans (job_id, version, plan, members) VALUES (?, ?, ?, ?)
      ON CONFLICT (job_id) DO UPDATE SET version = excluded.version, plan = excluded.plan, members = excluded.members`)
      .run(jobId, stored.version, JSON.stringify(stored.plan), JSON.stringify(stored.members));
  }

  plan<P>(jobId: string): StoredPlan<P> | undefined {
    const row = this.sql('SELECT version, plan, members FROM plans WHERE job_id = ?').get(jobId) as
      { version: number; plan: string; members: string } | undefined;
    return row && { version: row.version, plan: JSON.parse(row.plan) as P, members: JSON.parse(row.members) as string[] };
  }

  addMetric(jobId: string, point: MetricPoint): void {
    this.sql('INSERT INTO metrics (job_id, at, point) VALUES (?, ?, ?)').run(jobId, point.at, JSON.stringify(point));
  }

  /**
   * At most `points` samples spread evenly over the whole run: with more stored, every k-th one,
   * always ending with the latest (a live curve's newest point matters most).
   */
  metrics(jobId: string, points: number): MetricPoint[] {
    const count = (this.sql('SELECT COUNT(*) FROM metrics WHERE job_id = ?').pluck().get(jobId) as number);
    if (count === 0 || points < 1) return [];
    const stride = Math.ceil(count / points);
    const rows = this.sql(`SELECT point FROM (SELECT point, at, ROW_NUMBER() OVER (ORDER BY at, rowid) - 1 AS i FROM metrics WHERE job_id = ?)
      WHERE (? - 1 - i) % ? = 0 ORDER BY at`).pluck().all(jobId, count, stride) as string[];
    return rows.map((row) => JSON.parse(row) as MetricPoint);
  }

  addCheckpoint(jobId: string, checkpoint: CheckpointView): void {
    this.sql(`INSERT INTO checkpoints (job_id, round, completed, created_at, bytes) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (job_id, round) DO UPDATE SET completed = excluded.completed, created_at = excluded.created_at, bytes = excluded.bytes`)
      .run(jobId, checkpoint.round, checkpoint.completed, checkpoint.createdAt, checkpoint.bytes);
  }

  removeCheckpoint(jobId: string, round: number): void {
    this.sql('DELETE FROM checkpoints WHERE job_id = ? AND round = ?').run(jobId, round);
  }

  checkpoints(jobId: string): CheckpointView[] {
    const rows = this.sql('SELECT round, completed, created_at, bytes FROM checkpoints WHERE job_id = ? ORDER BY round').all(jobId) as
      { round: number; completed: number; created_at: number; bytes: number }[];
    return rows.map((r) => ({ round: r.round, completed: r.completed, createdAt: r.created_at, bytes: r.bytes }));
  }
}
