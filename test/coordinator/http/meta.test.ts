// The routes about the API itself: the OpenAPI document (OpenAPI 3, every registered route in it),
// /healthz, and /metrics in Prometheus text with the service's counters.
import { afterEach, describe, expect, it } from 'vitest';
import { AUTH, testApi, type TestApi } from './setup.ts';

let api: TestApi | undefined;
afterEach(() => api?.close());

describe('GET /api/openapi.json', () => {
  it('is an OpenAPI 3 document listing every route the app registered, with the bearer scheme on the guarded ones', async () => {
    api = testApi();
    const registered: string[] = [];
    api.app.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) if (method !== 'HEAD') registered.push(`${method} ${route.url}`);
    });
    await api.app.ready();
    const response = await api.app.inject({ url: '/api/openapi.json' });
    expect(response.statusCode).toBe(200);
    const doc = JSON.parse(response.body);
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.info.title).toMatch(/swarmtrain/);
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>)
      .flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')}`));
    expect(documented.sort()).toEqual(registered.sort());
    expect(registered.sort()).toEqual([
      'GET /healthz', 'GET /metrics', 'GET /api/openapi.json', 'GET /api/swarm', 'GET /api/nodes', 'GET /api/events',
      'GET /api/jobs', 'POST /api/jobs', 'GET /api/jobs/:id', 'DELETE /api/jobs/:id',
      'POST /api/jobs/:id/pause', 'POST /api/jobs/:id/resume', 'POST /api/jobs/:id/cancel', 'POST /api/jobs/:id/sample',
      'GET /api/jobs/:id/metrics', 'GET /api/jobs/:id/placement', 'GET /api/jobs/:id/checkpoints',
      'GET /api/jobs/:id/checkpoints/:round/download', 'GET /api/jobs/:id/result',
      'GET /api/corpora', 'POST /api/corpora', 'GET /api/models', 'POST /api/models',
    ].sort());
    expect(doc.paths['/api/jobs'].post.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/api/jobs'].get.security).toBeUndefined();
    expect(doc.paths['/api/jobs'].post.requestBody.content['application/json'].schema.properties.lr).toMatchObject({ minimum: 0, maximum: 10 });
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('with protectReads, marks reads as taking the header or ?token=, and leaves /healthz and /metrics open', async () => {
    api = testApi({ protectReads: true });
    const doc = (await api.app.inject({ url: '/api/openapi.json', headers: AUTH })).json();
    expect(doc.paths['/api/jobs'].get.security).toEqual([{ bearer: [] }, { token: [] }]);
    expect(doc.paths['/api/jobs'].post.security).toEqual([{ bearer: [] }]);
    expect(doc.components.securitySchemes.token).toMatchObject({ type: 'apiKey', in: 'query', name: 'token' });
    expect(doc.paths['/healthz'].get.security).toBeUndefined();
    expect(doc.paths['/metrics'].get.security).toBeUndefined();
  });
});

describe('GET /healthz and /metrics', () => {
  it('reports health with the running job', async () => {
    api = testApi();
    const job = await api.service.createJob({});
    expect((await api.app.inject({ url: '/healthz' })).json()).toMatchObject({ ok: true, runningJob: job.id, version: expect.any(String) });
  });

  it("exposes the service's counters as Prometheus gauges, read at each scrape", async () => {
    api = testApi();
    api.service.setNode({ nodeId: 'a', status: 'training', tokensPerSecond: 1200, bytesSent: 10, bytesReceived: 20 });
    api.service.setNode({ nodeId: 'b', status: 'gone', tokensPerSecond: 0, bytesSent: 5, bytesReceived: 1 });
    const job = await api.service.createJob({ totalBatches: 100 });
    await api.service.createJob({});
    api.service.advance(job.id, 7);
    const response = await api.app.inject({ url: '/metrics' });
    expect(response.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const samples = new Map(response.body.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => {
      const at = line.lastIndexOf(' ');
      return [line.slice(0, at), Number(line.slice(at + 1))];
    }));
    const counters = api.service.counters();
    expect(Object.fromEntries(samples)).toEqual({
      swarmtrain_tokens_per_second: 1200, swarmtrain_nodes_alive: 1, swarmtrain_leases_outstanding: 1, swarmtrain_completed_batches: 7,
      swarmtrain_bytes_sent: 15, swarmtrain_bytes_received: 21, swarmtrain_refused_updates: 0,
      'swarmtrain_jobs{state="queued"}': 1, 'swarmtrain_jobs{state="running"}': 1, 'swarmtrain_jobs{state="paused"}': 0,
      'swarmtrain_jobs{state="done"}': 0, 'swarmtrain_jobs{state="failed"}': 0, 'swarmtrain_jobs{state="cancelled"}': 0,
    });
    expect(counters.completedBatches).toBe(7);
    await api.app.inject({ method: 'POST', url: `/api/jobs/${job.id}/cancel`, headers: AUTH });
    const again = (await api.app.inject({ url: '/metrics' })).body;
    expect(again).toContain('swarmtrain_jobs{state="cancelled"} 1');
    expect(again).toContain('swarmtrain_jobs{state="running"} 1');
  });
});
