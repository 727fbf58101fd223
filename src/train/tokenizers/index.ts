// The tokenizer every part of training uses, and the one entry point that reads a Hugging Face tokenizer.json:
// the project's own ByteLevel BPE, Llama/Mistral SentencePiece-style BPE, Qwen2/DeepSeek ByteLevel BPE; others refused.
import { readFileSync } from 'node:fs';
import { BpeTokenizer } from '../tokenizer.ts';
import { PipelineTokenizer, type TokenizerJson } from './pipeline.ts';

export { UnsupportedTokenizerError } from './components.ts';

export interface Tokenizer {
  readonly vocabSize: number;
  /** The token placed between documents (<|endoftext|>, </s>, ...), if the vocabulary has one. */
  readonly endOfText: number | undefined;
  /** The id of an added (special) token, or undefined. */
  specialId(content: string): number | undefined;
  /** Encodes text; special tokens' text becomes those tokens. No BOS/EOS is added. */
  encode(text: string): number[];
  /** Encodes text treating special tokens' text as ordinary text. */
  encodeOrdinary(text: string): number[];
  /** encodeOrdinary(text).length. */
  countOrdinary(text: string): number;
  decode(ids: ArrayLike<number>): string;
  /** UTF-8 bytes of the text that ids[from..to) stand for; special tokens count zero. */
  textBytes(ids: ArrayLike<number>, from?: number, to?: number): number;
  /** The tokenizer.json object. */
  toHuggingFace(): unknown;
  save(path: string): void;
}

/** Reads a tokenizer.json object; throws an error naming the model, normalizer, pre-tokenizer or decoder it cannot run. */
export function tokenizerFromJson(json: unknown): Tokenizer {
  const root = json as Partial<TokenizerJson> | null;
  if (!root || typeof root !== 'object' || !root.model || typeof root.model !== 'object') {
    throw new Error('tokenizer.json: expected an object with a model');
  }
  const pre = root.pre_tokenizer as { type?: unknown; add_prefix_space?: unknown; use_regex?: unknown } | null | undefined;
  // The layout this project writes (GPT-2's): the byte-level tokenizer that also trains.
  const ownLayout = !root.normalizer && pre?.type === 'ByteLevel' && !pre.add_prefix_space && pre.use_regex !== false;
  return ownLayout ? BpeTokenizer.fromHuggingFace(json) : new PipelineTokenizer(root as TokenizerJson);
}

export function readTokenizerFile(path: string): Tokenizer {
  return tokenizerFromJson(JSON.parse(readFileSync(path, 'utf8')));
}
