// The parts of a Hugging Face tokenizer.json pipeline this project runs: normalizers, pre-tokenizers and
// decoders, each built from its JSON with Hugging Face's (Rust) semantics, or refused naming the unsupported type.
import { BYTE_TO_CHAR, GPT2_SPLIT_PATTERN } from '../tokenizer.ts';
import { translatePattern } from './regex.ts';

/** A JSON object of a tokenizer.json component. */
type Json = Record<string, unknown> & { type?: unknown };
export type Normalizer = (text: string) => string;
/** Splits pieces further; `atStart` says whether pieces[0] begins the original text (Metaspace's "first"). */
export type PreTokenizer = (pieces: string[], atStart: boolean) => string[];
/** Hugging Face's decode_chain: token strings in, strings out (joined by the caller). */
export type Decoder = (tokens: string[]) => string[];

export class UnsupportedTokenizerError extends Error {}

const unsupported = (part: string, json: Json, supported: string): never => {
  throw new UnsupportedTokenizerError(
    `tokenizer.json: ${part} type ${JSON.stringify(json.type)} is not supported (supported: ${supported})`);
};
const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));
const utf8 = new TextEncoder();
const utf8Lossy = new TextDecoder('utf-8', { ignoreBOM: true });

/** A Replace/Split `pattern`: {String: s} matches s literally, {Regex: r} is an Oniguruma pattern. */
function patternOf(json: Json, part: string): RegExp {
  const pattern = json.pattern as { String?: unknown; Regex?: unknown } | undefined;
  if (typeof pattern?.String === 'string') return new RegExp(pattern.String.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&'), 'gu');
  if (typeof pattern?.Regex === 'string') return translatePattern(pattern.Regex);
  throw new UnsupportedTokenizerError(`tokenizer.json: ${part} needs pattern {String} or {Regex}, got ${JSON.stringify(json.pattern)}`);
}

export function normalizerOf(json: Json | null | undefined): Normalizer | null {
  if (!json) return null;
  switch (json.type) {
    case 'Sequence': {
      const parts = (json.normalizers as Json[]).map(normalizerOf).filter((n): n is Normalizer => n !== null);
      return (text) => parts.reduce((t, normalize) => normalize(t), text);
    }
    case 'NFC': case 'NFD': case 'NFKC': case 'NFKD': {
      const form = json.type;
      return (text) => text.normalize(form);
    }
    case 'Lowercase': return (text) => text.toLowerCase();
    case 'Prepend': {
      const prefix = String(json.prepend);
      return (text) => (text === '' ? text : prefix + text);
    }
    case 'Replace': {
      const pattern = patternOf(json, 'normalizer Replace');
      const content = String(json.content);
      return (text) => text.replace(pattern, () => content);
    }
    default: return unsupported('normalizer', json, 'Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace');
  }
}

export function preTokenizerOf(json: Json | null | undefined): PreTokenizer | null {
  if (!json) return null;
  switch (json.type) {
    case 'Sequence': {
      const parts = (json.pretokenizers as Json[]).map(preTokenizerOf).filter((p): p is PreTokenizer => p !== null);
      return (pieces, atStart) => parts.reduce((ps, split) => split(ps, atStart), pieces);
    }
    case 'Split': return splitPreTokenizer(json);
    case 'ByteLevel': return byteLevelPreTokenizer(json);
    case 'Metaspace': return metaspacePreTokenizer(json);
    default: return unsupported('pre_tokenizer', json, 'Sequence, Split, ByteLevel, Metaspace');
  }
}

function splitPreTokenizer(json: Json): PreTokenizer {
  if (json.invert) throw new UnsupportedTokenizerError('tokenizer.json: Split with invert true is not supported');
  const behavior = json.behavior;
  if (behavior !== 'Isolated' && behavior !== 'Removed') {
    throw new UnsupportedTokenizerError(
      `tokenizer.json: Split behavior ${JSON.stringify(behavior)} is not supported (supported: Isolated, Removed)`);
  }
  const pattern = patternOf(json, 'pre_tokenizer Split');
  return (pieces) => pieces.flatMap((piece) => {
    const out: string[] = [];
    let from = 0;
    for (const match of piece.matchAll(pattern)) {
      if (match[0] === '') continue;
      if (match.index > from) out.push(piece.slice(from, match.index));
      if (behavior === 'Isolated') out.push(match[0]);
      from = match.index + match[0].length;
    }
    if (from < piece.length) out.push(piece.slice(from));
    return out;
  });
}

/** UTF-8 bytes of each piece as GPT-2's printable characters, after an optional GPT-2 split. */
function byteLevelPreTokenizer(json: Json): PreTokenizer {
  const addPrefixSpace = json.add_prefix_space === true;
  const useRegex = json.use_regex !== false;
  const toChars = (piece: string): string => {
    let s = '';
    for (const b of utf8.encode(piece)) s += BYTE_TO_CHAR[b];
    return s;
  };
  return (pieces) => pieces.flatMap((piece) => {
    const spaced = addPrefixSpace && !piece.startsWith(' ') ? ` ${piece}` : piece;
    const split = useRegex ? Array.from(spaced.matchAll(GPT2_SPLIT_PATTERN), (m) => m[0]) : [spaced];
    return split.map(toChars);
  });
}

function metaspacePreTokenizer(json: Json): PreTokenizer {
  const replacement = String(json.replacement ?? '\u2581');
  const scheme = json.prepend_scheme ?? (json.add_prefix_space === false ? 'never' : 'always');
  if (scheme !== 'always' && scheme !== 'first' && scheme !== 'never') {
    throw new UnsupportedTokenizerError(`tokenizer.json: Metaspace prepend_scheme ${JSON.stringify(scheme)} is not supported`);
  }
  const split = json.split !== false;
  return (pieces, atStart) => pieces.flatMap((piece, i) => {
    let text = piece.replaceAll(' ', replacement);
    const prepend = scheme === 'always' || (scheme === 'first' && atStart && i === 0);
    if (prepend && !text.startsWith(replacement)) text = replacement + text;
    // split: each replacement character starts a new piece (Hugging Face's MergedWithNext).
    return split ? text.split(new RegExp(`(?=${replacement})`, 'u')).filter((p) => p !== '') : [text];
  });
}

export function decoderOf(json: Json | null | undefined): Decoder | null {
  if (!json) return null;
  switch (json.type) {
    case 'Sequence': {
      const parts = (json.decoders as Json[]).map(decoderOf).filter((d): d is Decoder => d !== null);
      return (tokens) => parts.reduce((ts, decode) => decode(ts), tokens);
    }
    case 'ByteLevel': return (tokens) => [byteLevelDecode(tokens)];
    case 'ByteFallback': return byteFallbackDecode;
    case 'Fuse': return (tokens) => [tokens.join('')];
    case 'Replace': {
      const pattern = patternOf(json, 'decoder Replace');
      const content = String(json.content);
      return (tokens) => tokens.map((t) => t.replace(pattern, () => content));
    }
    case 'Strip': {
      const content = String(json.content);
      const start = Number(json.start);
      const stop = Number(json.stop);
      return (tokens) => tokens.map((t) => stripChars(t, content, start, stop));
    }
    case 'Metaspace': {
      const replacement = String(json.replacement ?? '\u2581');
      const keepFirst = (json.prepend_scheme ?? (json.add_prefix_space === false ? 'never' : 'always')) === 'never';
      // Every replacement becomes a space, except in the first token, where the prepended one goes.
      return (tokens) => tokens.map((t, i) => t.replaceAll(replacement, i === 0 && !keepFirst ? '' : ' '));
    }
    default: return unsupported('decoder', json, 'Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace');
  }
}

/** Tokens' characters as GPT-2 bytes (a token with a character outside the map counts as its own UTF-8), decoded lossily. */
function byteLevelDecode(tokens: string[]): string {
  const bytes: number[] = [];
  for (const token of tokens) {
    const mapped = Array.from(token, (c) => CHAR_TO_BYTE.get(c));
    if (mapped.every((b) => b !== undefined)) bytes.push(...(mapped as number[]));
    else bytes.push(...utf8.encode(token));
  }
  return utf8Lossy.decode(Uint8Array.from(bytes));
}

const BYTE_TOKEN = /^<0x([0-9A-F]{2})>$/;

/** Runs of <0xNN> tokens become the text they spell, or one U+FFFD per byte where that is not valid UTF-8. */
function byteFallbackDecode(tokens: string[]): string[] {
  const out: string[] = [];
  let bytes: number[] = [];
  const flush = (): void => {
    if (bytes.length === 0) return;
    try {
      out.push(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Uint8Array.from(bytes)));
    } catch {
      for (let i = 0; i < bytes.length; i++) out.push('\uFFFD');
    }
    bytes = [];
  };
  for (const token of tokens) {
    const byte = BYTE_TOKEN.exec(token);
    if (byte) bytes.push(parseInt(byte[1], 16));
    else { flush(); out.push(token); }
  }
  flush();
  return out;
}

/** Removes up to `start` leading and `stop` trailing `content` characters. */
function stripChars(token: string, content: string, start: number, stop: number): string {
  const chars = Array.from(token);
  let from = 0;
  while (from < start && chars[from] === content) from++;
  let to = chars.length;
  while (chars.length - to < stop && to > from && chars[to - 1] === content) to--;
  return chars.slice(from, to).join('');
}
