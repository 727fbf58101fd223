// A tokenizer read from someone else's tokenizer.json (Llama/Mistral's SentencePiece-style BPE, Qwen2's and
// DeepSeek's ByteLevel BPE): added tokens split out first, then normalizer, pre-tokenizer, BPE model; decoder chain back.
import { writeFileSync } from 'node:fs';
import { BYTE_TO_CHAR } from '../tokenizer.ts';
import { BpeModel, type BpeModelJson } from './bpe-model.ts';
import {
  decoderOf, normalizerOf, preTokenizerOf, UnsupportedTokenizerError, type Decoder, type Normalizer, type PreTokenizer,
} from './components.ts';

interface AddedTokenJson {
  id: number; content: string; special?: boolean; normalized?: boolean; lstrip?: boolean; rstrip?: boolean; single_word?: boolean;
}
/** The parts of a tokenizer.json this pipeline reads. */
export interface TokenizerJson {
  added_tokens?: AddedTokenJson[];
  normalizer?: Record<string, unknown> | null;
  pre_tokenizer?: Record<string, unknown> | null;
  decoder?: Record<string, unknown> | null;
  model: BpeModelJson;
}

/** Document separators by family, first found wins: GPT-2/Qwen2, Llama/Mistral, DeepSeek, Llama 3. */
const END_OF_TEXT_NAMES = ['<|endoftext|>', '</s>', '<｜end▁of▁sentence｜>', '<|end_of_text|>'];
const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;
const utf8 = new TextEncoder();

export class PipelineTokenizer {
  readonly vocabSize: number;
  readonly endOfText: number | undefined;
  private readonly model: BpeModel;
  private readonly normalizer: Normalizer | null;
  private readonly preTokenizer: PreTokenizer | null;
  private readonly decoder: Decoder | null;
  private readonly added = new Map<string, AddedTokenJson>();
  /** Added tokens matched in the raw text, and those matched after normalization. */
  private readonly rawPattern: RegExp | null;
  private readonly normalizedPattern: RegExp | null;
  private readonly tokenOf: string[];
  /** UTF-8 bytes of the text each token stands for; 0 for special tokens. */
  private readonly textBytesOf: Int32Array;

  constructor(private readonly json: TokenizerJson) {
    if (json.model?.type !== 'BPE') {
      throw new UnsupportedTokenizerError(
        `tokenizer.json: model type ${JSON.stringify(json.model?.type)} is not supported (supported: BPE)`);
    }
    this.model = new BpeModel(json.model);
    this.normalizer = normalizerOf(json.normalizer);
    this.preTokenizer = preTokenizerOf(json.pre_tokenizer);
    this.decoder = decoderOf(json.decoder);
    for (const token of json.added_tokens ?? []) {
      if (token.lstrip || token.rstrip || token.single_word) {
        throw new UnsupportedTokenizerError(
          `tokenizer.json: added token ${JSON.stringify(token.content)} uses lstrip/rstrip/single_word, not supported`);
      }
      if (!Number.isInteger(token.id) || token.id < 0) {
        throw new Error(`tokenizer.json: added token ${JSON.stringify(token.content)} has id ${token.id}`);
      }
      this.added.set(token.content, token);
    }
    const patternOf = (tokens: AddedTokenJson[]) => (tokens.length === 0 ? null : new RegExp(tokens
      .map((t) => t.content).sort((a, b) => b.length - a.length).map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'gu'));
    this.rawPattern = patternOf([...this.added.values()].filter((t) => !t.normalized));
    this.normalizedPattern = patternOf([...this.added.values()].filter((t) => t.normalized));

    this.tokenOf = [];
    for (const [token, id] of this.model.idOf) this.tokenOf[id] = token;
    for (const { content, id } of this.added.values()) this.tokenOf[id] = content;
    this.vocabSize = this.tokenOf.length;
    for (let id = 0; id < this.vocabSize; id++) {
      if (this.tokenOf[id] === undefined) throw new Error(`tokenizer.json: no token has id ${id} (ids must be 0..${this.vocabSize - 1})`);
    }
    const byteLevel = JSON.stringify(json.pre_tokenizer ?? null).includes('"ByteLevel"');
    const charBytes = new Map(BYTE_TO_CHAR.map((c) => [c, 1]));
    this.textBytesOf = Int32Array.from(this.tokenOf, (token, id) => {
      if (this.added.get(token)?.id === id && this.added.get(token)!.special) return 0;
      if (byteLevel && Array.from(token).every((c) => charBytes.has(c))) return token.length;
      if (BYTE_TOKEN.test(token)) return 1;
      return utf8.encode(token.replaceAll('\u2581', ' ')).length;
    });
    this.endOfText = END_OF_TEXT_NAMES.map((name) => this.added.get(name)?.id).find((id) => id !== undefined);
  }

  specialId(content: string): number | undefined { return this.added.get(content)?.id; }

  /** Encodes text; added tokens' text becomes those tokens (no BOS/EOS is added: the data loader places separators). */
  encode(text: string): number[] {
    const ids: number[] = [];
    this.splitAdded(text, this.rawPattern, 0, (segment, at) => this.encodeSegment(segment, at === 0, true, ids), ids);
    return ids;
  }

  /** Encodes text treating added tokens' text as ordinary text. */
  encodeOrdinary(text: string): number[] {
    const ids: number[] = [];
    this.encodeSegment(text, true, false, ids);
    return ids;
  }

  countOrdinary(text: string): number { return this.encodeOrdinary(text).length; }

  /** Decodes through the tokenizer.json's decoder chain, special tokens included as their text. */
  decode(ids: ArrayLike<number>): string {
    const tokens = Array.from(ids, (id) => this.checkedToken(id));
    return (this.decoder ? this.decoder(tokens) : tokens).join('');
  }

  textBytes(ids: ArrayLike<number>, from = 0, to = ids.length): number {
    let total = 0;
    for (let i = from; i < to; i++) { this.checkedToken(ids[i]); total += this.textBytesOf[ids[i]]; }
    return total;
  }

  /** The tokenizer.json this tokenizer was read from, unchanged. */
  toHuggingFace(): TokenizerJson { return this.json; }
  save(path: string): void { writeFileSync(path, JSON.stringify(this.json)); }

  private checkedToken(id: number): string {
    const token = this.tokenOf[id];
    if (token === undefined || !Number.isInteger(id)) {
      throw new RangeError(`tokenizer: id ${id} is not in the vocabulary (size ${this.vocabSize})`);
    }
    return token;
  }

  /** Calls `encodeText` on the text between matches of `pattern` (with its offset) and pushes the matched tokens' ids. */
  private splitAdded(
    text: string, pattern: RegExp | null, offset: number, encodeText: (segment: string, at: number) => void, ids: number[],
  ): void {
    let from = 0;
    if (pattern) {
      for (const match of text.matchAll(pattern)) {
        if (match.index > from) encodeText(text.slice(from, match.index), offset + from);
        ids.push(this.added.get(match[0])!.id);
        from = match.index + match[0].length;
      }
    }
    if (from < text.length) encodeText(text.slice(from), offset + from);
  }

  private encodeSegment(segment: string, atStart: boolean, withAdded: boolean, ids: number[]): void {
    const normalized = this.normalizer ? this.normalizer(segment) : segment;
    const encodePieces = (text: string, at: number): void => {
      const pieces = this.preTokenizer ? this.preTokenizer([text], atStart && at === 0) : [text];
      for (const piece of pieces) this.model.encodeInto(piece, ids);
    };
    if (withAdded) this.splitAdded(normalized, this.normalizedPattern, 0, encodePieces, ids);
    else encodePieces(normalized, 0);
  }
}
