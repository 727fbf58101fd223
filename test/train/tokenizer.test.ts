import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tokenizer } from '@huggingface/tokenizers';
import { loadCorpus, CORPUS_NAMES, type CorpusName } from '../../src/train/corpus.ts';
import { BpeTokenizer, END_OF_TEXT, GPT2_SPLIT_PATTERN } from '../../src/train/tokenizer.ts';
import { rng } from '../helpers.ts';

/** About `chars` characters of a corpus starting at `at` (a fraction of its length), cut at code point boundaries. */
function sample(name: CorpusName, chars: number, at: number): string {
  const text = loadCorpus(name).documents.join('\n\n');
  let start = Math.floor(text.length * at);
  let end = Math.min(text.length, start + chars);
  if (/[\udc00-\udfff]/.test(text[start] ?? '')) start++;
  if (/[\ud800-\udbff]/.test(text[end - 1] ?? '')) end--;
  return text.slice(start, end);
}

/** Strings a tokenizer trained on English never saw: every Unicode plane, controls, NUL, BOM, raw Latin-1 "bytes". */
function oddStrings(): string[] {
  const random = rng(42);
  const pick = (lo: number, hi: number) => lo + Math.floor(((random() + 1) / 2) * (hi - lo));
  const codePoints = (n: number, ranges: [number, number][]) => {
    let s = '';
    for (let i = 0; i < n; i++) {
      const [lo, hi] = ranges[pick(0, ranges.length)];
      s += String.fromCodePoint(pick(lo, hi));
    }
    return s;
  };
  const anyScalar: [number, number][] = [[0, 0xd800], [0xe000, 0x110000]];
  return [
    '',
    ' ',
    '\uFEFFstarts with a byte order mark',
    'nul \0 bell \x07 tab\t cr\r\nlf\n\n\n   trailing   ',
    "it's they're we've I'm you'll he'd 'S'T",
    'números 1234567890 ½ ² ٣ 〇 and 3.14159e-10',
    '日本語のテキスト、中文文本，한국어 텍스트',
    'emoji 👩‍👩‍👧‍👦 🏳️‍🌈 flags 🇺🇸 and skin tones 👍🏽',
    'combining: e\u0301 a\u0308 Z\u0351\u0352\u0353 zero-width\u200bjoiner\u200d',
    `special inside text ${END_OF_TEXT} twice${END_OF_TEXT}${END_OF_TEXT}<|endoftext`,
    codePoints(2000, anyScalar),
    codePoints(2000, [[0, 0x80]]),
    codePoints(3000, [[0, 0x100]]), // Latin-1 "binary"
    codePoints(1000, [[0x1f300, 0x1fa00], [0x20, 0x7f]]),
    ' '.repeat(5000) + 'x' + '\n'.repeat(3000),
    'a'.repeat(20000),
  ];
}

/** Naive BPE training: recounts every pair of every unique word before each merge. */
function naiveMerges(documents: string[], vocabSize: number): string[] {
  const pattern = new RegExp(GPT2_SPLIT_PATTERN.source, 'gu');
  const wordCount = new Map<string, number>();
  for (const doc of documents) for (const m of doc.matchAll(pattern)) wordCount.set(m[0], (wordCount.get(m[0]) ?? 0) + 1);
  const words = [...wordCount].map(([w, c]) => ({ symbols: [...new TextEncoder().encode(w)], count: c }));
  const tokens: number[][] = Array.from({ length: 256 }, (_, b) => [b]);
  const idOf = new Map(tokens.map((t, id) => [t.join(','), id]));
  const merges: string[] = [];
  while (tokens.length < vocabSize - 1) {
    const counts = new Map<string, number>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        counts.set(key, (counts.get(key) ?? 0) + count);
      }
    }
    let best: [number, number] | null = null;
    let bestCount = 1; // pairs seen once are not merged
    for (const [key, count] of counts) {
      const [a, b] = key.split(' ').map(Number);
      const sortsBeforeBest = best !== null && (a < best[0] || (a === best[0] && b < best[1]));
      if (count > bestCount || (count === bestCount && sortsBeforeBest)) {
        best = [a, b];
        bestCount = count;
      }
    }
    if (!best) break;
    const [a, b] = best;
    const bytes = [...tokens[a], ...tokens[b]];
    let id = idOf.get(bytes.join(','));
    if (id === undefined) { id = tokens.length; tokens.push(bytes); idOf.set(bytes.join(','), id); }
    merges.push(`${a} ${b}`);
    for (const word of words) {
      const out: number[] = [];
      for (let i = 0; i < word.symbols.length; i++) {
        if (word.symbols[i] === a && word.symbols[i + 1] === b) { out.push(id); i++; } else out.push(word.symbols[i]);
      }
      word.symbols = out;
    }
  }
  return merges;
}

const strings = (tok: BpeTokenizer, ids: number[]) => ids.map((id) => tok.tokenString(id));

describe('BPE training', () => {
  it('learns merges in frequency order on a hand-checked corpus', () => {
    // Pieces: "hug" ×1, " hug" ×2, " pug" ×2, " bun" ×1.
    // u+g: 5; then h+ug: 3; then ties at 2 go to the smaller pair of ids: " "+p (32,112) before
    // " "+hug (32,257) before " p"+ug (258,256); all other pairs occur once, below minFrequency 2.
    const tok = BpeTokenizer.train(['hug hug hug pug pug bun'], { vocabSize: 300 });
    expect(tok.merges().map(([a, b]) => `${tok.tokenString(a)}+${tok.tokenString(b)}`))
      .toEqual(['u+g', 'h+ug', 'Ġ+p', 'Ġ+hug', 'Ġp+ug']);
    expect(tok.vocabSize).toBe(256 + 5 + 1);
    expect(tok.specialId(END_OF_TEXT)).toBe(261);
    expect(strings(tok, tok.encode('hug pug bun hugs'))).toEqual(['hug', 'Ġpug', 'Ġ', 'b', 'u', 'n', 'Ġhug', 's']);
  });

  it('counts overlapping pairs and merges left to right (the classic aaabdaaabac example)', () => {
    const tok = BpeTokenizer.train(['aaabdaaabac'], { vocabSize: 300 });
    // aa: 4 → Z; then Za and ab tie at 2 and ab (97,98) < Za (256,97); then Z+ab: 2.
    expect(tok.merges().map(([a, b]) => `${tok.tokenString(a)}+${tok.tokenString(b)}`)).toEqual(['a+a', 'a+b', 'aa+ab']);
    expect(strings(tok, tok.encode('aaabdaaabac'))).toEqual(['aaab', 'd', 'aaab', 'a', 'c']);
  });

  it('stops at the requested vocabulary size, special tokens last', () => {
    const tok = BpeTokenizer.train([sample('moby-dick', 50_000, 0.3)], { vocabSize: 400, specialTokens: ['<|endoftext|>', '<|pad|>'] });
    expect(tok.vocabSize).toBe(400);
    expect(tok.mergeCount).toBe(142);
    expect([tok.specialId('<|endoftext|>'), tok.specialId('<|pad|>')]).toEqual([398, 399]);
  });

  it('matches a naive re-counting trainer merge for merge', () => {
    const docs = [sample('moby-dick', 15_000, 0.5), sample('typescript-lib', 15_000, 0.2)];
    const tok = BpeTokenizer.train(docs, { vocabSize: 700 });
    expect(tok.merges().map(([a, b]) => `${a} ${b}`)).toEqual(naiveMerges(docs, 700));
  });

  it('rejects bad options', () => {
    expect(() => BpeTokenizer.train(['x'], { vocabSize: 200 })).toThrow(/vocabSize/);
    expect(() => BpeTokenizer.train(['x'], { vocabSize: 300, specialTokens: ['<a>', '<a>'] })).toThrow(/distinct/);
  });
});

describe.each(CORPUS_NAMES)('byte-level BPE trained on 200 KB of %s', (trainedOn) => {
  let tok: BpeTokenizer;
  let dir: string;
  beforeAll(() => {
    tok = BpeTokenizer.train([sample(trainedOn, 200_000, 0.1)], { vocabSize: 1024 });
    dir = mkdtempSync(join(tmpdir(), 'swarmtrain-tokenizer-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('round-trips every corpus sample and odd strings losslessly', () => {
    for (const name of CORPUS_NAMES) {
      const text = sample(name, 100_000, 0.6);
      const ids = tok.encode(text);
      expect(tok.decode(ids)).toBe(text);
      expect(tok.textBytes(ids)).toBe(Buffer.byteLength(text));
    }
    for (const text of oddStrings()) {
      expect(tok.decode(tok.encode(text))).toBe(text);
      expect(tok.decode(tok.encodeOrdinary(text))).toBe(text);
    }
  });

  it('compresses held-out text of its own domain better than the other corpora', () => {
    const bytesPerToken = (name: CorpusName) => {
      const text = sample(name, 100_000, 0.6);
      return Buffer.byteLength(text) / tok.encode(text).length;
    };
    const own = bytesPerToken(trainedOn);
    expect(own).toBeGreaterThan(2);
    for (const other of CORPUS_NAMES.filter((name) => name !== trainedOn)) expect(own).toBeGreaterThan(bytesPerToken(other));
  });

  it('countOrdinary counts the ids encodeOrdinary returns', () => {
    for (const text of [sample('moby-dick', 50_000, 0.3), sample('typescript-lib', 50_000, 0.3), `a${END_OF_TEXT}b`, ...oddStrings()]) {
      expect(tok.countOrdinary(text)).toBe(tok.encodeOrdinary(text).length);
    }
  });

  it('treats special tokens as tokens in encode and as text in encodeOrdinary', () => {
    const eot = tok.specialId(END_OF_TEXT)!;
    expect(tok.encode(`a${END_OF_TEXT}b`)).toEqual([...tok.encode('a'), eot, ...tok.encode('b')]);
    expect(tok.encodeOrdinary(END_OF_TEXT)).not.toContain(eot);
    expect(tok.textBytes([eot])).toBe(0);
  });

  it('saves a tokenizer.json that Hugging Face Tokenizers.js encodes to the same ids', () => {
    const path = join(dir, 'tokenizer.json');
    tok.save(path);
    const json = JSON.parse(readFileSync(path, 'utf8'));
    const hf = new Tokenizer(json, { clean_up_tokenization_spaces: false });
    const texts = [...CORPUS_NAMES.map((name) => sample(name, 50_000, 0.8)), ...oddStrings().filter((s) => s.length > 0)];
    for (const text of texts) {
      const ids = tok.encode(text);
      expect(hf.encode(text, { add_special_tokens: false }).ids).toEqual(ids);
      expect(hf.decode(ids)).toBe(tok.decode(ids));
    }
  });

  it('loads back from tokenizer.json unchanged', () => {
    const path = join(dir, 'tokenizer.json');
    tok.save(path);
    const back = BpeTokenizer.load(path);
    expect(back.toHuggingFace()).toEqual(tok.toHuggingFace());
    const text = sample('sotu', 20_000, 0.9);
    expect(back.encode(text)).toEqual(tok.encode(text));
  });
});

describe('tokenizer.json reading', () => {
  const tok = BpeTokenizer.train(['hug hug hug pug pug bun'], { vocabSize: 300 });

  it('accepts merges written as "a b" strings (older Hugging Face files)', () => {
    const json = tok.toHuggingFace();
    json.model.merges = json.model.merges.map((m) => (m as string[]).join(' '));
    expect(BpeTokenizer.fromHuggingFace(json).merges()).toEqual(tok.merges());
  });

  it('rejects what it cannot encode faithfully, saying why', () => {
    const json = tok.toHuggingFace();
    expect(() => BpeTokenizer.fromHuggingFace({ ...json, model: { ...json.model, type: 'WordPiece' } })).toThrow(/BPE/);
    expect(() => BpeTokenizer.fromHuggingFace({ ...json, pre_tokenizer: { type: 'Metaspace' } })).toThrow(/ByteLevel/);
    expect(() => BpeTokenizer.fromHuggingFace({ ...json, normalizer: { type: 'NFC' } })).toThrow(/normalizer/);
    const badMerge = { ...json, model: { ...json.model, merges: [['u', 'zz']] as [string, string][] } };
    expect(() => BpeTokenizer.fromHuggingFace(badMerge)).toThrow(/merge 0/);
  });

  it('throws on ids outside the vocabulary', () => {
    expect(() => tok.decode([0, 300])).toThrow(/id 300/);
    expect(() => tok.decode([1.5])).toThrow(/id 1.5/);
    expect(() => tok.tokenString(-1)).toThrow(/id -1/);
  });
});
