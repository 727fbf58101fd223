// The `swarmtrain` command: dispatches to a subcommand and returns its exit code. A new subcommand
// is one more entry in SWARMTRAIN; `job` has subcommands of its own, with arguments, so it takes the
// rest of the command line itself.
import { COORDINATOR_COMMAND } from '../coordinator/cli.ts';
import { JOB_HELP_COMMAND, runJobCommand } from '../coordinator/job-command.ts';
import { programHelp, runProgram, type CommandIO, type Program } from '../src/cli/command.ts';
import { HEALTH_COMMAND } from '../src/cli/health.ts';
import { GENERATE_COMMAND, TRAIN_COMMAND } from '../src/train/cli.ts';
import { NODE_COMMAND } from './command.ts';

const SWARMTRAIN: Program = {
  name: 'swarmtrain',
  commands: {
    coordinator: {
      command: COORDINATOR_COMMAND, synopsis: '[--data <dir>] [--http <addr>]', summary: "run a swarm's coordinator: its job queue, HTTP API and web UI",
    },
    node: { command: NODE_COMMAND, synopsis: '--join <addr>', summary: "join a swarm and train on this machine's CPU" },
    train: {
      command: TRAIN_COMMAND, synopsis: '--local', summary: 'train a model (or a LoRA adapter) in this process on a bundled corpus',
    },
    generate: { command: GENERATE_COMMAND, summary: 'continue a prompt with a trained checkpoint' },
    job: { command: JOB_HELP_COMMAND, synopsis: '<create|list|show|watch|...>', summary: "create, follow and fetch a coordinator's jobs" },
    health: { command: HEALTH_COMMAND, synopsis: '--status <file>', summary: 'whether a node or coordinator worked recently (HEALTHCHECK)' },
  },
};

export const USAGE = programHelp(SWARMTRAIN);

export const runCli = (argv: string[], io?: CommandIO): Promise<number> =>
  (argv[0] === 'job' ? runJobCommand(argv.slice(1), io) : runProgram(SWARMTRAIN, argv, io));
