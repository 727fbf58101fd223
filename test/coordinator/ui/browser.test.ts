// The web UI in headless Chromium. First against a real coordinator service (coordinator/bin.mjs) with
// 2 node processes training a tiny job: log in, both nodes, the placement map (by keyboard too), the
// loss curve growing, the create-job form refusing bad input before sending, then a LoRA job created,
// paused, resumed and its adapter downloaded and read. Then against the HTTP API over the fake swarm
// service, for what a real swarm cannot show quickly: dead and degraded cells, a new plan, 100,000
// samples, a coordinator restart, checkpoints and samples, a phone in the dark, protected reads.
// Screenshots go to tmp/ui-screenshots/ (dashboard.png is the README's docs/dashboard.png).
// Needs Debian's chromium at /usr/bin/chromium: skipped without it unless CI is set (CI=true must run it).
import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { extract } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobRequest, JobView, MetricPoint } from '../../../coordinator/api/service.ts';
import { CoordinatorClient } from '../../../coordinator/client.ts';
import { startService, type ServiceSwarm } from '../../../src/harness/local-swarm.ts';
import { decodeSafetensors } from '../../../src/io/safetensors.ts';
import { FakeSwarmService } from '../fake-service.ts';
import { TINY_JOB } from '../../helpers.ts';
import { PEERS, sampleAt, seedSwarm, serveFake, trainFor, type FakeCoordinator } from './fake-coordinator.ts';

const CHROMIUM = '/usr/bin/chromium';
const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const shots = join(root, 'tmp/ui-screenshots');
const canRun = existsSync(CHROMIUM) || process.env.CI !== undefined;
if (!canRun) console.warn(`web UI browser test skipped: no ${CHROMIUM} (apt-get install chromium); with CI set it runs and fails instead`);


/** Starts recording the page's longest main-thread task (tasks over 50 ms, the browser's long tasks). */
async function watchLongTasks(page: Page): Promise<void> {
  await page.evaluate(() => {
    const w = window as unknown as { longestTaskMs: number };
    w.longestTaskMs = 0;
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) w.longestTaskMs = Math.max(w.longestTaskMs, entry.duration);
    }).observe({ type: 'longtask' });
  });
}

const longestTaskMs = (page: Page) => page.evaluate(() => (window as unknown as { longestTaskMs: number }).longestTaskMs);

/** Every file of a tar archive: name → contents. */
async function untar(path: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const archive = extract();
  createReadStream(path).pipe(archive);
  for await (const entry of archive) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    files.set(entry.header.name, Buffer.concat(chunks));
  }
  return files;
}

const sampleCount = async (page: Page) => Number(/\((\d+) samples\)/.exec(await page.locator('figcaption').first().innerText())?.[1]);

async function logIn(page: Page, token: string): Promise<void> {
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByLabel('API token').fill(token);
  await page.getByLabel('API token').press('Enter');
  await page.getByRole('button', { name: 'Log out' }).waitFor();
}

async function newPage(browser: Browser, viewport = { width: 1280, height: 800 }): Promise<Page> {
  const page = await browser.newPage({ viewport, acceptDownloads: true });
  page.on('pageerror', (error) => { throw error; });
  return page;
}

describe.skipIf(!canRun)('web UI in Chromium', () => {
  let browser: Browser;

  beforeAll(async () => {
    execFileSync(process.execPath, [join(root, 'coordinator/ui/build.mjs')], { stdio: 'pipe' });
    mkdirSync(shots, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM });
  });

  afterAll(async () => {
    await browser?.close();
  });

  describe('on a real coordinator service with 2 nodes', () => {
    let swarm: ServiceSwarm;
    let api: CoordinatorClient;
    let page: Page;
    let first: JobView;
    let created: JobView;
    /** Every job creation the page sent. */
    const posts: string[] = [];

    beforeAll(async () => {
      swarm = await startService(['--heartbeat-ms', '500']);
      for (let i = 0; i < 2; i++) swarm.startNode(['--memory-budget', '1GB']);
      api = new CoordinatorClient({ url: swarm.url, token: swarm.token });
      // Long enough to still run while the page is watched; cancelled to let the form's job run.
      first = await api.createJob({ ...TINY_JOB, name: 'tiny-moe', totalBatches: 5000, expectedNodes: 2 });
      page = await newPage(browser);
      page.on('request', (request) => {
        if (request.method() === 'POST' && new URL(request.url()).pathname === '/api/jobs') posts.push(request.postData() ?? '');
      });
    }, 120_000);

    afterAll(async () => {
      await page?.close();
      await swarm?.stop();
    });

    it('opens read-only, refuses a wrong token and keeps the right one in sessionStorage only', async () => {
      await page.goto(`${swarm.url}/`);
      await page.locator('.connection-live').waitFor();
      const paint = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime);
      console.log(`web UI: first contentful paint of the dashboard ${paint?.toFixed(0)} ms`);
      await page.getByText('read-only').waitFor();
      expect(await page.getByRole('link', { name: 'New job' }).count()).toBe(0);

      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByLabel('API token').fill('not-the-token');
      await page.getByLabel('API token').press('Enter');
      await page.getByRole('alert').filter({ hasText: 'refused this token' }).waitFor();
      await page.getByLabel('API token').fill(swarm.token);
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('button', { name: 'Log out' }).waitFor();
      expect(await page.evaluate(() => [sessionStorage.getItem('swarmtrain.token'), localStorage.length])).toEqual([swarm.token, 0]);
      await page.getByRole('link', { name: 'New job' }).waitFor();
    });

    it('shows both nodes training and the placement map the coordinator planned, each cell\'s holders reachable by keyboard', async () => {
      await expect.poll(async () => (await api.nodes()).map((node) => node.status), { timeout: 60_000 }).toEqual(['training', 'training']);
      const nodeIds = (await api.nodes()).map((node) => node.nodeId).sort();
      const rows = page.locator('table.nodes tbody tr');
      await expect.poll(async () => (await rows.locator('td:nth-child(1) code').evaluateAll(
        (codes) => codes.map((code) => code.getAttribute('title')),
      )).sort(), { timeout: 30_000 }).toEqual(nodeIds);
      await expect.poll(() => rows.locator('td:nth-child(2)').allInnerTexts(), { timeout: 30_000 }).toEqual(['training', 'training']);

      // 2 layers × 4 experts at replication 2: each cell held by both nodes, as the API's plan says.
      const plan = await api.placement(first.id);
      expect(plan.cells).toHaveLength(8);
      const expected = plan.cells.map(({ layer, expert, holders }) =>
        [`layer ${layer}, expert ${expert}: 2 of 2 live holders (ok)`, ...holders.map((holder) => `${holder} (training)`)].join('\n'));
      const cells = page.locator('.placement-grid td.cell');
      await expect.poll(() => cells.evaluateAll((tds) => tds.map((td) => td.getAttribute('aria-label'))), { timeout: 30_000 })
        .toEqual(expected);
      expect(await cells.allInnerTexts()).toEqual(Array(8).fill('2'));
      expect(plan.cells.every((cell) => [...cell.holders].sort().join() === nodeIds.join())).toBe(true);

      // From the legend just above the grid, Tab reaches the cells in order; the focused one's holders show under the grid.
      await page.locator('.placement .legend').click();
      await page.keyboard.press('Tab');
      await page.keyboard.press('Tab');
      const focused = () => page.evaluate(() => ['layer', 'expert'].map((key) => document.activeElement?.getAttribute(`data-${key}`)));
      expect(await focused()).toEqual(['0', '1']);
      expect(await page.getByTestId('cell-detail').innerText()).toBe(expected[1].replaceAll('\n', ' · '));
      await page.keyboard.press('Tab');
      expect(await focused()).toEqual(['0', '2']);
      expect(await page.getByTestId('cell-detail').innerText()).toBe(expected[2].replaceAll('\n', ' · '));
    });

    it('draws the running job\'s loss curve as samples arrive', async () => {
      await page.locator('.placement .legend').click(); // the focused cell's line would show in the screenshot
      const before = await sampleCount(page);
      // A sample every 2 s; a few more make a curve worth a picture (docs/dashboard.png).
      await expect.poll(() => sampleCount(page), { timeout: 60_000 }).toBeGreaterThanOrEqual(Math.max(before + 2, 8));
      // Every sample the page drew is one the coordinator serves.
      const shown = await sampleCount(page);
      expect((await api.metrics(first.id, 10_000)).length).toBeGreaterThanOrEqual(shown);
      const progress = await page.locator('.tile-value').first().innerText();
      expect(progress).toMatch(/^[\d,]+ \/ 5,000$/);
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: join(shots, 'dashboard.png') });

      await page.getByRole('link', { name: 'tiny-moe' }).first().click();
      await page.locator('[data-testid="job-state"]').filter({ hasText: 'running' }).waitFor();
      await page.screenshot({ path: join(shots, 'job-running.png'), fullPage: true });
    });

    it('refuses an invalid form inline and sends nothing', async () => {
      await page.getByRole('link', { name: 'New job' }).click();
      await page.getByLabel('Learning rate', { exact: true }).fill('11');
      await page.getByLabel('Total micro-batches').fill('30.5');
      await page.getByRole('button', { name: 'Create job' }).click();
      await expect.poll(() => page.locator('[data-error-for="lr"]').innerText()).toBe('must be <= 10');
      expect(await page.locator('[data-error-for="totalBatches"]').innerText()).toBe('must be a whole number');
      expect(await page.evaluate(() => document.activeElement?.id)).toBe('job-lr');
      expect(posts).toEqual([]);
      expect((await api.jobs()).map((job) => job.id)).toEqual([first.id]);
      await page.screenshot({ path: join(shots, 'new-job-invalid.png'), fullPage: true });
    });

    it('creates a LoRA job with the form, queued behind the running one', async () => {
      await page.getByLabel('Name', { exact: true }).fill('browser-lora');
      await page.getByLabel('Training mode').selectOption('lora');
      await page.getByLabel('LoRA rank').fill('4');
      await page.getByLabel('Learning rate', { exact: true }).fill('0.002');
      await page.getByLabel('Total micro-batches').fill('60');
      await page.getByLabel('Batch size').fill('1');
      await page.getByLabel('Expected nodes').fill('2');
      await page.getByRole('button', { name: 'Create job' }).click();
      await page.waitForURL(/#\/jobs\//);
      expect(posts).toHaveLength(1);
      const jobs = await api.jobs();
      expect(jobs).toHaveLength(2);
      created = jobs.find((job) => job.name === 'browser-lora')!;
      expect(created).toMatchObject({
        state: 'queued',
        spec: { mode: 'lora', lora: { rank: 4, alpha: 16 }, lr: 0.002, totalBatches: 60, batchSize: 1, expectedNodes: 2 },
      });
      expect(page.url()).toContain(`#/jobs/${created.id}`);
      await page.locator('[data-testid="job-state"]').filter({ hasText: 'queued' }).waitFor();
    });

    it('pauses and resumes it with its buttons once it runs', async () => {
      await api.cancelJob(first.id); // one job at a time: the form's starts
      const state = page.locator('[data-testid="job-state"]');
      await state.filter({ hasText: 'running' }).waitFor({ timeout: 60_000 });
      await page.getByRole('button', { name: 'Pause' }).click();
      await state.filter({ hasText: 'paused' }).waitFor();
      expect((await api.job(created.id)).state).toBe('paused');
      await page.getByRole('button', { name: 'Resume' }).click();
      await state.filter({ hasText: 'running' }).waitFor();
      expect((await api.job(created.id)).state).toBe('running');
      expect((await api.job(first.id)).state).toBe('cancelled');
    }, 90_000);

    it('downloads the trained adapter when the job ends', async () => {
      await page.locator('[data-testid="job-state"]').filter({ hasText: 'done' }).waitFor({ timeout: 120_000 });
      await page.screenshot({ path: join(shots, 'job-lora-done.png'), fullPage: true });
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download result' }).click()]);
      const folder = `${created.id}-result`;
      expect(download.suggestedFilename()).toBe(`${folder}.tar`);
      const files = await untar(await download.path());
      expect([...files.keys()]).toEqual(expect.arrayContaining([`${folder}/adapter_config.json`, `${folder}/adapter_model.safetensors`]));
      const config = JSON.parse(files.get(`${folder}/adapter_config.json`)!.toString());
      expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 16 });
      const { tensors } = decodeSafetensors(files.get(`${folder}/adapter_model.safetensors`)!);
      expect(tensors.size).toBeGreaterThan(0);
      for (const [name, tensor] of tensors) {
        // PEFT's layout: A is [rank, in], B is [out, rank].
        const [, which] = /\.lora_([AB])\.weight$/.exec(name) ?? [];
        expect(which, name).toBeDefined();
        expect(tensor.shape[which === 'A' ? 0 : 1], name).toBe(4);
      }
      // B starts at zero: trained, some of it moved.
      const moved = [...tensors].filter(([name, tensor]) => name.endsWith('lora_B.weight') && tensor.data.some((x) => x !== 0));
      expect(moved.length).toBeGreaterThan(0);
    }, 150_000);
  });

  describe('on a fake swarm service: what a real swarm cannot show quickly', () => {
    const TOKEN = 'browser-test-token';
    const service = new FakeSwarmService();
    let coordinator: FakeCoordinator;
    let page: Page;
    let seededJob: string;

    beforeAll(async () => {
      seededJob = await seedSwarm(service);
      coordinator = await serveFake(service, { apiToken: TOKEN });
      page = await newPage(browser, { width: 1280, height: 900 });
    });

    afterAll(async () => {
      await page?.close();
      await coordinator?.close();
      service.close();
    });

    it('shows a slow node, a gone one and the placement\'s degraded and dead cells, and the join line', async () => {
      await page.goto(`${coordinator.url}/`);
      await page.locator('table.nodes tbody tr').nth(3).waitFor();
      expect(await page.locator('table.nodes tbody tr td:nth-child(2)').allInnerTexts()).toEqual(['training', 'training', 'slow', 'gone']);
      await expect.poll(() => page.locator('.placement-grid td.cell').count()).toBe(32);
      expect(await page.locator('td[data-health="dead"]').count()).toBe(1);
      expect(await page.locator('td[data-health="degraded"]').count()).toBe(7);
      expect(await page.locator('td[data-layer="3"][data-expert="7"]').getAttribute('title')).toContain(`${PEERS.delta} (gone)`);
      await expect.poll(() => page.locator('.join pre').first().innerText())
        .toBe('SWARMTRAIN_JOIN=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWFakeCoordinator SWARMTRAIN_TOKEN=<token> docker compose up -d');
      expect(await page.locator('.join pre').nth(1).innerText())
        .toBe('npx swarmtrain node --join /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWFakeCoordinator --token <token>');
      await page.screenshot({ path: join(shots, 'dashboard-degraded.png'), fullPage: true });
      await logIn(page, TOKEN);
    });

    it('follows the swarm live: loss samples, a new plan and a joining node appear without a reload', async () => {
      const before = await sampleCount(page);
      trainFor(service, seededJob, 5);
      await expect.poll(() => sampleCount(page)).toBe(before + 5);

      const placement = service.placement(seededJob)!;
      // Version 4 moves the gone node's experts to two live nodes.
      const moved = (holders: string[]) => (holders.includes(PEERS.delta) ? [PEERS.alpha, PEERS.bravo] : holders);
      const cells = placement.cells.map((cell) => ({ ...cell, holders: moved(cell.holders) }));
      service.setPlacement({ ...placement, version: 4, cells });
      await expect.poll(() => page.locator('td[data-health="dead"], td[data-health="degraded"]').count()).toBe(0);
      service.setNode({ nodeId: '12D3KooWEchoJustJoined5555', status: 'idle' });
      await expect.poll(() => page.locator('table.nodes tbody tr').count()).toBe(5);
    });

    it('lists 500 nodes joining one after the other without a long task', async () => {
      await watchLongTasks(page);
      const rows = await page.locator('table.nodes tbody tr').count();
      for (let i = 0; i < 500; i++) {
        service.setNode({ nodeId: `12D3KooWCrowd${String(i).padStart(6, '0')}`, status: 'training', experts: [{ layer: 0, expert: i % 8 }] });
      }
      await expect.poll(() => page.locator('table.nodes tbody tr').count(), { timeout: 60_000 }).toBe(rows + 500);
      const longest = await longestTaskMs(page);
      console.log(`web UI: longest main-thread task while 500 nodes joined: ${longest.toFixed(0)} ms`);
      expect(longest).toBeLessThan(5000);
    }, 120_000);

    it('stays responsive while 100,000 samples stream in, drawing them on a log x axis', async () => {
      await watchLongTasks(page);
      const from = service.getJob(seededJob)!.completed;
      const last = service.metrics(seededJob, 1)[0].at;
      const before = await sampleCount(page);
      // In chunks, each let through once the page has taken the last: the API cuts off a client that
      // falls 8 MiB behind, and this test is about the page, not about a loaded machine's socket.
      for (let sent = 0; sent < 100_000; sent += 5000) {
        for (let i = sent + 1; i <= sent + 5000; i++) {
          const point = { ...sampleAt(from + i), at: last + i, completed: from + i } as MetricPoint;
          service.emit({ type: 'metrics', jobId: seededJob, point });
        }
        await expect.poll(() => sampleCount(page), { timeout: 60_000 }).toBe(before + sent + 5000);
      }
      const longest = await longestTaskMs(page);
      console.log(`web UI: longest main-thread task while 100,000 samples streamed: ${longest.toFixed(0)} ms`);
      expect(longest).toBeLessThan(5000);
      expect(await page.locator('.chart select').inputValue()).toBe('auto');
      expect(await page.locator('.chart option[value="auto"]').innerText()).toBe('auto (log)');
      await page.screenshot({ path: join(shots, 'dashboard-100k-samples.png'), fullPage: false });
    }, 180_000);

    it('catches up after a coordinator restart from the metrics route', async () => {
      const port = Number(new URL(coordinator.url).port);
      await coordinator.close();
      await page.locator('.connection-reconnecting').waitFor();
      const progress = service.getJob(seededJob)!.completed;
      trainFor(service, seededJob, 3); // while nobody streams
      coordinator = await serveFake(service, { apiToken: TOKEN, port });
      await page.locator('.connection-live').waitFor({ timeout: 30_000 });
      await expect.poll(() => page.locator('.tile-value').first().innerText(), { timeout: 30_000 }).toContain(`${progress + 3} /`);
    });

    it('lists a job\'s checkpoints with download links and samples text from the latest', async () => {
      await page.getByRole('link', { name: 'moby-dick-moe' }).first().click();
      const row = page.locator('section').filter({ hasText: 'Checkpoints' }).locator('tbody tr');
      await row.first().waitFor();
      expect(await row.locator('td').first().innerText()).toBe('1');
      const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('link', { name: 'Download' }).click()]);
      const files = await untar(await download.path());
      expect(files.get(`${seededJob}-round-1/manifest.json`)!.toString()).toBe('{"round":1}');
      expect(files.get(`${seededJob}-round-1/model.safetensors`)!.equals(Buffer.alloc(4096, 7))).toBe(true);

      await page.getByLabel('Prompt').fill('Call me');
      await page.getByRole('button', { name: 'Sample' }).click();
      await expect.poll(() => page.getByTestId('sample-text').innerText()).toMatch(/^Call me.*w0 w1 .* w63\s+from round 1$/s);
    });

    it('fits a phone screen, in the dark scheme too', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.emulateMedia({ colorScheme: 'dark' });
      await page.goto(`${coordinator.url}/#/`);
      await page.locator('table.nodes tbody tr').first().waitFor();
      // Wide tables scroll inside their box; the page itself never scrolls sideways.
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      expect(await page.evaluate(() => getComputedStyle(document.body).backgroundColor)).toBe('rgb(17, 20, 24)');
      await page.screenshot({ path: join(shots, 'phone-dark.png'), fullPage: true });
      await page.goto(`${coordinator.url}/#/new`);
      await page.getByRole('button', { name: 'Create job' }).waitFor();
      await page.screenshot({ path: join(shots, 'phone-dark-new-job.png'), fullPage: true });
    });

    it('asks for the token first when the API protects reads, then shows the swarm', async () => {
      const locked = await serveFake(service, { apiToken: TOKEN, protectReads: true });
      try {
        const fresh = await newPage(browser);
        await fresh.goto(`${locked.url}/`);
        await fresh.getByText('needs a token even to read').waitFor();
        await logIn(fresh, TOKEN);
        await fresh.locator('table.nodes tbody tr').first().waitFor();
        await fresh.locator('.connection-live').waitFor();
        await fresh.close();
      } finally {
        await locked.close();
      }
    });
  });
});
