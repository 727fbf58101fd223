// The coordinator as a service, with real processes: `swarmtrain coordinator --data` and nodes that
// stay in the swarm across jobs; jobs created over the HTTP API. Two queued jobs run one after the
// other on the same node processes; a coordinator killed with SIGKILL mid-job and started again on
// its data directory finishes the job with every micro-batch trained exactly once (counted from the
// nodes' own step events, and from the store) and the loss carrying on from where it was.
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { JobRequest, JobView } from '../../coordinator/api/service.ts';
import { CoordinatorClient } from '../../coordinator/client.ts';
import { startService, type Proc, type ServiceSwarm } from '../../src/harness/local-swarm.ts';
import { continuation, loadGenerator } from '../../src/train/cli.ts';
import { TINY_JOB } from '../helpers.ts';

/** `swarmtrain job ...` against the service, as a user runs it: its exit code and output. */
function jobCommand(s: ServiceSwarm, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['node/bin.mjs', 'job', ...args], {
    env: { ...process.env, SWARMTRAIN_URL: s.url, SWARMTRAIN_API_TOKEN: s.token, FORCE_COLOR: '0' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}


let swarm: ServiceSwarm | undefined;

afterEach(async () => {
  await swarm?.stop();
  swarm = undefined;
});

const client = (s: ServiceSwarm) => new CoordinatorClient({ url: s.url, token: s.token });

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 240_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const ended = (s: ServiceSwarm, id: string) =>
  until(`end of ${id}`, async () => {
    const job = await client(s).job(id);
    return ['done', 'failed', 'cancelled'].includes(job.state) ? job : undefined;
  });

/** Every batch each node trained for `jobId`, from its step events (after the session of that job joined). */
function trainedBatches(nodes: Proc[], jobId: string): number[] {
  return nodes.flatMap((node) => {
    let inJob = false;
    const batches: number[] = [];
    for (const e of node.events) {
      if (e.event === 'joined') inJob = e.jobId === jobId;
      else if (e.event === 'step' && inJob) batches.push(e.batch as number);
    }
    return batches;
  });
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

describe('the coordinator service', () => {
  it('runs two queued jobs one after the other on the same nodes, which stay joined in between', async () => {
    swarm = await startService(['--heartbeat-ms', '500']);
    for (let i = 0; i < 2; i++) swarm.startNode(['--memory-budget', '1GB']);
    const api = client(swarm);
    const first = await api.createJob({ ...TINY_JOB, name: 'first', totalBatches: 32, expectedNodes: 2 });
    const second = await api.createJob({ ...TINY_JOB, name: 'second', totalBatches: 12, expectedNodes: 2, seed: 5 });
    expect(second.state).toBe('queued');

    const [a, b]: JobView[] = [await ended(swarm, first.id), await ended(swarm, second.id)];
    expect([a.state, b.state]).toEqual(['done', 'done']);
    expect(b.startedAt!).toBeGreaterThanOrEqual(a.endedAt!);
    for (const [job, total] of [[first.id, 32], [second.id, 12]] as const) {
      expect(sorted(trainedBatches(swarm.nodes, job))).toEqual(range(total));
    }
    // The same two processes trained both jobs, and are still there, idle.
    for (const node of swarm.nodes) {
      expect(node.exitCode).toBeNull();
      expect(node.events.filter((e) => e.event === 'joined').map((e) => e.jobId)).toEqual([first.id, second.id]);
    }
    const nodes = await until('idle nodes', async () => {
      const list = await api.nodes();
      return list.length === 2 && list.every((n) => n.status === 'idle') ? list : undefined;
    }, 30_000);
    expect(nodes.map((n) => n.nodeId).sort()).toEqual(swarm.nodes.map((n) => n.events.find((e) => e.event === 'joined')!.node).sort());
    expect(b.hasResult).toBe(true);
    // The nodes' heartbeats carry their updates' bytes: int8 with a scale per block of 32 is about 3.8× smaller than f32.
    const sample = (await api.metrics(first.id, 10_000)).findLast((p) => (p.updateBytes ?? 0) > 0)!;
    expect(sample.updateRawBytes! / sample.updateBytes!).toBeGreaterThan(3.5);
    expect(sample.updateRawBytes! / sample.updateBytes!).toBeLessThan(4);
    expect(nodes.every((n) => n.memoryUsedBytes === undefined)).toBe(true); // idle: no heartbeat of a job
  }, 600_000);

  it('a coordinator killed mid-job and started again on its data finishes the job: every batch once, the loss carried on', async () => {
    swarm = await startService(['--heartbeat-ms', '500', '--lease-ms', '20000']);
    for (let i = 0; i < 3; i++) swarm.startNode(['--memory-budget', '1GB', '--give-up-after', '180']);
    const api = client(swarm);
    const total = 60;
    const job = await api.createJob({ ...TINY_JOB, name: 'crash', totalBatches: total, expectedNodes: 3 });
    // A random point of the job, past its first averaging rounds.
    const killAt = 12 + Math.floor(Math.random() * 24);
    await swarm.coordinator.waitFor((e) => e.event === 'progress' && e.completed >= killAt, 240_000, `progress ${killAt}`);
    const before = await api.metrics(job.id, 10_000);
    const firstLoss = swarm.nodes.map((n) => n.events.find((e) => e.event === 'step')?.loss as number);
    swarm.coordinator.kill('SIGKILL');
    await swarm.coordinator.exited;
    const stepsAtKill = swarm.nodes.map((n) => n.count((e) => e.event === 'step'));
    await new Promise((resolve) => setTimeout(resolve, 2_000));

    await swarm.restartCoordinator();
    const end = await ended(swarm, job.id);
    expect(end.state, end.error).toBe('done');
    expect(end.completed).toBe(total);

    // Exactly once: by the nodes' own account of what they trained, and in the store.
    expect(sorted(trainedBatches(swarm.nodes, job.id))).toEqual(range(total));
    const db = new Database(join(swarm.dataDir, 'coordinator.db'), { readonly: true });
    try {
      const ids = db.prepare('SELECT batch_id FROM completed WHERE job_id = ? ORDER BY batch_id').pluck().all(job.id);
      expect(ids).toEqual(range(total));
    } finally {
      db.close();
    }
    // The nodes carried on with their weights: the loss after the restart is below the untrained model's, where the job began.
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    const resumed = swarm.nodes.flatMap((node, i) => node.events.filter((e) => e.event === 'step').slice(stepsAtKill[i], stepsAtKill[i] + 3));
    expect(resumed.length).toBeGreaterThan(0);
    expect(mean(resumed.map((e) => e.loss as number))).toBeLessThan(mean(firstLoss) - 0.05);
    // The metrics kept before the kill are still there, and new ones follow.
    const history = await client(swarm).metrics(job.id, 10_000);
    expect(history.slice(0, before.length)).toEqual(before);
    expect(history.length).toBeGreaterThan(before.length);
    expect(swarm.nodes.every((n) => n.events.some((e) => e.event === 'coordinator-unreachable'))).toBe(true);
  }, 600_000);

  it('swarmtrain job: create a LoRA job on an uploaded text, watch it to the end, download the adapter, which loads and generates', async () => {
    swarm = await startService(['--heartbeat-ms', '500']);
    for (let i = 0; i < 2; i++) swarm.startNode(['--memory-budget', '1GB']);
    const text = join(swarm.dir, 'poems.txt');
    const paragraph = (i: number) => `Verse ${i}: the swarm hums along the wire, and every node adds a line of its own to the song. `.repeat(3);
    await writeFile(text, Array.from({ length: 40 }, (_, i) => paragraph(i)).join('\n\n'));
    const spec = join(swarm.dir, 'lora.json');
    const { corpus: _, documents: __, ...rest } = TINY_JOB;
    await writeFile(spec, JSON.stringify({
      ...rest, mode: 'lora', lora: { rank: 4, alpha: 8, targets: ['q', 'v', 'gate'] }, baseFormat: 'q8', basePath: 'int', totalBatches: 16, expectedNodes: 2,
    }));

    const created = await jobCommand(swarm, ['create', spec, '--corpus', text, '--name', 'poems']);
    expect(created.code, created.stderr).toBe(0);
    const id = created.stdout.trim().split('\n').at(-1)!;
    expect(id).toMatch(/^job-/);
    const watched = await jobCommand(swarm, ['watch', id]);
    expect(watched.code, watched.stderr + watched.stdout).toBe(0);
    expect(watched.stdout + watched.stderr).toMatch(/16\/16/);
    const job = await client(swarm).job(id);
    // The upload is named by its file and content, so the same text is uploaded once.
    expect(job).toMatchObject({
      state: 'done', completed: 16, hasResult: true, spec: { corpus: expect.stringMatching(/^poems-[0-9a-f]+$/), mode: 'lora' },
    });

    const out = join(swarm.dir, 'downloaded');
    await mkdir(out);
    const downloaded = await jobCommand(swarm, ['download', id, '-o', out]);
    expect(downloaded.code, downloaded.stderr).toBe(0);
    const files = await readdir(out);
    expect(files).toEqual(expect.arrayContaining(['adapter_config.json', 'adapter_model.safetensors', 'tokenizer.json', 'base']));
    // Adapters on the chosen targets only, in Mixtral's module names.
    const config = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8')) as { target_modules: string[]; r: number };
    expect(config).toMatchObject({ r: 4, target_modules: ['q_proj', 'v_proj', 'w1'] });
    // The adapter on its (seeded) base: this project's loader takes it, and the model writes text.
    const { model, tokenizer, kernels } = await loadGenerator(join(out, 'base'), join(out, 'tokenizer.json'), out, 1);
    try {
      const words = await continuation(model, tokenizer, 'Verse', { maxNewTokens: 8, temperature: 0, topP: 1, seed: 1 });
      expect(words.length).toBeGreaterThan(0);
    } finally {
      await kernels.close();
    }
  }, 600_000);
});
