// Checkpoints and results: the list, and tar archives whose files (under the set's folder) are the
// service's files byte for byte; 404 for a missing round or a result not written yet.
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { testApi, TOKEN, type TestApi } from './setup.ts';
import { untar } from './tar.ts';

let api: TestApi;
beforeEach(() => {
  api = testApi({ protectReads: true });
});
afterEach(() => api.close());

const get = (url: string) => api.app.inject({ url: `${url}${url.includes('?') ? '&' : '?'}token=${TOKEN}` });

describe('checkpoint downloads', () => {
  it('lists checkpoints and sends one as a tar of its files under its folder, byte for byte', async () => {
    const job = await api.service.createJob({});
    api.service.advance(job.id, 10);
    const weights = randomBytes(70_000); // over one tar block and not a multiple of 512
    const first = api.service.addCheckpoint(job.id, 1, { 'model.safetensors': weights, 'manifest.json': '{"round":1}' });
    api.service.addCheckpoint(job.id, 2, { 'model.safetensors': randomBytes(10) });
    expect(JSON.parse((await get(`/api/jobs/${job.id}/checkpoints`)).body)).toEqual([first, expect.objectContaining({ round: 2 })]);
    expect(first).toMatchObject({ round: 1, completed: 10, bytes: weights.length + 11 });

    const response = await get(`/api/jobs/${job.id}/checkpoints/1/download`);
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-type']).toBe('application/x-tar');
    expect(response.headers['content-disposition']).toBe(`attachment; filename="${job.id}-round-1.tar"`);
    const files = await untar(response.rawPayload);
    expect([...files.keys()].sort()).toEqual([`${job.id}-round-1/manifest.json`, `${job.id}-round-1/model.safetensors`]);
    expect(files.get(`${job.id}-round-1/model.safetensors`)!.equals(weights)).toBe(true);
    expect(files.get(`${job.id}-round-1/manifest.json`)!.toString()).toBe('{"round":1}');
  });

  it('answers 404 for a round without a checkpoint and 400 for a round that is not a number', async () => {
    const job = await api.service.createJob({});
    const missing = await get(`/api/jobs/${job.id}/checkpoints/3/download`);
    expect(missing.statusCode).toBe(404);
    expect(missing.json().message).toBe(`job ${job.id} has no checkpoint of round 3`);
    const bad = await get(`/api/jobs/${job.id}/checkpoints/three/download`);
    expect(bad.statusCode).toBe(400);
    expect(bad.json().field).toBe('params/round');
  });
});

describe('result downloads', () => {
  it('answers 404 until the job has a result, then sends it as a tar', async () => {
    const job = await api.service.createJob({ totalBatches: 5 });
    const early = await get(`/api/jobs/${job.id}/result`);
    expect(early.statusCode).toBe(404);
    expect(early.json().message).toBe(`job ${job.id} has no result yet`);
    api.service.advance(job.id, 5);
    expect(api.service.getJob(job.id)).toMatchObject({ state: 'done', hasResult: true });
    const response = await get(`/api/jobs/${job.id}/result`);
    expect(response.statusCode).toBe(200);
    const files = await untar(response.rawPayload);
    expect(Object.fromEntries([...files].map(([name, bytes]) => [name, [...bytes]]))).toEqual({
      [`${job.id}/adapter_config.json`]: [...Buffer.from('{"r":8}')],
      [`${job.id}/adapter_model.safetensors`]: [1, 2, 3, 0, 255],
    });
  });
});
