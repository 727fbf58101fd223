// The API's one error shape, { statusCode, error, message, field? }, and how every failure maps to
// it: schema validation 400 naming the field, ServiceError by its code, Fastify's own 4xx kept.
import type { FastifyError, FastifyInstance } from 'fastify';
import { STATUS_CODES } from 'node:http';
import { ServiceError, type ServiceErrorCode } from '../api/service.ts';

/** A 4xx a route or hook decides on. */
export class HttpError extends Error {
  override name = 'HttpError';
  constructor(readonly statusCode: number, message: string, readonly field?: string) {
    super(message);
  }
}

const SERVICE_STATUS: Record<ServiceErrorCode, number> = { invalid: 400, 'not-found': 404, conflict: 409, 'too-large': 413 };

export interface ErrorBody {
  statusCode: number;
  error: string;
  message: string;
  field?: string;
}

export const errorBody = (statusCode: number, message: string, field?: string): ErrorBody => ({
  statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, ...(field === undefined ? {} : { field }),
});

function bodyOf(error: FastifyError | ServiceError | HttpError): ErrorBody {
  if (error instanceof ServiceError) return errorBody(SERVICE_STATUS[error.code], error.message, error.field);
  if (error instanceof HttpError) return errorBody(error.statusCode, error.message, error.field);
  if (error.validation !== undefined) {
    const first = error.validation[0];
    return errorBody(400, error.message, `${error.validationContext ?? 'body'}${first?.instancePath ?? ''}`);
  }
  const status = error.statusCode ?? 500;
  return status >= 400 && status < 500 ? errorBody(status, error.message) : errorBody(500, 'internal error (see the coordinator log)');
}

/** Installs the error and not-found handlers: every answer that is not a success has the one shape. */
export function installErrorHandlers(app: FastifyInstance): void {
  // Schema failures read "body/lr: Expected number to be less or equal to 10".
  app.setSchemaErrorFormatter((errors, context) => new Error(`${context}${errors[0]?.instancePath ?? ''}: ${errors[0]?.message ?? 'invalid'}`));
  app.setErrorHandler((error: FastifyError | ServiceError | HttpError, request, reply) => {
    const body = bodyOf(error);
    if (body.statusCode >= 500) request.log.error({ err: error }, 'request failed');
    if (body.statusCode === 401) reply.header('www-authenticate', 'Bearer');
    return reply.code(body.statusCode).send(body);
  });
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send(errorBody(404, `no route ${request.method} ${request.url.split('?')[0]} (see GET /api/openapi.json)`)));
}
