// The `swarmtrain-coordinator` command: serves one job to a swarm of nodes and prints every
// coordinator event as one JSON line on stdout, the first being {"event":"listening","addrs":
// [".../p2p/<peerId>"]}. SIGINT/SIGTERM stop it cleanly (exit 0). Bad input (options, the job
// file, the tokenizer) ends with one line on stderr and exit code 2; a failure to start, 1.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { JobError, validateJob } from '../proto/index.ts';
import { jobDocuments } from '../src/train/job.ts';
import type { CommandIO } from '../src/train/cli.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { CoordinatorServer } from './server.ts';

export const COORDINATOR_USAGE = `Usage: swarmtrain-coordinator --job <job.json> [options]

Serves a training job to the swarm's nodes (\`swarmtrain node --join <multiaddr>\`) and prints
every event as one JSON line; the first, "listening", gives the multiaddrs to join.

  --job <file>              the job: JSON of proto's JobSpec (required)
  --tokenizer <file>        the job's tokenizer.json (Hugging Face format), or
  --vocab <n>               train a tokenizer of n tokens on the job's documents
                            (default: the job's model.vocabSize, if it sets one)
  --listen <multiaddr>      where nodes reach the coordinator, repeatable
                            (default /ip4/127.0.0.1/tcp/0)
  --token <secret>          the join token nodes must present (default: none, an open swarm)
  --key <file>              keeps the coordinator's peer id across restarts (created if absent)
  --heartbeat-ms <n>        how often nodes heartbeat (default 1000)
  --node-timeout-ms <n>     a node silent this long is dead (default 15000)
  --lease-ms <n>            deadline of a lease of micro-batches (default 30000)
  --replication <n>         nodes per expert (default 2)
`;

class UsageError extends Error {
  override name = 'UsageError';
}

function integer(flag: string, text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < 1) throw new UsageError(`--${flag} must be a positive integer, got ${JSON.stringify(text)}`);
  return value;
}

function readJson(what: string, path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${what} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${what} ${path}: not JSON (${(err as Error).message})`);
  }
}

function parse(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        job: { type: 'string' }, tokenizer: { type: 'string' }, vocab: { type: 'string' }, listen: { type: 'string', multiple: true },
        token: { type: 'string', default: '' }, key: { type: 'string' }, 'heartbeat-ms': { type: 'string' }, 'node-timeout-ms': { type: 'string' },
        'lease-ms': { type: 'string' }, replication: { type: 'string' }, help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (see swarmtrain-coordinator --help)`);
  }
}

/** The job's tokenizer: from a file, or trained on the job's documents. */
function tokenizerOf(job: ReturnType<typeof validateJob>, file: string | undefined, vocabText: string | undefined): BpeTokenizer {
  if (file !== undefined && vocabText !== undefined) throw new UsageError('give --tokenizer or --vocab, not both');
  if (file !== undefined) {
    try {
      return BpeTokenizer.fromHuggingFace(readJson('tokenizer', file));
    } catch (err) {
      throw err instanceof UsageError ? err : new UsageError(`tokenizer ${file}: ${(err as Error).message}`);
    }
  }
  const modelVocab = job.model.vocabSize;
  const vocabSize = vocabText !== undefined ? integer('vocab', vocabText) : typeof modelVocab === 'number' ? modelVocab : undefined;
  if (vocabSize === undefined) throw new UsageError('give --tokenizer <file> or --vocab <n> (the job sets no model.vocabSize)');
  return BpeTokenizer.train(jobDocuments(job).documents, { vocabSize });
}

export async function runCoordinator(argv: string[], io: CommandIO = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  let server: CoordinatorServer;
  try {
    const values = parse(argv);
    if (values.help) {
      io.stdout.write(COORDINATOR_USAGE);
      return 0;
    }
    if (values.job === undefined) throw new UsageError('--job <file> is required (see swarmtrain-coordinator --help)');
    const job = validateJob(readJson('job', values.job), `job ${values.job}`);
    const tokenizer = tokenizerOf(job, values.tokenizer, values.vocab);
    const optional = (flag: string, text: string | undefined) => (text === undefined ? undefined : integer(flag, text));
    server = await CoordinatorServer.start({
      job, tokenizer, joinToken: values.token,
      heartbeatMs: optional('heartbeat-ms', values['heartbeat-ms']),
      nodeTimeoutMs: optional('node-timeout-ms', values['node-timeout-ms']),
      leaseMs: optional('lease-ms', values['lease-ms']),
      replication: optional('replication', values.replication),
      ...(values.listen ? { listen: values.listen } : {}),
      ...(values.key === undefined ? {} : { keyFile: values.key }),
      onEvent: (event) => io.stdout.write(`${JSON.stringify(event)}\n`),
    });
  } catch (err) {
    const bad = err instanceof UsageError || err instanceof JobError || err instanceof RangeError;
    io.stderr.write(`swarmtrain-coordinator: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}\n`);
    return bad ? 2 : 1;
  }
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.stop();
  return 0;
}
