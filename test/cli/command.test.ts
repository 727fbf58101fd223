// The exit-code rule (0 ok, 1 failure, 2 usage) as commands and programs apply it: one line on
// stderr for any error, a stack only for failures and only with SWARMTRAIN_DEBUG, and subcommands.
import { describe, expect, it } from 'vitest';
import { integer, text } from '../../src/cli/args.ts';
import { command, helpText, programHelp, runCommand, runProgram, type CommandIO, type Program } from '../../src/cli/command.ts';
import { asInput, EXIT, exitCodeOf, UsageError } from '../../src/cli/usage.ts';

/** Exit code 2 with `stderr`, nothing on stdout. */
const usage = (stderr: string) => ({ code: 2, stdout: '', stderr });

function captured(env: Record<string, string> = {}) {
  const out = { stdout: '', stderr: '' };
  const io: CommandIO = { stdout: { write: (s: string) => (out.stdout += s) }, stderr: { write: (s: string) => (out.stderr += s) }, env };
  return { io, out };
}

/** A command that does what --do says: succeed, refuse bad input, fail, or fail with two lines. */
const ECHO = command({
  program: 'test echo',
  usage: '--do <what> [options]',
  about: 'Echoes.',
  options: {
    do: text('<what>', 'ok | usage | fail | multiline', { required: true }),
    times: integer('<n>', 'repeats', { min: 1 }, { default: '1' }),
  },
  async run(values, io) {
    if (values.do === 'usage') throw new UsageError('bad thing given');
    if (values.do === 'fail') throw new Error('the disk is on fire');
    if (values.do === 'multiline') throw new Error('first\n   second');
    io.stdout.write(`${values.do.repeat(values.times)}\n`);
    return EXIT.ok;
  },
});

describe('the exit-code rule', () => {
  it('is 0 ok, 1 failure, 2 usage', () => {
    expect(EXIT).toEqual({ ok: 0, failure: 1, usage: 2 });
    expect(exitCodeOf(new UsageError('x'))).toBe(2);
    expect(exitCodeOf(new Error('x'))).toBe(1);
    expect(exitCodeOf('a string')).toBe(1);
  });

  it('asInput turns the errors it is told are bad input into UsageErrors and leaves the rest', async () => {
    await expect(asInput(async () => 7)).resolves.toBe(7);
    await expect(asInput(async () => { throw new Error('no such file'); })).rejects.toThrow(UsageError);
    const network = new TypeError('connection refused');
    await expect(asInput(async () => { throw network; }, (err) => !(err instanceof TypeError))).rejects.toBe(network);
    await expect(asInput(async () => { throw new RangeError('too big'); }, (err) => err instanceof RangeError)).rejects.toThrow(UsageError);
  });
});

describe('runCommand', () => {
  const run = async (argv: string[], env?: Record<string, string>) => {
    const { io, out } = captured(env);
    return { code: await runCommand(ECHO, argv, io), ...out };
  };

  it('runs the body with typed values and returns its code', async () => {
    expect(await run(['--do', 'ab', '--times', '2'])).toEqual({ code: 0, stdout: 'abab\n', stderr: '' });
  });

  it('prints the help generated from the table and exits 0', async () => {
    const help = await run(['--help']);
    expect(help).toEqual({ code: 0, stdout: helpText(ECHO), stderr: '' });
    expect(help.stdout).toMatch(/^Usage: test echo --do <what> \[options\]\n\nEchoes\.\n\n {2}--do <what> +ok \| usage/);
  });

  it('exits 2 with one line for bad input: from the parser or from the body', async () => {
    expect(await run(['--do', 'ok', '--frob'])).toEqual(usage('test echo: unknown option --frob (see test echo --help)\n'));
    expect(await run(['--do', 'ok', '--times', '0'])).toEqual(usage('test echo: --times must be an integer ≥ 1, got "0"\n'));
    expect(await run([])).toEqual(usage('test echo: --do <what> is required (see test echo --help)\n'));
    expect(await run(['--do', 'usage'], { SWARMTRAIN_DEBUG: '1' })).toEqual(usage('test echo: bad thing given\n'));
  });

  it('exits 1 for a failure, on one line; SWARMTRAIN_DEBUG adds the stack', async () => {
    expect(await run(['--do', 'fail'])).toEqual({ code: 1, stdout: '', stderr: 'test echo: the disk is on fire\n' });
    expect(await run(['--do', 'multiline'])).toEqual({ code: 1, stdout: '', stderr: 'test echo: first second\n' });
    const debug = await run(['--do', 'fail'], { SWARMTRAIN_DEBUG: '1' });
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/^test echo: the disk is on fire\nError: the disk is on fire\n\s+at /);
  });
});

describe('runProgram', () => {
  const PROGRAM: Program = {
    name: 'test',
    commands: {
      echo: { command: ECHO, synopsis: '--do <what>', summary: 'echo a word' },
      again: { command: { ...ECHO, program: 'test again' }, summary: 'echo it again' },
    },
  };
  const run = async (argv: string[]) => {
    const { io, out } = captured();
    return { code: await runProgram(PROGRAM, argv, io), ...out };
  };

  it('runs the named subcommand with the rest of argv; each entry is one line of the help', async () => {
    expect(await run(['echo', '--do', 'hi'])).toEqual({ code: 0, stdout: 'hi\n', stderr: '' });
    expect(await run(['again', '--do', 'x'])).toEqual({ code: 0, stdout: 'x\n', stderr: '' });
    expect((await run(['again', '--nope'])).stderr).toBe('test again: unknown option --nope (see test again --help)\n');
    const help = await run(['--help']);
    expect(help).toEqual({ code: 0, stdout: programHelp(PROGRAM), stderr: '' });
    expect(help.stdout).toBe('Usage: test <command> [options]\n\nCommands\n' +
      '  echo --do <what> echo a word\n  again            echo it again\n\n`test <command> --help` lists a command\'s options.\n');
  });

  it('exits 2 for an unknown command or none', async () => {
    expect(await run(['frob'])).toEqual(usage('test: unknown command "frob" (commands: echo, again; see test --help)\n'));
    expect(await run(['toString'])).toMatchObject({ code: 2 });
    expect(await run([])).toEqual({ code: 2, stdout: '', stderr: programHelp(PROGRAM) });
  });
});
