// `swarmtrain job ...` against a real listening API over the fake service: create with a corpus
// upload, list, show, watch to the end, pause/resume/cancel/delete, download of the result and of a
// checkpoint (compared byte for byte), and the errors: unreachable (1), 401, 404 and 409 (2).
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../../../node/cli.ts';
import type { CommandIO } from '../../../src/cli/command.ts';
import { listeningApi, TOKEN, type TestApi } from './setup.ts';

let api: TestApi & { url: string };
let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'swarmtrain-job-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeEach(async () => {
  api = await listeningApi();
  return () => api.close();
});

/** Runs `swarmtrain job <args>`; `out` fills as it writes. */
function start(args: string[], env: Record<string, string> = { SWARMTRAIN_URL: api.url, SWARMTRAIN_API_TOKEN: TOKEN }) {
  const out = { stdout: '', stderr: '' };
  const io: CommandIO = { stdout: { write: (s: string) => (out.stdout += s) }, stderr: { write: (s: string) => (out.stderr += s) }, env };
  return { out, done: runCli(['job', ...args], io).then((code) => ({ code, ...out })) };
}

const job = (args: string[], env?: Record<string, string>) => start(args, env).done;

async function eventually(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(condition()).toBe(true);
}

describe('swarmtrain job', () => {
  it('creates a job on an uploaded corpus, lists it, shows it, and reuses the upload the second time', async () => {
    const spec = join(dir, 'spec.json');
    writeFileSync(spec, JSON.stringify({ totalBatches: 30, lr: 0.002 }));
    const corpus = join(dir, 'whales.txt');
    writeFileSync(corpus, 'Call me Ishmael. Some years ago...\n'.repeat(50));
    const created = await job(['create', spec, '--corpus', corpus, '--name', 'whales']);
    expect(created, created.stderr).toMatchObject({ code: 0, stdout: 'job-1\n' });
    expect(created.stderr).toMatch(/^uploading corpus .*whales\.txt as whales-[0-9a-f]{12}\n$/);
    const [uploaded] = api.service.corpora().filter((c) => !c.bundled);
    expect(uploaded.bytes).toBe(readFileSync(corpus).length);
    expect(api.service.getJob('job-1')).toMatchObject({ name: 'whales', total: 30, spec: { lr: 0.002, corpus: uploaded.name } });

    const again = await job(['create', spec, '--corpus', corpus]);
    expect(again).toMatchObject({ code: 0, stdout: 'job-2\n', stderr: '' });
    expect(api.service.getJob('job-2')?.spec.corpus).toBe(uploaded.name);

    const list = await job(['list']);
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split('\n');
    expect(lines[0].split(/\s{2,}/)).toEqual(['ID', 'NAME', 'STATE', 'PROGRESS', 'ETA', 'CREATED (UTC)']);
    expect(lines[1].split(/\s{2,}/).slice(0, 4)).toEqual(['job-1', 'whales', 'running', '0/30 (0%)']);
    expect(lines[2].split(/\s{2,}/).slice(0, 4)).toEqual(['job-2', 'job-2', 'queued', '0/30 (0%)']);

    const show = await job(['show', 'job-1']);
    expect(JSON.parse(show.stdout)).toEqual(api.service.getJob('job-1'));
  });

  it('uploads a base model folder once and names it in the job', async () => {
    const base = join(dir, 'tiny-base');
    const files = {
      'config.json': '{"model_type":"mixtral"}', 'tokenizer.json': '{}', 'model.safetensors': randomBytes(3000), 'README.md': 'skipped',
    };
    mkdirSync(base);
    for (const [name, content] of Object.entries(files)) writeFileSync(join(base, name), content);
    const spec = join(dir, 'lora.json');
    writeFileSync(spec, JSON.stringify({ mode: 'lora', lora: { rank: 8, alpha: 16 } }));
    const created = await job(['create', spec, '--base', base]);
    expect(created.code, created.stderr).toBe(0);
    const [model] = api.service.models();
    expect(model.name).toMatch(/^tiny-base-[0-9a-f]{12}$/);
    expect(created.stderr).toBe(`uploading base ${base} (config.json, model.safetensors, tokenizer.json) as ${model.name}\n`);
    expect(readFileSync(join(api.service.dir, 'models', model.name, 'model.safetensors')).equals(files['model.safetensors'])).toBe(true);
    expect(api.service.getJob('job-1')).toMatchObject({ base: model.name, spec: { mode: 'lora' } });
    expect((await job(['create', spec, '--base', base])).stderr).toBe('');
    expect((await job(['create', spec, '--base', join(dir, 'nowhere')])).code).toBe(2);
  });

  it('watches a job to its end: progress lines, exit 0 when done, 1 when cancelled', async () => {
    const { id } = await api.service.createJob({ totalBatches: 10 });
    const watching = start(['watch', id]);
    await eventually(() => watching.out.stdout !== ''); // subscribed, and the job read
    api.service.advance(id, 4, { heldOut: 4.5, tokensPerSecond: 2500, nodes: 3 });
    api.service.advance(id, 3, { loss: 3.25 });
    api.service.advance(id, 3);
    const watched = await watching.done;
    expect(watched.code, watched.stderr).toBe(0);
    const lines = watched.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`${id} running  0/10 batches (0%)`);
    expect(lines[1]).toBe(`${id} running  4/10 batches (40%)  loss 4.600  held-out 4.500  2,500 tok/s  3 nodes  ETA 1s`);
    expect(lines[2]).toMatch(new RegExp(`^${id} running  7/10 batches \\(70%\\)  loss 3\\.250  held-out 4\\.500  1,000 tok/s`));
    expect(lines.at(-1)).toMatch(new RegExp(`^${id} done  10/10 batches \\(100%\\)`));
    await eventually(() => api.service.subscriberCount === 0); // the watcher hung up

    // Off a terminal, one line per whole percent or state: 8 batches of 400 print 0%, 1%, 2%, then the end.
    const second = await api.service.createJob({ totalBatches: 400 });
    const cancelled = start(['watch', second.id]);
    await eventually(() => cancelled.out.stdout !== '');
    for (let i = 0; i < 8; i++) api.service.advance(second.id, 1);
    api.service.cancelJob(second.id);
    const ended = await cancelled.done;
    expect(ended).toMatchObject({ code: 1, stderr: `swarmtrain job watch: job ${second.id} cancelled\n` });
    expect(ended.stdout.trimEnd().split('\n').map((l) => /^\S+ (\w+) +(\d+)\/400/.exec(l)?.slice(1).join(' '))).toEqual([
      'running 0', 'running 4', 'running 8', 'cancelled 8',
    ]);
    // An ended job: the line and the verdict at once.
    expect((await job(['watch', id])).code).toBe(0);
  });

  it('pauses, resumes, cancels and deletes; a wrong state is a refusal (exit 2) with the server message', async () => {
    const { id } = await api.service.createJob({});
    expect(await job(['pause', id])).toMatchObject({ code: 0, stdout: `${id} paused\n` });
    expect(await job(['pause', id])).toMatchObject({ code: 2, stdout: '' });
    expect((await job(['delete', id])).stderr).toBe(
      `swarmtrain job delete: ${api.url} answered 409: job ${id} is paused: cancel it first\n`);
    expect(await job(['resume', id])).toMatchObject({ code: 0, stdout: `${id} running\n` });
    expect(await job(['cancel', id])).toMatchObject({ code: 0, stdout: `${id} cancelled\n` });
    expect(await job(['delete', id])).toMatchObject({ code: 0, stdout: `${id} deleted\n` });
    expect(await job(['show', id])).toMatchObject({ code: 2, stderr: `swarmtrain job show: ${api.url} answered 404: no job ${id}\n` });
  });

  it('downloads the result and a checkpoint into a folder, byte for byte', async () => {
    const { id } = await api.service.createJob({ totalBatches: 2 });
    const weights = randomBytes(5000);
    api.service.addCheckpoint(id, 1, { 'model.safetensors': weights, 'config.json': '{}' });
    const early = await job(['download', id, '-o', join(dir, 'none')]);
    expect(early).toMatchObject({ code: 2, stderr: `swarmtrain job download: ${api.url} answered 404: job ${id} has no result yet\n` });
    api.service.advance(id, 2);
    const out = join(dir, 'result');
    const result = await job(['download', id, '-o', out]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trimEnd().split('\n').sort()).toEqual([join(out, 'adapter_config.json'), join(out, 'adapter_model.safetensors')]);
    expect(readFileSync(join(out, 'adapter_config.json'), 'utf8')).toBe('{"r":8}');
    expect([...readFileSync(join(out, 'adapter_model.safetensors'))]).toEqual([1, 2, 3, 0, 255]);
    const ckpt = join(dir, 'ckpt');
    expect((await job(['download', id, '--checkpoint', '1', '-o', ckpt])).code).toBe(0);
    expect(readFileSync(join(ckpt, 'model.safetensors')).equals(weights)).toBe(true);
  });

  it('refuses an archive entry that would land outside the folder', async () => {
    const { id } = await api.service.createJob({});
    const source = join(dir, 'escape-source.txt');
    writeFileSync(source, 'outside');
    api.service.result = () => ({ name: id, files: [{ name: '../escaped.txt', path: source, bytes: 7 }] });
    const out = join(dir, 'inside', 'out');
    const refused = await job(['download', id, '-o', out]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`swarmtrain job download: the archive holds a path outside its folder: ${id}/../escaped.txt\n`);
    expect(existsSync(join(dir, 'inside', 'escaped.txt'))).toBe(false);
  });

  it('says what is wrong: no coordinator (exit 1), no or a wrong token (2), bad arguments (2)', async () => {
    const spec = join(dir, 'empty-spec.json');
    writeFileSync(spec, '{}');
    const closed = await listeningApi();
    await closed.close();
    const down = await job(['list', '--url', closed.url]);
    expect(down.code).toBe(1);
    expect(down.stderr).toBe(`swarmtrain job list: cannot reach the coordinator at ${closed.url}: ECONNREFUSED\n`);
    const noToken = await job(['create', spec], { SWARMTRAIN_URL: api.url });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toMatch(/answered 401: this route needs the coordinator's API token.*\(give --token or set SWARMTRAIN_API_TOKEN\)\n$/);
    const wrong = await job(['create', spec, '--token', 'nope']);
    expect(wrong.stderr).toMatch(/answered 401: wrong API token/);
    // SWARMTRAIN_TOKEN is the fallback.
    expect(await job(['create', spec], { SWARMTRAIN_URL: api.url, SWARMTRAIN_TOKEN: TOKEN })).toMatchObject({ code: 0, stdout: 'job-1\n' });
    writeFileSync(join(dir, 'bad.json'), '{"lr": 99}');
    expect((await job(['create', join(dir, 'bad.json')])).stderr).toBe(
      `swarmtrain job create: ${api.url} answered 400: body/lr: Expected number to be less or equal to 10\n`);
    expect((await job(['create', join(dir, 'missing.json')])).code).toBe(2);
    expect(await job(['show', 'a', 'b'])).toMatchObject({
      code: 2, stderr: 'swarmtrain job show: unexpected argument "b" (see swarmtrain job show --help)\n',
    });
    expect((await job(['download', 'job-1'])).stderr)
      .toBe('swarmtrain job download: --output <dir> is required (see swarmtrain job download --help)\n');
  });

  it('is listed in swarmtrain --help, and `swarmtrain job` alone lists its commands', async () => {
    const out = { stdout: '', stderr: '' };
    const io: CommandIO = { stdout: { write: (t: string) => (out.stdout += t) }, stderr: { write: (t: string) => (out.stderr += t) }, env: {} };
    expect(await runCli(['--help'], io)).toBe(0);
    expect(out.stdout).toMatch(/^ {2}job <create\|list\|show\|watch\|\.\.\.> +create, follow and fetch/m);
    const bare = await job([]);
    expect(bare.code).toBe(2);
    const listed = ['create <spec.json>', 'list', 'show <id>', 'watch <id>', 'pause <id>', 'resume <id>', 'cancel <id>', 'delete <id>', 'download <id>'];
    for (const name of listed) expect(bare.stderr).toContain(`  ${name}`);
    expect((await job(['watch', '--help'])).stdout).toMatch(/^Usage: swarmtrain job watch <id> \[options\]/);
  });
});
