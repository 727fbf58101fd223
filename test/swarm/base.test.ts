// A swarm job on a pretrained base: 3 node processes fine-tune LoRA (rank 4, q4 base, integer path, bf16
// activations) on the tiny Mixtral fixture, which they fetch from the coordinator and each other, over a .txt
// file given to the coordinator. Checked: held-out loss falls, remote expert calls happen, every node's frozen
// base is bit-identical to the fixture quantized in this process, a node restarted on the same data directory
// fetches nothing (base or text), and the PEFT adapter the coordinator exports, applied to the fixture by this
// project's loader, gives the logits of the final gathered model.
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import { latestCheckpoint } from '../../coordinator/checkpoints.ts';
import { mergeGroups } from '../../coordinator/result.ts';
import { loadHfModel } from '../../src/io/hf.ts';
import { readPeftAdapter } from '../../src/io/peft.ts';
import { createKernels } from '../../src/kernels/index.ts';
import { createConfig } from '../../src/model/config.ts';
import { Model } from '../../src/model/model.ts';
import { ModelWeights } from '../../src/model/weights.ts';
import { loadCorpus } from '../../src/train/corpus.ts';
import { jobConfig, jobModelOptions } from '../../src/train/job.ts';
import { tokenizerFromJson } from '../../src/train/tokenizers/index.ts';
import { startSwarm, type Proc, type Swarm, type SwarmEvent } from '../../src/harness/local-swarm.ts';
import { hfFixturesDir } from '../fixtures.ts';
import { maxRelError } from '../helpers.ts';

const fixtures = hfFixturesDir();
const FIXTURE = fixtures && join(fixtures, 'atenia-tiny-mixtral-classic');
/**
 * 48 tokens, as the fixture's embedding has: specials, the word boundary, a lowercase alphabet, digits,
 * punctuation (SentencePiece-style without byte fallback: a byte-level tokenizer needs 256 tokens).
 */
function charTokenizerJson(): unknown {
  const specials = ['<unk>', '<s>', '</s>'];
  const chars = ['▁', ...'abcdefghijklmnopqrstuvwxyz0123456789', ...".,;:!?'-"];
  const vocab = Object.fromEntries([...specials, ...chars].map((token, id) => [token, id]));
  expect(Object.keys(vocab)).toHaveLength(48);
  const added = (content: string, id: number) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: specials.map(added),
    normalizer: { type: 'Sequence', normalizers: [
      { type: 'Lowercase' }, { type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
    ] },
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 },
    ] },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: false, vocab, merges: [],
    },
  };
}

const JOB: JobSpec = {
  jobId: 'base-job', model: { maxSeqLen: 64 }, mode: 'lora', lora: { rank: 4, alpha: 8 }, baseFormat: 'q4', basePath: 'int',
  activations: 'bf16', expertPrecision: 'bf16', seed: 11, corpus: 'chapters', batchSize: 4, seqLen: 32, heldOutFraction: 0.05,
  totalBatches: 60, expectedNodes: 3, lr: 2e-2, minLr: 2e-3, warmupSteps: 4, averaging: { mode: 'periodic', every: 4, deadlineMs: 3000 },
  expertTimeoutMs: 5000,
};
const COORDINATOR = ['--heartbeat-ms', '300', '--node-timeout-ms', '3000', '--lease-ms', '20000', '--replication', '2', '--checkpoint-every', '4'];

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const last = (node: Proc, event: string) => node.events.filter((e) => e.event === event).at(-1)!;

/** The fixture quantized in this process as the job says: the digest of each group's frozen base. */
async function localBaseDigests(dir: string): Promise<Map<string, string>> {
  const kernels = await createKernels({ threads: 1 });
  try {
    const { config, params } = await loadHfModel(dir);
    const weights = new ModelWeights(kernels, createConfig({ ...config, maxSeqLen: 64 }), {
      mode: 'lora', lora: JOB.lora!, baseFormat: 'q4', seed: JOB.seed,
    }, params);
    return weights.baseDigests();
  } finally {
    await kernels.close();
  }
}

/** The adapter in `resultDir` applied to the fixture gives the logits of the fixture with the gathered `state`'s adapters (1e-5). */
async function expectAdapterLogits(resultDir: string, state: Map<string, { shape: number[]; data: Float32Array }>): Promise<void> {
  const tokenizer = tokenizerFromJson(JSON.parse(await readFile(join(resultDir, 'tokenizer.json'), 'utf8')));
  const fixture = await loadHfModel(FIXTURE!);
  const config = jobConfig(JOB, tokenizer, fixture.config);
  const adapter = await readPeftAdapter(resultDir, config, 'mixtral');
  expect([adapter.rank, adapter.alpha]).toEqual([4, 8]);
  expect([...adapter.tensors.values()].some((t) => t.data.some((x) => x !== 0))).toBe(true); // B trained away from its zero init
  const kernels = await createKernels({ threads: 1 });
  try {
    const gathered = new Model(kernels, config, jobModelOptions(JOB), fixture.params);
    gathered.params.load(new Map([...state].filter(([name]) => /\.lora_[ab]$/.test(name))));
    const adapted = new Model(kernels, config, {
      mode: 'lora', lora: { rank: adapter.rank, alpha: adapter.alpha }, baseFormat: 'q4', basePath: 'int', activationStorage: 'bf16',
    }, fixture.params);
    adapted.params.load(adapter.tensors);
    const tokens = tokenizer.encode('call me ishmael. some years ago, never mind how long precisely').slice(0, 32);
    const want = Float32Array.from(await gathered.logits(tokens, 1, tokens.length));
    expect(maxRelError(await adapted.logits(tokens, 1, tokens.length), want)).toBeLessThan(1e-5);
  } finally {
    await kernels.close();
  }
}

let swarm: Swarm | undefined;
let scratch: string | undefined;
afterEach(async () => {
  await swarm?.stop();
  swarm = undefined;
  if (scratch) await rm(scratch, { recursive: true, force: true });
  scratch = undefined;
});

vi.setConfig({ testTimeout: 240_000 });

describe.skipIf(!FIXTURE)('a swarm job on a pretrained base (the tiny Mixtral fixture)', () => {
  it('3 nodes fetch the base over the swarm and train LoRA on its q4 quantization; a restarted node fetches nothing', async () => {
    scratch = await mkdtemp(join(tmpdir(), 'swarmtrain-base-'));
    const base = join(scratch, 'base');
    await mkdir(base);
    for (const file of ['config.json', 'model.safetensors']) await copyFile(join(FIXTURE!, file), join(base, file));
    await writeFile(join(base, 'tokenizer.json'), JSON.stringify(charTokenizerJson()));
    // The operator's text: Moby-Dick's first 30 chapters in one .txt file (its paragraphs are the documents).
    const text = join(scratch, 'chapters.txt');
    await writeFile(text, loadCorpus('moby-dick').documents.slice(0, 30).join('\n\n'));
    const coordinatorData = join(scratch, 'coordinator');

    swarm = await startSwarm(JOB, ['--base', base, '--corpus', text, '--data', coordinatorData, ...COORDINATOR]);
    const data = (i: number) => ['--data', join(scratch!, `data${i}`)];
    const nodes = [0, 1].map((i) => swarm!.startNode(data(i)));
    const key = join(scratch, 'node2.key');
    // Its speed declared, not measured: a busy machine's measurement would move experts on the restart.
    const restarted = [...data(2), '--key', key, '--gflops', '5'];
    const first = swarm.startNode(restarted);
    const firstWeights = await first.waitFor((e) => e.event === 'weights', 60_000, 'weights');
    expect(firstWeights.fetchedBytes).toBeGreaterThan(0);
    // Killed and restarted at once on the same identity and data directory: the same groups, all from its store.
    await first.waitFor((e) => e.event === 'step', 120_000, 'a step');
    first.kill('SIGKILL');
    await first.exited;
    const again = swarm.startNode(restarted);
    const againWeights = await again.waitFor((e) => e.event === 'weights', 60_000, 'weights after the restart');
    expect(againWeights.fetchedBytes).toBe(0);
    expect(againWeights.cachedBlobs).toBeGreaterThan(0);
    expect(await again.waitFor((e) => e.event === 'corpus', 10_000, 'corpus')).toMatchObject({ fetchedBytes: 0, cached: true });

    await swarm.coordinator.waitFor((e) => e.event === 'done', 180_000, 'done');
    const finishing = [...nodes, again];
    await Promise.all(finishing.map((n) => n.waitFor((e) => e.event === 'finished', 60_000, 'finished')));

    // Every node that started fresh fetched its share: verified bytes from the coordinator or a peer.
    for (const node of [...nodes, first]) {
      const weights = node.events.find((e) => e.event === 'weights')!;
      const bySource = Object.values(weights.bytesBySource as Record<string, number>);
      expect(bySource.reduce((a, b) => a + b, 0)).toBe(weights.fetchedBytes);
    }
    // Held-out loss falls from the base's (LoRA starts as the identity; the restarted node starts caught up) to the end,
    // on the same held-out batches. Not far: the fixture's frozen head (rows of norm <= 0.134 after an RMSNorm of
    // weight 1, so |logit| <= 0.76) keeps any adapter's loss near ln 48 = 3.87; measured here: 3.88 -> 3.75-3.77.
    const before = mean([...nodes, first].map((n) => n.events.find((e: SwarmEvent) => e.event === 'evaluated')!.heldOut.loss as number));
    const after = mean(finishing.map((n) => last(n, 'finished').heldOut.loss as number));
    expect(after).toBeLessThan(before - 0.05);
    expect(finishing.reduce((sum, n) => sum + last(n, 'step').remoteCalls, 0)).toBeGreaterThan(0);
    // The frozen base on every node is the fixture's quantization, bit for bit, group by group.
    const expected = await localBaseDigests(FIXTURE!);
    for (const node of finishing) {
      const digests = Object.entries(last(node, 'finished').baseDigests as Record<string, string>);
      expect(digests.map(([group]) => group)).toContain('trunk');
      for (const [group, digest] of digests) expect(digest, `${node.name} ${group}`).toBe(expected.get(group));
    }

    // The exported adapter on the fixture (read by this project's loader) against the final gathered state on the fixture.
    const result = await swarm.coordinator.waitFor((e) => e.event === 'result', 60_000, 'result');
    const { checkpoint } = await latestCheckpoint(join(coordinatorData, 'jobs', JOB.jobId, 'checkpoints'));
    expect(checkpoint!.manifest.round).toBe(result.round);
    // Checkpoints carry what training changes: an expert's adapters, not its frozen base (every node has that from the blobs).
    for (const [group, tensors] of checkpoint!.groups) {
      if (group !== 'trunk') expect([...tensors.keys()].every((name) => /\.lora_[ab]$/.test(name)), group).toBe(true);
    }
    await expectAdapterLogits(result.dir as string, mergeGroups(checkpoint!.groups));
  });
});
