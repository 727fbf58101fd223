// The coordinator's HTTP API: buildApi assembles one Fastify instance from the feature plugins
// (jobs, downloads, swarm and nodes, events, uploads, metrics) over a SwarmService; listenApi binds it.
import swagger from '@fastify/swagger';
import type { TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifySchemaCompiler } from 'fastify';
import { PROTOCOL_VERSION } from '../../proto/index.ts';
import type { SwarmService } from '../api/service.ts';
import { installAuth } from './auth.ts';
import { downloadRoutes } from './downloads.ts';
import { errorBody, installErrorHandlers } from './errors.ts';
import { eventRoutes } from './events.ts';
import { jobRoutes } from './jobs.ts';
import { metricRoutes } from './metrics.ts';
import { swarmRoutes } from './swarm.ts';
import { uploadRoutes } from './uploads.ts';

export interface ApiOptions {
  service: SwarmService;
  /** The bearer token of every state-changing route (and of reads with protectReads). */
  apiToken: string;
  /** Reads need the token too (default false: anyone who reaches the port may look). */
  protectReads?: boolean;
  /** The largest uploaded file, corpus or model part (default 2 GiB). */
  maxUploadBytes?: number;
  /** The largest JSON body (default 1 MiB). */
  maxBodyBytes?: number;
  /** Comment lines on idle event streams, so proxies keep them open (default 15 s). */
  heartbeatMs?: number;
  /** Fastify's logger: a pino instance, true for pino's default, false (default) for none. */
  logger?: boolean | FastifyBaseLogger;
}

const DEFAULT_MAX_UPLOAD_BYTES = 2 * 2 ** 30;
const DEFAULT_MAX_BODY_BYTES = 2 ** 20;
const DEFAULT_HEARTBEAT_MS = 15_000;

const NUMBER_TEXT = /^-?\d+(\.\d+)?(e[-+]?\d+)?$/i;

/**
 * Query-string and path values arrive as text: numbers and booleans are read where the schema wants
 * them, only exact ones ("2.5" stays text for an integer check to refuse).
 */
function fromText(schema: TSchema, input: unknown): unknown {
  if (typeof input !== 'object' || input === null || schema.properties === undefined) return input;
  const properties = schema.properties as Record<string, TSchema>;
  return Object.fromEntries(Object.entries(input).map(([key, value]) => {
    const type = properties[key]?.type;
    if (typeof value !== 'string') return [key, value];
    if ((type === 'number' || type === 'integer') && NUMBER_TEXT.test(value)) return [key, Number(value)];
    if (type === 'boolean' && (value === 'true' || value === 'false')) return [key, value === 'true'];
    return [key, value];
  }));
}

/**
 * Checks each route part with TypeBox's compiled checker (proto's checker too): bodies as sent, so
 * "0.1" is not a number; query strings and params read from text first.
 */
const typeBoxValidator: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const checker = TypeCompiler.Compile(schema);
  return (input) => {
    const value = httpPart === 'body' ? input : fromText(schema, input);
    if (checker.Check(value)) return { value };
    const first = checker.Errors(value).First();
    return { error: [{ keyword: 'type', instancePath: first?.path ?? '', schemaPath: '', params: {}, message: first?.message ?? 'invalid' }] };
  };
};

export function buildApi(options: ApiOptions): FastifyInstance {
  const { service } = options;
  const maxUploadBytes = options.maxUploadBytes ?? DEFAULT_MAX_UPLOAD_BYTES;
  const logger = options.logger ?? false;
  const app = Fastify({
    ...(typeof logger === 'boolean' ? { logger } : { loggerInstance: logger }),
    bodyLimit: options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
    // The event streams stay open: closing must not wait for their clients.
    forceCloseConnections: true,
    // The router's own refusals (a malformed %-escape, an over-long path segment) in the one error shape too.
    frameworkErrors: (error, _request, reply) => {
      const status = error.statusCode ?? 400;
      (reply as FastifyReply).code(status).send(errorBody(status, error.message));
    },
    // Room for ids up to proto's 128 characters, so the schema (not the router) refuses longer ones.
    routerOptions: { maxParamLength: 256 },
  });
  app.setValidatorCompiler(typeBoxValidator);
  installErrorHandlers(app);
  app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'swarmtrain coordinator', version: PROTOCOL_VERSION, description: 'Jobs, nodes, live events and results of a swarm.' },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: "the coordinator's API token" },
          token: { type: 'apiKey', in: 'query', name: 'token', description: "the API token as ?token= (GET routes: EventSource, download links)" },
        },
      },
    },
  });
  installAuth(app, options.apiToken, options.protectReads ?? false);
  app.register(metricRoutes, { service });
  app.register(swarmRoutes, { service });
  app.register(jobRoutes, { service });
  app.register(downloadRoutes, { service });
  app.register(eventRoutes, { service, heartbeatMs: options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS });
  app.register(uploadRoutes, { service, maxUploadBytes });
  // In a plugin, like every route, so it is registered after swagger's route collector.
  app.register(async (docs) => {
    docs.get('/api/openapi.json', { schema: { summary: 'this API as an OpenAPI 3 document', tags: ['meta'] } }, async () => app.swagger());
  });
  return app;
}

/** Listens on "host:port" (port 0: any free one); returns the base URL, e.g. http://127.0.0.1:8080. */
export async function listenApi(app: FastifyInstance, address = '127.0.0.1:8080'): Promise<string> {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  if (!match) throw new Error(`the API address must be host:port, e.g. 127.0.0.1:8080, got ${JSON.stringify(address)}`);
  const host = match[1] ?? match[2];
  const port = Number(match[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range`);
  await app.listen({ host, port });
  const bound = app.server.address();
  const boundPort = typeof bound === 'object' && bound !== null ? bound.port : port;
  return `http://${host.includes(':') ? `[${host}]` : host}:${boundPort}`;
}
