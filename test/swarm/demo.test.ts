// The demo swarm (`npm start`, i.e. tsx coordinator/demo.ts) on a short job: it trains every
// micro-batch exactly once, stops its coordinator and nodes, and exits 0; a SIGINT mid-run pauses
// the job and stops the nodes cleanly (they leave, handing their batches back) before the
// coordinator, and running the demo again on the same data resumes the job to its end.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { start, type Proc, type SwarmEvent } from '../../src/harness/local-swarm.ts';

vi.setConfig({ testTimeout: 240_000 });

let dir: string | undefined;
let demo: Proc | undefined;
afterEach(async () => {
  demo?.kill('SIGKILL');
  await demo?.exited;
  if (dir) await rm(dir, { recursive: true, force: true });
  demo = dir = undefined;
});

/** Starts the demo as `npm start -- <args>` does, its data and logs in `dir`. */
async function startDemo(args: string[], run = 'run'): Promise<{ demo: Proc; out: string }> {
  dir ??= await mkdtemp(join(tmpdir(), 'swarmtrain-demo-'));
  const out = join(dir, run);
  demo = start(`demo-${run}`, 'node_modules/tsx/dist/cli.mjs', [
    'coordinator/demo.ts', '--out', out, '--data', join(dir, 'data'), '--http', '127.0.0.1:0', ...args,
  ], { logDir: dir });
  return { demo, out };
}

const text = (p: Proc) => p.events.map((e) => e.text ?? JSON.stringify(e)).join('\n');

async function events(out: string, name: string): Promise<SwarmEvent[]> {
  return (await readFile(join(out, `${name}.jsonl`), 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

const trainedIn = async (out: string, names: string[]) =>
  (await Promise.all(names.map((name) => events(out, name)))).flatMap((n) => n.filter((e) => e.event === 'step').map((e) => e.batch as number));

describe('the demo swarm', () => {
  it('trains a short job to the end, every micro-batch once, and exits 0 with every process stopped', async () => {
    const { demo, out } = await startDemo(['--batches', '6']);
    expect(await demo.exited, demo.stderr + text(demo)).toBe(0);
    expect(text(demo)).toMatch(/web UI and API: http:\/\/127\.0\.0\.1:\d+ \(API token: [\w-]+\)/);
    expect(text(demo)).toMatch(/done: 6\/6 micro-batches trained/);
    expect(text(demo)).toMatch(/final training loss \d+\.\d+/);
    expect(text(demo)).toMatch(/exit codes: coordinator 0, node0 0, node1 0, node2 0/);
    expect((await events(out, 'coordinator')).some((e) => e.event === 'result')).toBe(true);
    expect((await trainedIn(out, ['node0', 'node1', 'node2'])).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5]);
    const nodes = await Promise.all(['node0', 'node1', 'node2'].map((name) => events(out, name)));
    for (const node of nodes) expect(node.find((e) => e.event === 'finished')?.heldOut.loss).toBeGreaterThan(0);
  });

  it('SIGINT mid-run pauses the job and stops every process in order; run again, it resumes the job to its end', async () => {
    const first = await startDemo(['--nodes', '2', '--batches', '40'], 'first');
    // Both nodes training (a node still starting up when SIGINT comes has nothing to hand back).
    for (const node of ['node0', 'node1']) {
      await first.demo.waitFor((e) => new RegExp(`${node} .*\\bstep +\\d+`).test(e.text ?? ''), 120_000, `a summary with ${node}'s step`);
    }
    first.demo.kill('SIGINT');
    expect(await first.demo.exited, first.demo.stderr + text(first.demo)).toBe(0);
    expect(text(first.demo)).toMatch(/exit codes: coordinator 0, node0 0, node1 0\)/);
    const coordinator = await events(first.out, 'coordinator');
    expect(coordinator.some((e) => e.event === 'done')).toBe(false);
    expect(coordinator.some((e) => e.event === 'job' && e.state === 'paused')).toBe(true);
    // Told the coordinator, not timed out.
    const membership = coordinator.filter((e) => ['joined', 'rejoined', 'left', 'died'].includes(e.event));
    expect(membership.map((e) => e.event), JSON.stringify(membership)).toEqual(['joined', 'joined', 'left', 'left']);

    const second = await startDemo(['--nodes', '2', '--batches', '40'], 'second');
    expect(await second.demo.exited, second.demo.stderr + text(second.demo)).toBe(0);
    expect(text(second.demo)).toMatch(/resuming job job-\w+: [1-9]\d*\/40 micro-batches/);
    expect(text(second.demo)).toMatch(/done: 40\/40 micro-batches trained/);
    const trained = [...await trainedIn(first.out, ['node0', 'node1']), ...await trainedIn(second.out, ['node0', 'node1'])];
    expect(trained.sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i));
  });
});
