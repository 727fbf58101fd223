// bench/api.ts's measureApi, small: a row per read route with every request answered, and the SSE
// fan-out timing each event the service emits once all clients have it.
import { describe, expect, it } from 'vitest';
import { measureApi } from '../../../bench/api.ts';
import { listeningApi, TOKEN } from './setup.ts';

describe('measureApi', () => {
  it('measures the read routes and the event fan-out of a running API', async () => {
    const api = await listeningApi();
    try {
      const { id } = await api.service.createJob({ totalBatches: 1_000_000 });
      const rows = await measureApi({
        url: api.url, token: TOKEN, pid: process.pid, requests: 20, seconds: 10, concurrency: 2, sseClients: 5, sseEvents: 3,
        emitEvent: () => api.service.advance(id, 1),
      });
      expect(rows.map((row) => row.what)).toEqual([
        'GET /api/jobs', 'GET /api/nodes', 'GET /api/swarm', `GET /api/jobs/${id}/metrics?points=500`, 'SSE event to all 5 clients',
      ]);
      for (const row of rows.slice(0, 4)) {
        expect(row.count).toBe(20);
        expect(row.p99Ms).toBeGreaterThanOrEqual(row.p50Ms);
        expect(row.extraCpuPercent).toEqual(expect.any(Number));
      }
      expect(rows[4].count).toBeGreaterThanOrEqual(3);
      expect(rows[4].p50Ms).toBeGreaterThanOrEqual(0);
      // The streams were closed: the server lets go of them.
      for (let i = 0; i < 500 && api.service.subscriberCount > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(api.service.subscriberCount).toBe(0);
    } finally {
      await api.close();
    }
  });
});
