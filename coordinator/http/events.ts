// GET /api/events: the service's SwarmEvents as Server-Sent Events (`id: <seq>`, `event: <type>`,
// `data: <JSON>`), a comment line every heartbeat, and the subscription dropped when the client goes.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ServerResponse } from 'node:http';
import type { SwarmEvent, SwarmService } from '../api/service.ts';

/** A client this far behind (bytes queued) is cut off; its EventSource reconnects. */
const MAX_QUEUED_BYTES = 8 * 2 ** 20;

export const eventFrame = (event: SwarmEvent): string => `id: ${event.seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;

export const eventRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService; heartbeatMs: number }> = async (app, { service, heartbeatMs }) => {
  const open = new Set<ServerResponse>();
  // Streams never end by themselves: end them before the server closes.
  app.addHook('preClose', async () => {
    for (const response of open) response.end();
  });

  app.get('/api/events', {
    schema: {
      summary: 'live events (text/event-stream): job, job-deleted, metrics, node, plan, checkpoint', tags: ['events'],
      produces: ['text/event-stream'],
    },
  }, (request, reply) => {
    reply.hijack();
    const response = reply.raw;
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no',
    });
    response.write(': connected\n\n');
    open.add(response);
    const send = (text: string) => {
      if (response.writableLength > MAX_QUEUED_BYTES) response.destroy();
      else response.write(text);
    };
    const unsubscribe = service.subscribe((event) => send(eventFrame(event)));
    const heartbeat = setInterval(() => send(': heartbeat\n\n'), heartbeatMs);
    response.on('close', () => {
      clearInterval(heartbeat);
      unsubscribe();
      open.delete(response);
    });
  });
};
