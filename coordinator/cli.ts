// `swarmtrain coordinator` (alias `swarmtrain-coordinator`): without --job, the service: a job queue in
// --data (SQLite), the HTTP API on --http, nodes staying in the swarm across jobs, and after a restart
// on the same --data the running job goes on. With --job, one job: served, then the swarm closes (its
// nodes leave). Prints every coordinator event as one JSON line on stdout, the first being
// {"event":"listening","addrs":[".../p2p/<peerId>"]}. SIGINT/SIGTERM stop it cleanly (exit 0). Bad input
// (options, the job file, the tokenizer, the base checkpoint) ends with one line on stderr and exit code 2; a failure to start, 1.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { flag, integer, text } from '../src/cli/args.ts';
import { command, helpText, runCommand, type CommandIO } from '../src/cli/command.ts';
import { statusWriter, type Status } from '../src/cli/health.ts';
import { asInput, EXIT, messageOf, UsageError } from '../src/cli/usage.ts';
import { JobError, validateJob, type JobSpec } from '../proto/index.ts';
import { buildManifest } from '../src/weights/index.ts';
import { jobDocuments } from '../src/train/job.ts';
import { CorpusError, loadTextCorpus, type TextCorpus } from '../src/train/text-corpus.ts';
import { BpeTokenizer } from '../src/train/tokenizer.ts';
import { tokenizerFromJson, type Tokenizer } from '../src/train/tokenizers/index.ts';
import { jobOnText } from './corpus.ts';
import { buildApi, listenApi } from './http/app.ts';
import { uiPlugin } from './ui/plugin.ts';
import { CoordinatorServer } from './server.ts';
import { CoordinatorService } from './service.ts';

const positive = { min: 1 };
/** How often the status file is rewritten; `swarmtrain health` allows 60 s by default. */
const STATUS_INTERVAL_MS = 5_000;

export const COORDINATOR_COMMAND = command({
  program: 'swarmtrain coordinator',
  usage: '[--data <dir>] [--http <host:port>] [options]  |  --job <job.json> [options]',
  about: `Runs a swarm's coordinator: nodes join it (\`swarmtrain node --join <multiaddr>\`) and train its jobs.
Without --job it is a service: jobs are created, watched and fetched over the HTTP API (\`swarmtrain job\`,
or the web UI at the --http address) and queued in --data, which also holds checkpoints and results; a
restart on the same --data carries on with the running job. With --job it serves that one job, and
its nodes leave when it is done. Every event is printed as one JSON line; the first, "listening", gives
the multiaddrs to join.`,
  options: {
    job: text('<file>', "serve this one job (JSON of proto's JobSpec), then close the swarm"),
    http: text('<host:port>', 'the HTTP API and web UI (service mode; default 127.0.0.1:8080)', { section: 'Service (without --job):' }),
    public: flag('serve the HTTP API on every interface (0.0.0.0, same port) instead of --http\'s host'),
    'api-token': text('<secret>', 'the bearer token of the API\'s state-changing routes (default: <data>/api-token, created and '
      + 'printed on first start)', { env: 'SWARMTRAIN_API_TOKEN' }),
    'protect-reads': flag("the API's read-only routes need the token too"),
    base: text('<dir>', 'a Hugging Face checkpoint folder the job starts from (config.json, model.safetensors or its index, '
      + 'tokenizer.json); its config is the model\'s; nodes fetch its tensors from here and from each other'),
    corpus: text('<path>', "the job's documents from your own text (instead of the job's bundled corpus, which stays its label): "
      + 'a .txt file (paragraphs separated by blank lines are documents), a folder of .txt files (one document each) or '
      + 'a .jsonl file (a "text" field per line); nodes fetch it from here and from each other, checked by sha256'),
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
    'balance-experts-ms': integer('<n>', "look at the rows routed to each node's experts every n ms, and swap experts between "
      + "nodes when one node's are more than 5% over its speed's share (default 10000; 0: never)", { min: 0 }),
    'status-file': text('<file>', 'rewritten every few seconds while serving (see `swarmtrain health`)'),
    data: text('<dir>', "the coordinator's data directory: its job store, key, models/, corpora/, and each job's checkpoints and "
      + 'result under jobs/<jobId>/ (default ./swarmtrain-data without --job)'),
    'checkpoint-every': integer('<rounds>', 'with --data: checkpoint every n averaging rounds and at the end (default 10)', positive),
    'keep-checkpoints': integer('<n>', 'with --data: checkpoints kept (default 3)', positive),
  },
  async run(values, io) {
    const print = (event: object) => io.stdout.write(`${JSON.stringify(event)}\n`);
    const swarm = {
      joinToken: values.token ?? '',
      heartbeatMs: values['heartbeat-ms'],
      nodeTimeoutMs: values['node-timeout-ms'],
      leaseMs: values['lease-ms'],
      replication: values.replication,
      balanceExpertsMs: values['balance-experts-ms'],
      checkpointEvery: values['checkpoint-every'],
      keepCheckpoints: values['keep-checkpoints'],
      ...(values.listen ? { listen: values.listen } : {}),
      ...(values.announce ? { announce: values.announce } : {}),
      lan: values.lan, relay: !values['no-relay'],
      onEvent: print,
    };
    let stopService: () => Promise<unknown>;
    let server: CoordinatorServer;
    if (values.job === undefined) {
      for (const option of ['base', 'corpus', 'tokenizer', 'vocab', 'key'] as const) {
        if (values[option] !== undefined) {
          throw new UsageError(`--${option} belongs with --job (a service's jobs name their base and corpus over the API)`);
        }
      }
      const dataDir = resolve(values.data ?? 'swarmtrain-data');
      const apiToken = values['api-token'] ?? apiTokenOf(dataDir, print);
      const service = await asInput(() => CoordinatorService.start({ ...swarm, dataDir }), (err) => err instanceof RangeError);
      const app = buildApi({ service, apiToken, protectReads: values['protect-reads'] ?? false });
      app.register(uiPlugin);
      try {
        const address = values.public ? `0.0.0.0:${portOf(values.http ?? '127.0.0.1:8080')}` : values.http ?? '127.0.0.1:8080';
        print({ event: 'http', url: await listenApi(app, address), at: Date.now() });
      } catch (err) {
        await service.stop();
        throw new UsageError(`--http: ${messageOf(err)}`);
      }
      server = service.coordinator;
      stopService = async () => {
        await app.close();
        await service.stop();
      };
    } else {
      for (const option of ['http', 'public', 'protect-reads'] as const) {
        if (values[option]) throw new UsageError(`--${option} is for the service (without --job)`);
      }
      if (values.data === undefined && (values['checkpoint-every'] ?? values['keep-checkpoints']) !== undefined) {
        throw new UsageError('--checkpoint-every and --keep-checkpoints need --data <dir> (where checkpoints are written)');
      }
      const jobFile = values.job;
      // A job or option the server refuses (JobError, RangeError) is bad input; anything else, a failure.
      server = await asInput(async () => {
        const job = validateJob(readJson('job', jobFile), `job ${jobFile}`);
        const base = values.base === undefined ? undefined : await readBase(values.base);
        if (base && (values.vocab !== undefined || (values.tokenizer ?? base.tokenizer) === undefined)) {
          throw new UsageError(`base ${values.base}: a pretrained base needs its own tokenizer: put tokenizer.json in the folder or give `
            + '--tokenizer (--vocab would train a new one, which the base cannot read)');
        }
        const corpus = values.corpus === undefined ? undefined : readCorpus(values.corpus);
        const tokenizer = tokenizerOf(job, values.tokenizer ?? base?.tokenizer, values.vocab, corpus);
        return CoordinatorServer.start({
          ...swarm, job, tokenizer, ...(base ? { base } : {}), ...(corpus ? { corpus } : {}),
          ...(values.data === undefined ? {} : { dataDir: values.data }),
          ...(values.key === undefined ? {} : { keyFile: values.key }),
        });
      }, (err) => err instanceof JobError || err instanceof RangeError);
      stopService = () => server.stop();
    }
    const statusPath = values['status-file'];
    const statusTimer = statusPath === undefined ? undefined
      : reportStatus(server, statusWriter(statusPath, (message) => io.stderr.write(`swarmtrain coordinator: ${message}\n`)));

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
    await stopService();
    return EXIT.ok;
  },
});

/** The API token kept in the data directory: made on first start (and printed once, as the `api-token` event). */
function apiTokenOf(dataDir: string, print: (event: object) => void): string {
  const file = join(dataDir, 'api-token');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  mkdirSync(dataDir, { recursive: true });
  const token = randomBytes(24).toString('base64url');
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  print({ event: 'api-token', token, file, at: Date.now() });
  return token;
}

function portOf(address: string): string {
  const port = /:(\d{1,5})$/.exec(address)?.[1];
  if (port === undefined) throw new UsageError(`--http must be host:port, e.g. 127.0.0.1:8080, got "${address}"`);
  return port;
}

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

function readCorpus(path: string): TextCorpus {
  try {
    return loadTextCorpus(path);
  } catch (err) {
    throw err instanceof CorpusError ? new UsageError(err.message) : err;
  }
}

/** The job's tokenizer: from a file (--tokenizer, or the base's tokenizer.json), or trained on the job's documents. */
function tokenizerOf(job: JobSpec, file: string | undefined, vocab: number | undefined, corpus: TextCorpus | undefined): Tokenizer {
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
  const own = corpus && jobOnText(job, corpus);
  return BpeTokenizer.train(jobDocuments(own?.job ?? job, own?.text).documents, { vocabSize });
}
