// Command-line options as a declarative table: each entry says how to read its value (integer,
// choice, size such as 512MB, ...), an env fallback and a default; the same table writes --help.
import { parseArgs } from 'node:util';
import { UsageError } from './usage.ts';

export type Env = Readonly<Record<string, string | undefined>>;

interface OptionBase {
  /** What the option does, for --help (wrapped to the help's width). */
  readonly help: string;
  /** A one-letter alias, e.g. 'h' for -h. */
  readonly short?: string;
  /** A heading printed above this option in --help: it starts a section. */
  readonly section?: string;
}

/** An option without a value: true when given. */
export interface FlagOption extends OptionBase {
  readonly kind: 'flag';
}

/** An option with a value, read from the command line, else the env variable, else the default. */
export interface ValueOption<T> extends OptionBase {
  readonly kind: 'value';
  /** The value in --help, e.g. '<n>' or 'full|lora'. */
  readonly placeholder: string;
  /** Reads the text; `name` (--flag, or the env variable it came from) goes into its error message. */
  readonly parse: (text: string, name: string) => T;
  readonly env?: string;
  /** Command-line text of the value when neither the flag nor `env` gives one (shown in --help). */
  readonly default?: string;
  readonly required?: boolean;
  /** Repeatable: the values of every occurrence, in order. */
  readonly multiple?: boolean;
}

export type Option = FlagOption | ValueOption<unknown>;
export type OptionTable = Readonly<Record<string, Option>>;

type ValueOf<O> = O extends FlagOption ? boolean
  : O extends ValueOption<infer T>
    ? (O extends { multiple: true } ? T[] : T) | (O extends { default: string } | { required: true } ? never : undefined)
    : never;

/** What a table parses to: booleans for flags; values (undefined when absent and neither required nor defaulted). */
export type OptionValues<O extends OptionTable> = { -readonly [K in keyof O]: ValueOf<O[K]> };

interface FlagExtras {
  short?: string;
  section?: string;
}

interface ValueExtras extends FlagExtras {
  env?: string;
  default?: string;
  required?: boolean;
  multiple?: boolean;
}

export function flag<const E extends FlagExtras = {}>(help: string, extras?: E): FlagOption & NoInfer<E> {
  return { kind: 'flag', help, ...extras } as FlagOption & E;
}

// NoInfer: without extras, E must stay {} rather than be inferred from where the option is put.
export function custom<T, const E extends ValueExtras = {}>(
  placeholder: string, help: string, parse: (text: string, name: string) => T, extras?: E,
): ValueOption<T> & NoInfer<E> {
  return { kind: 'value', placeholder, help, parse, ...extras } as ValueOption<T> & E;
}

export function text<const E extends ValueExtras = {}>(placeholder: string, help: string, extras?: E) {
  return custom(placeholder, help, (value) => value, extras);
}

export function integer<const E extends ValueExtras = {}>(
  placeholder: string, help: string, range: { min: number; max?: number }, extras?: E,
) {
  return custom(placeholder, help, (value, name) => parseInteger(value, name, range.min, range.max), extras);
}

/** A number that `ok` accepts; `want` says which, e.g. 'a positive number'. */
export function real<const E extends ValueExtras = {}>(
  placeholder: string, help: string, ok: (x: number) => boolean, want: string, extras?: E,
) {
  return custom(placeholder, help, (value, name) => parseReal(value, name, ok, want), extras);
}

export function choice<const C extends string, const E extends ValueExtras = {}>(choices: readonly C[], help: string, extras?: E) {
  return custom(choices.join('|'), help, (value, name) => parseChoice(value, name, choices), extras);
}

/** A positive byte count: plain bytes or with a unit, 512MB, 1.5GB. */
export function size<const E extends ValueExtras = {}>(placeholder: string, help: string, extras?: E) {
  return custom(placeholder, help, (value, name) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes <= 0) throw new UsageError(`${name} must be a size like 512MB or 2GB, got ${JSON.stringify(value)}`);
    return bytes;
  }, extras);
}

function parseInteger(text: string, name: string, min: number, max?: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min || (max !== undefined && value > max)) {
    const range = max === undefined ? `≥ ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${name} must be an integer ${range}, got ${JSON.stringify(text)}`);
  }
  return value;
}

function parseReal(text: string, name: string, ok: (x: number) => boolean, want: string): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || !ok(value)) {
    throw new UsageError(`${name} must be ${want}, got ${JSON.stringify(text)}`);
  }
  return value;
}

export function parseChoice<const C extends string>(text: string, name: string, choices: readonly C[]): C {
  if (!(choices as readonly string[]).includes(text)) {
    throw new UsageError(`${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(text)}`);
  }
  return text as C;
}

const UNITS: Record<string, number> = { '': 1, B: 1, KB: 2 ** 10, MB: 2 ** 20, GB: 2 ** 30, TB: 2 ** 40 };

/** "512MB", "2GB", "1.5G" or plain bytes → bytes (binary units); undefined when unreadable. */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?B?)$/i.exec(text.trim());
  if (!match) return undefined;
  const unit = UNITS[match[2].toUpperCase()] ?? UNITS[`${match[2].toUpperCase()}B`];
  return unit === undefined ? undefined : Math.round(Number(match[1]) * unit);
}

export type Parsed<O extends OptionTable> = { help: true } | { help: false; values: OptionValues<O> };

/**
 * Reads `argv` by the table: strictly (an unknown option, a stray argument or a missing value is a
 * UsageError pointing at `<program> --help`), then -h/--help, then each value, its fallbacks and checks.
 */
export function parseOptions<O extends OptionTable>(options: O, argv: string[], env: Env, program: string): Parsed<O> {
  const config = Object.fromEntries(Object.entries(options).map(([name, option]) => [name, {
    type: option.kind === 'flag' ? 'boolean' as const : 'string' as const,
    multiple: option.kind === 'value' && option.multiple === true,
    ...(option.short === undefined ? {} : { short: option.short }),
  }]));
  let given: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    const all = { ...config, help: { type: 'boolean' as const, short: 'h' } };
    given = parseArgs({ args: argv, options: all, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(`${parseArgsProblem(err as Error & { code?: string })} (see ${program} --help)`);
  }
  if (given.help) return { help: true };
  const values: Record<string, unknown> = {};
  for (const [name, option] of Object.entries(options)) {
    const text = given[name];
    values[name] = option.kind === 'flag' ? text === true : valueOf(name, option, text as string | string[] | undefined, env, program);
  }
  return { help: false, values: values as OptionValues<O> };
}

function valueOf(name: string, option: ValueOption<unknown>, given: string | string[] | undefined, env: Env, program: string): unknown {
  const flagName = `--${name}`;
  if (Array.isArray(given)) return given.map((value) => option.parse(value, flagName));
  if (given !== undefined) return option.parse(given, flagName);
  const fallback = option.env === undefined || env[option.env] === '' ? undefined : env[option.env];
  const [text, from] = fallback !== undefined ? [fallback, option.env!] : [option.default, flagName];
  if (text === undefined) {
    if (option.required) throw new UsageError(`${flagName} ${option.placeholder} is required (see ${program} --help)`);
    return undefined;
  }
  const value = option.parse(text, from);
  return option.multiple ? [value] : value;
}

/** node:util's parseArgs error in our words. */
function parseArgsProblem(err: Error & { code?: string }): string {
  const quoted = /'([^']*)'/.exec(err.message)?.[1];
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return `unknown option ${quoted}`;
  if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return `unexpected argument ${JSON.stringify(quoted)}`;
  const badValue = err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE';
  if (badValue && /argument missing/.test(err.message)) return `${quoted?.split(' ')[0]} needs a value`;
  if (badValue && /ambiguous/.test(err.message)) return `${quoted} needs a value; one that starts with a dash goes as ${quoted}=<value>`;
  return err.message;
}

const HELP_WIDTH = 100;

/** The options part of --help: one entry per option, sections under their headings, then -h, --help. */
export function optionsHelp(options: OptionTable): string {
  const labelOf = (name: string, option: Option) =>
    `${option.short === undefined ? '' : `-${option.short}, `}--${name}${option.kind === 'value' ? ` ${option.placeholder}` : ''}`;
  const entries: [label: string, help: string, section?: string][] = Object.entries(options).map(([name, option]) => {
    const notes = option.kind === 'value' ? [
      option.required ? ' (required)' : '',
      option.default === undefined ? '' : ` (default ${option.default})`,
      option.env === undefined ? '' : ` (env ${option.env})`,
    ].join('') : '';
    return [labelOf(name, option), `${option.help}${notes}`, option.section];
  });
  entries.push(['-h, --help', 'this text']);
  const column = Math.max(...entries.map(([label]) => label.length)) + 4;
  const lines: string[] = [];
  for (const [i, [label, help, section]] of entries.entries()) {
    if (section !== undefined || i === entries.length - 1) lines.push('');
    if (section !== undefined) lines.push(section);
    const wrapped = wrap(help, HELP_WIDTH - column);
    lines.push(`  ${label.padEnd(column - 2)}${wrapped[0]}`, ...wrapped.slice(1).map((line) => `${' '.repeat(column)}${line}`));
  }
  return `${lines.join('\n').replace(/^\n/, '')}\n`;
}

/** Splits text into lines of at most `width` characters, at spaces (a longer word gets a line of its own). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter((w) => w !== '')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  return [...lines, line];
}
