// Codecs by name, as a job spec names them: "f32", "f16", "int8-block[:blockSize]",
// "topk-int8[:fraction]", "powersgd[:rank]". The spec string is also what a ParameterDelta
// carries, so a receiver can refuse a delta in a codec other than its group's.
import { parseGroupId } from '../../proto/group.ts';
import type { Codec } from './codec.ts';
import { f16Codec, f32Codec } from './float.ts';
import { int8BlockCodec, jsBlockCoder, type BlockCoder } from './int8-block.ts';
import { powerSgdCodec } from './powersgd.ts';
import { topkInt8Codec } from './topk.ts';

export interface CodecOptions {
  /** int8-block: values per scale (default 32). */
  blockSize?: number;
  /** topk-int8: share of the values kept, in (0, 1] (default 0.01). */
  fraction?: number;
  /** powersgd: rank of the factors (default 4). */
  rank?: number;
  /** topk-int8, powersgd: keep what was not sent for the next round (default true; sender-only). */
  errorFeedback?: boolean;
}

interface Entry {
  /** The option a spec's ":arg" sets, if any. */
  argument?: 'blockSize' | 'fraction' | 'rank';
  errorFeedback?: boolean;
  make(options: CodecOptions, coder: BlockCoder): Codec;
}

const integerIn = (name: string, min: number, max: number) => (value: number) => {
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  return value;
};
const blockSize = integerIn('int8-block: block size', 1, 65536);
const rank = integerIn('powersgd: rank', 1, 256);
const fraction = (value: number) => {
  if (!(value > 0 && value <= 1)) throw new RangeError(`topk-int8: fraction must be in (0, 1], got ${value}`);
  return value;
};

const CODECS: Record<string, Entry> = {
  f32: { make: () => f32Codec },
  f16: { make: () => f16Codec },
  'int8-block': { argument: 'blockSize', make: (o, coder) => int8BlockCodec(blockSize(o.blockSize ?? 32), coder) },
  'topk-int8': { argument: 'fraction', errorFeedback: true, make: (o, coder) => topkInt8Codec(fraction(o.fraction ?? 0.01), o, coder) },
  powersgd: { argument: 'rank', errorFeedback: true, make: (o, coder) => powerSgdCodec(rank(o.rank ?? 4), o, coder) },
};

export const CODEC_NAMES = Object.keys(CODECS);

/**
 * The codec `name` with `options`, its int8 blocks coded by `coder`; throws RangeError on an unknown name or an
 * option it does not take.
 */
export function codecByName(name: string, options: CodecOptions = {}, coder: BlockCoder = jsBlockCoder): Codec {
  const entry = Object.hasOwn(CODECS, name) ? CODECS[name] : undefined;
  if (!entry) throw new RangeError(`unknown codec "${name}"; known: ${CODEC_NAMES.join(', ')}`);
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue;
    if (key !== entry.argument && !(key === 'errorFeedback' && entry.errorFeedback)) throw new RangeError(`codec ${name} takes no option ${key}`);
  }
  return entry.make(options, coder);
}

/** Parses "name" or "name:arg", e.g. "topk-int8:0.01", "powersgd:4", "int8-block:64". */
export function parseCodecSpec(spec: string, coder: BlockCoder = jsBlockCoder): Codec {
  const [name, arg, ...rest] = spec.split(':');
  const entry = Object.hasOwn(CODECS, name) ? CODECS[name] : undefined;
  if (!entry) throw new RangeError(`codec spec "${spec}": unknown codec "${name}"; known: ${CODEC_NAMES.join(', ')}`);
  if (arg === undefined) return codecByName(name, {}, coder);
  if (rest.length) throw new RangeError(`codec spec "${spec}": one ":" argument at most`);
  if (!entry.argument) throw new RangeError(`codec spec "${spec}": ${name} takes no argument`);
  const value = arg.trim() === '' ? NaN : Number(arg);
  try {
    return codecByName(name, { [entry.argument]: value }, coder);
  } catch (err) {
    throw new RangeError(`codec spec "${spec}": ${(err as Error).message}`);
  }
}

/** Codec specs of a job: one for every group, optionally another per group ("trunk", "expert.0.3") or kind ("expert"). */
export interface CodecChoice {
  default: string;
  groups?: Record<string, string>;
}

/**
 * Parses every spec of `choice` up front (so a bad one fails at job setup) and returns the codec of each group,
 * its int8 blocks coded by `coder`.
 */
export function codecsForGroups(choice: CodecChoice, coder: BlockCoder = jsBlockCoder): (group: string) => Codec {
  const parsed = new Map(Object.entries(choice.groups ?? {}).map(([group, spec]) => [group, parseCodecSpec(spec, coder)]));
  const fallback = parseCodecSpec(choice.default, coder);
  return (group) => {
    const kind = parseGroupId(group)?.kind;
    return parsed.get(group) ?? (kind && parsed.get(kind)) ?? fallback;
  };
}
