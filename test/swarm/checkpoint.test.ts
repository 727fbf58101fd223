// A swarm job's state kept by the coordinator (real processes on 127.0.0.1): checkpoints gathered
// from the holders; the result a finished job leaves (an HF checkpoint, or a PEFT adapter and its
// base, giving the gathered model's logits); an expert whose only holder is killed, restored (full, and LoRA from adapters alone).
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import { latestCheckpoint } from '../../coordinator/checkpoints.ts';
import { mergeGroups } from '../../coordinator/result.ts';
import { loadHfModel } from '../../src/io/hf.ts';
import { createKernels } from '../../src/kernels/index.ts';
import { Model } from '../../src/model/model.ts';
import type { CommandIO } from '../../src/cli/command.ts';
import { generateCommand } from '../../src/train/cli.ts';
import { readPeftAdapter } from '../../src/io/peft.ts';
import { jobConfig, jobModelOptions } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { startSwarm, type Swarm, type SwarmEvent } from '../../src/harness/local-swarm.ts';
import { maxRelError } from '../helpers.ts';

const MODEL = {
  hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 16, numExperts: 4, expertsPerToken: 2,
  expertHiddenSize: 32, maxSeqLen: 16,
};

function job(overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    jobId: 'ckpt-job', model: MODEL, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 3, corpus: 'moby-dick',
    documents: { from: 0, to: 20 }, batchSize: 2, seqLen: 16, heldOutFraction: 0.05, totalBatches: 36, expectedNodes: 3,
    lr: 1e-2, minLr: 1e-3, warmupSteps: 2, averaging: { mode: 'periodic', every: 2, deadlineMs: 2000 }, expertTimeoutMs: 3000,
    ...overrides,
  };
}

// Experts stay where they were placed (no swaps for their routed rows): a test reads which experts a node held before killing it.
const COORDINATOR = [
  '--vocab', '280', '--heartbeat-ms', '300', '--node-timeout-ms', '2500', '--lease-ms', '20000', '--checkpoint-every', '1',
  '--balance-experts-ms', '0',
];
const steps = (events: SwarmEvent[]) => events.filter((e) => e.event === 'step');

async function captured(command: (argv: string[], io: CommandIO) => Promise<number>, argv: string[]) {
  let stdout = '';
  let stderr = '';
  const code = await command(argv, { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) } });
  return { code, stdout, stderr };
}

let swarm: Swarm | undefined;
let data: string | undefined;
afterEach(async () => {
  await swarm?.stop();
  swarm = undefined;
  if (data) await rm(data, { recursive: true, force: true });
  data = undefined;
});

vi.setConfig({ testTimeout: 180_000 });

describe('the coordinator keeps a swarm job', () => {
  it('a full job of 3 nodes: checkpoints whose sha256s hold, and result/ that loads with the last checkpoint\'s logits', async () => {
    data = await mkdtemp(join(tmpdir(), 'swarmtrain-data-'));
    swarm = await startSwarm(job(), [...COORDINATOR, '--replication', '2', '--data', data]);
    const nodes = [0, 1, 2].map(() => swarm!.startNode());
    const result = await swarm.coordinator.waitFor((e) => e.event === 'result', 150_000, 'result');
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'finished', 30_000, 'finished')));
    const checkpoints = swarm.coordinator.events.filter((e) => e.event === 'checkpoint');
    expect(checkpoints.length).toBeGreaterThanOrEqual(2); // periodic ones, then the final one
    expect(checkpoints.every((e) => e.groups === 1 + 2 * 4 && e.carried.length === 0)).toBe(true);
    expect(swarm.coordinator.count((e) => e.event === 'checkpoint-failed')).toBe(0);

    const { checkpoint, skipped } = await latestCheckpoint(join(data, 'jobs', 'ckpt-job', 'checkpoints'));
    expect(skipped).toEqual([]);
    expect(checkpoint!.manifest.round).toBe(result.round);
    expect(checkpoint!.manifest.completedBatches).toBe(36);
    for (const [file, entry] of Object.entries(checkpoint!.manifest.files)) {
      expect(createHash('sha256').update(await readFile(join(checkpoint!.dir, file))).digest('hex')).toBe(entry.sha256);
    }

    // The exported checkpoint against a model built straight from the gathered tensors.
    const tokenizer = BpeTokenizer.fromHuggingFace(JSON.parse(await readFile(join(result.dir, 'tokenizer.json'), 'utf8')));
    const config = jobConfig(job(), tokenizer);
    const hf = await loadHfModel(result.dir);
    expect(hf.config).toEqual(config);
    const kernels = await createKernels({ threads: 1 });
    try {
      const gathered = new Model(kernels, config, { mode: 'full' }, mergeGroups(checkpoint!.groups));
      const exported = new Model(kernels, hf.config, { mode: 'full' }, hf.params);
      const tokens = tokenizer.encode('Call me Ishmael. Some years ago, never mind how long').slice(0, 16);
      const want = Float32Array.from(await gathered.logits(tokens, 1, tokens.length));
      const got = await exported.logits(tokens, 1, tokens.length);
      expect(maxRelError(got, want)).toBeLessThan(1e-5);
    } finally {
      await kernels.close();
    }
    // `swarmtrain generate --base <result>` samples from it: greedily, the same text as its own checkpoint path.
    const greedy = ['--prompt', 'Call me', '--tokens', '5', '--temperature', '0'];
    const fromBase = await captured(generateCommand, ['--base', result.dir, ...greedy]);
    expect(fromBase.code, fromBase.stderr).toBe(0);
    expect(fromBase.stdout.length).toBeGreaterThan(1); // some text, then the newline
    expect(fromBase.stdout).toBe((await captured(generateCommand, ['--checkpoint', result.dir, ...greedy])).stdout);
  });

  it('a LoRA job: the PEFT adapter applied to its base gives the logits of the gathered state; generate --base --adapter samples', async () => {
    data = await mkdtemp(join(tmpdir(), 'swarmtrain-data-'));
    const loraJob = job({ mode: 'lora', lora: { rank: 4, alpha: 8 }, lr: 3e-2 });
    swarm = await startSwarm(loraJob, [...COORDINATOR, '--replication', '2', '--data', data]);
    [0, 1, 2].forEach(() => swarm!.startNode());
    const result = await swarm.coordinator.waitFor((e) => e.event === 'result', 150_000, 'result');
    const { checkpoint } = await latestCheckpoint(join(data, 'jobs', 'ckpt-job', 'checkpoints'));
    expect(checkpoint!.manifest.round).toBe(result.round);

    const tokenizer = BpeTokenizer.fromHuggingFace(JSON.parse(await readFile(join(result.dir, 'tokenizer.json'), 'utf8')));
    const config = jobConfig(loraJob, tokenizer);
    const adapter = await readPeftAdapter(result.dir, config, 'mixtral');
    expect([adapter.rank, adapter.alpha, adapter.baseModel]).toEqual([4, 8, 'ckpt-job']);
    expect(adapter.tensors.get('layers.1.experts.3.down.lora_b')!.data.some((x) => x !== 0)).toBe(true); // trained, not the zero init
    const base = await loadHfModel(join(result.dir, 'base'));
    const kernels = await createKernels({ threads: 1 });
    try {
      // The gathered state on the job's own seeded base, against the exported base with the adapter.
      const gathered = new Model(kernels, config, jobModelOptions(loraJob));
      const state = mergeGroups(checkpoint!.groups);
      gathered.params.load(new Map([...state].filter(([name]) => gathered.params.has(name))));
      const adapted = new Model(kernels, base.config, { mode: 'lora', lora: { rank: adapter.rank, alpha: adapter.alpha } }, base.params);
      adapted.params.load(adapter.tensors);
      const tokens = tokenizer.encode('Call me Ishmael. Some years ago, never mind how long').slice(0, 16);
      const want = Float32Array.from(await gathered.logits(tokens, 1, tokens.length));
      expect(maxRelError(await adapted.logits(tokens, 1, tokens.length), want)).toBeLessThan(1e-5);
    } finally {
      await kernels.close();
    }
    const sampling = ['--prompt', 'Call me', '--tokens', '5'];
    const sampled = await captured(generateCommand, ['--base', join(result.dir, 'base'), '--adapter', result.dir, ...sampling]);
    expect(sampled.code, sampled.stderr).toBe(0);
    expect(sampled.stdout.length).toBeGreaterThan(1);
  });

  it.each([
    ['full', {}],
    // A LoRA checkpoint holds an expert's adapters only: the survivor rebuilds its frozen base from the job's seed.
    ['LoRA', { mode: 'lora', lora: { rank: 4, alpha: 8 } }],
  ] as [string, Partial<JobSpec>][])('%s: kill -9 of the only holder of an expert: it comes back from the last checkpoint, '
    + 'and every batch is completed once', async (_, mode) => {
    data = await mkdtemp(join(tmpdir(), 'swarmtrain-data-'));
    const total = 48;
    swarm = await startSwarm(job({ totalBatches: total, ...mode }), [...COORDINATOR, '--replication', '1', '--data', data]);
    const nodes = [0, 1, 2].map(() => swarm!.startNode());
    const peers = await Promise.all(nodes.map(async (n) => (await n.waitFor((e) => e.event === 'joined', 60_000, 'joined')).node as string));
    await swarm.coordinator.waitFor((e) => e.event === 'checkpoint', 120_000, 'checkpoint');
    const plan = [...swarm.coordinator.events].reverse().find((e) => e.event === 'plan')!;
    const held = (peer: string) => (plan.holders as { layer: number; expert: number; holders: string[] }[]).filter((x) => x.holders.includes(peer));
    const victim = peers.findIndex((peer) => held(peer).length > 0);
    const lost = held(peers[victim]).map(({ layer, expert }) => `expert.${layer}.${expert}`);
    nodes[victim].kill('SIGKILL');

    await swarm.coordinator.waitFor((e) => e.event === 'died', 30_000, 'died');
    const restored = await swarm.coordinator.waitFor((e) => e.event === 'restored', 60_000, 'restored');
    expect(lost).toContain(restored.group);
    expect(peers).toContain(restored.node);
    expect(restored.node).not.toBe(peers[victim]);
    const done = await swarm.coordinator.waitFor((e) => e.event === 'done', 150_000, 'done');
    expect(done.completed).toBe(total);
    const progress = [...swarm.coordinator.events].reverse().find((e) => e.event === 'progress')!;
    expect(progress.counters.completed).toBe(total); // each batch reported done exactly once
    const trained = nodes.flatMap((n) => steps(n.events).map((e) => e.batch as number));
    expect(new Set(trained).size).toBe(total);
    // Every expert the victim held was taken on by a survivor from the coordinator's checkpoint.
    const restoredGroups = new Set(swarm.coordinator.events.filter((e) => e.event === 'restored').map((e) => e.group));
    for (const group of lost) expect(restoredGroups).toContain(group);
    const added = nodes.filter((_, i) => i !== victim).flatMap((n) => n.events.filter((e) => e.event === 'expert-added'));
    expect(added.length).toBe(lost.length);
    expect(added.every((e) => e.copied)).toBe(true);
    await swarm.coordinator.waitFor((e) => e.event === 'result', 60_000, 'result');
    const { checkpoint } = await latestCheckpoint(join(data, 'jobs', 'ckpt-job', 'checkpoints'));
    const expertNames = [...checkpoint!.groups].filter(([group]) => group !== 'trunk').flatMap(([, tensors]) => [...tensors.keys()]);
    expect(expertNames.every((name) => /\.lora_[ab]$/.test(name))).toBe(mode.mode === 'lora');
  });
});
