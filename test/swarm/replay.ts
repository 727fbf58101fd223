// The single-process reference of a swarm job with synchronous averaging: the batches each node trained at
// each step (read from the nodes' events, in node-id order, the order in which nodes sum their gradients),
// replayed in one process as data-parallel steps.
import type { JobSpec } from '../../proto/index.ts';
import { createKernels } from '../../src/kernels/index.ts';
import { Model } from '../../src/model/model.ts';
import { jobConfig, jobData, jobModelOptions, type JobText } from '../../src/train/job.ts';
import { AdamW, DEFAULT_ADAMW } from '../../src/train/optimizer.ts';
import { learningRate } from '../../src/train/schedule.ts';
import type { Tokenizer } from '../../src/train/tokenizers/index.ts';
import { splitBatch } from '../../src/train/trainer.ts';
import type { Proc, SwarmEvent } from '../../src/harness/local-swarm.ts';

/** The first `count` step events of each node, the nodes in node-id order, and the batch of each node at each step. */
export async function stepsByNode(nodes: Proc[], count: number): Promise<{ perNode: SwarmEvent[][]; batchesPerStep: number[][] }> {
  const ids = await Promise.all(nodes.map(async (n) => (await n.waitFor((e) => e.event === 'joined')).node as string));
  const perNode = nodes.map((n, i) => ({ id: ids[i], events: n.events.filter((e) => e.event === 'step').slice(0, count) }))
    .sort((a, b) => (a.id < b.id ? -1 : 1)).map((x) => x.events);
  const batchesPerStep = Array.from({ length: count }, (_, s) => perNode.map((events) => events[s].batch as number));
  return { perNode, batchesPerStep };
}

/**
 * Replays the swarm's batches in one process: step s computes the gradient of each node's step-s
 * batch on the same parameters and averages them in f32 in node-id order (the data-parallel step
 * the swarm's synchronous averaging performs), then takes the same AdamW step. Returns each step's losses.
 */
export async function replaySync(spec: JobSpec, tokenizer: Tokenizer, batchesPerStep: number[][], text?: JobText): Promise<number[][]> {
  const kernels = await createKernels({ threads: 1 });
  const config = jobConfig(spec, tokenizer);
  const data = jobData(spec, tokenizer, text);
  const model = new Model(kernels, config, jobModelOptions(spec));
  const params = model.params.trainable();
  const optimizer = new AdamW(kernels, params, DEFAULT_ADAMW);
  const sums = params.map((p) => new Float32Array(p.value.length));
  const losses: number[][] = [];
  for (const [step, batches] of batchesPerStep.entries()) {
    const stepLosses: number[] = [];
    for (const sum of sums) sum.fill(0);
    for (const index of batches) {
      const batch = data.train.batchAt(index);
      const { inputs, targets } = splitBatch(batch);
      model.params.zeroGrads();
      stepLosses.push((await model.trainStep(inputs, targets, batch.rows, batch.seqLen)).loss);
      params.forEach((p, i) => sums[i].forEach((_, j, sum) => (sum[j] += p.grad![j])));
    }
    params.forEach((p, i) => p.grad!.set(sums[i].map((v) => v / batches.length)));
    const { lr, minLr, warmupSteps, totalBatches, expectedNodes } = spec;
    optimizer.update(learningRate(step, { lr, minLr, warmupSteps, totalSteps: Math.ceil(totalBatches / expectedNodes) }));
    losses.push(stepLosses);
  }
  await kernels.close();
  return losses;
}
