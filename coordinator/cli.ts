// The `swarmtrain-coordinator` command: serves one job to a swarm of nodes and prints every
// coordinator event as one JSON line on stdout, the first being {"event":"listening","addrs":
// [".../p2p/<peerId>"]}. SIGINT/SIGTERM stop it cleanly (exit 0). Bad input (options, the job
// file, the tokenizer, the base checkpoint) ends with one line on stderr and exit code 2; a failure to start, 1.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { flag, integer, text } from '../src/cli/args.ts';
import { command, helpText, runCommand, type CommandIO } from '../src/cli/command.ts';
import { statusWriter, type Status } from '../src/cli/health.ts';
import { asInput, EXIT, messageOf, UsageError } from '../src/cli/usage.ts';
import { JobError, validateJob } from '../proto/index.ts';
import { buildManifest } from '../src/weights/index.ts';
import { jobDocuments } from '../src/train/job.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { tokenizerFromJson, type Tokenizer } from '../src/train/tokenizers/index.ts';
import { CoordinatorServer } from './server.ts';

const positive = { min: 1 };
/** How often the status file is rewritten; `swarmtrain health` allows 60 s by default. */
const STATUS_INTERVAL_MS = 5_000;

const COORDINATOR_COMMAND = command({
  program: 'swarmtrain-coordinator',
  usage: '--job <job.json> [options]',
  about: `Serves a training job to the swarm's nodes (\`swarmtrain node --join <multiaddr>\`) and prints
every event as one JSON line; the first, "listening", gives the multiaddrs to join.`,
  options: {
    job: text('<file>', "the job: JSON of proto's JobSpec", { required: true }),
    base: text('<dir>', 'a Hugging Face checkpoint folder the job starts from (config.json, model.safetensors or its index, '
      + 'tokenizer.json); its config is the model\'s; nodes fetch its tensors from here and from each other'),
    tokenizer: text('<file>', "the job's tokenizer.json (Hugging Face format; default: the base's), or"),
    vocab: integer('<n>', "train a tokenizer of n tokens on the job's documents (default: the job's model.vocabSize, if it sets one)",
      positive),
    listen: text('<multiaddr>', 'where nodes reach the coordinator, repeatable (default /ip4/127.0.0.1/tcp/0)', { multiple: true }),
    announce: text('<multiaddr>', 'an address nodes reach the coordinator at besides the listening ones (e.g. a public address '
      + 'forwarded to it), repeatable', { multiple: true }),
    lan: flag("give nodes each other's private and loopback addresses too (a swarm on one routed private network); by default "
      + 'they go only to nodes behind the same address or on a private network with the coordinator'),
    'no-relay': flag('serve no circuit relay (by default nodes behind NATs reserve a slot here and are reached through it)'),
    token: text('<secret>', 'the join token nodes must present; none by default: an open swarm', { env: 'SWARMTRAIN_TOKEN' }),
    key: text('<file>', "keeps the coordinator's peer id across restarts (created if absent)"),
    'heartbeat-ms': integer('<n>', 'how often nodes heartbeat (default 1000)', positive),
    'node-timeout-ms': integer('<n>', 'a node silent this long is dead (default 15000)', positive),
    'lease-ms': integer('<n>', 'deadline of a lease of micro-batches (default 30000)', positive),
    replication: integer('<n>', 'nodes per expert (default 2)', positive),
    'status-file': text('<file>', 'rewritten every few seconds while serving (see `swarmtrain health`)'),
    data: text('<dir>', "the coordinator's data directory: checkpoints and the result go to <dir>/jobs/<jobId>/"),
    'checkpoint-every': integer('<rounds>', 'with --data: checkpoint every n averaging rounds and at the end (default 10)', positive),
    'keep-checkpoints': integer('<n>', 'with --data: checkpoints kept (default 3)', positive),
  },
  async run(values, io) {
    if (values.data === undefined && (values['checkpoint-every'] ?? values['keep-checkpoints']) !== undefined) {
      throw new UsageError('--checkpoint-every and --keep-checkpoints need --data <dir> (where checkpoints are written)');
    }
    // A job or option the server refuses (JobError, RangeError) is bad input; anything else, a failure.
    const server = await asInput(async () => {
      const job = validateJob(readJson('job', values.job), `job ${values.job}`);
      const base = values.base === undefined ? undefined : await readBase(values.base);
      if (base && (values.vocab !== undefined || (values.tokenizer ?? base.tokenizer) === undefined)) {
        throw new UsageError(`base ${values.base}: a pretrained base needs its own tokenizer: put tokenizer.json in the folder or give `
          + '--tokenizer (--vocab would train a new one, which the base cannot read)');
      }
      const tokenizer = tokenizerOf(job, values.tokenizer ?? base?.tokenizer, values.vocab);
      return CoordinatorServer.start({
        job, tokenizer, joinToken: values.token ?? '', ...(base ? { base } : {}),
        heartbeatMs: values['heartbeat-ms'],
        nodeTimeoutMs: values['node-timeout-ms'],
        leaseMs: values['lease-ms'],
        replication: values.replication,
        ...(values.data === undefined ? {} : { dataDir: values.data }),
        checkpointEvery: values['checkpoint-every'],
        keepCheckpoints: values['keep-checkpoints'],
        ...(values.listen ? { listen: values.listen } : {}),
        ...(values.announce ? { announce: values.announce } : {}),
        lan: values.lan, relay: !values['no-relay'],
        ...(values.key === undefined ? {} : { keyFile: values.key }),
        onEvent: (event) => io.stdout.write(`${JSON.stringify(event)}\n`),
      });
    }, (err) => err instanceof JobError || err instanceof RangeError);
    const statusPath = values['status-file'];
    const statusTimer = statusPath === undefined ? undefined
      : reportStatus(server, statusWriter(statusPath, (message) => io.stderr.write(`swarmtrain-coordinator: ${message}\n`)));

    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        resolve();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    clearInterval(statusTimer);
    await server.stop();
    return EXIT.ok;
  },
});

export const COORDINATOR_USAGE = helpText(COORDINATOR_COMMAND);

export const runCoordinator = (argv: string[], io?: CommandIO): Promise<number> => runCommand(COORDINATOR_COMMAND, argv, io);

/** Writes the server's status now and every STATUS_INTERVAL_MS: the timer firing is the sign the process still serves. */
function reportStatus(server: CoordinatorServer, write: (status: Status) => void): NodeJS.Timeout {
  const report = () => {
    const { peerId, addrs, nodes, completed, total, done } = server.status();
    const alive = nodes.filter((node) => node.status === 'alive').length;
    write({ role: 'coordinator', peerId, updatedAt: Date.now(), addrs, alive, completed, total, done });
  };
  report();
  return setInterval(report, STATUS_INTERVAL_MS);
}

function readJson(what: string, path: string): unknown {
  let json: string;
  try {
    json = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${what} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  try {
    return JSON.parse(json);
  } catch (err) {
    throw new UsageError(`${what} ${path}: not JSON (${(err as Error).message})`);
  }
}

/** A base checkpoint folder: its manifest and blobs (every tensor hashed here), and its tokenizer.json if it has one. */
async function readBase(dir: string) {
  try {
    const { manifest, blobs } = await buildManifest(dir);
    const tokenizer = join(dir, 'tokenizer.json');
    return { manifest, blobs, name: resolve(dir), ...(existsSync(tokenizer) ? { tokenizer } : {}) };
  } catch (err) {
    // A missing file, a bad config or safetensors header, a tensor the model lacks: all say the folder is not a usable base.
    throw new UsageError(`base ${dir}: ${messageOf(err)}`);
  }
}

/** The job's tokenizer: from a file (--tokenizer, or the base's tokenizer.json), or trained on the job's documents. */
function tokenizerOf(job: ReturnType<typeof validateJob>, file: string | undefined, vocab: number | undefined): Tokenizer {
  if (file !== undefined && vocab !== undefined) throw new UsageError('give --tokenizer or --vocab, not both');
  if (file !== undefined) {
    try {
      return tokenizerFromJson(readJson('tokenizer', file));
    } catch (err) {
      throw err instanceof UsageError ? err : new UsageError(`tokenizer ${file}: ${(err as Error).message}`);
    }
  }
  const modelVocab = job.model.vocabSize;
  const vocabSize = vocab ?? (typeof modelVocab === 'number' ? modelVocab : undefined);
  if (vocabSize === undefined) throw new UsageError('give --tokenizer <file> or --vocab <n> (the job sets no model.vocabSize)');
  return BpeTokenizer.train(jobDocuments(job).documents, { vocabSize });
}
