// The footprint model (src/model/footprint.ts) against the kernel heap: a node's model is built as
// node/session.ts builds it (the trunk and a share of the experts), trains one micro-batch, takes an
// AdamW step and serves a peer's call to each expert it holds; then the heap's live bytes are compared
// with the prediction.
import { describe, expect, it } from 'vitest';
import { createKernels } from '../../src/kernels/index.ts';
import { createConfig, DEMO_CONFIG, type LoraModule, type ModelConfig } from '../../src/model/config.ts';
import { SCRATCH_BYTES } from '../../src/kernels/runtime.ts';
import { footprint, nodeBytes, type FootprintSettings } from '../../src/model/footprint.ts';
import { Model } from '../../src/model/model.ts';
import { AdamW } from '../../src/train/optimizer.ts';
import { fillRandom, rng } from '../helpers.ts';

/** Stated accuracy: predicted heap bytes within this fraction of the measured ones. */
const TOLERANCE = 0.05;

interface Case {
  name: string;
  settings: FootprintSettings;
  checkpointing: boolean;
  config?: ModelConfig;
  threads?: number;
  /** The micro-batch (default 4 × 128). */
  batch?: [number, number];
}

const LORA = { rank: 8, alpha: 16 };
const CASES: Case[] = [
  { name: 'full f32', settings: { mode: 'full' }, checkpointing: false },
  { name: 'full f32, checkpointing', settings: { mode: 'full' }, checkpointing: true },
  { name: 'lora q8 fp32 path', settings: { mode: 'lora', lora: LORA, baseFormat: 'q8', basePath: 'fp32' }, checkpointing: false },
  {
    name: 'lora q4 int path, bf16 activations',
    settings: { mode: 'lora', lora: LORA, baseFormat: 'q4', basePath: 'int', activationStorage: 'bf16' }, checkpointing: false,
  },
  {
    name: 'lora q4 int path, bf16, checkpointing, 2 threads',
    settings: { mode: 'lora', lora: LORA, baseFormat: 'q4', basePath: 'int', activationStorage: 'bf16' }, checkpointing: true, threads: 2,
  },
  {
    name: 'lora q8 on experts only, Qwen2-style shared expert',
    settings: { mode: 'lora', lora: { rank: 4, alpha: 8, targets: ['gate', 'up', 'down'] }, baseFormat: 'q8', basePath: 'fp32' },
    checkpointing: true, config: createConfig({ sharedExpertHiddenSize: 256, attentionBias: true }),
  },
  {
    name: 'lora q8 int path, rank 32, 16 short sequences',
    settings: { mode: 'lora', lora: { rank: 32, alpha: 32 }, baseFormat: 'q8', basePath: 'int' }, checkpointing: false, batch: [16, 32],
  },
];

/** The experts this node holds: every third. */
const hosts = (layer: number, expert: number) => (layer * DEMO_CONFIG.numExperts + expert) % 3 === 0;

/**
 * Live heap bytes of a node's model after one training step and one served call per held expert (and the
 * wasm memory's size), and the bytes freed when the node then gives up one expert (a re-plan moved it).
 */
async function measure(
  { settings, checkpointing, config = DEMO_CONFIG, threads = 1, batch: [BATCH, SEQ] = [4, 128] }: Case,
): Promise<{ bytes: number; memory: number; experts: number; freed: number }> {
  const kernels = await createKernels({ threads });
  try {
    const model = new Model(kernels, config, { ...settings, checkpointing, hosts, seed: 3 });
    const optimizer = new AdamW(kernels, model.params.trainable());
    const random = rng(5);
    const tokens = Int32Array.from({ length: BATCH * SEQ }, () => Math.floor(((random() + 1) / 2) * config.vocabSize));
    const targets = Int32Array.from(tokens, (t, i) => tokens[(i + 1) % tokens.length] ?? t);
    await model.trainStep(tokens, targets, BATCH, SEQ, 1);
    optimizer.update(1e-3);
    // A peer's micro-batch of the same shape sends each expert about its even share of the routed rows.
    const rows = Math.ceil((BATCH * SEQ * config.expertsPerToken) / config.numExperts);
    const { heap } = kernels;
    const [x, y, dx] = [heap.f32(rows * config.hiddenSize), heap.f32(rows * config.hiddenSize), heap.f32(rows * config.hiddenSize)];
    fillRandom(x, random);
    let experts = 0;
    for (let l = 0; l < config.numLayers; l++) {
      for (let e = 0; e < config.numExperts; e++) {
        const serving = model.experts.servingExpert(l, e);
        if (!serving) continue;
        experts++;
        serving.forward(x, y, rows);
        serving.backward(x, y, dx, rows);
      }
    }
    for (const view of [x, y, dx]) heap.release(view);
    const bytes = heap.allocatedBytes;
    optimizer.remove(model.experts.tensorNames(0, 0));
    model.experts.remove(0, 0);
    return { bytes, memory: heap.memory.buffer.byteLength, experts, freed: bytes - heap.allocatedBytes };
  } finally {
    await kernels.close();
  }
}

describe('footprint against the kernel heap', () => {
  const rows: string[] = [];
  for (const c of CASES) {
    it(`${c.name}: predicted heap bytes within ${TOLERANCE * 100}% of the measured`, async () => {
      const { bytes, memory, experts, freed } = await measure(c);
      const [batchSize, seqLen] = c.batch ?? [4, 128];
      const fp = footprint(c.config ?? DEMO_CONFIG, { ...c.settings, batchSize, seqLen });
      const predicted = nodeBytes(fp, experts, c.checkpointing, c.threads) - fp.offHeap.trunkBytes - experts * fp.offHeap.expertBytes;
      const error = predicted / bytes - 1;
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(2).padStart(7)} MiB`;
      const accuracy = `predicted ${mib(predicted)} (${(error * 100).toFixed(1)}%)`;
      rows.push(`${c.name.padEnd(50)} ${experts} experts  live ${mib(bytes)}  ${accuracy}  wasm memory ${mib(memory)}`);
      expect(Math.abs(error)).toBeLessThan(TOLERANCE);
      // An expert given up frees what one expert was predicted to take: its weights, state and call buffers.
      const perExpert = fp.expertBytes - fp.offHeap.expertBytes;
      expect(Math.abs(freed / perExpert - 1)).toBeLessThan(TOLERANCE);
    }, 60_000);
  }
  it('prints the comparison', () => console.log(rows.join('\n')));
});

describe('footprint of the weights, by hand', () => {
  const config = DEMO_CONFIG;
  const { hiddenSize: H, vocabSize: V, expertHiddenSize: F, numLayers: L, numHeads, numKvHeads, headDim: D, numExperts: E } = config;
  const attention = H * numHeads * D * 2 + 2 * H * numKvHeads * D;
  const trunkValues = 2 * V * H + H + L * (2 * H + attention + E * H);
  const fixed = config.maxSeqLen * D * 4 + SCRATCH_BYTES; // rotary table, one thread's kernel scratch

  it('full mode: 28 bytes per value (value, grad, m, v on the heap; averaging base, momentum, error feedback off it)', () => {
    const fp = footprint(config, { mode: 'full' });
    expect(fp).toMatchObject({ trunkBytes: trunkValues * 28 + fixed, expertBytes: 3 * F * H * 28, activationBytes: 0 });
    expect(fp.offHeap).toEqual({ trunkBytes: trunkValues * 12, expertBytes: 3 * F * H * 12 });
    expect(footprint(config, { mode: 'full', averaging: 'sync' }).expertBytes).toBe(3 * F * H * 20);
  });

  it('lora on q8/q4: quantized attention and experts, a q8 head, fp32 norms/embedding/router, trainable adapters', () => {
    const r = 8;
    const attentionLora = r * ((H + numHeads * D) * 2 + 2 * (H + numKvHeads * D));
    const f32Trunk = trunkValues - L * attention - V * H;
    const frozenNormScratch = H * 4;
    for (const [format, perValue] of [['q8', 1.125], ['q4', 0.625]] as const) {
      const fp = footprint(config, { mode: 'lora', lora: { rank: r, alpha: 16 }, baseFormat: format });
      expect(fp.expertBytes).toBe(3 * F * H * perValue + 3 * r * (F + H) * 28);
      const quantizedHead = V * H * 1.125;
      const adapters = L * attentionLora * 28;
      expect(fp.trunkBytes).toBe(f32Trunk * 4 + L * attention * perValue + quantizedHead + adapters + fixed + frozenNormScratch);
      // The integer path keeps a q8 Wᵀ of every quantized matrix for the backward.
      const int = footprint(config, { mode: 'lora', lora: { rank: r, alpha: 16 }, baseFormat: format, basePath: 'int' });
      expect(int.expertBytes - fp.expertBytes).toBe(3 * F * H * 1.125);
    }
    // A vocabulary that is not whole 32-blocks keeps the head in f32.
    const odd = createConfig({ vocabSize: V + 1 });
    const q8 = (c: ModelConfig) => footprint(c, { mode: 'lora', lora: { rank: r, alpha: 16 }, baseFormat: 'q8' }).trunkBytes;
    expect(q8(odd) - q8(config)).toBe(4 * H + (V + 1) * H * 4 - V * H * 1.125);
    // Only the chosen targets get adapters; a frozen A (LoRA-FA) is a value alone.
    const targets: LoraModule[] = ['gate', 'up', 'down'];
    const expertsOnly = footprint(config, { mode: 'lora', lora: { rank: r, alpha: 16, targets }, baseFormat: 'f32' });
    expect(expertsOnly.trunkBytes).toBe(trunkValues * 4 + fixed + frozenNormScratch);
    const frozenA = footprint(config, { mode: 'lora', lora: { rank: r, alpha: 16, targets, freezeA: true }, baseFormat: 'f32' });
    expect(expertsOnly.expertBytes - frozenA.expertBytes).toBe(r * (2 * H + F) * 24);
    expect(() => footprint(config, { mode: 'lora' })).toThrow(/lora options/);
  });

  it('activations: checkpointing keeps one layer\'s, bf16 halves the kept tensors, both grow with the micro-batch', () => {
    const at = (settings: Partial<FootprintSettings>) => footprint(config, { mode: 'full', batchSize: 4, seqLen: 128, ...settings });
    const fp = at({});
    expect(fp.checkpointedActivationBytes).toBeLessThan(fp.activationBytes);
    expect(at({ activationStorage: 'bf16' }).activationBytes).toBeLessThan(fp.activationBytes);
    expect(at({ batchSize: 8 }).activationBytes).toBeGreaterThan(1.8 * fp.activationBytes);
    expect(at({}).trunkBytes).toBe(footprint(config, { mode: 'full' }).trunkBytes);
  });
});
