// coordinator/client.ts against a listening API: each read method returns what the service holds,
// errors carry the server's status, message and field, and events() yields every event in order.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiError, CoordinatorClient } from '../../../coordinator/client.ts';
import type { SwarmEvent } from '../../../coordinator/api/service.ts';
import { listeningApi, TOKEN, type TestApi } from './setup.ts';

let api: TestApi & { url: string };
let client: CoordinatorClient;
beforeEach(async () => {
  api = await listeningApi();
  client = new CoordinatorClient({ url: `${api.url}/`, token: TOKEN });
});
afterEach(() => api.close());

describe('CoordinatorClient', () => {
  it('reads the swarm, nodes, jobs, metrics, placement and checkpoints as the service has them', async () => {
    const node = api.service.setNode({ nodeId: 'n1', status: 'training' });
    const job = await client.createJob({ totalBatches: 50, name: 'c' });
    api.service.advance(job.id, 5, { heldOut: 3 });
    const placement = { jobId: job.id, version: 1, numLayers: 1, numExperts: 1, replication: 1, cells: [{ layer: 0, expert: 0, holders: ['n1'] }] };
    api.service.setPlacement(placement);
    const checkpoint = api.service.addCheckpoint(job.id, 1, { 'a.bin': 'abc' });
    expect(await client.health()).toMatchObject({ ok: true, runningJob: job.id });
    expect(await client.swarm()).toEqual(api.service.swarm());
    expect(await client.nodes()).toEqual([node]);
    expect(await client.jobs()).toEqual(api.service.listJobs());
    expect(await client.job(job.id)).toEqual(api.service.getJob(job.id));
    expect(await client.metrics(job.id)).toEqual(api.service.metrics(job.id, 500));
    expect(await client.placement(job.id)).toEqual(placement);
    expect(await client.checkpoints(job.id)).toEqual([checkpoint]);
    expect(await client.sample(job.id, { prompt: 'a', maxTokens: 1 })).toEqual({ text: 'a w0', round: 1 });
  });

  it('throws ApiError with the status, message and field of the refusal', async () => {
    const refusal = await client.createJob({ lr: 20 }).catch((err: unknown) => err);
    expect(refusal).toBeInstanceOf(ApiError);
    expect(refusal).toMatchObject({ status: 400, field: 'body/lr', message: 'body/lr: Expected number to be less or equal to 10' });
    await expect(client.job('job-7')).rejects.toMatchObject({ status: 404, message: 'no job job-7' });
    await expect(new CoordinatorClient({ url: api.url }).pauseJob('job-7')).rejects.toMatchObject({ status: 401 });
  });

  it('yields every event in order, many per chunk or one split across chunks', async () => {
    const abort = new AbortController();
    const events = await client.events(abort.signal);
    const { id } = await api.service.createJob({ totalBatches: 1000 });
    for (let i = 0; i < 40; i++) api.service.advance(id, 1, { loss: i, droppedExpertCalls: i * 1000 });
    api.service.setNode({ nodeId: 'x'.repeat(100), addrs: Array.from({ length: 16 }, (_, i) => `/ip4/10.0.0.${i}/tcp/4001`) });
    const received: SwarmEvent[] = [];
    for await (const event of events) {
      received.push(event);
      if (event.type === 'node') break;
    }
    abort.abort();
    expect(received.map((e) => e.seq)).toEqual(Array.from({ length: 2 + 80 + 1 }, (_, i) => i + 1));
    const losses = received.flatMap((e) => (e.type === 'metrics' ? [e.point.loss] : []));
    expect(losses).toEqual(Array.from({ length: 40 }, (_, i) => i));
  });
});
