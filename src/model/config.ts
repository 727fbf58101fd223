// Model configuration for the Mixtral / Qwen2-MoE family, and the canonical parameter names
// and shapes every part of the engine (model, checkpoints, shard planner, HF/PEFT I/O) uses.
//
// The architecture: token embedding; per layer x += attn(rmsnorm(x)), x += moe(rmsnorm(x));
// final rmsnorm; LM head. Attention is causal with grouped KV heads and rotary embeddings in
// transformers' rotate-half convention (dimension i pairs with i + headDim/2). The MoE block
// is a softmax router over `numExperts`, the top `expertsPerToken` experts per token (gates
// renormalized to sum 1 when `normTopkProb`), SwiGLU experts down(silu(gate·x) * up·x), plus
// optionally a shared SwiGLU expert scaled by sigmoid(shared_expert_gate·x) (Qwen2-MoE).
// A dense Llama is the special case of 1 expert, top-1: its MLP is expert 0 and the gate is 1.

export interface ModelConfig {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** Heads of K and V; each serves numHeads / numKvHeads query heads. */
  numKvHeads: number;
  /** Need not equal hiddenSize / numHeads (Mixtral and Llama configs may set it). Even. */
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  numExperts: number;
  expertsPerToken: number;
  /** Inner width of each routed SwiGLU expert. */
  expertHiddenSize: number;
  /** Inner width of the always-on shared expert with its sigmoid gate; 0 for none. */
  sharedExpertHiddenSize: number;
  /** Renormalize the top-k gate values to sum to 1 (Mixtral: always; Qwen2-MoE: norm_topk_prob). */
  normTopkProb: boolean;
  /** Biases on the q, k, v projections (Qwen2). The output projection never has one. */
  attentionBias: boolean;
  /** The LM head reuses the embedding matrix (no separate `lm_head` parameter). */
  tieEmbeddings: boolean;
  /** Weight of the Switch-style load-balancing loss, summed over layers. */
  routerAuxLossCoef: number;
  /** Longest sequence (positions) the model is trained or run on. */
  maxSeqLen: number;
}

/**
 * Small model for the bundled demo (`npm start`): every matrix's input width is a multiple of
 * 32, the q8/q4 block size. `vocabSize` is a placeholder for whatever tokenizer the job uses.
 */
export const DEMO_CONFIG: Readonly<ModelConfig> = Object.freeze({
  vocabSize: 4096,
  hiddenSize: 256,
  numLayers: 4,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 32,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  numExperts: 8,
  expertsPerToken: 2,
  expertHiddenSize: 512,
  sharedExpertHiddenSize: 0,
  normTopkProb: true,
  attentionBias: false,
  tieEmbeddings: false,
  routerAuxLossCoef: 0.01,
  maxSeqLen: 256,
});

const FIELD_KINDS: Record<keyof ModelConfig, 'positive int' | 'non-negative int' | 'positive' | 'non-negative' | 'boolean'> = {
  vocabSize: 'positive int',
  hiddenSize: 'positive int',
  numLayers: 'positive int',
  numHeads: 'positive int',
  numKvHeads: 'positive int',
  headDim: 'positive int',
  ropeTheta: 'positive',
  rmsNormEps: 'positive',
  numExperts: 'positive int',
  expertsPerToken: 'positive int',
  expertHiddenSize: 'positive int',
  sharedExpertHiddenSize: 'non-negative int',
  normTopkProb: 'boolean',
  attentionBias: 'boolean',
  tieEmbeddings: 'boolean',
  routerAuxLossCoef: 'non-negative',
  maxSeqLen: 'positive int',
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Checks an untrusted value (a parsed job or checkpoint config) and returns it as a ModelConfig. */
export function validateConfig(value: unknown): ModelConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ConfigError('model config must be an object');
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!Object.hasOwn(FIELD_KINDS, key)) throw new ConfigError(`model config: unknown field "${key}" (known: ${Object.keys(FIELD_KINDS).join(', ')})`);
  }
  const config = {} as Record<string, number | boolean>;
  for (const [key, kind] of Object.entries(FIELD_KINDS)) {
    const v = record[key];
    const ok =
      kind === 'boolean'
        ? typeof v === 'boolean'
        : typeof v === 'number' &&
          Number.isFinite(v) &&
          (kind.startsWith('positive') ? v > 0 : v >= 0) &&
          (!kind.endsWith('int') || Number.isSafeInteger(v));
    if (!ok) throw new ConfigError(`model config: ${key} must be a ${kind === 'boolean' ? 'boolean' : `${kind} number`}, got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`);
    config[key] = v as number | boolean;
  }
  const c = config as unknown as ModelConfig;
  if (c.numHeads % c.numKvHeads !== 0) throw new ConfigError(`model config: numKvHeads (${c.numKvHeads}) must divide numHeads (${c.numHeads})`);
  if (c.headDim % 2 !== 0) throw new ConfigError(`model config: headDim (${c.headDim}) must be even for rotary embeddings`);
  if (c.expertsPerToken > c.numExperts) {
    throw new ConfigError(`model config: expertsPerToken (${c.expertsPerToken}) exceeds numExperts (${c.numExperts})`);
  }
  return c;
}

/** The demo config with `overrides` applied, validated. */
export function createConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  return validateConfig({ ...DEMO_CONFIG, ...overrides });
}

/** A named f32 parameter; matrices are row-major [out, in] like PyTorch's nn.Linear.weight. */
export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

/**
 * Canonical parameter names and shapes, in a fixed order (embedding, layers in order, final
 * norm, head). H = hiddenSize, V = vocabSize, D = headDim, F = expertHiddenSize,
 * S = sharedExpertHiddenSize, E = numExperts:
 *
 *   embed                                  [V, H]
 *   layers.{l}.attn_norm                   [H]           RMSNorm weight before attention
 *   layers.{l}.attn.q                      [numHeads·D, H]
 *   layers.{l}.attn.q_bias                 [numHeads·D]   only with attentionBias (same for k, v)
 *   layers.{l}.attn.k, .v                  [numKvHeads·D, H]
 *   layers.{l}.attn.o                      [H, numHeads·D]
 *   layers.{l}.ffn_norm                    [H]           RMSNorm weight before the MoE block
 *   layers.{l}.router                      [E, H]
 *   layers.{l}.experts.{e}.gate, .up       [F, H]
 *   layers.{l}.experts.{e}.down            [H, F]
 *   layers.{l}.shared_expert.gate, .up     [S, H]        only when S > 0
 *   layers.{l}.shared_expert.down          [H, S]
 *   layers.{l}.shared_expert_gate          [1, H]
 *   final_norm                             [H]
 *   lm_head                                [V, H]        absent when tieEmbeddings
 */
export function parameterShapes(config: ModelConfig): Map<string, number[]> {
  const { hiddenSize: H, vocabSize: V, headDim: D, expertHiddenSize: F, sharedExpertHiddenSize: S } = config;
  const shapes = new Map<string, number[]>([['embed', [V, H]]]);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `layers.${l}`;
    shapes.set(`${p}.attn_norm`, [H]);
    for (const [name, heads] of [['q', config.numHeads], ['k', config.numKvHeads], ['v', config.numKvHeads]] as const) {
      shapes.set(`${p}.attn.${name}`, [heads * D, H]);
      if (config.attentionBias) shapes.set(`${p}.attn.${name}_bias`, [heads * D]);
    }
    shapes.set(`${p}.attn.o`, [H, config.numHeads * D]);
    shapes.set(`${p}.ffn_norm`, [H]);
    shapes.set(`${p}.router`, [config.numExperts, H]);
    for (let e = 0; e < config.numExperts; e++) {
      const expert = expertPrefix(l, e);
      shapes.set(`${expert}.gate`, [F, H]);
      shapes.set(`${expert}.up`, [F, H]);
      shapes.set(`${expert}.down`, [H, F]);
    }
    if (S > 0) {
      shapes.set(`${p}.shared_expert.gate`, [S, H]);
      shapes.set(`${p}.shared_expert.up`, [S, H]);
      shapes.set(`${p}.shared_expert.down`, [H, S]);
      shapes.set(`${p}.shared_expert_gate`, [1, H]);
    }
  }
  shapes.set('final_norm', [H]);
  if (!config.tieEmbeddings) shapes.set('lm_head', [V, H]);
  return shapes;
}

const EXPERT_PARAM = /^layers\.(\d+)\.experts\.(\d+)\./;

/** The (layer, expert) a canonical parameter name belongs to, or undefined for the trunk. */
/** The name every tensor of a routed expert starts with (expertOf parses it back). */
export function expertPrefix(layer: number, expert: number): string {
  return `layers.${layer}.experts.${expert}`;
}

export function expertOf(name: string): { layer: number; expert: number } | undefined {
  const m = EXPERT_PARAM.exec(name);
  return m ? { layer: Number(m[1]), expert: Number(m[2]) } : undefined;
}

/** Short names of the matrices LoRA can adapt (attention projections; expert matrices). */
export const LORA_MODULES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LoraModule = (typeof LORA_MODULES)[number];

/** Matrices LoRA may adapt: attention projections and expert (routed and shared) matrices. */
const LORA_TARGET = /^layers\.\d+\.(attn\.[qkvo]|experts\.\d+\.(gate|up|down)|shared_expert\.(gate|up|down))$/;

export function isLoraTarget(name: string): boolean {
  return LORA_TARGET.test(name);
}

/**
 * Canonical LoRA names and shapes for every LoRA target of `config`: `<target>.lora_a` [r, in]
 * and `<target>.lora_b` [out, r]; the adapted weight is W + (alpha / r) · B·A.
 */
export function loraShapes(config: ModelConfig, rank: number): Map<string, number[]> {
  if (!Number.isSafeInteger(rank) || rank <= 0) throw new ConfigError(`LoRA rank must be a positive integer, got ${rank}`);
  const shapes = new Map<string, number[]>();
  for (const [name, [out, inDim]] of parameterShapes(config)) {
    if (!isLoraTarget(name)) continue;
    shapes.set(`${name}.lora_a`, [rank, inDim]);
    shapes.set(`${name}.lora_b`, [out, rank]);
  }
  return shapes;
}
