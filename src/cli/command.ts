// A swarmtrain command as a table entry (its program name, usage, option table and body) and the
// runners: one command with --help, one-line errors and the exit-code rule, or a list of subcommands.
import { optionsHelp, parseOptions, type Env, type OptionTable, type OptionValues } from './args.ts';
import { EXIT, exitCodeOf, messageOf, UsageError } from './usage.ts';

export interface CommandOutput {
  write(text: string): unknown;
  isTTY?: boolean;
}

/** Where a command writes, and the environment it reads (env fallbacks, SWARMTRAIN_DEBUG). */
export interface CommandIO {
  stdout: CommandOutput;
  stderr: CommandOutput;
  /** Default: the process's environment. */
  env?: Env;
}

const processIO = (): CommandIO => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

export interface Command<O extends OptionTable = OptionTable> {
  /** How users call it, e.g. 'swarmtrain train': the start of its usage line and of its error lines. */
  program: string;
  /** What follows the program in the usage line, e.g. '--join <multiaddr> [options]'. */
  usage: string;
  /** Text between the usage line and the options in --help. */
  about?: string;
  options: O;
  /** The command's work, given its parsed options; returns its exit code, throws UsageError for bad input. */
  run(values: OptionValues<O>, io: CommandIO): Promise<number>;
}

/** Defines a command; the identity, but it infers the option table's types for `run`. */
export const command = <O extends OptionTable>(definition: Command<O>): Command<O> => definition;

export function helpText<O extends OptionTable>(command: Command<O>): string {
  const about = command.about === undefined ? '' : `${command.about.trimEnd()}\n\n`;
  return `Usage: ${command.program} ${command.usage}\n\n${about}${optionsHelp(command.options)}`;
}

/**
 * Runs a command: --help prints its help; an error ends it with one line on stderr (and, when
 * SWARMTRAIN_DEBUG is set, a failure's stack) and the exit code of the rule in usage.ts.
 */
export async function runCommand<O extends OptionTable>(command: Command<O>, argv: string[], io: CommandIO = processIO()): Promise<number> {
  const env = io.env ?? process.env;
  try {
    const parsed = parseOptions(command.options, argv, env, command.program);
    if (parsed.help) {
      io.stdout.write(helpText(command));
      return EXIT.ok;
    }
    return await command.run(parsed.values, io);
  } catch (err) {
    io.stderr.write(`${command.program}: ${messageOf(err).replace(/\s*\n\s*/g, ' ')}\n`);
    if (!(err instanceof UsageError) && env.SWARMTRAIN_DEBUG) io.stderr.write(`${(err as Error).stack}\n`);
    return exitCodeOf(err);
  }
}

/** A subcommand of a program: the command and how its line in the program's help reads. */
export interface Subcommand {
  /** Any option table: each subcommand has its own. */
  command: Command<any>;
  /** Its arguments worth knowing in the list, e.g. '--join <addr>'. */
  synopsis?: string;
  summary: string;
}

/** A program made of subcommands (`swarmtrain <command> ...`): adding one is an entry in `commands`. */
export interface Program {
  name: string;
  commands: Record<string, Subcommand>;
}

export function programHelp(program: Program): string {
  const labels = Object.entries(program.commands).map(([name, { synopsis }]) => (synopsis === undefined ? name : `${name} ${synopsis}`));
  const column = Math.max(...labels.map((label) => label.length)) + 1;
  const rows = Object.values(program.commands).map(({ summary }, i) => `  ${labels[i].padEnd(column)}${summary}`);
  return `Usage: ${program.name} <command> [options]\n\nCommands\n${rows.join('\n')}\n\n` +
    `\`${program.name} <command> --help\` lists a command's options.\n`;
}

/** Runs the subcommand argv[0] names with the rest of argv; help or an unknown command otherwise. */
export async function runProgram(program: Program, argv: string[], io: CommandIO = processIO()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(programHelp(program));
    return EXIT.ok;
  }
  const subcommand = name === undefined || !Object.hasOwn(program.commands, name) ? undefined : program.commands[name];
  if (subcommand === undefined) {
    const names = Object.keys(program.commands).join(', ');
    io.stderr.write(name === undefined ? programHelp(program)
      : `${program.name}: unknown command ${JSON.stringify(name)} (commands: ${names}; see ${program.name} --help)\n`);
    return EXIT.usage;
  }
  return runCommand(subcommand.command, rest, io);
}
