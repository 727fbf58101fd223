// GET /healthz and GET /metrics (Prometheus text): both open whatever the token settings, so probes
// and scrapers need no secret. The gauges are read from service.counters() on each scrape.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { Gauge, Registry } from 'prom-client';
import { PROTOCOL_VERSION } from '../../proto/index.ts';
import { JOB_STATES, type SwarmCounters, type SwarmService } from '../api/service.ts';

type Scalar = Exclude<keyof SwarmCounters, 'jobs'>;

const GAUGES: Record<Scalar, string> = {
  tokensPerSecond: 'tokens trained per second, all nodes together',
  nodesAlive: 'nodes joined and heard from recently',
  leasesOutstanding: 'micro-batches handed out and not yet reported',
  completedBatches: 'micro-batches completed by the running job',
  bytesSent: 'bytes the nodes sent, in all',
  bytesReceived: 'bytes the nodes received, in all',
  refusedUpdates: 'parameter updates refused (non-finite or outlier norms)',
};

const snakeCase = (name: string) => name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);

export const metricRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService }> = async (app, { service }) => {
  const registry = new Registry();
  const gauges = Object.entries(GAUGES).map(([key, help]) =>
    [key as Scalar, new Gauge({ name: `swarmtrain_${snakeCase(key)}`, help, registers: [registry] })] as const);
  const jobs = new Gauge({ name: 'swarmtrain_jobs', help: 'jobs by state', labelNames: ['state'], registers: [registry] });
  const startedAt = Date.now();

  app.get('/healthz', {
    config: { public: true },
    schema: {
      summary: 'liveness: 200 while the API answers', tags: ['meta'],
      response: {
        200: Type.Object({ ok: Type.Literal(true), version: Type.String(), uptimeSeconds: Type.Number(), runningJob: Type.Optional(Type.String()) }),
      },
    },
  }, async () => {
    const { runningJob } = service.swarm();
    return { ok: true as const, version: PROTOCOL_VERSION, uptimeSeconds: (Date.now() - startedAt) / 1000, ...(runningJob ? { runningJob } : {}) };
  });

  app.get('/metrics', {
    config: { public: true },
    schema: { summary: 'Prometheus metrics (text exposition format)', tags: ['meta'], produces: ['text/plain'] },
  }, async (_request, reply) => {
    const counters = service.counters();
    for (const [key, gauge] of gauges) gauge.set(counters[key]);
    for (const state of JOB_STATES) jobs.set({ state }, counters.jobs[state]);
    return reply.type(registry.contentType).send(await registry.metrics());
  });
};
