// `swarmtrain node --join <multiaddr>`: runs the volunteer daemon, job after job, until stopped or the
// swarm closes, printing every event as one JSON line on stdout. SIGINT/SIGTERM stop it after the current batch, handing
// its leases back to the coordinator. A bad address, key file or refused join exits 2; a network
// failure (the base's blobs unreachable included) or a crash, 1.
import { choice, flag, integer, real, size, text } from '../src/cli/args.ts';
import { command, helpText, runCommand, type CommandIO } from '../src/cli/command.ts';
import { statusWriter, type Status } from '../src/cli/health.ts';
import { asInput, EXIT } from '../src/cli/usage.ts';
import { RpcError } from '../src/p2p/errors.ts';
import { REACHABILITY_MODES } from '../src/p2p/reachability.ts';
import { FetchError } from '../src/weights/index.ts';
import { NodeDaemon, type NodeEvent } from './daemon.ts';

export const NODE_COMMAND = command({
  program: 'swarmtrain node',
  usage: '--join <multiaddr> [options]',
  options: {
    join: text('<multiaddr>', 'the coordinator, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...', { required: true }),
    token: text('<secret>', "the swarm's join token; none by default", { env: 'SWARMTRAIN_TOKEN' }),
    'memory-budget': size('<size>', 'memory this node gives the job, e.g. 512MB, 2GB', { default: '2GB' }),
    threads: integer('<n>', 'kernel threads', { min: 1, max: 64 }, { default: '1' }),
    gflops: real('<n>', "this node's matmul speed (GFLOP/s) the coordinator shares experts by, instead of measuring it at start "
      + '(where other work on the machine would skew the measurement)', (x) => x > 0, 'a positive number'),
    key: text('<file>', "keeps this node's identity across restarts (created if absent)"),
    data: text('<dir>', "keeps base checkpoints' verified tensors (default: swarmtrain-data beside --key, else in the working directory)"),
    listen: text('<multiaddr>', 'where peers reach this node (default /ip4/127.0.0.1/tcp/0)'),
    'give-up-after': real('<seconds>', 'exit (code 1) after this long without an answer from the coordinator (default 600)',
      (x) => x > 0, 'a positive number'),
    announce: text('<multiaddr>', 'an address peers reach this node at besides the listening ones (e.g. a port your router '
      + 'forwards here), repeatable', { multiple: true }),
    reachability: choice(REACHABILITY_MODES, 'whether peers need a relay to reach this node: auto (when the coordinator sees it '
      + 'behind a NAT and nothing public is announced), private (always), public (never)', { default: 'auto' }),
    relay: flag('relay for other nodes of the swarm (a node peers can reach directly; the coordinator relays by default)'),
    'status-file': text('<file>', 'rewritten on joining, on every heartbeat answered and every step (see `swarmtrain health`)'),
    'step-delay-ms': real('<ms>', 'sleep after every step (a slow node)', (x) => x >= 0, 'a non-negative number', {
      section: "Test hooks (to check the swarm's defences, never for real work):",
    }),
    fault: choice(['nan', 'scale1000'], 'send corrupted parameter updates (a bad node)'),
  },
  async run(values, io) {
    const status = nodeStatus(values['status-file'], io);
    // Starting reads the user's input (address, key file) and asks to join: all of it is bad input
    // when it fails, except the network (an unreachable or silent coordinator), which is a failure.
    const daemon = await asInput(() => NodeDaemon.start({
      join: values.join, token: values.token, memoryBytes: values['memory-budget'], threads: values.threads, keyFile: values.key,
      ...(values.gflops ? { gemmGflops: values.gflops } : {}),
      ...(values.data ? { dataDir: values.data } : {}),
      ...(values.listen ? { listen: [values.listen] } : {}),
      ...(values['give-up-after'] ? { giveUpAfterMs: values['give-up-after'] * 1000 } : {}),
      ...(values.announce ? { announce: values.announce } : {}),
      reachability: values.reachability, relay: values.relay,
      ...(values['step-delay-ms'] ? { stepDelayMs: values['step-delay-ms'] } : {}),
      ...(values.fault ? { fault: values.fault } : {}),
      // The status file first: a reader who saw an event finds the file at least that new.
      onEvent: (event) => {
        status.onEvent(event);
        io.stdout.write(`${JSON.stringify(event)}\n`);
      },
      onHeartbeat: status.onHeartbeat,
    }), (err) => !(err instanceof RpcError) && !(err instanceof FetchError));
    const stop = () => daemon.stop();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      await daemon.run();
      return EXIT.ok;
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      await daemon.close();
    }
  },
});

/** Keeps the status file (if any) current: written on joining, then after every answered heartbeat and every step. */
function nodeStatus(path: string | undefined, io: CommandIO) {
  const write = path === undefined ? undefined : statusWriter(path, (message) => io.stderr.write(`swarmtrain node: ${message}\n`));
  let status: Status | undefined;
  const touch = (details: Record<string, unknown> = {}) => {
    if (write === undefined || status === undefined) return;
    status = { ...status, ...details, updatedAt: Date.now() };
    write(status);
  };
  return {
    onEvent(event: NodeEvent) {
      if (event.event === 'joined') {
        status = { role: 'node', peerId: String(event.node), updatedAt: 0, step: 0 };
        touch();
      } else if (event.event === 'step') {
        touch({ step: event.step, loss: event.loss });
      }
    },
    onHeartbeat: () => touch(),
  };
}

export const NODE_USAGE = helpText(NODE_COMMAND);

export const nodeCommand = (argv: string[], io?: CommandIO): Promise<number> => runCommand(NODE_COMMAND, argv, io);
