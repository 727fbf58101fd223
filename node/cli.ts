// The `swarmtrain` command: dispatches to a subcommand and returns its exit code. A new subcommand
// is one more entry in SWARMTRAIN.
import { programHelp, runProgram, type CommandIO, type Program } from '../src/cli/command.ts';
import { HEALTH_COMMAND } from '../src/cli/health.ts';
import { GENERATE_COMMAND, TRAIN_COMMAND } from '../src/train/cli.ts';
import { NODE_COMMAND } from './command.ts';

const SWARMTRAIN: Program = {
  name: 'swarmtrain',
  commands: {
    node: { command: NODE_COMMAND, synopsis: '--join <addr>', summary: "join a swarm and train on this machine's CPU" },
    train: {
      command: TRAIN_COMMAND, synopsis: '--local', summary: 'train a model (or a LoRA adapter) in this process on a bundled corpus',
    },
    generate: { command: GENERATE_COMMAND, summary: 'continue a prompt with a trained checkpoint' },
    health: { command: HEALTH_COMMAND, synopsis: '--status <file>', summary: 'whether a node or coordinator worked recently (HEALTHCHECK)' },
  },
};

export const USAGE = programHelp(SWARMTRAIN);

export const runCli = (argv: string[], io?: CommandIO): Promise<number> => runProgram(SWARMTRAIN, argv, io);
