// The job routes through app.inject: create (defaults, every field of JobRequestSchema refused when
// mistyped, out of range or unknown), list, show, the state rules (409), unknown ids (404), metrics,
// placement and samples.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { JobRequestSchema } from '../../../coordinator/api/schemas.ts';
import type { JobView } from '../../../coordinator/api/service.ts';
import { demoJob } from '../../../src/harness/demo-job.ts';
import { AUTH, testApi, type TestApi } from './setup.ts';

let api: TestApi;
beforeEach(() => {
  api = testApi();
});
afterEach(() => api.close());

const post = (url: string, payload?: object) => api.app.inject({ method: 'POST', url, headers: AUTH, ...(payload ? { payload } : {}) });
const create = async (payload: object = {}): Promise<JobView> => {
  const response = await post('/api/jobs', payload);
  expect(response.statusCode, response.body).toBe(201);
  return response.json();
};

describe('POST /api/jobs', () => {
  it('queues a job from the demo defaults with the fields given, and returns its view', async () => {
    const job = await create({ name: 'first', lr: 0.005, totalBatches: 40, corpus: 'sotu' });
    expect(job).toMatchObject({ id: 'job-1', name: 'first', state: 'queued', completed: 0, total: 40, hasResult: false });
    expect(job.spec).toEqual({ ...demoJob(200, 1), jobId: 'job-1', lr: 0.005, totalBatches: 40, corpus: 'sotu' });
    const second = await create();
    expect(second.state).toBe('queued');
    const list = await api.app.inject({ url: '/api/jobs' });
    expect(list.json().map((j: JobView) => [j.id, j.state])).toEqual([['job-1', 'running'], ['job-2', 'queued']]);
    expect((await api.app.inject({ url: '/api/jobs/job-1' })).json()).toEqual({ ...job, state: 'running', startedAt: expect.any(Number) });
  });

  it('refuses with the field named: out of range, wrong types, unknown properties, malformed nesting', async () => {
    const cases: [object, string, RegExp][] = [
      [{ lr: 11 }, 'body/lr', /less or equal to 10/],
      [{ lr: -1 }, 'body/lr', /greater or equal to 0/],
      [{ lr: '0.1' }, 'body/lr', /Expected number/],
      [{ batchSize: 1.5 }, 'body/batchSize', /Expected integer/],
      [{ heldOutFraction: 1 }, 'body/heldOutFraction', /less than 1/],
      [{ mode: 'half' }, 'body/mode', /union|Expected/],
      [{ jobId: 'mine' }, 'body/jobId', /Unexpected property/],
      [{ colour: 'blue' }, 'body/colour', /Unexpected property/],
      [{ averaging: { mode: 'sync', every: 0, deadlineMs: 10 } }, 'body/averaging/every', /greater or equal to 1/],
      [{ averaging: { mode: 'sync' } }, 'body/averaging/every', /required property/],
      [{ averaging: { mode: 'sync', every: 1, deadlineMs: 10, evry: 2 } }, 'body/averaging/evry', /Unexpected property/],
      [{ documents: { from: 0, to: 5, step: 1 } }, 'body/documents/step', /Unexpected property/],
      [{ lora: { rank: 8, alpha: 0 } }, 'body/lora/alpha', /greater than 0/],
      [{ name: '' }, 'body/name', /length greater or equal to 1/],
      [{ corpus: 42 }, 'body/corpus', /Expected string/],
    ];
    for (const [payload, field, message] of cases) {
      const response = await post('/api/jobs', payload);
      expect(response.statusCode, JSON.stringify(payload)).toBe(400);
      expect(response.json(), JSON.stringify(payload)).toMatchObject({ statusCode: 400, error: 'Bad Request', field });
      expect(response.json().message).toMatch(message);
      expect(response.json().message.startsWith(`${field}: `)).toBe(true);
    }
    expect(api.service.listJobs()).toEqual([]);
  });

  it('refuses a wrongly typed value in every field of the request schema', async () => {
    const wrong = (schema: { type?: string }) => (schema.type === 'string' ? 17 : 'text');
    const fields = Object.entries(JobRequestSchema.properties);
    expect(fields.length).toBeGreaterThan(20);
    for (const [key, schema] of fields) {
      const response = await post('/api/jobs', { [key]: wrong(schema as { type?: string }) });
      expect(response.statusCode, key).toBe(400);
      expect(response.json().field, key).toMatch(new RegExp(`^body/${key}(/|$)`));
    }
  });

  it("answers 400 with the service's own field for what only the service can check", async () => {
    const response = await post('/api/jobs', { corpus: 'no-such-corpus' });
    expect(response.statusCode).toBe(400);
    expect(response.json()).toEqual({ statusCode: 400, error: 'Bad Request', message: 'unknown corpus "no-such-corpus"', field: 'corpus' });
  });

  it('answers 400 for malformed JSON, an empty JSON body and a body that is not an object; 415 for other media types', async () => {
    const raw = (payload: string, contentType = 'application/json') =>
      api.app.inject({ method: 'POST', url: '/api/jobs', headers: { ...AUTH, 'content-type': contentType }, payload });
    for (const body of ['{"lr":', '', '[1,2]', '"text"', 'null']) {
      const response = await raw(body);
      expect(response.statusCode, body).toBe(400);
      expect(response.json().message, body).toMatch(/\w/);
    }
    const xml = await raw('<job/>', 'application/xml');
    expect(xml.statusCode).toBe(415);
    expect(xml.json()).toMatchObject({ statusCode: 415, error: 'Unsupported Media Type' });
  });

  it('answers malformed paths in the one error shape: a bad %-escape (400), an over-long id (414)', async () => {
    const badEscape = await api.app.inject({ url: '/api/jobs/%E0%A4%A' });
    expect(badEscape.statusCode).toBe(400);
    expect(badEscape.json()).toEqual({ statusCode: 400, error: 'Bad Request', message: "'/api/jobs/%E0%A4%A' is not a valid url component" });
    const long = await api.app.inject({ url: `/api/jobs/${'x'.repeat(300)}` });
    expect(long.statusCode).toBe(414);
    expect(Object.keys(long.json()).sort()).toEqual(['error', 'message', 'statusCode']);
    expect((await api.app.inject({ url: `/api/jobs/${'x'.repeat(129)}` })).json()).toMatchObject({ statusCode: 400, field: 'params/id' });
  });

  it('answers 413 for a body over the limit', async () => {
    const small = testApi({ maxBodyBytes: 1024 });
    try {
      const response = await small.app.inject({ method: 'POST', url: '/api/jobs', headers: AUTH, payload: { name: 'x'.repeat(2000) } });
      expect(response.statusCode).toBe(413);
      expect(response.json()).toMatchObject({ statusCode: 413, error: 'Payload Too Large' });
    } finally {
      await small.close();
    }
  });
});

describe('job state changes', () => {
  it('pauses only running jobs, resumes only paused ones, cancels queued, running and paused ones', async () => {
    const running = await create();
    const queued = await create();
    expect((await post(`/api/jobs/${queued.id}/pause`)).statusCode).toBe(409);
    expect((await post(`/api/jobs/${running.id}/resume`)).statusCode).toBe(409);
    const paused = await post(`/api/jobs/${running.id}/pause`);
    expect(paused.statusCode).toBe(200);
    expect(paused.json().state).toBe('paused');
    expect((await post(`/api/jobs/${running.id}/pause`)).json()).toMatchObject({ statusCode: 409, error: 'Conflict' });
    expect((await post(`/api/jobs/${running.id}/resume`)).json().state).toBe('running');
    expect((await post(`/api/jobs/${queued.id}/cancel`)).json().state).toBe('cancelled');
    expect((await post(`/api/jobs/${queued.id}/cancel`)).statusCode).toBe(409);
    expect((await post(`/api/jobs/${running.id}/cancel`)).json().state).toBe('cancelled');
  });

  it('deletes only jobs that are not running or paused: 409, then 204 and gone', async () => {
    const job = await create();
    const del = () => api.app.inject({ method: 'DELETE', url: `/api/jobs/${job.id}`, headers: AUTH });
    expect((await del()).statusCode).toBe(409);
    await post(`/api/jobs/${job.id}/pause`);
    expect((await del()).statusCode).toBe(409);
    await post(`/api/jobs/${job.id}/cancel`);
    const deleted = await del();
    expect(deleted.statusCode).toBe(204);
    expect(deleted.body).toBe('');
    expect((await api.app.inject({ url: `/api/jobs/${job.id}` })).statusCode).toBe(404);
    expect((await del()).statusCode).toBe(404);
  });

  it('answers 404 naming the id on every per-job route', async () => {
    const routes: [string, string, object?][] = [
      ['GET', '/api/jobs/job-9'], ['POST', '/api/jobs/job-9/pause'], ['POST', '/api/jobs/job-9/resume'], ['POST', '/api/jobs/job-9/cancel'],
      ['DELETE', '/api/jobs/job-9'], ['GET', '/api/jobs/job-9/metrics'], ['GET', '/api/jobs/job-9/placement'],
      ['GET', '/api/jobs/job-9/checkpoints'], ['GET', '/api/jobs/job-9/checkpoints/1/download'], ['GET', '/api/jobs/job-9/result'],
      ['POST', '/api/jobs/job-9/sample', { prompt: 'hi' }],
    ];
    for (const [method, url, payload] of routes) {
      const response = await api.app.inject({ method: method as 'GET', url, headers: AUTH, ...(payload ? { payload } : {}) });
      expect(response.statusCode, `${method} ${url}`).toBe(404);
      expect(response.json(), `${method} ${url}`).toMatchObject({ statusCode: 404, error: 'Not Found', message: expect.stringContaining('job-9') });
    }
  });
});

describe('job metrics, placement and samples', () => {
  it('returns the metric points, at most ?points= of them (default 500), and refuses points outside 1..10000', async () => {
    const job = await create({ totalBatches: 1000 });
    for (let i = 0; i < 600; i++) api.service.advance(job.id, 1, { loss: i });
    const all = (await api.app.inject({ url: `/api/jobs/${job.id}/metrics` })).json().points;
    expect(all).toHaveLength(500);
    expect(all.at(-1)).toMatchObject({ completed: 600, loss: 599, tokensPerSecond: 1000 });
    const three = (await api.app.inject({ url: `/api/jobs/${job.id}/metrics?points=3` })).json().points;
    expect(three.map((p: { loss: number }) => p.loss)).toEqual([597, 598, 599]);
    for (const points of ['0', '10001', '2.5', 'many']) {
      const response = await api.app.inject({ url: `/api/jobs/${job.id}/metrics?points=${points}` });
      expect(response.statusCode, points).toBe(400);
      expect(response.json().field).toBe('querystring/points');
    }
  });

  it('returns the placement of a job that has one, 404 otherwise', async () => {
    const job = await create();
    expect((await api.app.inject({ url: `/api/jobs/${job.id}/placement` })).statusCode).toBe(404);
    const placement = {
      jobId: job.id, version: 3, numLayers: 1, numExperts: 2, replication: 1,
      cells: [{ layer: 0, expert: 0, holders: ['a'] }, { layer: 0, expert: 1, holders: ['b'] }],
    };
    api.service.setPlacement(placement);
    expect((await api.app.inject({ url: `/api/jobs/${job.id}/placement` })).json()).toEqual(placement);
  });

  it('samples with the defaults (64 tokens) or the values given, and refuses out-of-range values', async () => {
    const job = await create();
    expect((await post(`/api/jobs/${job.id}/sample`, { prompt: 'Call me' })).statusCode).toBe(409);
    api.service.addCheckpoint(job.id, 2, { 'model.safetensors': 'weights' });
    const sample = await post(`/api/jobs/${job.id}/sample`, { prompt: 'Call me' });
    expect(sample.statusCode).toBe(200);
    expect(sample.json().round).toBe(2);
    expect(sample.json().text.split(' ')).toHaveLength(2 + 64);
    expect((await post(`/api/jobs/${job.id}/sample`, { prompt: 'Call me', maxTokens: 3, temperature: 0 })).json().text).toBe('Call me w0 w1 w2');
    const bad: [object, string][] = [
      [{ prompt: 'x', maxTokens: 0 }, 'body/maxTokens'], [{ prompt: 'x', maxTokens: 513 }, 'body/maxTokens'],
      [{ prompt: 'x', temperature: 2.5 }, 'body/temperature'], [{ prompt: 'x', temperature: -0.1 }, 'body/temperature'],
      [{}, 'body/prompt'], [{ prompt: 'x', top: 1 }, 'body/top'],
    ];
    for (const [payload, field] of bad) {
      const response = await post(`/api/jobs/${job.id}/sample`, payload);
      expect(response.statusCode, JSON.stringify(payload)).toBe(400);
      expect(response.json().field).toBe(field);
    }
  });
});

describe('swarm and nodes', () => {
  it('GET /api/swarm and /api/nodes return the service views', async () => {
    const node = api.service.setNode({ nodeId: 'node-a', status: 'training', experts: [{ layer: 0, expert: 1 }], loss: 2.5 });
    expect((await api.app.inject({ url: '/api/nodes' })).json()).toEqual([node]);
    const job = await create();
    expect((await api.app.inject({ url: '/api/swarm' })).json()).toEqual(api.service.swarm());
    expect(api.service.swarm().runningJob).toBe(job.id);
  });
});
