// The shared option parser: typed values from the table, env fallbacks and defaults, strict
// parsing with usage errors that say what to fix, sizes with units, and --help from the same table.
import { describe, expect, it } from 'vitest';
import { choice, custom, flag, integer, optionsHelp, parseOptions, parseSize, real, size, text, wrap } from '../../src/cli/args.ts';
import { UsageError } from '../../src/cli/usage.ts';

const OPTIONS = {
  name: text('<name>', 'a name', { required: true }),
  count: integer('<n>', 'how many', { min: 1, max: 64 }, { default: '3', section: 'Numbers' }),
  ratio: real('<x>', 'a fraction', (x) => x > 0 && x < 1, 'a fraction between 0 and 1'),
  budget: size('<size>', 'memory', { env: 'TEST_BUDGET' }),
  mode: choice(['fast', 'slow'], 'speed'),
  tag: text('<tag>', 'repeatable', { multiple: true }),
  upper: custom('<text>', 'shouted', (value) => value.toUpperCase()),
  verbose: flag('say more', { short: 'v' }),
};

const parse = (argv: string[], env: Record<string, string> = {}) => parseOptions(OPTIONS, argv, env, 'prog');
const values = (argv: string[], env: Record<string, string> = {}) => {
  const parsed = parse(argv, env);
  if (parsed.help) throw new Error('unexpected --help');
  return parsed.values;
};
const usageError = (argv: string[], env: Record<string, string> = {}) => {
  try {
    parse(argv, env);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`${argv.join(' ')} parsed`);
};

describe('parseOptions', () => {
  it('gives each option its typed value', () => {
    const v = values(['--name', 'x', '--count', '64', '--ratio', '0.25', '--budget', '1.5GB', '--mode', 'slow',
      '--tag', 'a', '--tag', 'b', '--upper', 'hi', '-v']);
    expect(v).toEqual({
      name: 'x', count: 64, ratio: 0.25, budget: 1.5 * 2 ** 30, mode: 'slow', tag: ['a', 'b'], upper: 'HI', verbose: true,
    });
  });

  it('leaves absent options undefined (flags false) and reads defaults through the same parser', () => {
    expect(values(['--name', 'x'])).toEqual({
      name: 'x', count: 3, ratio: undefined, budget: undefined, mode: undefined, tag: undefined, upper: undefined, verbose: false,
    });
  });

  it('falls back to the env variable when the flag is absent; the flag wins; an empty variable counts as unset', () => {
    expect(values(['--name', 'x'], { TEST_BUDGET: '512MB' }).budget).toBe(512 * 2 ** 20);
    expect(values(['--name', 'x', '--budget', '1KB'], { TEST_BUDGET: '512MB' }).budget).toBe(1024);
    expect(values(['--name', 'x'], { TEST_BUDGET: '' }).budget).toBeUndefined();
    expect(usageError(['--name', 'x'], { TEST_BUDGET: 'lots' })).toBe('TEST_BUDGET must be a size like 512MB or 2GB, got "lots"');
  });

  it('refuses an unknown option, a stray argument and a missing value, pointing at --help', () => {
    expect(usageError(['--name', 'x', '--nope'])).toBe('unknown option --nope (see prog --help)');
    expect(usageError(['--name', 'x', 'stray'])).toBe('unexpected argument "stray" (see prog --help)');
    expect(usageError(['--name'])).toBe('--name needs a value (see prog --help)');
    expect(usageError([])).toBe('--name <name> is required (see prog --help)');
  });

  it('says what a value must be', () => {
    expect(usageError(['--name', 'x', '--count', '1.5'])).toBe('--count must be an integer from 1 to 64, got "1.5"');
    expect(usageError(['--name', 'x', '--count', '65'])).toBe('--count must be an integer from 1 to 64, got "65"');
    expect(usageError(['--name', 'x', '--count', '-1']))
      .toBe('--count needs a value; one that starts with a dash goes as --count=<value> (see prog --help)');
    expect(usageError(['--name', 'x', '--count=-1'])).toBe('--count must be an integer from 1 to 64, got "-1"');
    expect(usageError(['--name', 'x', '--ratio', '1'])).toBe('--ratio must be a fraction between 0 and 1, got "1"');
    expect(usageError(['--name', 'x', '--ratio', ''])).toBe('--ratio must be a fraction between 0 and 1, got ""');
    expect(usageError(['--name', 'x', '--mode', 'medium'])).toBe('--mode must be one of fast, slow, got "medium"');
    expect(usageError(['--name', 'x', '--budget', '0MB'])).toBe('--budget must be a size like 512MB or 2GB, got "0MB"');
    const unbounded = { n: integer('<n>', 'n', { min: 0 }) };
    expect(() => parseOptions(unbounded, ['--n', 'x'], {}, 'prog')).toThrow('--n must be an integer ≥ 0, got "x"');
  });

  it('--help and -h win over missing required options and bad values, but not over unknown options', () => {
    expect(parse(['--help'])).toEqual({ help: true });
    expect(parse(['-h', '--count', 'many'])).toEqual({ help: true });
    expect(usageError(['--help', '--nope'])).toMatch(/^unknown option --nope/);
  });
});

describe('parseSize', () => {
  it('reads plain bytes and binary units, with or without B and space', () => {
    expect(parseSize('1000')).toBe(1000);
    expect(parseSize('512MB')).toBe(536_870_912);
    expect(parseSize('2GB')).toBe(2_147_483_648);
    expect(parseSize('2g')).toBe(2_147_483_648);
    expect(parseSize('1.5 KB')).toBe(1536);
    expect(parseSize('1TB')).toBe(1_099_511_627_776);
  });

  it('is undefined for anything else', () => {
    for (const text of ['', 'MB', '-1MB', '1PB', '1.2.3GB', 'two']) expect(parseSize(text), text).toBeUndefined();
  });
});

describe('optionsHelp', () => {
  const help = optionsHelp(OPTIONS);

  it('lists every option with its value, sections under their headings, and notes for required, default and env', () => {
    const lines = help.split('\n');
    expect(lines[0]).toMatch(/^ {2}--name <name> +a name \(required\)$/);
    expect(lines).toContain('Numbers');
    expect(lines.indexOf('Numbers')).toBe(lines.findIndex((l) => l.includes('--count')) - 1);
    expect(help).toMatch(/--count <n> +how many \(default 3\)\n/);
    expect(help).toMatch(/--budget <size> +memory \(env TEST_BUDGET\)\n/);
    expect(help).toMatch(/--mode fast\|slow +speed\n/);
    expect(help).toMatch(/-v, --verbose +say more\n/);
    expect(help).toMatch(/\n\n {2}-h, --help +this text\n$/);
    // Descriptions start in one column.
    const columns = lines.filter((l) => l.startsWith('  -')).map((l) => /^ {2}\S+(?: \S+)? +/.exec(l)![0].length);
    expect(new Set(columns).size).toBe(1);
  });

  it('wraps long descriptions under their column', () => {
    const long = optionsHelp({ x: text('<x>', 'word '.repeat(40).trim()) });
    const lines = long.split('\n').filter((l) => l.includes('word'));
    expect(lines.length).toBeGreaterThan(1);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(100);
    expect(lines.slice(1).every((l) => l.startsWith(' '.repeat(lines[0].indexOf('word'))))).toBe(true);
    expect(lines.join(' ').replace(/\s+/g, ' ').trim()).toBe(`--x <x> ${'word '.repeat(40).trim()}`);
  });
});

describe('wrap', () => {
  it('breaks at spaces within the width and keeps a longer word whole', () => {
    expect(wrap('aa bb cc dd', 5)).toEqual(['aa bb', 'cc dd']);
    expect(wrap('a verylongword b', 4)).toEqual(['a', 'verylongword', 'b']);
  });
});
