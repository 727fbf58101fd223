// GET /api/swarm (how to join, what runs) and GET /api/nodes (every node seen, with its experts and speed).
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { NodeViewSchema, SwarmInfoSchema } from '../api/schemas.ts';
import type { SwarmService } from '../api/service.ts';

export const swarmRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService }> = async (app, { service }) => {
  app.get('/api/swarm', {
    schema: { summary: "the swarm's identity, join addresses and running job", tags: ['swarm'], response: { 200: SwarmInfoSchema } },
  }, async () => service.swarm());
  app.get('/api/nodes', {
    schema: { summary: 'every node seen, alive or gone', tags: ['swarm'], response: { 200: Type.Array(NodeViewSchema) } },
  }, async () => service.nodes());
};
