// The API over the real CoordinatorService (a temp data directory, no nodes): the refusals the
// schema makes and those only the service can make map to the same error shape, and a job goes
// through create, pause, resume, cancel and delete with the state rules the fake mirrors.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../../coordinator/http/app.ts';
import { CoordinatorService } from '../../../coordinator/service.ts';
import type { FastifyInstance } from 'fastify';
import { AUTH, TOKEN } from './setup.ts';

const TINY = {
  model: { hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16, numExperts: 2, expertsPerToken: 1, expertHiddenSize: 32,
    maxSeqLen: 32, vocabSize: 300 },
  documents: { from: 0, to: 2 }, batchSize: 2, seqLen: 16, totalBatches: 8, expectedNodes: 1,
};

let dir: string;
let service: CoordinatorService;
let app: FastifyInstance;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'swarmtrain-api-contract-'));
  service = await CoordinatorService.start({ dataDir: dir, joinToken: '' });
  app = buildApi({ service, apiToken: TOKEN });
});
afterAll(async () => {
  await app?.close();
  await service?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const post = (url: string, payload?: object) => app.inject({ method: 'POST', url, headers: AUTH, ...(payload ? { payload } : {}) });

describe('the API over CoordinatorService', () => {
  it('refuses by schema and by service in one shape', async () => {
    expect((await post('/api/jobs', { lr: 99 })).json()).toMatchObject({ statusCode: 400, field: 'body/lr' });
    const corpus = await post('/api/jobs', { ...TINY, corpus: 'no-such-corpus' });
    expect(corpus.statusCode).toBe(400);
    expect(corpus.json()).toMatchObject({ error: 'Bad Request', field: 'corpus', message: expect.stringContaining('no-such-corpus') });
    const base = await post('/api/jobs', { ...TINY, base: 'no-such-model' });
    expect(base.statusCode).toBe(400);
    expect((await app.inject({ url: '/api/jobs/job-nope' })).statusCode).toBe(404);
  });

  it('takes a job through its states, refusing what the state rules forbid', async () => {
    const created = await post('/api/jobs', { ...TINY, name: 'contract' });
    expect(created.statusCode, created.body).toBe(201);
    const job = created.json();
    expect(job).toMatchObject({ name: 'contract', state: 'queued', total: 8, completed: 0, hasResult: false });
    // The only job starts soon after; without nodes it waits in `running` for them.
    for (let i = 0; i < 500 && service.getJob(job.id)?.state !== 'running'; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect((await app.inject({ url: `/api/jobs/${job.id}` })).json().state).toBe('running');
    expect((await app.inject({ url: '/api/jobs' })).json().map((j: { id: string }) => j.id)).toContain(job.id);
    expect((await post(`/api/jobs/${job.id}/resume`)).statusCode).toBe(409);
    const del = () => app.inject({ method: 'DELETE', url: `/api/jobs/${job.id}`, headers: AUTH });
    expect((await del()).statusCode).toBe(409);
    expect((await post(`/api/jobs/${job.id}/pause`)).json().state).toBe('paused');
    expect((await post(`/api/jobs/${job.id}/pause`)).statusCode).toBe(409);
    expect((await del()).statusCode).toBe(409);
    expect((await post(`/api/jobs/${job.id}/resume`)).json().state).toBe('running');
    expect((await post(`/api/jobs/${job.id}/cancel`)).json().state).toBe('cancelled');
    expect((await post(`/api/jobs/${job.id}/cancel`)).statusCode).toBe(409);
    expect((await app.inject({ url: `/api/jobs/${job.id}/metrics?points=10` })).json()).toEqual({ points: expect.any(Array) });
    expect((await app.inject({ url: `/api/jobs/${job.id}/result` })).statusCode).toBe(404);
    expect((await del()).statusCode).toBe(204);
    expect((await app.inject({ url: `/api/jobs/${job.id}` })).statusCode).toBe(404);
  });

  it('takes a corpus upload and serves swarm, nodes, corpora, health and metrics', async () => {
    const form = new FormData();
    form.append('name', 'uploaded');
    form.append('file', new Blob(['Call me Ishmael.\n'.repeat(100)]), 'uploaded.txt');
    const upload = await app.inject({ method: 'POST', url: '/api/corpora', headers: AUTH, payload: form });
    expect(upload.statusCode, upload.body).toBe(201);
    expect((await app.inject({ url: '/api/corpora' })).json()).toContainEqual({ name: 'uploaded', bytes: 1700, bundled: false });
    expect((await app.inject({ url: '/api/swarm' })).json()).toMatchObject({ peerId: service.coordinator.peerId, joinTokenRequired: false });
    expect((await app.inject({ url: '/api/nodes' })).json()).toEqual([]);
    expect((await app.inject({ url: '/healthz' })).json()).toMatchObject({ ok: true });
    expect((await app.inject({ url: '/metrics' })).body).toContain('swarmtrain_jobs{state="cancelled"}');
  });
});
