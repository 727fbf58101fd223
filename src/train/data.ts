// Data loading: a corpus is tokenized once (documents joined by the end-of-text token), split
// deterministically into train and held-out token ranges, and cut into windows of seqLen+1
// tokens (inputs and shifted targets). Micro-batches are addressed by (epoch, id): the window
// order of an epoch is a permutation seeded by (seed, epoch), so a coordinator can lease batch
// ids and any node materializes the same batch from the same corpus and tokenizer.
import type { Corpus } from './corpus.ts';
import type { Tokenizer } from './tokenizers/index.ts';
import { checkDims } from '../kernels/check.ts';

export interface TokenizedCorpus {
  /** Every document's tokens, each followed by the end-of-text token. */
  tokens: Int32Array;
  /** Document d is tokens[docStarts[d], docStarts[d + 1]); length documents + 1. */
  docStarts: Int32Array;
}

const tokenized = new WeakMap<Tokenizer, WeakMap<readonly string[], TokenizedCorpus>>();

/** Tokenizes a corpus, once per (tokenizer, documents array): later calls return the cached result. */
export function tokenizeCorpus(tokenizer: Tokenizer, corpus: Pick<Corpus, 'documents'>): TokenizedCorpus {
  let byDocs = tokenized.get(tokenizer);
  if (byDocs === undefined) tokenized.set(tokenizer, byDocs = new WeakMap());
  let result = byDocs.get(corpus.documents);
  if (result === undefined) {
    const eot = endOfText(tokenizer);
    const perDoc = corpus.documents.map((doc) => tokenizer.encodeOrdinary(doc));
    const docStarts = new Int32Array(perDoc.length + 1);
    perDoc.forEach((ids, d) => { docStarts[d + 1] = docStarts[d] + ids.length + 1; });
    const tokens = new Int32Array(docStarts[perDoc.length]);
    perDoc.forEach((ids, d) => { tokens.set(ids, docStarts[d]); tokens[docStarts[d + 1] - 1] = eot; });
    result = { tokens, docStarts };
    byDocs.set(corpus.documents, result);
  }
  return result;
}

function endOfText(tokenizer: Tokenizer): number {
  const eot = tokenizer.endOfText;
  if (eot === undefined) {
    throw new Error('tokenizeCorpus: the tokenizer has no <|endoftext|> token ' +
      '(nor </s> or another family\'s end-of-text) to separate documents');
  }
  return eot;
}

/** A contiguous range of the tokenized corpus. */
export interface Segment {
  start: number;
  end: number;
  /** tokens[start, end) of the corpus (a view, not a copy). */
  tokens: Int32Array;
}

export interface TokenSplit {
  train: Segment[];
  heldOut: Segment[];
}

export interface SplitOptions {
  /** Hold out whole documents, or contiguous chunks of `chunkTokens` tokens (for corpora of few, long documents). */
  by: 'documents' | 'chunks';
  /** Fraction of the documents or chunks held out, rounded to a whole number (at least one when > 0). */
  heldOutFraction: number;
  /** Chunk length for `by: 'chunks'`. Default 4096. */
  chunkTokens?: number;
  /** Chooses which units are held out. Default 0. */
  seed?: number;
}

/**
 * Splits a tokenized corpus into train and held-out segments: the units (documents or chunks)
 * are assigned by a seeded shuffle, and consecutive units on the same side form one segment.
 */
export function splitCorpus(corpus: TokenizedCorpus, options: SplitOptions): TokenSplit {
  const ranges = splitRanges(corpus.docStarts, corpus.tokens.length, options);
  const segment = ([start, end]: TokenRange): Segment => ({ start, end, tokens: corpus.tokens.subarray(start, end) });
  return { train: ranges.train.map(segment), heldOut: ranges.heldOut.map(segment) };
}

/** [start, end) in the tokenized corpus. */
type TokenRange = [number, number];

/** splitCorpus's split as token ranges, from the document bounds and the token count alone. */
function splitRanges(docStarts: Int32Array, total: number, options: SplitOptions): { train: TokenRange[]; heldOut: TokenRange[] } {
  const { by, heldOutFraction, chunkTokens = 4096, seed = 0 } = options;
  if (!(heldOutFraction >= 0 && heldOutFraction < 1)) {
    throw new RangeError(`splitCorpus: heldOutFraction must be in [0, 1), got ${heldOutFraction}`);
  }
  let bounds: Int32Array;
  if (by === 'documents') bounds = docStarts;
  else if (by === 'chunks') {
    if (!Number.isInteger(chunkTokens) || chunkTokens < 1) {
      throw new RangeError(`splitCorpus: chunkTokens must be a positive integer, got ${chunkTokens}`);
    }
    bounds = Int32Array.from({ length: Math.ceil(total / chunkTokens) + 1 }, (_, i) => Math.min(i * chunkTokens, total));
  } else throw new Error(`splitCorpus: by must be 'documents' or 'chunks', got ${JSON.stringify(by)}`);
  const units = bounds.length - 1;
  let heldOutUnits = Math.round(units * heldOutFraction);
  if (heldOutFraction > 0) heldOutUnits = Math.max(heldOutUnits, 1);
  if (heldOutUnits > 0 && heldOutUnits >= units) {
    throw new RangeError(`splitCorpus: holding out ${heldOutUnits} of ${units} ${by} leaves nothing to train on`);
  }
  const heldOut = new Uint8Array(units);
  for (const u of permutation(units, seed, 0x5b1d).subarray(0, heldOutUnits)) heldOut[u] = 1;
  const split: { train: TokenRange[]; heldOut: TokenRange[] } = { train: [], heldOut: [] };
  for (let u = 0; u < units;) {
    let v = u + 1;
    while (v < units && heldOut[v] === heldOut[u]) v++;
    (heldOut[u] ? split.heldOut : split.train).push([bounds[u], bounds[v]]);
    u = v;
  }
  return split;
}

export interface LoaderOptions {
  /** Rows per micro-batch. */
  batchSize: number;
  /** Positions per row: each row holds seqLen + 1 tokens (inputs are the first seqLen, targets the last seqLen). */
  seqLen: number;
  /** With `shuffle`, the window order of epoch e is a permutation seeded by (seed, e); seeds are taken mod 2^32. Default 0. */
  seed?: number;
  /** Default true; false keeps windows in corpus order (for evaluation). */
  shuffle?: boolean;
}

export interface MicroBatch {
  epoch: number;
  id: number;
  /** Rows in this batch: batchSize, except the epoch's last batch, which holds the remaining windows. */
  rows: number;
  seqLen: number;
  /** rows × (seqLen + 1) token ids, row-major. */
  tokens: Int32Array;
  /** The window index of each row. */
  windows: Int32Array;
}

/**
 * Micro-batches over the windows of some segments. Windows tile each segment with stride seqLen
 * (consecutive windows share one token, so every token but a segment's first is a target
 * exactly once); a segment's tail shorter than a window is not used. Windows never cross
 * segments. Each epoch visits every window exactly once.
 */
export class BatchLoader {
  readonly batchSize: number;
  readonly seqLen: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly windowCount: number;
  readonly batchesPerEpoch: number;
  private readonly segments: Int32Array[];
  private readonly windowSegment: Int32Array;
  private readonly windowStart: Int32Array;
  private cachedOrder: { epoch: number; order: Int32Array } | null = null;

  constructor(segments: readonly { tokens: Int32Array }[], options: LoaderOptions) {
    const { batchSize, seqLen, seed = 0, shuffle = true } = options;
    checkLoaderOptions(batchSize, seqLen, seed);
    this.batchSize = batchSize;
    this.seqLen = seqLen;
    this.seed = seed;
    this.shuffle = shuffle;
    this.segments = segments.map((s) => s.tokens);
    const perSegment = windowsPerSegment(this.segments.map((t) => t.length), seqLen);
    this.windowCount = sum(perSegment);
    this.windowSegment = new Int32Array(this.windowCount);
    this.windowStart = new Int32Array(this.windowCount);
    let w = 0;
    perSegment.forEach((count, s) => {
      for (let k = 0; k < count; k++, w++) { this.windowSegment[w] = s; this.windowStart[w] = k * seqLen; }
    });
    this.batchesPerEpoch = Math.ceil(this.windowCount / batchSize);
  }

  /** Tokens of window w (a view of seqLen + 1 tokens). */
  window(w: number): Int32Array {
    if (!Number.isInteger(w) || w < 0 || w >= this.windowCount) {
      throw new RangeError(`BatchLoader: window ${w} outside [0, ${this.windowCount})`);
    }
    const start = this.windowStart[w];
    return this.segments[this.windowSegment[w]].subarray(start, start + this.seqLen + 1);
  }

  /** The window order of an epoch. */
  order(epoch: number): Int32Array {
    checkDims('BatchLoader.order', { epoch });
    if (this.cachedOrder?.epoch !== epoch) {
      const order = this.shuffle
        ? permutation(this.windowCount, this.seed, epoch)
        : Int32Array.from({ length: this.windowCount }, (_, i) => i);
      this.cachedOrder = { epoch, order };
    }
    return this.cachedOrder.order;
  }

  /** Micro-batch `id` (0 ≤ id < batchesPerEpoch) of `epoch`. */
  batch(epoch: number, id: number): MicroBatch {
    checkDims('BatchLoader.batch', { epoch, id });
    if (id >= this.batchesPerEpoch) throw new RangeError(`BatchLoader.batch: id ${id} outside [0, ${this.batchesPerEpoch})`);
    const windows = this.order(epoch).slice(id * this.batchSize, (id + 1) * this.batchSize);
    const row = this.seqLen + 1;
    const tokens = new Int32Array(windows.length * row);
    windows.forEach((w, r) => tokens.set(this.window(w), r * row));
    return { epoch, id, rows: windows.length, seqLen: this.seqLen, tokens, windows };
  }

  /** Micro-batch number `index` counted across epochs (epoch = index / batchesPerEpoch). */
  batchAt(index: number): MicroBatch {
    return this.batch(Math.floor(index / this.batchesPerEpoch), index % this.batchesPerEpoch);
  }
}

function checkLoaderOptions(batchSize: number, seqLen: number, seed: number): void {
  checkDims('BatchLoader', { batchSize, seqLen, seed });
  if (batchSize < 1 || seqLen < 1) {
    throw new RangeError(`BatchLoader: batchSize and seqLen must be at least 1, got ${batchSize} and ${seqLen}`);
  }
}

/** Windows of segments of these token counts, as BatchLoader tiles them; throws when there is none. */
function windowsPerSegment(lengths: number[], seqLen: number): number[] {
  const perSegment = lengths.map((length) => (length > seqLen ? Math.floor((length - 1) / seqLen) : 0));
  if (sum(perSegment) === 0) throw new RangeError(`BatchLoader: no segment holds a window of ${seqLen + 1} tokens`);
  return perSegment;
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

/** UTF-8 bytes of the text a batch's targets stand for (the last seqLen tokens of each row; special tokens count zero). */
export function targetBytes(tokenizer: Tokenizer, batch: MicroBatch): number {
  const row = batch.seqLen + 1;
  let bytes = 0;
  for (let r = 0; r < batch.rows; r++) bytes += tokenizer.textBytes(batch.tokens, r * row + 1, (r + 1) * row);
  return bytes;
}

/** Bits per byte from a mean loss in nats per token over `tokens` targets standing for `bytes` bytes of text. */
export function bitsPerByte(lossNatsPerToken: number, tokens: number, bytes: number): number {
  if (!Number.isFinite(lossNatsPerToken) || lossNatsPerToken < 0) {
    throw new RangeError(`bitsPerByte: loss must be finite and non-negative, got ${lossNatsPerToken}`);
  }
  if (!(tokens > 0) || !(bytes > 0)) throw new RangeError(`bitsPerByte: tokens and bytes must be positive, got ${tokens} and ${bytes}`);
  return (lossNatsPerToken * tokens) / bytes / Math.LN2;
}

/** Entropy in nats per token of the token frequencies in a stream: the loss of the best model that ignores context. */
export function unigramEntropy(tokens: ArrayLike<number>): number {
  const n = tokens.length;
  if (n === 0) throw new RangeError('unigramEntropy: empty token stream');
  const counts = new Map<number, number>();
  for (let i = 0; i < n; i++) counts.set(tokens[i], (counts.get(tokens[i]) ?? 0) + 1);
  let sum = 0;
  for (const c of counts.values()) sum += c * Math.log(c);
  return Math.log(n) - sum / n;
}

/** A permutation of 0..n-1, Fisher-Yates driven by a generator seeded from (seed, stream). */
function permutation(n: number, seed: number, stream: number): Int32Array {
  const order = Int32Array.from({ length: n }, (_, i) => i);
  const random = splitMix32(Math.imul(seed ^ 0x3c6ef372, 0x9e3779b1) ^ Math.imul(stream + 1, 0x85ebca6b));
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const t = order[i]; order[i] = order[j]; order[j] = t;
  }
  return order;
}

/** Uniform numbers in [0, 1) from a 32-bit state. */
function splitMix32(state: number): () => number {
  let s = state >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

export interface CorpusLoaders {
  train: BatchLoader;
  heldOut: BatchLoader;
  /** The tokens the model trains on (for a unigram baseline). */
  trainTokens: Int32Array[];
}

export interface CorpusLoaderOptions {
  batchSize: number;
  seqLen: number;
  heldOutFraction?: number;
  seed?: number;
}

/** Tokenizes `corpus`, holds out whole documents and returns the train and held-out loaders. */
export function corpusLoaders(
  tokenizer: Tokenizer, corpus: Pick<Corpus, 'documents'>, { batchSize, seqLen, heldOutFraction = 0.05, seed = 0 }: CorpusLoaderOptions,
): CorpusLoaders {
  const split = splitCorpus(tokenizeCorpus(tokenizer, corpus), { by: 'documents', heldOutFraction, seed });
  return {
    train: new BatchLoader(split.train, { batchSize, seqLen, seed }),
    heldOut: new BatchLoader(split.heldOut, { batchSize, seqLen, shuffle: false }),
    trainTokens: split.train.map((s) => s.tokens),
  };
}

/**
 * corpusLoaders(...).train.batchesPerEpoch, with the same errors, from each document's token count
 * alone: no token arrays, window tables or loaders (what a coordinator needs to lease batch ids).
 */
export function trainBatchesPerEpoch(
  tokenizer: Tokenizer, corpus: Pick<Corpus, 'documents'>, { batchSize, seqLen, heldOutFraction = 0.05, seed = 0 }: CorpusLoaderOptions,
): number {
  endOfText(tokenizer);
  const docStarts = new Int32Array(corpus.documents.length + 1);
  corpus.documents.forEach((doc, d) => { docStarts[d + 1] = docStarts[d] + tokenizer.countOrdinary(doc) + 1; });
  const split = splitRanges(docStarts, docStarts[corpus.documents.length], { by: 'documents', heldOutFraction, seed });
  const lengths = (ranges: TokenRange[]) => ranges.map(([start, end]) => end - start);
  checkLoaderOptions(batchSize, seqLen, seed);
  const trainWindows = sum(windowsPerSegment(lengths(split.train), seqLen));
  windowsPerSegment(lengths(split.heldOut), seqLen); // the held-out loader needs a window too
  return Math.ceil(trainWindows / batchSize);
}
