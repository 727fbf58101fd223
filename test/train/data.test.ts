import { describe, expect, it } from 'vitest';
import { loadCorpus } from '../../src/train/corpus.ts';
import {
  BatchLoader, bitsPerByte, corpusLoaders, splitCorpus, targetBytes, tokenizeCorpus, trainBatchesPerEpoch, unigramEntropy,
  type Segment, type TokenizedCorpus,
} from '../../src/train/data.ts';
import { BpeTokenizer, END_OF_TEXT } from '../../src/train/tokenizer.ts';
import { rng } from '../helpers.ts';

/** A corpus whose token at position p is p, so a batch shows exactly which positions it read. */
function positionCorpus(docCount: number, seed: number): TokenizedCorpus {
  const random = rng(seed);
  const docStarts = new Int32Array(docCount + 1);
  for (let d = 0; d < docCount; d++) docStarts[d + 1] = docStarts[d] + 1 + Math.floor((random() + 1) * 150);
  return { tokens: Int32Array.from({ length: docStarts[docCount] }, (_, p) => p), docStarts };
}

/** Checks that the segments of both sides are disjoint, cover the corpus, and start and end on unit bounds. */
function expectPartition(split: { train: Segment[]; heldOut: Segment[] }, total: number, bounds: Set<number>): void {
  const all = [...split.train, ...split.heldOut].sort((a, b) => a.start - b.start);
  let at = 0;
  for (const s of all) {
    expect(s.start).toBe(at);
    expect(bounds.has(s.start) && bounds.has(s.end)).toBe(true);
    expect(s.tokens[0]).toBe(s.start);
    expect(s.tokens.length).toBe(s.end - s.start);
    at = s.end;
  }
  expect(at).toBe(total);
}

const unitsOf = (segments: Segment[], bounds: number[]) =>
  bounds.slice(0, -1).map((_, u) => u).filter((u) => segments.some((s) => s.start <= bounds[u] && bounds[u + 1] <= s.end));

describe('train / held-out split', () => {
  const corpus = positionCorpus(120, 1);
  const docBounds = [...corpus.docStarts];

  it('by documents: disjoint, covering, the requested number of documents, deterministic by seed', () => {
    const split = splitCorpus(corpus, { by: 'documents', heldOutFraction: 0.1, seed: 3 });
    expectPartition(split, corpus.tokens.length, new Set(docBounds));
    const heldOut = unitsOf(split.heldOut, docBounds);
    expect(heldOut.length).toBe(12);
    expect(unitsOf(split.train, docBounds).length).toBe(108);
    expect(unitsOf(splitCorpus(corpus, { by: 'documents', heldOutFraction: 0.1, seed: 3 }).heldOut, docBounds)).toEqual(heldOut);
    expect(unitsOf(splitCorpus(corpus, { by: 'documents', heldOutFraction: 0.1, seed: 4 }).heldOut, docBounds)).not.toEqual(heldOut);
  });

  it('by chunks: disjoint, covering, chunk-aligned', () => {
    const total = corpus.tokens.length;
    const chunkTokens = 500;
    const bounds = Array.from({ length: Math.ceil(total / chunkTokens) + 1 }, (_, i) => Math.min(i * chunkTokens, total));
    const split = splitCorpus(corpus, { by: 'chunks', heldOutFraction: 0.2, chunkTokens });
    expectPartition(split, total, new Set(bounds));
    expect(unitsOf(split.heldOut, bounds).length).toBe(Math.round((bounds.length - 1) * 0.2));
  });

  it('holds out at least one unit when asked for any, and refuses to hold out everything', () => {
    expect(splitCorpus(corpus, { by: 'documents', heldOutFraction: 0.001 }).heldOut.length).toBe(1);
    expect(splitCorpus(corpus, { by: 'documents', heldOutFraction: 0 }).heldOut).toEqual([]);
    expect(() => splitCorpus(positionCorpus(1, 5), { by: 'documents', heldOutFraction: 0.1 })).toThrow(/nothing to train/);
    expect(() => splitCorpus(corpus, { by: 'documents', heldOutFraction: 1 })).toThrow(/heldOutFraction/);
    expect(() => splitCorpus(corpus, { by: 'lines' as 'chunks', heldOutFraction: 0.1 })).toThrow(/by must be/);
  });
});

describe('micro-batches', () => {
  const corpus = positionCorpus(60, 2);
  const { train } = splitCorpus(corpus, { by: 'documents', heldOutFraction: 0.2, seed: 1 });
  const options = { batchSize: 7, seqLen: 16, seed: 11 };

  it('cover every train window exactly once per epoch, and every target position once', () => {
    const loader = new BatchLoader(train, options);
    const expectedWindows = train.reduce((sum, s) => sum + Math.max(0, Math.floor((s.tokens.length - 1) / 16)), 0);
    expect(loader.windowCount).toBe(expectedWindows);
    expect(loader.batchesPerEpoch).toBe(Math.ceil(expectedWindows / 7));
    for (const epoch of [0, 1, 5]) {
      const windowSeen = new Int32Array(loader.windowCount);
      const targetSeen = new Map<number, number>();
      for (let id = 0; id < loader.batchesPerEpoch; id++) {
        const batch = loader.batch(epoch, id);
        expect(batch.rows).toBe(id < loader.batchesPerEpoch - 1 ? 7 : loader.windowCount - 7 * id);
        for (const w of batch.windows) windowSeen[w]++;
        for (let r = 0; r < batch.rows; r++) {
          for (let t = 1; t <= 16; t++) {
            const p = batch.tokens[r * 17 + t];
            targetSeen.set(p, (targetSeen.get(p) ?? 0) + 1);
          }
        }
      }
      expect(windowSeen.every((n) => n === 1)).toBe(true);
      // The targets are exactly positions start+1 .. start+16·windows of each train segment.
      const expectedTargets = train.flatMap((s) => {
        const windows = Math.max(0, Math.floor((s.tokens.length - 1) / 16));
        return Array.from({ length: 16 * windows }, (_, k) => s.start + 1 + k);
      });
      expect([...targetSeen.keys()].sort((a, b) => a - b)).toEqual(expectedTargets);
      expect([...targetSeen.values()].every((n) => n === 1)).toBe(true);
    }
  });

  it('rows are contiguous corpus windows inside one train segment', () => {
    const loader = new BatchLoader(train, options);
    const batch = loader.batch(2, 3);
    for (let r = 0; r < batch.rows; r++) {
      const row = batch.tokens.subarray(r * 17, (r + 1) * 17);
      expect(row).toEqual(loader.window(batch.windows[r]));
      expect(row.every((p, k) => p === row[0] + k)).toBe(true);
      expect(train.some((s) => s.start <= row[0] && row[16] < s.end)).toBe(true);
    }
  });

  it('are determined by (seed, epoch, id) alone, whatever was asked before', () => {
    const a = new BatchLoader(train, options);
    const b = new BatchLoader(train, options);
    const ids = Array.from({ length: a.batchesPerEpoch }, (_, i) => i);
    const firstPass = ids.map((id) => a.batch(3, id));
    b.batch(0, 1);
    b.batch(7, 0);
    for (const id of [...ids].reverse()) expect(b.batch(3, id)).toEqual(firstPass[id]);
    expect(a.batch(4, 0).windows).not.toEqual(a.batch(3, 0).windows);
    expect(new BatchLoader(train, { ...options, seed: 12 }).batch(3, 0).windows).not.toEqual(firstPass[0].windows);
  });

  it('keep corpus order without shuffling', () => {
    const loader = new BatchLoader(train, { ...options, shuffle: false });
    expect([...loader.batch(9, 2).windows]).toEqual([14, 15, 16, 17, 18, 19, 20]);
  });

  it('reject bad arguments', () => {
    const loader = new BatchLoader(train, options);
    expect(() => loader.batch(0, loader.batchesPerEpoch)).toThrow(/id/);
    expect(() => loader.batch(-1, 0)).toThrow(/epoch/);
    expect(() => new BatchLoader(train, { batchSize: 0, seqLen: 4 })).toThrow(/batchSize/);
    expect(() => new BatchLoader([{ tokens: new Int32Array(5) }], { batchSize: 1, seqLen: 5 })).toThrow(/window of 6 tokens/);
  });
});

describe('corpora', () => {
  it('load as documents from the npm packages, once', () => {
    const sotu = loadCorpus('sotu');
    expect(sotu.documents.length).toBe(233);
    expect(sotu.titles[0]).toBe('1790 George Washington');
    expect(sotu.bytes).toBeGreaterThan(10_000_000);
    expect(loadCorpus('sotu')).toBe(sotu);
    const moby = loadCorpus('moby-dick');
    expect(moby.documents.length).toBe(139);
    expect(moby.documents[3].startsWith('Call me Ishmael.')).toBe(true);
    const lib = loadCorpus('typescript-lib');
    expect(lib.titles).toContain('lib.es5.d.ts');
    expect(lib.documents[lib.titles.indexOf('lib.es5.d.ts')]).toContain('interface Array<T>');
    expect(() => loadCorpus('wikipedia' as 'sotu')).toThrow(/unknown corpus "wikipedia"/);
  });
});

describe('tokenized corpus', () => {
  it('holds each document once, followed by end-of-text, and is cached', () => {
    const corpus = loadCorpus('moby-dick');
    const tok = BpeTokenizer.train([corpus.documents.slice(3, 20).join('\n')], { vocabSize: 512 });
    const eot = tok.specialId(END_OF_TEXT)!;
    const tokenized = tokenizeCorpus(tok, corpus);
    expect(tokenizeCorpus(tok, corpus)).toBe(tokenized);
    expect(tokenized.docStarts.length).toBe(corpus.documents.length + 1);
    corpus.documents.forEach((doc, d) => {
      const ids = tokenized.tokens.subarray(tokenized.docStarts[d], tokenized.docStarts[d + 1]);
      expect(ids[ids.length - 1]).toBe(eot);
      expect(tok.decode(ids.subarray(0, -1))).toBe(doc);
    });
    expect(tok.textBytes(tokenized.tokens)).toBe(corpus.bytes);
  });
});

describe('batches per epoch from token counts', () => {
  const moby = loadCorpus('moby-dick');
  const tok = BpeTokenizer.train([moby.documents.slice(3, 20).join('\n')], { vocabSize: 512 });
  const lib = { documents: loadCorpus('typescript-lib').documents.slice(0, 12) };

  const corpora = { 'moby-dick': moby, 'lib.*.d.ts': lib };
  it.each([
    ['moby-dick', { batchSize: 8, seqLen: 64, heldOutFraction: 0.02, seed: 1 }],
    ['moby-dick', { batchSize: 3, seqLen: 128, heldOutFraction: 0.3, seed: 7 }],
    ['moby-dick', { batchSize: 1, seqLen: 17, seed: 2 }],
    ['lib.*.d.ts', { batchSize: 5, seqLen: 256, heldOutFraction: 0.2, seed: 0 }],
    ['lib.*.d.ts', { batchSize: 64, seqLen: 512, heldOutFraction: 0.1, seed: 3 }],
  ] as const)('counts what the %s loaders hold (%j)', (name, options) => {
    const corpus = corpora[name];
    expect(trainBatchesPerEpoch(tok, corpus, options)).toBe(corpusLoaders(tok, corpus, options).train.batchesPerEpoch);
  });

  it('fails as the loaders do', () => {
    const few = { documents: moby.documents.slice(0, 4) };
    const failing = [{ batchSize: 2, seqLen: 100_000 }, { batchSize: 2, seqLen: 16, heldOutFraction: 0 }, { batchSize: 0, seqLen: 16 }];
    for (const options of failing) {
      const error = (() => { try { corpusLoaders(tok, few, options); } catch (err) { return err as Error; } })();
      expect(error).toBeInstanceOf(RangeError);
      expect(() => trainBatchesPerEpoch(tok, few, options)).toThrow(error!.message);
    }
    const noEndOfText = BpeTokenizer.train(['abc'], { vocabSize: 260, specialTokens: [] });
    expect(() => trainBatchesPerEpoch(noEndOfText, few, { batchSize: 2, seqLen: 16 })).toThrow(/no <\|endoftext\|> token/);
  });
});

describe('bits per byte and unigram entropy', () => {
  it('counts the bytes a batch predicts and converts nats per token to bits per byte (hand example)', () => {
    const tok = BpeTokenizer.train(['hug hug hug pug pug bun'], { vocabSize: 300 });
    const eot = tok.specialId(END_OF_TEXT)!;
    // [hug, Ġpug, eot, b, u, n] with seqLen 2: windows [hug Ġpug eot] and [eot b u];
    // targets Ġpug (4 bytes) eot (0) and b (1) u (1): 6 bytes; n is a tail that fits no window.
    const segment = Int32Array.from([...tok.encode('hug pug'), eot, ...tok.encode('bun')]);
    expect(segment.length).toBe(6);
    const batch = new BatchLoader([{ tokens: segment }], { batchSize: 2, seqLen: 2, shuffle: false }).batch(0, 0);
    expect(targetBytes(tok, batch)).toBe(6);
    // 4 targets at 1.5 nats each = 6 nats over 6 bytes = 1 nat per byte = 1/ln 2 bits.
    expect(bitsPerByte(1.5, 4, 6)).toBeCloseTo(1.4426950408889634, 15);
    expect(bitsPerByte(2, 10, 25)).toBeCloseTo(0.8 / Math.LN2, 15);
    expect(() => bitsPerByte(1, 0, 6)).toThrow(/positive/);
    expect(() => bitsPerByte(Number.NaN, 4, 6)).toThrow(/finite/);
  });

  it('unigram entropy is the entropy of the token frequencies', () => {
    expect(unigramEntropy([7, 7, 7, 7])).toBe(0);
    expect(unigramEntropy([1, 2, 1, 2])).toBeCloseTo(Math.LN2, 15);
    expect(unigramEntropy([0, 0, 0, 1])).toBeCloseTo(-(0.75 * Math.log(0.75) + 0.25 * Math.log(0.25)), 15);
    expect(unigramEntropy(Int32Array.from({ length: 4096 }, (_, i) => i % 64))).toBeCloseTo(Math.log(64), 12);
    expect(() => unigramEntropy([])).toThrow(/empty/);
  });
});
