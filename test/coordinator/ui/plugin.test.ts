// The UI plugin beside the API: index.html at / revalidated on every load, hashed assets cached for
// good, public even when reads need the token, API 404s left to the API, and a 503 saying what to
// run when the UI is not built.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../../coordinator/http/app.ts';
import { uiPlugin } from '../../../coordinator/ui/plugin.ts';
import { FakeSwarmService } from '../fake-service.ts';

const service = new FakeSwarmService();
const built = mkdtempSync(join(tmpdir(), 'swarmtrain-ui-'));
writeFileSync(join(built, 'index.html'), '<!doctype html><title>swarmtrain</title>');
writeFileSync(join(built, 'app-ABC123.js'), 'console.log(1)');
const empty = join(built, 'not-built');
mkdirSync(empty);

async function appWith(root: string, protectReads = false) {
  const app = buildApi({ service, apiToken: 'secret', protectReads });
  await app.register(uiPlugin, { root });
  return app;
}

afterAll(() => {
  rmSync(built, { recursive: true, force: true });
  service.close();
});

describe('uiPlugin', () => {
  it('serves index.html at / (revalidated) and the hashed assets (cached for good)', async () => {
    const app = await appWith(built);
    const page = await app.inject({ url: '/' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.headers['cache-control']).toBe('no-cache');
    expect(page.body).toBe('<!doctype html><title>swarmtrain</title>');
    const script = await app.inject({ url: '/app-ABC123.js' });
    expect(script.statusCode).toBe(200);
    expect(script.headers['content-type']).toMatch(/javascript/);
    expect(script.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    await app.close();
  });

  it('stays public when the API protects reads, and leaves unknown paths to the API\'s 404', async () => {
    const app = await appWith(built, true);
    expect((await app.inject({ url: '/' })).statusCode).toBe(200);
    expect((await app.inject({ url: '/app-ABC123.js' })).statusCode).toBe(200);
    expect((await app.inject({ url: '/api/jobs' })).statusCode).toBe(401);
    const missing = await app.inject({ url: '/api/nothing-here' });
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ statusCode: 404, message: expect.stringContaining('no route GET /api/nothing-here') });
    expect((await app.inject({ url: '/other.js' })).statusCode).toBe(404);
    await app.close();
  });

  it('answers / with 503 and the command to run when the UI is not built', async () => {
    const app = await appWith(empty);
    const page = await app.inject({ url: '/' });
    expect(page.statusCode).toBe(503);
    expect(page.body).toContain('npm run build:ui');
    await app.close();
  });
});
