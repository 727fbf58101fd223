// A LoRA swarm job with synchronous averaging retraces one process: 2 node processes, every expert on
// both, fine-tune LoRA on a seeded base over the operator's own text (a .txt file given to the coordinator,
// fetched by the nodes as a checked blob); each step's loss equals a data-parallel replay of the same batches.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import { jobOnText } from '../../coordinator/corpus.ts';
import { loadCorpus } from '../../src/train/corpus.ts';
import { jobDocuments } from '../../src/train/job.ts';
import { loadTextCorpus } from '../../src/train/text-corpus.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { startSwarm, type Swarm } from '../../src/harness/local-swarm.ts';
import { replaySync, stepsByNode } from './replay.ts';

const STEPS = 16;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function job(lora: JobSpec['lora']): JobSpec {
  return {
    jobId: 'lora-sync', mode: 'lora', lora, baseFormat: 'f32', basePath: 'fp32', seed: 5, corpus: 'chapters',
    model: {
      hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64, maxSeqLen: 32,
    },
    batchSize: 4, seqLen: 32, heldOutFraction: 0.05, totalBatches: 2 * STEPS + 8, expectedNodes: 2, lr: 3e-2, minLr: 3e-3, warmupSteps: 3,
    averaging: { mode: 'sync', every: 1, deadlineMs: 30_000 }, expertTimeoutMs: 10_000,
  };
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

describe('a LoRA swarm job with synchronous averaging', () => {
  it.each([
    ['A and B trained', { rank: 4, alpha: 8, freezeA: false }],
    ['A frozen (LoRA-FA)', { rank: 4, alpha: 8, freezeA: true }],
  ])('%s: 2 nodes on the operator\'s text match one process over the same batches to 1e-4', async (_, lora) => {
    scratch = await mkdtemp(join(tmpdir(), 'swarmtrain-lora-sync-'));
    const textFile = join(scratch, 'chapters.txt');
    await writeFile(textFile, loadCorpus('moby-dick').documents.slice(3, 12).join('\n\n'));
    const spec = job(lora);
    swarm = await startSwarm(spec, [
      '--vocab', '300', '--corpus', textFile, '--heartbeat-ms', '300', '--node-timeout-ms', '5000', '--lease-ms', '30000', '--replication', '2',
    ]);
    const nodes = [0, 1].map((i) => swarm!.startNode(['--data', join(scratch!, `node${i}`)]));
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'step' && e.step === STEPS, 200_000, `step ${STEPS}`)));
    // Each node fetched the text (from the coordinator or the other node) and checked it.
    const { job: onText, text } = jobOnText(spec, loadTextCorpus(textFile));
    const fetched = { sha256: text.sha256, documents: text.documents.length };
    for (const node of nodes) expect(node.events.find((e) => e.event === 'corpus')).toMatchObject(fetched);

    const { perNode, batchesPerStep } = await stepsByNode(nodes, STEPS);
    // Every round had both holders' gradients (a node still joining when the other's first deltas went out gets them later).
    for (const events of perNode) expect(events.at(-1)!.averaging.missing, 'sync rounds without the other holder').toBe(0);
    const tokenizer = BpeTokenizer.train(jobDocuments(onText, text).documents, { vocabSize: 300 });
    const reference = await replaySync(onText, tokenizer, batchesPerStep, text);
    for (let s = 0; s < STEPS; s++) {
      const swarmLoss = mean(perNode.map((events) => events[s].loss));
      const oneProcess = mean(reference[s]);
      expect(Math.abs(swarmLoss - oneProcess) / oneProcess, `step ${s}`).toBeLessThan(1e-4);
    }
    expect(mean(reference.at(-1)!)).toBeLessThan(mean(reference[0]) - 0.05); // it trained
  });
});
