// The coordinator's checkpoint files and the job's result, without a swarm: the manifest's
// checksums hold, a damaged or incomplete newest checkpoint is passed over for the previous one,
// old ones are pruned, and result/ reads back through the HF loader and the PEFT reader.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import {
  CheckpointCorruptError, latestCheckpoint, pruneCheckpoints, readCheckpoint, writeCheckpoint, type GroupStates,
} from '../../coordinator/checkpoints.ts';
import { writeResult } from '../../coordinator/result.ts';
import { loadHfModel } from '../../src/io/hf.ts';
import { readPeftAdapter } from '../../src/io/peft.ts';
import { createConfig, expertOf, loraShapes, parameterShapes, type F32Tensor } from '../../src/model/config.ts';
import { initTensors } from '../../src/model/init.ts';
import { rng } from '../helpers.ts';

const config = createConfig({
  hiddenSize: 16, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 8, numExperts: 2, expertsPerToken: 1, expertHiddenSize: 8,
  maxSeqLen: 8, vocabSize: 32,
});

function randomTensors(shapes: Map<string, number[]>, seed: number): Map<string, F32Tensor> {
  const random = rng(seed);
  return new Map([...shapes].map(([name, shape]) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = random() - 0.5;
    return [name, { shape, data }];
  }));
}

/** Tensors split into groups the way nodes hold them: the trunk, and one group per expert. */
function asGroups(tensors: Map<string, F32Tensor>): GroupStates {
  const groups: GroupStates = new Map();
  for (const [name, tensor] of tensors) {
    const owner = expertOf(name);
    const group = owner ? `expert.${owner.layer}.${owner.expert}` : 'trunk';
    if (!groups.has(group)) groups.set(group, new Map());
    groups.get(group)!.set(name, tensor);
  }
  return groups;
}

const job = (mode: JobSpec['mode']): JobSpec => ({
  jobId: 'unit-job', model: {}, mode, ...(mode === 'lora' ? { lora: { rank: 2, alpha: 4 } } : {}), baseFormat: 'f32', basePath: 'fp32',
  seed: 1, corpus: 'moby-dick', batchSize: 1, seqLen: 8, heldOutFraction: 0.1, totalBatches: 1, expectedNodes: 1, lr: 0.01, minLr: 0,
  warmupSteps: 0, averaging: { mode: 'sync', every: 1, deadlineMs: 1000 }, expertTimeoutMs: 1000,
});

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-checkpoints-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('coordinator checkpoints', () => {
  it('writes one file per group and a manifest whose sha256s are those of the files; reads back the same tensors', async () => {
    const groups = asGroups(randomTensors(parameterShapes(config), 1));
    const { dir: written } = await writeCheckpoint(dir, { jobId: 'unit-job', round: 3, completedBatches: 30 }, groups);
    expect(written).toBe(join(dir, '3'));
    const manifest = JSON.parse(await readFile(join(written, 'manifest.json'), 'utf8'));
    expect(Object.keys(manifest.files).sort()).toEqual([...groups.keys()].map((g) => `${g}.safetensors`).sort());
    for (const [file, entry] of Object.entries<{ sha256: string; bytes: number }>(manifest.files)) {
      const bytes = await readFile(join(written, file));
      expect(entry.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
      expect(entry.bytes).toBe(bytes.length);
    }
    const back = await readCheckpoint(written);
    expect(back.manifest.completedBatches).toBe(30);
    for (const [group, tensors] of groups) {
      for (const [name, t] of tensors) expect(back.groups.get(group)!.get(name)!.data).toEqual(t.data);
    }
  });

  it('a corrupted file fails its checksum: the previous checkpoint is used, and the reason is given', async () => {
    const older = asGroups(randomTensors(parameterShapes(config), 1));
    const newer = asGroups(randomTensors(parameterShapes(config), 2));
    await writeCheckpoint(dir, { jobId: 'unit-job', round: 1, completedBatches: 10 }, older);
    await writeCheckpoint(dir, { jobId: 'unit-job', round: 2, completedBatches: 20 }, newer);
    const file = join(dir, '2', 'expert.1.0.safetensors');
    const bytes = await readFile(file);
    bytes[bytes.length - 1] ^= 0x40; // one bit of one weight
    await writeFile(file, bytes);
    await expect(readCheckpoint(join(dir, '2'))).rejects.toThrow(CheckpointCorruptError);
    const { checkpoint, skipped } = await latestCheckpoint(dir);
    expect(checkpoint!.manifest.round).toBe(1);
    expect(checkpoint!.groups.get('trunk')!.get('embed')!.data).toEqual(older.get('trunk')!.get('embed')!.data);
    expect(skipped).toHaveLength(1);
    expect(skipped[0]).toMatch(/expert\.1\.0\.safetensors: sha256 .* is not the manifest's/);
  });

  it('a checkpoint without its manifest (cut short before the last write) is incomplete and passed over', async () => {
    const groups = asGroups(randomTensors(parameterShapes(config), 1));
    await writeCheckpoint(dir, { jobId: 'unit-job', round: 1, completedBatches: 10 }, groups);
    await writeCheckpoint(dir, { jobId: 'unit-job', round: 2, completedBatches: 20 }, groups);
    await rm(join(dir, '2', 'manifest.json'));
    const { checkpoint, skipped } = await latestCheckpoint(dir);
    expect(checkpoint!.manifest.round).toBe(1);
    expect(skipped[0]).toMatch(/no readable manifest\.json/);
    expect((await latestCheckpoint(join(dir, 'absent'))).checkpoint).toBeUndefined();
  });

  it('keeps the newest K checkpoints', async () => {
    const groups = asGroups(randomTensors(parameterShapes(config), 1));
    for (const round of [1, 2, 3, 10]) await writeCheckpoint(dir, { jobId: 'unit-job', round, completedBatches: round }, groups);
    await pruneCheckpoints(dir, 2);
    expect((await readdir(dir)).sort()).toEqual(['10', '3']);
  });
});

describe('job result', () => {
  it('full job: config.json + model.safetensors that loadHfModel reads back to the same tensors, and the tokenizer', async () => {
    const params = randomTensors(parameterShapes(config), 3);
    const out = join(dir, 'result');
    await writeResult(out, { job: job('full'), config, groups: asGroups(params), tokenizerJson: '{"model":{}}' });
    const hf = await loadHfModel(out);
    expect(hf.config).toEqual(config);
    expect([...hf.params.keys()].sort()).toEqual([...params.keys()].sort());
    for (const [name, t] of params) expect(hf.params.get(name)!.data).toEqual(t.data);
    expect(await readFile(join(out, 'tokenizer.json'), 'utf8')).toBe('{"model":{}}');
  });

  it('LoRA job: a PEFT adapter with rank, alpha and the base name, holding only the LoRA tensors', async () => {
    const lora = randomTensors(loraShapes(config, 2), 4);
    // Expert groups carry their frozen base too: it must stay out of the adapter.
    const base = randomTensors(new Map([...parameterShapes(config)].filter(([name]) => expertOf(name))), 5);
    const out = join(dir, 'result');
    await writeResult(out, { job: job('lora'), config, groups: asGroups(new Map([...lora, ...base])), tokenizerJson: '{}', baseModel: 'tiny-base' });
    const adapter = await readPeftAdapter(out, config, 'mixtral');
    expect({ rank: adapter.rank, alpha: adapter.alpha, baseModel: adapter.baseModel }).toEqual({ rank: 2, alpha: 4, baseModel: 'tiny-base' });
    expect([...adapter.tensors.keys()].sort()).toEqual([...lora.keys()].sort());
    for (const [name, t] of lora) expect(adapter.tensors.get(name)!.data).toEqual(t.data);
    const peftConfig = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
    expect(peftConfig.target_modules).toEqual(['k_proj', 'o_proj', 'q_proj', 'v_proj', 'w1', 'w2', 'w3']);
  });

  it('LoRA job without a pretrained base: base/ holds the seeded base (and the tokenizer) for generate --base', async () => {
    const out = join(dir, 'result');
    const loraJob = { ...job('lora'), seed: 9 };
    await writeResult(out, { job: loraJob, config, groups: asGroups(randomTensors(loraShapes(config, 2), 4)), tokenizerJson: '{}' });
    expect((await readPeftAdapter(out, config, 'mixtral')).baseModel).toBe('unit-job');
    const base = await loadHfModel(join(out, 'base'));
    for (const [name, t] of initTensors(config, 9)) expect(base.params.get(name)!.data, name).toEqual(t.data);
    expect(await readFile(join(out, 'base', 'tokenizer.json'), 'utf8')).toBe('{}');
  });
});

describe('swarmtrain-coordinator --data', () => {
  const coordinator = (args: string[]) => spawnSync(process.execPath, ['coordinator/bin.mjs', ...args], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)), encoding: 'utf8', timeout: 60_000,
  });

  it('--checkpoint-every without --data is bad input: exit 2 and one line saying what to add', () => {
    const result = coordinator(['--job', join(dir, 'job.json'), '--vocab', '300', '--checkpoint-every', '2']);
    expect(result.status).toBe(2);
    expect(result.stderr).toBe(
      'swarmtrain coordinator: --checkpoint-every and --keep-checkpoints need --data <dir> (where checkpoints are written)\n');
  });

  it('a --data that is a file fails at start, naming the path', async () => {
    await writeFile(join(dir, 'job.json'), JSON.stringify({ ...job('full'), model: { hiddenSize: 16, numHeads: 2, numKvHeads: 1, headDim: 8 } }));
    await writeFile(join(dir, 'file'), 'not a folder');
    const result = coordinator(['--job', join(dir, 'job.json'), '--vocab', '300', '--data', join(dir, 'file')]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(join(dir, 'file'));
  });
});
