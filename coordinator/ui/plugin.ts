// Serves the built web UI (coordinator/ui/dist/, see build.mjs) at `/`: index.html at `/`, the
// content-hashed script and stylesheet cached for good, index.html revalidated on every load so a
// new build shows at once. One public route per built file (the page must load to show the login
// even when the API's reads need the token); nothing else is routed, so API 404s stay the API's.
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsync } from 'fastify';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** Where the build lands, seen from this module in the sources, or bundled into dist/coordinator.mjs (src/bundle.ts). */
const BUILD_CANDIDATES = [join(here, 'dist'), join(here, '../coordinator/ui/dist')];

export interface UiOptions {
  /** The built UI's folder; default: coordinator/ui/dist. */
  root?: string;
}

export const uiPlugin: FastifyPluginAsync<UiOptions> = async (app, options) => {
  const root = options.root ?? BUILD_CANDIDATES.find((folder) => existsSync(join(folder, 'index.html')));
  const config = { public: true };
  if (root === undefined || !existsSync(join(root, 'index.html'))) {
    const where = join(options.root ?? BUILD_CANDIDATES[0], 'index.html');
    app.log.warn(`web UI not built (no ${where}): run \`npm run build:ui\``);
    app.get('/', { config, schema: { hide: true } }, async (_request, reply) => reply.code(503).type('text/plain')
      .send('The web UI is not built: run `npm run build:ui` on the coordinator. The API is at /api/.'));
    return;
  }
  await app.register(fastifyStatic, {
    root, serve: false, cacheControl: false,
    setHeaders(reply, path) {
      reply.header('cache-control', path.endsWith('.html') ? 'no-cache' : 'public, max-age=31536000, immutable');
      reply.header('x-content-type-options', 'nosniff');
    },
  });
  app.get('/', { config, schema: { hide: true } }, (_request, reply) => reply.sendFile('index.html'));
  for (const file of readdirSync(root)) {
    app.get(`/${file}`, { config, schema: { hide: true } }, (_request, reply) => reply.sendFile(file));
  }
};
