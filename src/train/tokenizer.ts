// Byte-level BPE tokenizer in the GPT-2 style: text is split by GPT-2's pre-tokenizer regex,
// each piece is encoded as UTF-8 bytes, and learned merges join adjacent tokens inside a piece
// (never across pieces). Saved and loaded as a Hugging Face `tokenizer.json` (BPE model with
// a ByteLevel pre-tokenizer and decoder), so other tools read the same vocabulary.
import { readFileSync, writeFileSync } from 'node:fs';
import { applyMerges, PAIR_BASE, type MergeTable } from './tokenizers/merge.ts';

/** GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with an optional leading space; whitespace runs. */
export const GPT2_SPLIT_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
export const END_OF_TEXT = '<|endoftext|>';

/** Encoded pieces shorter than this are cached; the cache is dropped when it grows past CACHE_LIMIT. */
const CACHE_PIECE_CHARS = 64;
const CACHE_LIMIT = 200_000;

/** GPT-2's map from bytes to printable characters: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const chars = new Array<string>(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : next++);
  }
  return chars;
})();
const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

const utf8 = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF, as Hugging Face's ByteLevel decoder does.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });

export interface TrainOptions {
  /** Final vocabulary size, counting the 256 byte tokens and the special tokens. */
  vocabSize: number;
  /** Appended after the learned tokens, in this order. Default: [END_OF_TEXT]. */
  specialTokens?: string[];
  /** Stop early when the most frequent pair occurs fewer times than this. Default 2. */
  minFrequency?: number;
}

export interface TrainStats {
  uniqueWords: number;
  merges: number;
}

export class BpeTokenizer {
  /** Bytes of each regular token, by id; special tokens hold their UTF-8 content. */
  private readonly bytes: Uint8Array[];
  private readonly special: Map<string, number>;
  private readonly specialIds: Set<number>;
  private readonly byteToId: Int32Array;
  /** Merge rank by pair key, and the token each merge produces. */
  private readonly merged: MergeTable;
  private readonly rankOf = new Map<number, number>();
  private readonly mergePairs: [number, number][];
  private readonly mergeResult: Int32Array;
  private readonly specialPattern: RegExp | null;
  private readonly cache = new Map<string, number[]>();

  /**
   * `tokens[id]` are the bytes of each token (special tokens: their UTF-8 content), `merges[rank]`
   * the pair of ids joined at that rank, `special` the special tokens' ids.
   */
  constructor(tokens: Uint8Array[], merges: readonly (readonly [number, number])[], special: ReadonlyMap<string, number>) {
    if (tokens.length >= PAIR_BASE) throw new RangeError(`tokenizer: at most ${PAIR_BASE - 1} tokens, got ${tokens.length}`);
    this.bytes = tokens.slice();
    this.special = new Map(special);
    this.specialIds = new Set(special.values());
    for (const [content, id] of this.special) {
      if (!(id >= 0 && id < tokens.length)) throw new RangeError(`tokenizer: special token ${content} has id ${id} outside the vocabulary`);
    }
    const idOf = new Map<string, number>();
    for (let id = 0; id < tokens.length; id++) {
      if (this.specialIds.has(id)) continue;
      const key = latin1(tokens[id]);
      if (idOf.has(key)) throw new Error(`tokenizer: tokens ${idOf.get(key)} and ${id} have the same bytes`);
      idOf.set(key, id);
    }
    this.byteToId = new Int32Array(256);
    for (let b = 0; b < 256; b++) {
      const id = idOf.get(String.fromCharCode(b));
      if (id === undefined) throw new Error(`tokenizer: no token for byte ${b}; a byte-level vocabulary needs all 256`);
      this.byteToId[b] = id;
    }
    this.mergePairs = merges.map(([left, right]) => [left, right]);
    this.mergeResult = new Int32Array(merges.length);
    merges.forEach(([left, right], rank) => {
      for (const id of [left, right]) {
        if (!(id >= 0 && id < tokens.length) || this.specialIds.has(id)) throw new RangeError(`tokenizer: merge ${rank} uses id ${id}, not a regular token`);
      }
      const result = idOf.get(latin1(tokens[left]) + latin1(tokens[right]));
      if (result === undefined) throw new Error(`tokenizer: merge ${rank} (${left}, ${right}) produces no token in the vocabulary`);
      // A pair listed twice takes its last rank, as Hugging Face's readers do.
      this.rankOf.set(left * PAIR_BASE + right, rank);
      this.mergeResult[rank] = result;
    });
    this.merged = { rankOf: this.rankOf, mergeResult: this.mergeResult };
    this.specialPattern = special.size === 0 ? null
      : new RegExp([...special.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp).join('|'), 'g');
  }

  /** Learns merges from `documents` (each pre-tokenized separately) until the vocabulary reaches `options.vocabSize`. */
  static train(documents: Iterable<string>, options: TrainOptions): BpeTokenizer {
    return trainBpe(documents, options).tokenizer;
  }

  get vocabSize(): number { return this.bytes.length; }
  /** The token placed between documents. */
  get endOfText(): number | undefined { return this.special.get(END_OF_TEXT); }
  get mergeCount(): number { return this.mergeResult.length; }
  /** The merges in rank order, as pairs of token ids. */
  merges(): [number, number][] {
    return this.mergePairs.map(([left, right]) => [left, right]);
  }
  /** The id of a special token, or undefined. */
  specialId(content: string): number | undefined { return this.special.get(content); }
  isSpecial(id: number): boolean { return this.specialIds.has(id); }
  /** The bytes a token stands for (a copy). */
  tokenBytes(id: number): Uint8Array { return this.checkedBytes(id).slice(); }
  /** A token as Hugging Face writes it: bytes mapped to printable characters; special tokens as they are. */
  tokenString(id: number): string {
    const bytes = this.checkedBytes(id);
    if (this.specialIds.has(id)) return utf8Decoder.decode(bytes);
    let s = '';
    for (const b of bytes) s += BYTE_TO_CHAR[b];
    return s;
  }

  /** Encodes text; occurrences of special tokens' text become those tokens (as Hugging Face does). */
  encode(text: string): number[] {
    if (!this.specialPattern) return this.encodeOrdinary(text);
    const ids: number[] = [];
    let from = 0;
    for (const match of text.matchAll(this.specialPattern)) {
      this.encodeInto(text.slice(from, match.index), ids);
      ids.push(this.special.get(match[0])!);
      from = match.index + match[0].length;
    }
    this.encodeInto(text.slice(from), ids);
    return ids;
  }

  /** Encodes text treating special tokens' text as ordinary text. */
  encodeOrdinary(text: string): number[] {
    const ids: number[] = [];
    this.encodeInto(text, ids);
    return ids;
  }

  /** encodeOrdinary(text).length, without building the ids (counting a corpus's batches needs no more). */
  countOrdinary(text: string): number {
    let count = 0;
    for (const match of text.matchAll(GPT2_SPLIT_PATTERN)) count += this.pieceIds(match[0]).length;
    return count;
  }

  /** Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    return utf8Decoder.decode(this.decodeBytes(ids));
  }

  /** The bytes that `ids` stand for (special tokens as their UTF-8 content). */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    let length = 0;
    for (let i = 0; i < ids.length; i++) length += this.checkedBytes(ids[i]).length;
    const out = new Uint8Array(length);
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const bytes = this.bytes[ids[i]];
      out.set(bytes, at);
      at += bytes.length;
    }
    return out;
  }

  /** UTF-8 bytes of the text that ids[from..to) stand for; special tokens count zero (they are not text). */
  textBytes(ids: ArrayLike<number>, from = 0, to = ids.length): number {
    let total = 0;
    for (let i = from; i < to; i++) if (!this.specialIds.has(ids[i])) total += this.checkedBytes(ids[i]).length;
    return total;
  }

  /** The tokenizer as a Hugging Face `tokenizer.json` object. */
  toHuggingFace(): HuggingFaceTokenizerJson {
    const vocab: Record<string, number> = {};
    for (let id = 0; id < this.bytes.length; id++) vocab[this.tokenString(id)] = id;
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [...this.special].map(([content, id]) => ({
        id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
      })),
      normalizer: null,
      pre_tokenizer: byteLevel,
      post_processor: { ...byteLevel, trim_offsets: false },
      decoder: byteLevel,
      model: {
        type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: false, byte_fallback: false, ignore_merges: false,
        vocab,
        merges: this.merges().map(([left, right]) => [this.tokenString(left), this.tokenString(right)]),
      },
    };
  }

  /** Reads a Hugging Face `tokenizer.json` object of a byte-level BPE tokenizer (GPT-2's layout). */
  static fromHuggingFace(json: unknown): BpeTokenizer {
    const fail = (why: string): never => { throw new Error(`tokenizer.json: ${why}`); };
    const root = json as Partial<HuggingFaceTokenizerJson> | null;
    const model = root?.model;
    if (!model || model.type !== 'BPE') fail('expected model.type "BPE"');
    if (root!.normalizer) fail('normalizers are not supported');
    const pre = root!.pre_tokenizer as { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
    if (pre?.type !== 'ByteLevel' || pre.add_prefix_space || pre.use_regex === false) {
      fail('expected a ByteLevel pre_tokenizer with add_prefix_space false and use_regex true (GPT-2 style)');
    }
    if ((root!.decoder as { type?: string } | null)?.type !== 'ByteLevel') fail('expected a ByteLevel decoder');
    if (!model!.vocab || typeof model!.vocab !== 'object' || !Array.isArray(model!.merges)) fail('model needs vocab and merges');
    // Added tokens are matched in text before pre-tokenization: this tokenizer's special tokens.
    const added = new Map<string, number>();
    for (const token of root!.added_tokens ?? []) added.set(token.content, token.id);
    const entries = Object.entries(model!.vocab);
    for (const [content, id] of added) if (model!.vocab[content] === undefined) entries.push([content, id]);
    const tokens = new Array<Uint8Array>(entries.length);
    const idOf = new Map<string, number>();
    for (const [content, id] of entries) {
      if (!Number.isInteger(id) || id < 0 || id >= entries.length || tokens[id]) fail(`vocab ids must be 0..${entries.length - 1}, each once (${JSON.stringify(content)} has ${id})`);
      tokens[id] = added.has(content) ? utf8.encode(content) : byteLevelToBytes(content, fail);
      idOf.set(content, id);
    }
    const merges = model!.merges.map((merge, rank): [number, number] => {
      const [left, right] = typeof merge === 'string' ? merge.split(' ') : merge;
      const pair = [idOf.get(left), idOf.get(right)];
      if (pair[0] === undefined || pair[1] === undefined) fail(`merge ${rank} ${JSON.stringify(merge)} names a token not in the vocab`);
      return pair as [number, number];
    });
    return new BpeTokenizer(tokens, merges, added);
  }

  /** Writes `tokenizer.json`. */
  save(path: string): void {
    writeFileSync(path, JSON.stringify(this.toHuggingFace()));
  }

  static load(path: string): BpeTokenizer {
    return BpeTokenizer.fromHuggingFace(JSON.parse(readFileSync(path, 'utf8')));
  }

  private checkedBytes(id: number): Uint8Array {
    const bytes = this.bytes[id];
    if (bytes === undefined || !Number.isInteger(id)) throw new RangeError(`tokenizer: id ${id} is not in the vocabulary (size ${this.bytes.length})`);
    return bytes;
  }

  private encodeInto(text: string, ids: number[]): void {
    for (const match of text.matchAll(GPT2_SPLIT_PATTERN)) for (const id of this.pieceIds(match[0])) ids.push(id);
  }

  /** The ids of one pre-tokenized piece, cached. */
  private pieceIds(piece: string): number[] {
    let pieceIds = this.cache.get(piece);
    if (pieceIds === undefined) {
      pieceIds = this.encodePiece(utf8.encode(piece));
      if (piece.length < CACHE_PIECE_CHARS) {
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(piece, pieceIds);
      }
    }
    return pieceIds;
  }

  /** Applies merges to one piece's bytes. */
  private encodePiece(bytes: Uint8Array): number[] {
    const ids = new Int32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = this.byteToId[bytes[i]];
    return applyMerges(ids, this.merged);
  }
}

export interface HuggingFaceTokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: { id: number; content: string; single_word: boolean; lstrip: boolean; rstrip: boolean; normalized: boolean; special: boolean }[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: {
    type: string; dropout: null; unk_token: null; continuing_subword_prefix: null; end_of_word_suffix: null;
    fuse_unk: boolean; byte_fallback: boolean; ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: ([string, string] | string)[];
  };
}

/** Training, with counts a caller may want to report. */
export function trainBpe(documents: Iterable<string>, options: TrainOptions): { tokenizer: BpeTokenizer; stats: TrainStats } {
  const { vocabSize, specialTokens = [END_OF_TEXT], minFrequency = 2 } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < 256 + specialTokens.length || vocabSize >= PAIR_BASE) {
    throw new RangeError(`train: vocabSize must be an integer in [${256 + specialTokens.length}, ${PAIR_BASE}), got ${vocabSize}`);
  }
  if (new Set(specialTokens).size !== specialTokens.length || specialTokens.some((t) => t.length === 0)) {
    throw new Error(`train: special tokens must be distinct and non-empty, got ${JSON.stringify(specialTokens)}`);
  }
  const { words, counts } = countWords(documents);
  const tokens: Uint8Array[] = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));
  const idOf = new Map<string, number>(tokens.map((t, id) => [latin1(t), id]));
  const merges: [number, number][] = [];

  // Pair counts over unique words (weighted by word count), the words each pair may occur in
  // (a superset: entries go stale as words change), and a max-heap of pairs by count whose
  // entries are re-checked when popped. A pair's count only rises when it first appears (it
  // contains the newest token), so stale heap entries are always too high, never too low.
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, number[]>();
  const noteWord = (key: number, w: number): void => {
    const list = pairWords.get(key);
    if (list === undefined) pairWords.set(key, [w]);
    else if (list[list.length - 1] !== w) list.push(w);
  };
  for (let w = 0; w < words.length; w++) {
    const word = words[w];
    for (let i = 0; i + 1 < word.length; i++) {
      const key = word[i] * PAIR_BASE + word[i + 1];
      pairCount.set(key, (pairCount.get(key) ?? 0) + counts[w]);
      noteWord(key, w);
    }
  }
  const heap = new PairHeap();
  for (const [key, count] of pairCount) heap.push(count, key);

  const lengths = Int32Array.from(words, (word) => word.length);
  const visited = new Int32Array(words.length).fill(-1);
  const target = vocabSize - specialTokens.length;
  while (tokens.length < target && heap.size > 0) {
    const { count, key } = heap.pop();
    const actual = pairCount.get(key) ?? 0;
    if (actual !== count) { if (actual > 0) heap.push(actual, key); continue; }
    if (count < minFrequency) break;
    const left = Math.floor(key / PAIR_BASE);
    const right = key % PAIR_BASE;
    const merged = concatBytes(tokens[left], tokens[right]);
    const mergedKey = latin1(merged);
    // Two merge orders can spell the same bytes; like Hugging Face, the later merge reuses the token.
    let id = idOf.get(mergedKey);
    if (id === undefined) { id = tokens.length; tokens.push(merged); idOf.set(mergedKey, id); }
    const rank = merges.length;
    merges.push([left, right]);

    const delta = new Map<number, number>();
    const add = (k: number, d: number): void => { delta.set(k, (delta.get(k) ?? 0) + d); };
    for (const w of pairWords.get(key) ?? []) {
      if (visited[w] === rank) continue;
      visited[w] = rank;
      const word = words[w];
      const c = counts[w];
      let n = lengths[w];
      let i = 0;
      while (i + 1 < n && !(word[i] === left && word[i + 1] === right)) i++;
      if (i + 1 >= n) continue;
      for (let k = 0; k + 1 < n; k++) add(word[k] * PAIR_BASE + word[k + 1], -c);
      let out = 0;
      for (let k = 0; k < n; k++) {
        if (k + 1 < n && word[k] === left && word[k + 1] === right) { word[out++] = id; k++; }
        else word[out++] = word[k];
      }
      lengths[w] = n = out;
      for (let k = 0; k + 1 < n; k++) {
        const pair = word[k] * PAIR_BASE + word[k + 1];
        add(pair, c);
        if (word[k] === id || word[k + 1] === id) noteWord(pair, w);
      }
    }
    for (const [k, d] of delta) {
      if (d === 0) continue;
      const updated = (pairCount.get(k) ?? 0) + d;
      if (updated > 0) pairCount.set(k, updated); else pairCount.delete(k);
      if (d > 0) heap.push(updated, k);
    }
    pairWords.delete(key);
  }

  const special = new Map<string, number>();
  for (const content of specialTokens) { special.set(content, tokens.length); tokens.push(utf8.encode(content)); }
  return { tokenizer: new BpeTokenizer(tokens, merges, special), stats: { uniqueWords: words.length, merges: merges.length } };
}

/** Unique pre-tokenized pieces of all documents as byte arrays, with their counts. */
function countWords(documents: Iterable<string>): { words: Int32Array[]; counts: Float64Array } {
  const pieceCount = new Map<string, number>();
  const pattern = new RegExp(GPT2_SPLIT_PATTERN.source, 'gu');
  for (const doc of documents) {
    if (typeof doc !== 'string') throw new TypeError(`train: documents must be strings, got ${typeof doc}`);
    pattern.lastIndex = 0;
    for (let m = pattern.exec(doc); m !== null; m = pattern.exec(doc)) {
      pieceCount.set(m[0], (pieceCount.get(m[0]) ?? 0) + 1);
    }
  }
  const words: Int32Array[] = [];
  const counts = new Float64Array(pieceCount.size);
  for (const [piece, count] of pieceCount) {
    counts[words.length] = count;
    words.push(Int32Array.from(utf8.encode(piece)));
  }
  return { words, counts };
}

/** Max-heap of (count, pair key); ties go to the smaller pair key, so training is deterministic. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];
  get size(): number { return this.counts.length; }
  private above(a: number, b: number): boolean {
    return this.counts[a] > this.counts[b] || (this.counts[a] === this.counts[b] && this.keys[a] < this.keys[b]);
  }
  private swap(a: number, b: number): void {
    [this.counts[a], this.counts[b]] = [this.counts[b], this.counts[a]];
    [this.keys[a], this.keys[b]] = [this.keys[b], this.keys[a]];
  }
  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    for (let i = this.counts.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }
  pop(): { count: number; key: number } {
    const top = { count: this.counts[0], key: this.keys[0] };
    const last = this.counts.length - 1;
    this.swap(0, last);
    this.counts.pop();
    this.keys.pop();
    for (let i = 0; ;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < last && this.above(l, best)) best = l;
      if (r < last && this.above(r, best)) best = r;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
    return top;
  }
}

function byteLevelToBytes(token: string, fail: (why: string) => never): Uint8Array {
  const out = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const b = CHAR_TO_BYTE.get(token[i]);
    if (b === undefined) fail(`token ${JSON.stringify(token)} is not byte-level (character ${JSON.stringify(token[i])}) and not an added token`);
    out[i] = b!;
  }
  return out;
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Bytes as a string of char codes 0-255: a cheap exact map key. */
function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 4096) s += String.fromCharCode(...bytes.subarray(i, i + 4096));
  return s;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
