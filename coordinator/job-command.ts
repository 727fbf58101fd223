// `swarmtrain job <create|list|show|watch|pause|resume|cancel|delete|download>`: drives a coordinator
// over its HTTP API (coordinator/client.ts). Arguments come before the options; an unreachable
// coordinator or a 5xx exits 1; a refused request (401, 404, 409, bad spec) exits 2, like bad input.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, openAsBlob } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { extract } from 'tar-stream';
import { integer, text, type OptionTable, type OptionValues } from '../src/cli/args.ts';
import { command, runProgram, type CommandIO, type Program } from '../src/cli/command.ts';
import { EXIT, UsageError } from '../src/cli/usage.ts';
import { duration, ProgressLine } from '../src/train/cli.ts';
import { MODEL_FILE } from './api/schemas.ts';
import type { JobRequest, JobView, MetricPoint } from './api/service.ts';
import { ApiError, CoordinatorClient } from './client.ts';

const CONNECTION = {
  url: text('<url>', "the coordinator's HTTP API", { env: 'SWARMTRAIN_URL', default: 'http://127.0.0.1:8080', section: 'Coordinator:' }),
  token: text('<token>', "the coordinator's API token (env SWARMTRAIN_API_TOKEN, else SWARMTRAIN_TOKEN)"),
} as const;

type Connection = typeof CONNECTION;

interface JobSubcommand<O extends OptionTable> {
  /** Positional arguments, e.g. ['<id>']: they come before the options. */
  args: readonly string[];
  summary: string;
  about?: string;
  options: O;
  run(values: OptionValues<O & Connection>, args: string[], client: CoordinatorClient, io: CommandIO): Promise<number>;
}

const subcommand = <O extends OptionTable>(definition: JobSubcommand<O>): JobSubcommand<O> => definition;

/** Answers the coordinator refused become bad input (exit 2) with the server's words; its own failures (5xx) stay failures. */
function explained(err: unknown, client: CoordinatorClient): unknown {
  if (!(err instanceof ApiError)) return err;
  const hint = err.status === 401 ? ' (give --token or set SWARMTRAIN_API_TOKEN)' : '';
  const message = `${client.url} answered ${err.status}: ${err.message}${hint}`;
  return err.status < 500 ? new UsageError(message) : new Error(message);
}

/** The program for one call: each subcommand bound to the arguments that preceded the options. */
function jobProgram(args: string[]): Program {
  const commands = Object.fromEntries(Object.entries(SUBCOMMANDS).map(([name, sub]) => {
    const definition = sub as JobSubcommand<OptionTable>;
    const program = `swarmtrain job ${name}`;
    const bound = command({
      program,
      usage: `${[...definition.args, '[options]'].join(' ')}`,
      about: definition.about ?? definition.summary,
      options: { ...definition.options, ...CONNECTION },
      async run(values, io) {
        const expected = definition.args.length;
        if (args.length < expected) throw new UsageError(`missing ${definition.args[args.length]} (see ${program} --help)`);
        if (args.length > expected) throw new UsageError(`unexpected argument ${JSON.stringify(args[expected])} (see ${program} --help)`);
        const env = io.env ?? process.env;
        const token = values.token ?? (env.SWARMTRAIN_API_TOKEN || env.SWARMTRAIN_TOKEN || undefined);
        const client = new CoordinatorClient({ url: values.url, token });
        try {
          return await definition.run(values as OptionValues<OptionTable & Connection>, args, client, io);
        } catch (err) {
          throw explained(err, client);
        }
      },
    });
    return [name, { command: bound, synopsis: definition.args.join(' ') || undefined, summary: definition.summary }];
  }));
  return { name: 'swarmtrain job', commands };
}

/** `swarmtrain job ...`: argv after "job". */
export function runJobCommand(argv: string[], io?: CommandIO): Promise<number> {
  const [name, ...rest] = argv;
  const firstOption = rest.findIndex((arg) => arg.startsWith('-'));
  const args = firstOption < 0 ? rest : rest.slice(0, firstOption);
  return runProgram(jobProgram(args), [...(name === undefined ? [] : [name]), ...rest.slice(args.length)], io);
}

// --- create ------------------------------------------------------------------------------------

/** A name the coordinator accepts, unique to the content: re-running create reuses the upload. */
function uploadName(stem: string, digest: string): string {
  const clean = stem.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 40) || 'upload';
  return `${clean}-${digest.slice(0, 12)}`;
}

async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

async function readSpec(path: string): Promise<JobRequest> {
  let textOfSpec: string;
  try {
    textOfSpec = await readFile(path, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let spec: unknown;
  try {
    spec = JSON.parse(textOfSpec);
  } catch (err) {
    throw new UsageError(`${path} is not JSON: ${(err as Error).message}`);
  }
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new UsageError(`${path} must hold a JSON object (a job request)`);
  return spec as JobRequest;
}

async function uploadCorpus(client: CoordinatorClient, path: string, io: CommandIO): Promise<string> {
  const name = uploadName(basename(path, extname(path)), await sha256OfFile(path).catch((err: Error) => {
    throw new UsageError(`cannot read the corpus ${path}: ${err.message}`);
  }));
  if ((await client.corpora()).some((corpus) => corpus.name === name)) return name;
  io.stderr.write(`uploading corpus ${path} as ${name}\n`);
  await client.addCorpus(name, await openAsBlob(path), basename(path));
  return name;
}

async function uploadModel(client: CoordinatorClient, dir: string, io: CommandIO): Promise<string> {
  const names = (await readdir(dir).catch((err: Error) => {
    throw new UsageError(`cannot read the base folder ${dir}: ${err.message}`);
  })).filter((file) => MODEL_FILE.test(file)).sort();
  if (!names.includes('config.json')) throw new UsageError(`${dir} has no config.json: a base is a Hugging Face model folder`);
  const digest = createHash('sha256');
  for (const file of names) digest.update(`${file}\0${await sha256OfFile(join(dir, file))}\0`);
  const name = uploadName(basename(resolve(dir)), digest.digest('hex'));
  if ((await client.models()).some((model) => model.name === name)) return name;
  io.stderr.write(`uploading base ${dir} (${names.join(', ')}) as ${name}\n`);
  const files = await Promise.all(names.map(async (file) => ({ name: file, data: await openAsBlob(join(dir, file)) })));
  await client.addModel(name, files);
  return name;
}

// --- list, watch ------------------------------------------------------------------------------

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  return [header, ...rows].map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd()).join('\n') + '\n';
}

const percent = (job: JobView) => (job.total === 0 ? 0 : Math.floor((100 * job.completed) / job.total));

/** The watch line: progress, losses, speed, nodes and ETA from the job and its latest metric points. */
export function progressText(job: JobView, latest: MetricPoint | undefined, heldOut: number | undefined): string {
  const parts = [`${job.id} ${job.state}`, `${job.completed}/${job.total} batches (${percent(job)}%)`];
  if (latest?.loss !== undefined) parts.push(`loss ${latest.loss.toFixed(3)}`);
  if (heldOut !== undefined) parts.push(`held-out ${heldOut.toFixed(3)}`);
  if (latest !== undefined) parts.push(`${Math.round(latest.tokensPerSecond).toLocaleString('en-US')} tok/s`, `${latest.nodes} nodes`);
  if (job.etaSeconds !== undefined) parts.push(`ETA ${duration(job.etaSeconds)}`);
  return parts.join('  ');
}

const ENDED = new Set(['done', 'failed', 'cancelled']);

async function watch(client: CoordinatorClient, id: string, io: CommandIO): Promise<number> {
  const abort = new AbortController();
  // Subscribed before the first read, so no change between the read and the stream is missed.
  const events = await client.events(abort.signal);
  try {
    let job = await client.job(id);
    const history = await client.metrics(id, 50);
    let latest = history.at(-1);
    let heldOut = history.findLast((point) => point.heldOut !== undefined)?.heldOut;
    const line = new ProgressLine(io.stdout);
    // Off a terminal, a line per state or whole percent: a log of a long job stays short.
    let printed = '';
    const show = () => {
      const key = `${job.state} ${percent(job)}`;
      line.update(progressText(job, latest, heldOut), key !== printed);
      printed = key;
    };
    show();
    if (!ENDED.has(job.state)) {
      for await (const event of events) {
        if (event.type === 'job-deleted' && event.jobId === id) throw new Error(`job ${id} was deleted`);
        if (event.type === 'metrics' && event.jobId === id) {
          latest = event.point;
          heldOut = event.point.heldOut ?? heldOut;
        } else if (event.type === 'job' && event.job.id === id) {
          job = event.job;
        } else {
          continue;
        }
        show();
        if (ENDED.has(job.state)) break;
      }
      line.end();
    }
    if (!ENDED.has(job.state)) throw new Error(`the event stream from ${client.url} ended while job ${id} was ${job.state}`);
    if (job.state === 'done') return EXIT.ok;
    io.stderr.write(`swarmtrain job watch: job ${id} ${job.state}${job.error ? `: ${job.error}` : ''}\n`);
    return EXIT.failure;
  } finally {
    abort.abort();
  }
}

// --- download ---------------------------------------------------------------------------------

/** Unpacks a tar stream into `dir`, dropping the archive's top folder; refuses paths that leave `dir`. */
async function untarInto(stream: ReadableStream<Uint8Array>, dir: string): Promise<string[]> {
  const root = resolve(dir);
  const written: string[] = [];
  const reader = extract();
  // A broken download destroys `reader`, so the loop below throws; `feeding` is awaited at the end.
  const feeding = pipeline(Readable.fromWeb(stream as import('node:stream/web').ReadableStream), reader);
  feeding.catch(() => {});
  for await (const entry of reader) {
    const relative = entry.header.name.split('/').slice(1).join('/');
    if (entry.header.type !== 'file' || relative === '') {
      entry.resume();
      continue;
    }
    const target = resolve(root, relative);
    if (!target.startsWith(root + sep)) throw new Error(`the archive holds a path outside its folder: ${entry.header.name}`);
    await mkdir(dirname(target), { recursive: true });
    await pipeline(entry, createWriteStream(target));
    written.push(target);
  }
  await feeding;
  return written;
}

// --- the subcommands --------------------------------------------------------------------------

const ID = ['<id>'] as const;

const SUBCOMMANDS = {
  create: subcommand({
    args: ['<spec.json>'],
    summary: 'queue a job from a JSON job request; prints its id',
    about: 'Queues a job and prints its id. <spec.json> holds a job request: any job field (lr, totalBatches, model, ...;\n' +
      "the coordinator's defaults give the rest), plus name, base and corpus naming what the coordinator has.\n" +
      '--corpus and --base upload a local file or folder first (once: an upload with the same content is reused).',
    options: {
      corpus: text('<file>', 'upload this corpus (.txt, or .jsonl with a text field per line) and train on it'),
      base: text('<dir>', 'upload this Hugging Face model folder (config.json, tokenizer.json, *.safetensors) as the base'),
      name: text('<name>', 'the job name shown in lists (default: the job id)'),
    },
    async run(values, [specPath], client, io) {
      const request = await readSpec(specPath);
      if (values.corpus !== undefined) request.corpus = await uploadCorpus(client, values.corpus, io);
      if (values.base !== undefined) request.base = await uploadModel(client, values.base, io);
      if (values.name !== undefined) request.name = values.name;
      const job = await client.createJob(request);
      io.stdout.write(`${job.id}\n`);
      return EXIT.ok;
    },
  }),
  list: subcommand({
    args: [],
    summary: 'every job: id, name, state, progress, ETA',
    options: {},
    async run(_values, _args, client, io) {
      const jobs = await client.jobs();
      const rows = jobs.map((job) => [
        job.id, job.name, job.state, `${job.completed}/${job.total} (${percent(job)}%)`,
        job.etaSeconds === undefined ? '-' : duration(job.etaSeconds), new Date(job.createdAt).toISOString().slice(0, 19).replace('T', ' '),
      ]);
      io.stdout.write(jobs.length === 0 ? 'no jobs\n' : table(['ID', 'NAME', 'STATE', 'PROGRESS', 'ETA', 'CREATED (UTC)'], rows));
      return EXIT.ok;
    },
  }),
  show: subcommand({
    args: ID, summary: 'one job as JSON', options: {},
    async run(_values, [id], client, io) {
      io.stdout.write(`${JSON.stringify(await client.job(id), null, 2)}\n`);
      return EXIT.ok;
    },
  }),
  watch: subcommand({
    args: ID,
    summary: "follow a job's progress live; exits 0 when it is done, 1 if it failed or was cancelled",
    options: {},
    run: (_values, [id], client, io) => watch(client, id, io),
  }),
  pause: subcommand({
    args: ID, summary: 'pause a running job', options: {},
    async run(_values, [id], client, io) {
      io.stdout.write(`${id} ${(await client.pauseJob(id)).state}\n`);
      return EXIT.ok;
    },
  }),
  resume: subcommand({
    args: ID, summary: 'resume a paused job', options: {},
    async run(_values, [id], client, io) {
      io.stdout.write(`${id} ${(await client.resumeJob(id)).state}\n`);
      return EXIT.ok;
    },
  }),
  cancel: subcommand({
    args: ID, summary: 'cancel a queued, running or paused job (its checkpoints stay)', options: {},
    async run(_values, [id], client, io) {
      io.stdout.write(`${id} ${(await client.cancelJob(id)).state}\n`);
      return EXIT.ok;
    },
  }),
  delete: subcommand({
    args: ID, summary: 'delete a job that is not running or paused, with its files', options: {},
    async run(_values, [id], client, io) {
      await client.deleteJob(id);
      io.stdout.write(`${id} deleted\n`);
      return EXIT.ok;
    },
  }),
  download: subcommand({
    args: ID,
    summary: "unpack a job's result (or a checkpoint) into a folder",
    options: {
      output: text('<dir>', 'where the files go (created if absent)', { short: 'o', required: true }),
      checkpoint: integer('<round>', 'the checkpoint of this round instead of the result', { min: 0 }),
    },
    async run(values, [id], client, io) {
      const files = await untarInto(await client.download(id, values.checkpoint), values.output);
      io.stdout.write(files.map((file) => `${file}\n`).join(''));
      return EXIT.ok;
    },
  }),
};

/** `job` in swarmtrain's own command list. runCli hands `job ...` to runJobCommand; run alone, this prints the job commands. */
export const JOB_HELP_COMMAND = command({
  program: 'swarmtrain job',
  usage: '<command> [arguments] [options]',
  options: {},
  run: (_values, io) => runJobCommand([], io),
});
