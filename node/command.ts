// `swarmtrain node --join <multiaddr>`: runs the volunteer daemon until the job is done, printing
// every event as one JSON line on stdout. SIGINT/SIGTERM stop it after the current batch, handing
// its leases back to the coordinator.
import { parseArgs } from 'node:util';
import type { CommandIO } from '../src/train/cli.ts';
import type { AveragingFault } from './averaging/index.ts';
import { NodeDaemon } from './daemon.ts';

export const NODE_USAGE = `Usage: swarmtrain node --join <multiaddr> [options]

  --join <multiaddr>       the coordinator, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...
  --token <secret>         the swarm's join token (default: none)
  --memory-budget <size>   memory this node gives the job, e.g. 512MB, 2GB (default 2GB)
  --threads <n>            kernel threads (default 1)
  --key <file>             keeps this node's identity across restarts (created if absent)
  --listen <multiaddr>     where peers reach this node (default /ip4/127.0.0.1/tcp/0)

Test hooks (to check the swarm's defences, never for real work):
  --step-delay-ms <ms>     sleep after every step (a slow node)
  --fault nan|scale1000    send corrupted parameter updates (a bad node)
`;

const UNITS: Record<string, number> = { '': 1, B: 1, KB: 2 ** 10, MB: 2 ** 20, GB: 2 ** 30, TB: 2 ** 40 };

/** "512MB", "2GB", "1.5GB" or plain bytes → bytes; undefined when unreadable. */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?B?)$/i.exec(text.trim());
  if (!match) return undefined;
  const unit = UNITS[match[2].toUpperCase()] ?? UNITS[`${match[2].toUpperCase()}B`];
  return unit === undefined ? undefined : Math.round(Number(match[1]) * unit);
}

export async function nodeCommand(argv: string[], io: CommandIO): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        join: { type: 'string' }, token: { type: 'string' }, 'memory-budget': { type: 'string', default: '2GB' },
        threads: { type: 'string', default: '1' }, key: { type: 'string' }, listen: { type: 'string' }, help: { type: 'boolean', short: 'h' },
        'step-delay-ms': { type: 'string' }, fault: { type: 'string' },
      },
    }));
  } catch (err) {
    io.stderr.write(`swarmtrain node: ${(err as Error).message}\n`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(NODE_USAGE);
    return 0;
  }
  const memoryBytes = parseSize(values['memory-budget']);
  const threads = Number(values.threads);
  const stepDelayMs = values['step-delay-ms'] === undefined ? undefined : Number(values['step-delay-ms']);
  const fault = values.fault as AveragingFault | undefined;
  const problem = !values.join ? '--join <multiaddr> is required'
    : stepDelayMs !== undefined && !(stepDelayMs >= 0) ? `--step-delay-ms must be a non-negative number, got ${JSON.stringify(values['step-delay-ms'])}`
    : fault !== undefined && fault !== 'nan' && fault !== 'scale1000' ? `--fault must be nan or scale1000, got ${JSON.stringify(fault)}`
    : memoryBytes === undefined || memoryBytes <= 0 ? `--memory-budget ${JSON.stringify(values['memory-budget'])} is not a size like 512MB or 2GB`
      : !Number.isInteger(threads) || threads < 1 || threads > 64 ? `--threads must be an integer from 1 to 64, got ${JSON.stringify(values.threads)}`
        : undefined;
  if (problem) {
    io.stderr.write(`swarmtrain node: ${problem}\n`);
    return 2;
  }
  let daemon: NodeDaemon;
  try {
    daemon = await NodeDaemon.start({
      join: values.join!, token: values.token, memoryBytes: memoryBytes!, threads, keyFile: values.key,
      ...(values.listen ? { listen: [values.listen] } : {}),
      ...(stepDelayMs ? { stepDelayMs } : {}),
      ...(fault ? { fault } : {}),
      onEvent: (event) => io.stdout.write(`${JSON.stringify(event)}\n`),
    });
  } catch (err) {
    io.stderr.write(`swarmtrain node: ${(err as Error).message}\n`);
    return 2;
  }
  const stop = () => daemon.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await daemon.run();
    return 0;
  } catch (err) {
    io.stderr.write(`swarmtrain node: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await daemon.close();
  }
}
