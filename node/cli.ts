// The `swarmtrain` command: dispatches to a subcommand and returns its exit code.
import { generateCommand, trainCommand, type CommandIO } from '../src/train/cli.ts';
import { nodeCommand } from './command.ts';

const COMMANDS: Record<string, (argv: string[], io: CommandIO) => Promise<number>> = {
  node: nodeCommand,
  train: trainCommand,
  generate: generateCommand,
};

export const USAGE = `Usage: swarmtrain <command> [options]

Commands
  node --join <addr> join a swarm and train on this machine's CPU
  train --local    train a model (or a LoRA adapter) in this process on a bundled corpus
  generate         continue a prompt with a trained checkpoint

\`swarmtrain <command> --help\` lists a command's options.
`;

export async function runCli(argv: string[], io: CommandIO = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h' || command === 'help') {
    io.stdout.write(USAGE);
    return 0;
  }
  const run = command === undefined ? undefined : COMMANDS[command];
  if (!run) {
    io.stderr.write(command === undefined ? USAGE : `swarmtrain: unknown command ${JSON.stringify(command)} (commands: ${Object.keys(COMMANDS).join(', ')}; see swarmtrain --help)\n`);
    return 2;
  }
  return run(rest, io);
}
