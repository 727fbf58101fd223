// Bearer-token access: routes that change state need `Authorization: Bearer <token>`; reads are open
// unless protectReads, and GET routes also take `?token=` (EventSource and download links send no headers).
import type { FastifyInstance, onRequestHookHandler, RouteOptions } from 'fastify';
import { createHash, timingSafeEqual } from 'node:crypto';
import { HttpError } from './errors.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Open to anyone whatever the token settings (/healthz, /metrics). */
    public?: boolean;
  }
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/** Equal without leaking where they differ or, through the digests, their lengths. */
const sameToken = (given: string, expected: Buffer) => timingSafeEqual(digest(given), expected);

function bearerOf(header: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return match?.[1];
}

/**
 * Adds the token check to every route registered after it (an onRoute hook) unless the route's
 * config says public, and marks the protected ones in the OpenAPI document.
 */
export function installAuth(app: FastifyInstance, apiToken: string, protectReads: boolean): void {
  if (apiToken === '') throw new Error('the API token must not be empty');
  const expected = digest(apiToken);
  const check: onRequestHookHandler = async (request) => {
    const isRead = request.method === 'GET' || request.method === 'HEAD';
    const fromQuery = isRead ? (request.query as { token?: unknown } | undefined)?.token : undefined;
    const given = bearerOf(request.headers.authorization) ?? (typeof fromQuery === 'string' ? fromQuery : undefined);
    const how = isRead ? 'an Authorization: Bearer <token> header or ?token=' : 'an Authorization: Bearer <token> header';
    if (given === undefined) throw new HttpError(401, `this route needs the coordinator's API token: send ${how}`);
    if (!sameToken(given, expected)) throw new HttpError(401, 'wrong API token');
  };
  app.addHook('onRoute', (route: RouteOptions) => {
    const methods = [route.method].flat();
    const changesState = methods.some((method) => method !== 'GET' && method !== 'HEAD');
    if (route.config?.public || (!changesState && !protectReads)) return;
    route.onRequest = [check, ...[route.onRequest ?? []].flat()];
    // In the OpenAPI document: the header, or for reads the query parameter instead.
    const security: Record<string, string[]>[] = changesState ? [{ bearer: [] }] : [{ bearer: [] }, { token: [] }];
    route.schema = { ...route.schema, security };
  });
}
