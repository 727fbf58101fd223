// What the API tests share: an app over a fresh FakeSwarmService, the token headers, and a listening
// server for the tests that need a real socket (SSE, the CLI, the client).
import type { FastifyInstance } from 'fastify';
import { buildApi, listenApi, type ApiOptions } from '../../../coordinator/http/app.ts';
import { FakeSwarmService } from '../fake-service.ts';

export const TOKEN = 'test-token-0123456789';
export const AUTH = { authorization: `Bearer ${TOKEN}` };

export interface TestApi {
  app: FastifyInstance;
  service: FakeSwarmService;
  close(): Promise<void>;
}

export function testApi(options: Partial<Omit<ApiOptions, 'service'>> = {}): TestApi {
  const service = new FakeSwarmService();
  const app = buildApi({ service, apiToken: TOKEN, ...options });
  return {
    app, service,
    async close() {
      await app.close();
      service.close();
    },
  };
}

/** The same, listening on a free loopback port. */
export async function listeningApi(options: Partial<Omit<ApiOptions, 'service'>> = {}): Promise<TestApi & { url: string }> {
  const api = testApi(options);
  return { ...api, url: await listenApi(api.app, '127.0.0.1:0') };
}
