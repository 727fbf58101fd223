// The demo swarm (`npm start`, i.e. tsx coordinator/demo.ts) on a short job: it trains every
// micro-batch exactly once, stops its coordinator and nodes, and exits 0; a SIGINT mid-run stops
// the nodes cleanly (they leave, handing their batches back) before the coordinator.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { start, type Proc, type SwarmEvent } from '../../src/harness/local-swarm.ts';

vi.setConfig({ testTimeout: 120_000 });

let dir: string | undefined;
let demo: Proc | undefined;
afterEach(async () => {
  demo?.kill('SIGKILL');
  await demo?.exited;
  if (dir) await rm(dir, { recursive: true, force: true });
  demo = dir = undefined;
});

/** Starts the demo as `npm start -- <args>` does, its logs in a fresh folder. */
async function startDemo(args: string[]): Promise<{ demo: Proc; out: string }> {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-demo-'));
  const out = join(dir, 'run');
  demo = start('demo', 'node_modules/tsx/dist/cli.mjs', ['coordinator/demo.ts', '--out', out, ...args], { logDir: dir });
  return { demo, out };
}

const text = (p: Proc) => p.events.map((e) => e.text ?? JSON.stringify(e)).join('\n');

async function events(out: string, name: string): Promise<SwarmEvent[]> {
  return (await readFile(join(out, `${name}.jsonl`), 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

describe('the demo swarm', () => {
  it('trains a short job to the end, every micro-batch once, and exits 0 with every process stopped', async () => {
    const { demo, out } = await startDemo(['--batches', '6']);
    expect(await demo.exited, demo.stderr + text(demo)).toBe(0);
    expect(text(demo)).toMatch(/done: 6\/6 micro-batches trained/);
    expect(text(demo)).toMatch(/final training loss \d+\.\d+/);
    expect(text(demo)).toMatch(/exit codes: coordinator 0, node0 0, node1 0, node2 0/);
    expect(JSON.parse(await readFile(join(out, 'job.json'), 'utf8')).totalBatches).toBe(6);
    expect((await events(out, 'coordinator')).some((e) => e.event === 'done')).toBe(true);
    const nodes = await Promise.all(['node0', 'node1', 'node2'].map((name) => events(out, name)));
    const trained = nodes.flatMap((n) => n.filter((e) => e.event === 'step').map((e) => e.batch as number));
    expect(trained.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const node of nodes) expect(node.find((e) => e.event === 'finished')?.heldOut.loss).toBeGreaterThan(0);
  });

  it('SIGINT mid-run: the nodes leave first, then the coordinator stops, and the demo exits 0', async () => {
    const { demo, out } = await startDemo(['--nodes', '2']);
    // Both nodes training (a node still starting up when SIGINT comes has nothing to hand back).
    for (const node of ['node0', 'node1']) await demo.waitFor((e) => new RegExp(`${node} .*\\bstep +\\d+`).test(e.text ?? ''), 90_000, `a summary with ${node}'s step`);
    demo.kill('SIGINT');
    expect(await demo.exited, demo.stderr + text(demo)).toBe(0);
    expect(text(demo)).toMatch(/exit codes: coordinator 0, node0 0, node1 0\)/);
    const coordinator = await events(out, 'coordinator');
    expect(coordinator.some((e) => e.event === 'done')).toBe(false);
    // Told the coordinator, not timed out.
    const membership = coordinator.filter((e) => ['joined', 'rejoined', 'left', 'died'].includes(e.event));
    expect(membership.map((e) => e.event), JSON.stringify(membership)).toEqual(['joined', 'joined', 'left', 'left']);
  });
});
