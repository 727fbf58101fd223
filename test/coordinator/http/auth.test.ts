// Access: state-changing routes need the bearer token, reads are open unless protectReads (then a
// header or ?token=), /healthz and /metrics stay open; every refusal is a 401 saying what to send.
import { afterEach, describe, expect, it } from 'vitest';
import { buildApi } from '../../../coordinator/http/app.ts';
import { FakeSwarmService } from '../fake-service.ts';
import { AUTH, testApi, TOKEN, type TestApi } from './setup.ts';

let api: TestApi | undefined;
afterEach(() => api?.close());

const CHANGES: [string, string][] = [
  ['POST', '/api/jobs'], ['POST', '/api/jobs/job-1/pause'], ['POST', '/api/jobs/job-1/resume'], ['POST', '/api/jobs/job-1/cancel'],
  ['DELETE', '/api/jobs/job-1'], ['POST', '/api/jobs/job-1/sample'], ['POST', '/api/corpora'], ['POST', '/api/models'],
];
const READS = [
  '/api/swarm', '/api/nodes', '/api/jobs', '/api/jobs/job-1', '/api/jobs/job-1/metrics', '/api/jobs/job-1/checkpoints',
  '/api/corpora', '/api/models', '/api/openapi.json',
];

describe('the API token', () => {
  it('guards every state-changing route: 401 without a token, with a wrong one, or as ?token=', async () => {
    api = testApi();
    await api.service.createJob({});
    for (const [method, url] of CHANGES) {
      const inject = (headers: Record<string, string>, query = '') => api!.app.inject({ method: method as 'POST', url: `${url}${query}`, headers });
      const missing = await inject({});
      expect(missing.statusCode, `${method} ${url}`).toBe(401);
      expect(missing.json()).toMatchObject({ statusCode: 401, error: 'Unauthorized', message: expect.stringContaining('Authorization: Bearer') });
      expect(missing.headers['www-authenticate']).toBe('Bearer');
      expect((await inject({ authorization: 'Bearer nope' })).json().message).toBe('wrong API token');
      expect((await inject({ authorization: TOKEN })).statusCode, 'a bare token is not a bearer').toBe(401);
      expect((await inject({}, `?token=${TOKEN}`)).statusCode, 'the query token is for reads').toBe(401);
    }
    expect(api.service.getJob('job-1')?.state).toBe('running');
    expect((await api.app.inject({ method: 'POST', url: '/api/jobs/job-1/pause', headers: AUTH })).statusCode).toBe(200);
  });

  it('leaves reads open by default', async () => {
    api = testApi();
    await api.service.createJob({});
    for (const url of READS) expect((await api.app.inject({ url })).statusCode, url).toBe(200);
  });

  it('with protectReads, guards reads too, taking the token as a header or ?token=', async () => {
    api = testApi({ protectReads: true });
    await api.service.createJob({});
    for (const url of READS) {
      const missing = await api.app.inject({ url });
      expect(missing.statusCode, url).toBe(401);
      expect(missing.json().message).toContain('?token=');
      expect((await api.app.inject({ url: `${url}?token=wrong` })).statusCode, url).toBe(401);
      expect((await api.app.inject({ url, headers: AUTH })).statusCode, url).toBe(200);
      expect((await api.app.inject({ url: `${url}?token=${TOKEN}` })).statusCode, url).toBe(200);
    }
  });

  it('keeps /healthz and /metrics open even with protectReads', async () => {
    api = testApi({ protectReads: true });
    const health = await api.app.inject({ url: '/healthz' });
    expect(health.statusCode).toBe(200);
    expect(health.json()).toMatchObject({ ok: true });
    expect((await api.app.inject({ url: '/metrics' })).statusCode).toBe(200);
  });

  it('answers an unknown route with 404 before asking for a token', async () => {
    api = testApi({ protectReads: true });
    const response = await api.app.inject({ method: 'POST', url: '/api/nothing' });
    expect(response.statusCode).toBe(404);
    expect(response.json()).toEqual({ statusCode: 404, error: 'Not Found', message: 'no route POST /api/nothing (see GET /api/openapi.json)' });
  });

  it('refuses to build without a token', () => {
    expect(() => buildApi({ service: new FakeSwarmService(), apiToken: '' })).toThrow(/token/);
  });
});
