// The job routes: create (validated by JobRequestSchema), list, show, pause/resume/cancel, delete,
// metrics, placement and samples of the latest checkpoint. State rules are the service's (409).
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  JobRequestSchema, JobViewSchema, MetricPointSchema, PlacementSchema, SAMPLE_DEFAULTS, SampleRequestSchema, SampleSchema,
} from '../api/schemas.ts';
import type { JobView, SwarmService } from '../api/service.ts';
import { HttpError } from './errors.ts';

export const JobIdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });

const DEFAULT_POINTS = 500;

/** The job, or a 404 naming it. */
export function jobOf(service: SwarmService, id: string): JobView {
  const job = service.getJob(id);
  if (job === undefined) throw new HttpError(404, `no job ${id}`);
  return job;
}

export const jobRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService }> = async (app, { service }) => {
  const tags = ['jobs'];

  app.get('/api/jobs', { schema: { summary: 'every job, oldest first', tags, response: { 200: Type.Array(JobViewSchema) } } },
    async () => service.listJobs());

  app.post('/api/jobs', {
    schema: { summary: 'queue a job', tags, body: JobRequestSchema, response: { 201: JobViewSchema } },
  }, async (request, reply) => reply.code(201).send(await service.createJob(request.body)));

  app.get('/api/jobs/:id', { schema: { summary: 'one job', tags, params: JobIdParams, response: { 200: JobViewSchema } } },
    async (request) => jobOf(service, request.params.id));

  const change = (verb: 'pause' | 'resume' | 'cancel', summary: string, apply: (id: string) => JobView) =>
    app.post(`/api/jobs/:id/${verb}`, { schema: { summary, tags, params: JobIdParams, response: { 200: JobViewSchema } } },
      async (request) => apply(request.params.id));
  change('pause', 'pause a running job (nodes stop after their batch; leases go back)', (id) => service.pauseJob(id));
  change('resume', 'resume a paused job', (id) => service.resumeJob(id));
  change('cancel', 'end a queued, running or paused job, keeping its checkpoints', (id) => service.cancelJob(id));

  app.delete('/api/jobs/:id', {
    schema: {
      summary: 'remove a job that is not running or paused, with its files', tags, params: JobIdParams,
      response: { 204: Type.Null({ description: 'deleted' }) },
    },
  }, async (request, reply) => {
    service.deleteJob(request.params.id);
    return reply.code(204).send(null);
  });

  app.get('/api/jobs/:id/metrics', {
    schema: {
      summary: "samples of the job's progress over its whole run", tags, params: JobIdParams,
      querystring: Type.Object({ points: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: DEFAULT_POINTS })) }),
      response: { 200: Type.Object({ points: Type.Array(MetricPointSchema) }) },
    },
  }, async (request) => ({ points: service.metrics(jobOf(service, request.params.id).id, request.query.points ?? DEFAULT_POINTS) }));

  app.get('/api/jobs/:id/placement', {
    schema: { summary: "which nodes hold each expert of the job's model", tags, params: JobIdParams, response: { 200: PlacementSchema } },
  }, async (request) => {
    const placement = service.placement(jobOf(service, request.params.id).id);
    if (placement === undefined) throw new HttpError(404, `job ${request.params.id} has no placement (it is not running)`);
    return placement;
  });

  app.post('/api/jobs/:id/sample', {
    schema: {
      summary: "continue a prompt with the job's latest checkpoint", tags, params: JobIdParams, body: SampleRequestSchema,
      response: { 200: SampleSchema },
    },
  }, async (request) => service.sample(request.params.id, { ...SAMPLE_DEFAULTS, ...request.body }));
};
