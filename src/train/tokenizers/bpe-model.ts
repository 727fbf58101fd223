// A tokenizer.json BPE model over characters: each piece starts as its characters' ids (unknown ones as
// <0xNN> byte tokens with byte_fallback, else the unk token), then merges join them as Hugging Face does.
import { applyMerges, PAIR_BASE, type MergeTable } from './merge.ts';
import { UnsupportedTokenizerError } from './components.ts';

export interface BpeModelJson {
  type: string;
  vocab: Record<string, number>;
  merges: (string | [string, string])[];
  unk_token?: string | null;
  byte_fallback?: boolean;
  fuse_unk?: boolean;
  ignore_merges?: boolean;
  dropout?: number | null;
  continuing_subword_prefix?: string | null;
  end_of_word_suffix?: string | null;
}

/** Encoded pieces shorter than this are cached; the cache is dropped when it grows past CACHE_LIMIT. */
const CACHE_PIECE_CHARS = 64;
const CACHE_LIMIT = 200_000;
const utf8 = new TextEncoder();

export class BpeModel {
  readonly idOf = new Map<string, number>();
  private readonly merges: MergeTable;
  private readonly byteIds: Int32Array | null;
  private readonly unkId: number | undefined;
  private readonly fuseUnk: boolean;
  private readonly ignoreMerges: boolean;
  private readonly cache = new Map<string, number[]>();

  constructor(model: BpeModelJson) {
    const fail = (why: string): never => { throw new Error(`tokenizer.json: ${why}`); };
    if (model.dropout) throw new UnsupportedTokenizerError(`tokenizer.json: BPE dropout ${model.dropout} is not supported`);
    if (model.continuing_subword_prefix || model.end_of_word_suffix) {
      throw new UnsupportedTokenizerError('tokenizer.json: BPE continuing_subword_prefix / end_of_word_suffix are not supported');
    }
    if (!model.vocab || typeof model.vocab !== 'object' || !Array.isArray(model.merges)) fail('model needs vocab and merges');
    for (const [token, id] of Object.entries(model.vocab)) {
      if (!Number.isInteger(id) || id < 0 || id >= PAIR_BASE) fail(`vocab id of ${JSON.stringify(token)} is ${id}`);
      this.idOf.set(token, id);
    }
    const rankOf = new Map<number, number>();
    const mergeResult = new Int32Array(model.merges.length);
    model.merges.forEach((merge, rank) => {
      const [left, right] = typeof merge === 'string' ? merge.split(' ') : merge;
      const pair = [this.idOf.get(left), this.idOf.get(right)];
      const result = this.idOf.get(left + right);
      if (pair[0] === undefined || pair[1] === undefined || result === undefined) {
        fail(`merge ${rank} ${JSON.stringify(merge)} names a token not in the vocab`);
      }
      // A pair listed twice takes its last rank, as Hugging Face's readers do.
      rankOf.set(pair[0]! * PAIR_BASE + pair[1]!, rank);
      mergeResult[rank] = result!;
    });
    this.merges = { rankOf, mergeResult };
    this.unkId = model.unk_token == null ? undefined : this.idOf.get(model.unk_token);
    if (model.unk_token != null && this.unkId === undefined) fail(`unk_token ${JSON.stringify(model.unk_token)} is not in the vocab`);
    this.fuseUnk = model.fuse_unk === true;
    this.ignoreMerges = model.ignore_merges === true;
    this.byteIds = null;
    if (model.byte_fallback) {
      const hex = (b: number) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
      const ids = Int32Array.from({ length: 256 }, (_, b) => this.idOf.get(hex(b)) ?? -1);
      if (ids.includes(-1)) fail('byte_fallback needs the 256 tokens <0x00> .. <0xFF> in the vocab');
      this.byteIds = ids;
    }
  }

  /** Appends the ids of one pre-tokenized piece. */
  encodeInto(piece: string, out: number[]): void {
    let ids = this.cache.get(piece);
    if (ids === undefined) {
      ids = this.encodePiece(piece);
      if (piece.length < CACHE_PIECE_CHARS) {
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(piece, ids);
      }
    }
    for (const id of ids) out.push(id);
  }

  private encodePiece(piece: string): number[] {
    const whole = this.ignoreMerges ? this.idOf.get(piece) : undefined;
    if (whole !== undefined) return [whole];
    const symbols: number[] = [];
    let lastUnknown = false;
    for (const char of piece) {
      const id = this.idOf.get(char);
      if (id !== undefined) { symbols.push(id); lastUnknown = false; continue; }
      if (this.byteIds) {
        for (const b of utf8.encode(char)) symbols.push(this.byteIds[b]);
      } else if (this.unkId !== undefined && !(this.fuseUnk && lastUnknown)) {
        symbols.push(this.unkId);
      }
      // Without byte fallback or an unk token Hugging Face drops the character; so do we.
      lastUnknown = true;
    }
    return applyMerges(Int32Array.from(symbols), this.merges);
  }
}
