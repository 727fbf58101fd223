// A swarm job's spec (proto's JobSpec) turned into what training needs. The coordinator and
// every node build the same config, model options and micro-batches from the same spec and
// tokenizer, so a batch index names the same tokens everywhere.
import { JobError, type JobSpec } from '../../proto/index.ts';
import { createConfig, type ModelConfig } from '../model/config.ts';
import type { FootprintSettings } from '../model/footprint.ts';
import type { ModelOptions } from '../model/model.ts';
import { CORPUS_NAMES, loadCorpus, type CorpusName } from './corpus.ts';
import { corpusLoaders, trainBatchesPerEpoch, type CorpusLoaderOptions, type CorpusLoaders } from './data.ts';
import type { Tokenizer } from './tokenizers/index.ts';
import type { BlobSpec } from '../weights/store.ts';

/**
 * The model config of a job: its overrides on the demo config, validated; the vocabulary is the tokenizer's.
 * With a base (the checkpoint's config), the config is the base's: an override may only repeat it, except
 * the training-only routerAuxLossCoef and a shorter maxSeqLen; the tokenizer must fit the base's vocabulary.
 */
export function jobConfig(spec: JobSpec, tokenizer: Tokenizer, base?: Readonly<ModelConfig>): ModelConfig {
  if (base !== undefined) return baseJobConfig(spec, tokenizer, base);
  if (spec.model.vocabSize !== undefined && spec.model.vocabSize !== tokenizer.vocabSize) {
    throw new JobError(`job ${spec.jobId}: model vocabSize ${String(spec.model.vocabSize)} differs from the tokenizer's ${tokenizer.vocabSize}`);
  }
  return createConfig({ ...(spec.model as Partial<ModelConfig>), vocabSize: tokenizer.vocabSize });
}

function baseJobConfig(spec: JobSpec, tokenizer: Tokenizer, base: Readonly<ModelConfig>): ModelConfig {
  const refuse = (why: string): never => {
    throw new JobError(`job ${spec.jobId}: ${why}`);
  };
  const overrides: Partial<ModelConfig> = {};
  for (const [key, value] of Object.entries(spec.model)) {
    if (!(key in base)) refuse(`model.${key} is not a model setting`);
    const field = key as keyof ModelConfig;
    const settable = field === 'routerAuxLossCoef' || (field === 'maxSeqLen' && typeof value === 'number' && value <= base.maxSeqLen);
    if (settable) Object.assign(overrides, { [field]: value });
    else if (value !== base[field]) {
      refuse(`model.${key} is ${String(value)} but the base checkpoint's is ${String(base[field])}; drop it from the job`);
    }
  }
  if (tokenizer.vocabSize > base.vocabSize) {
    refuse(`the tokenizer has ${tokenizer.vocabSize} tokens, more than the base checkpoint's vocabulary of ${base.vocabSize}`);
  }
  return createConfig({ ...base, ...overrides });
}

export function jobModelOptions(spec: JobSpec): ModelOptions {
  if (spec.mode === 'lora' && !spec.lora) throw new JobError(`job ${spec.jobId}: lora mode needs lora { rank, alpha }`);
  return {
    mode: spec.mode,
    ...(spec.lora ? { lora: spec.lora } : {}),
    ...(spec.mode === 'lora' ? { baseFormat: spec.baseFormat, basePath: spec.basePath } : {}),
    ...(spec.activations ? { activationStorage: spec.activations } : {}),
    ...(spec.splitBatch ? { splitBatch: true } : {}),
    seed: spec.seed,
  };
}

/** What a node's memory for the job depends on (src/model/footprint.ts): its precision, micro-batch and averaging. */
export function jobFootprintSettings(spec: JobSpec): FootprintSettings {
  return { ...jobModelOptions(spec), batchSize: spec.batchSize, seqLen: spec.seqLen, averaging: spec.averaging.mode };
}

/** A job's own text, decoded from its corpus blob (the blob's sha256 names it). */
export interface JobText {
  sha256: string;
  documents: string[];
}

/** The job's documents: its bundled corpus, or `text` when the job has a corpus blob (which `text` must be). */
export function jobDocuments(spec: JobSpec, text?: JobText): { documents: string[] } {
  const { documents } = spec.corpusBlob ? ownText(spec, text) : bundled(spec);
  const { from = 0, to = documents.length } = spec.documents ?? {};
  if (from >= to || to > documents.length) throw new JobError(`job ${spec.jobId}: documents [${from}, ${to}) outside the corpus's ${documents.length}`);
  return { documents: documents.slice(from, to) };
}

function bundled(spec: JobSpec): { documents: string[] } {
  if (!(CORPUS_NAMES as readonly string[]).includes(spec.corpus)) {
    const known = `known: ${CORPUS_NAMES.join(', ')}; or give the coordinator --corpus <path>`;
    throw new JobError(`job ${spec.jobId}: unknown corpus "${spec.corpus}" (${known})`);
  }
  return loadCorpus(spec.corpus as CorpusName);
}

function ownText(spec: JobSpec, text: JobText | undefined): JobText {
  const { sha256 } = spec.corpusBlob!;
  if (text === undefined) {
    throw new JobError(`job ${spec.jobId}: its corpus is the blob ${sha256}, whose text is not given (the coordinator's --corpus <path> sets it)`);
  }
  if (text.sha256 !== sha256) throw new JobError(`job ${spec.jobId}: its corpus is the blob ${sha256}, not ${text.sha256}`);
  return text;
}

/** The job naming `text` (its sha256 and chunk hashes) as its corpus. */
export function jobWithText(spec: JobSpec, blob: BlobSpec): JobSpec {
  return { ...spec, corpusBlob: { sha256: blob.sha256, bytes: blob.bytes, chunks: [...blob.chunks] } };
}

export function jobData(spec: JobSpec, tokenizer: Tokenizer, text?: JobText): CorpusLoaders {
  return corpusLoaders(tokenizer, jobDocuments(spec, text), loaderOptions(spec));
}

/** jobData(spec, tokenizer).train.batchesPerEpoch, without tokenizing the corpus into arrays. */
export function jobBatchesPerEpoch(spec: JobSpec, tokenizer: Tokenizer, text?: JobText): number {
  return trainBatchesPerEpoch(tokenizer, jobDocuments(spec, text), loaderOptions(spec));
}

const loaderOptions = (spec: JobSpec): CorpusLoaderOptions => ({
  batchSize: spec.batchSize, seqLen: spec.seqLen, heldOutFraction: spec.heldOutFraction, seed: spec.seed,
});
