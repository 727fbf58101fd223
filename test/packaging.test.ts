// Packaging, checked without a Docker engine: what the Dockerfile copies exists in the repo and
// survives .dockerignore; the runtime stage gets every kernel the build produces; the entry
// scripts exist, are executable and reach their CLI with every flag they pass accepted; and,
// the node's gives each running replica its own key and port; the HEALTHCHECK runs a real command
// on the status file both entry scripts write; and (docker-compose 1.29, `apt-get install
// docker-compose`, required under CI=true) the compose file validates with and without its profile,
// uses no host networking unless docker-compose.host.yml opts in, publishes only on 127.0.0.1, sets
// the variables each entry script reads, keeps keys on volumes, and its demo job is a valid job.
// The compiled bundle the image runs (src/bundle.ts) is built and run here too.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { COORDINATOR_USAGE } from '../coordinator/cli.ts';
import { helpText } from '../src/cli/command.ts';
import { HEALTH_COMMAND, writeStatus } from '../src/cli/health.ts';
import { validateJob } from '../proto/index.ts';
import { bundle, bundleClis } from '../src/bundle.ts';
import { NODE_USAGE } from '../node/command.ts';
import { createConfig, type ModelConfig } from '../src/model/config.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFileSync(join(root, path), 'utf8');

interface Instruction { keyword: string; args: string }
interface Stage { name: string; base: string; workdir: string; instructions: Instruction[] }

/** The Dockerfile's stages, with continuation lines joined and ARG defaults substituted in FROM. */
function dockerfileStages(text: string): Stage[] {
  const lines = text.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    const [, keyword, rest] = /^(\S+)\s+(.*)$/.exec(line)!;
    const upper = keyword.toUpperCase();
    if (upper === 'ARG' && stages.length === 0) {
      const [name, value = ''] = rest.split('=');
      args.set(name, value);
    } else if (upper === 'FROM') {
      const [image, , name] = rest.replace(/\$\{(\w+)\}/g, (_, arg: string) => args.get(arg) ?? '').split(/\s+/);
      stages.push({ name: name ?? String(stages.length), base: image, workdir: '/', instructions: [] });
    } else {
      const stage = stages.at(-1)!;
      if (upper === 'WORKDIR') stage.workdir = posix.resolve(stage.workdir, rest);
      stage.instructions.push({ keyword: upper, args: rest });
    }
  }
  return stages;
}

interface Copy { from?: string; sources: string[]; destination: string }

function copiesOf(stage: Stage): Copy[] {
  return stage.instructions.filter((i) => i.keyword === 'COPY').map((i) => {
    const words = i.args.split(/\s+/);
    const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
    const paths = words.filter((w) => !w.startsWith('--'));
    return { from, sources: paths.slice(0, -1), destination: paths.at(-1)! };
  });
}

/** Whether `path` (relative to the build context) is left out of it by a .dockerignore pattern. */
function dockerignored(path: string, patterns: string[]): boolean {
  const parts = posix.normalize(path).replace(/\/$/, '').split('/');
  return patterns.some((pattern) => {
    const glob = pattern.replace(/^\//, '').replace(/\/$/, '');
    const regexSource = glob
      .replace(/[.+^$()|[\]{}]/g, '\\$&')
      .replace(/\*\*/g, '\u0000')
      .replace(/\*/g, '[^/]*')
      .replace(/\?/g, '[^/]')
      .replace(/\u0000/g, '.*');
    const regex = new RegExp(`^${regexSource}$`);
    // Leaving out a folder leaves out everything in it.
    return parts.some((_, i) => regex.test(parts.slice(0, i + 1).join('/')));
  });
}

/** The repo file an absolute path of the image stands for: the runtime copies the repo to its WORKDIR. */
function repoPath(imagePath: string, workdir: string): string {
  const path = posix.normalize(imagePath).replace(/\/$/, '');
  if (path === workdir) return '';
  expect(path.startsWith(`${workdir}/`), `${imagePath} is outside the image's ${workdir}`).toBe(true);
  return path.slice(workdir.length + 1);
}

function expectExecutableScript(path: string): void {
  expect(existsSync(join(root, path)), `${path} does not exist`).toBe(true);
  expect(statSync(join(root, path)).mode & 0o111, `${path} is not executable (chmod +x)`).not.toBe(0);
  expect(read(path).startsWith('#!/bin/sh\n'), `${path} lacks a #!/bin/sh line`).toBe(true);
}

/** SWARMTRAIN_* variables a script reads. */
const variablesRead = (script: string) => new Set([...script.matchAll(/\$\{?(SWARMTRAIN_\w+)/g)].map((m) => m[1]));

/** Runs an entry script with only PATH and HOME from this process, plus `env`. */
function runScript(path: string, env: Record<string, string>, args: string[] = []) {
  const result = spawnSync(join(root, path), args, {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, encoding: 'utf8', timeout: 60_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The value after `flag` in an argument list. */
const flagValue = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

/** The --status-file an entry script passes (the same literal path in every container). */
const statusFileOf = (script: string) => /--status-file (\S+)/.exec(read(script))?.[1];

const stages = dockerfileStages(read('Dockerfile'));
const runtime = stages.at(-1)!;
const build = stages.find((s) => s.name === 'build');
const ignorePatterns = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
/** The repo paths the runtime stage copies out of the build stage ('' for the whole of it). */
const fromBuildStage = (): string[] =>
  copiesOf(runtime).filter((c) => c.from === 'build').flatMap((c) => c.sources.map((s) => repoPath(s, build!.workdir)));
/** Whether the runtime gets `path` of the build stage: it copies that path or a folder holding it. */
const runtimeGets = (path: string): boolean =>
  fromBuildStage().some((copied) => copied === '' || path === copied || path.startsWith(`${copied}/`));
const entrypointOf = (stage: Stage): string[] =>
  JSON.parse(stage.instructions.findLast((i) => i.keyword === 'ENTRYPOINT')!.args) as string[];

describe('Dockerfile', () => {
  it('copies from the build context only paths that exist and that .dockerignore keeps', () => {
    const sources = stages.flatMap(copiesOf).filter((c) => c.from === undefined).flatMap((c) => c.sources);
    expect(sources.length).toBeGreaterThan(0);
    for (const source of sources) {
      expect(existsSync(join(root, source)), `COPY ${source}: no such path in the repo`).toBe(true);
      expect(dockerignored(source, ignorePatterns), `COPY ${source}: left out of the build context by .dockerignore`).toBe(false);
    }
    // What the image builds for itself must not come from the host.
    expect(dockerignored('node_modules', ignorePatterns)).toBe(true);
    expect(dockerignored('src/kernels/build/simd.wasm', ignorePatterns)).toBe(true);
  });

  it('builds the kernels with the `prepare` script and gives the runtime every kernel build', () => {
    expect(build, 'a stage named build').toBeDefined();
    const prepare = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.prepare;
    // The kernels' build, then the web UI's: each `node <script>`.
    const scripts = prepare.split('&&').map((step) => /^node (\S+)$/.exec(step.trim())?.[1]);
    expect(scripts.length, `prepare is ${JSON.stringify(prepare)}`).toBeGreaterThan(0);
    const npmCi = build!.instructions.findIndex((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args));
    const copiedBefore = copiesOf({ ...build!, instructions: build!.instructions.slice(0, npmCi) }).flatMap((c) => c.sources);
    expect(npmCi).toBeGreaterThan(0);
    for (const script of scripts) {
      expect(script, `prepare is ${JSON.stringify(prepare)}`).toBeDefined();
      expect(copiedBefore.some((source) => source === '.' || source === script), `copied before npm ci: ${copiedBefore}`).toBe(true);
    }

    // Every build there is (src/kernels/build/ exists after `npm install`, which runs the same script).
    const built = readdirSync(join(root, 'src/kernels/build')).filter((f) => f.endsWith('.wasm')).map((f) => `src/kernels/build/${f}`);
    expect(built.length).toBeGreaterThan(0);
    for (const kernel of built) expect(runtimeGets(kernel), kernel).toBe(true);
  });

  it('runs on Node 22 or newer as a non-root user, from an executable entry script', () => {
    for (const stage of stages) {
      const major = Number(/^node:(\d+)/.exec(stage.base)?.[1]);
      expect(major, `stage ${stage.name} is based on ${stage.base}`).toBeGreaterThanOrEqual(22);
    }
    const user = runtime.instructions.findLast((i) => i.keyword === 'USER')?.args;
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user);
    const [script] = entrypointOf(runtime);
    expectExecutableScript(repoPath(script, runtime.workdir));
  });

  it('checks health with `swarmtrain health` on the status file both entry scripts write', () => {
    const healthcheck = runtime.instructions.findLast((i) => i.keyword === 'HEALTHCHECK')?.args;
    expect(healthcheck, 'a HEALTHCHECK in the runtime stage').toBeDefined();
    const [, options, cmd] = /^(.*?)\s*CMD\s+(\[.*\])$/.exec(healthcheck!)!;
    expect(options).toMatch(/--interval=\d+s/);
    const [program, bundleName, ...args] = JSON.parse(cmd) as string[];
    expect([program, bundleName, args[0]]).toEqual(['node', 'dist/swarmtrain.mjs', 'health']);
    const statusFile = flagValue(args, '--status');
    for (const script of ['node/docker-entry.sh', 'coordinator/docker-entry.sh']) expect(statusFileOf(script), script).toBe(statusFile);

    // The same command, from the TypeScript CLI: --help is its real help; on a fresh and a stale file, 0 and 1.
    const cli = (...extra: string[]) =>
      spawnSync(process.execPath, [join(root, 'node/bin.mjs'), ...extra], { encoding: 'utf8', timeout: 60_000 });
    const help = cli('health', '--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toBe(helpText(HEALTH_COMMAND));
    const dir = mkdtempSync(join(tmpdir(), 'swarmtrain-healthcheck-'));
    try {
      const file = join(dir, 'status.json');
      const withFile = args.map((arg) => (arg === statusFile ? file : arg));
      writeStatus(file, { role: 'node', peerId: '12D3KooWExample', updatedAt: Date.now() });
      expect(cli(...withFile).status).toBe(0);
      writeStatus(file, { role: 'node', peerId: '12D3KooWExample', updatedAt: Date.now() - 3_600_000 });
      const stale = cli(...withFile);
      expect(stale.status).toBe(1);
      expect(stale.stderr).toMatch(/^unhealthy: node 12D3KooWExample: last sign of work 36\d\d s ago$/m);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('compiled bundle (npm run build)', () => {
  it('the image builds it and runs it', () => {
    expect(build!.instructions.some((i) => i.keyword === 'RUN' && /\bnpm run build\b/.test(i.args))).toBe(true);
    expect(runtimeGets('dist/swarmtrain.mjs') && runtimeGets('dist/coordinator.mjs')).toBe(true);
    for (const [script, bundleName] of [['node/docker-entry.sh', 'swarmtrain'], ['coordinator/docker-entry.sh', 'coordinator']]) {
      expect(read(script)).toContain(`dist/${bundleName}.mjs`);
    }
  });

  it('answers as the TypeScript CLIs do and finds its kernels (builds, pool worker) beside it', async () => {
    mkdirSync(join(root, 'tmp'), { recursive: true }); // inside the repo: packages resolve from its node_modules
    const out = mkdtempSync(join(root, 'tmp', 'bundle-'));
    try {
      await bundleClis(out);
      const help = (...args: string[]) => spawnSync(process.execPath, [...args, '--help'], { encoding: 'utf8', timeout: 60_000 }).stdout;
      expect(help(join(out, 'swarmtrain.mjs'), 'node')).toBe(NODE_USAGE);
      expect(help(join(out, 'swarmtrain.mjs'))).toBe(help(join(root, 'node/bin.mjs')));
      expect(help(join(out, 'coordinator.mjs'))).toBe(COORDINATOR_USAGE);
      // A kernel product on two threads from a bundle: the module and the worker load from dist's copies.
      await bundle({
        'probe.mjs': "import { createKernels } from './src/kernels/index.ts';\n" +
          'const k = await createKernels({ threads: 2 });\n' +
          'const a = k.heap.f32(64 * 64).fill(1), c = k.heap.f32(64 * 64);\n' +
          'k.gemm.gemm({ a, b: a, c, m: 64, n: 64, k: 64 });\n' +
          'console.log(JSON.stringify({ threads: k.info.threads, c: c[0] }));\nawait k.close();\n',
      }, out);
      const probe = spawnSync(process.execPath, [join(out, 'probe.mjs')], { encoding: 'utf8', timeout: 60_000 });
      expect(probe.stderr).toBe('');
      expect(JSON.parse(probe.stdout)).toEqual({ threads: 2, c: 64 });
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

const JOIN = '/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDvPbw4wevnX5Bv2VPJix9iQHA3oZDeXt8EjonUiaPFN2';

describe('entry scripts', () => {
  let keys: string;
  beforeEach(() => {
    keys = mkdtempSync(join(tmpdir(), 'swarmtrain-keys-'));
  });
  afterEach(() => rmSync(keys, { recursive: true, force: true }));

  it('node/docker-entry.sh passes only flags `swarmtrain node` accepts', () => {
    const env = {
      SWARMTRAIN_JOIN: JOIN, SWARMTRAIN_TOKEN: 'secret', SWARMTRAIN_MEMORY: '1GB', SWARMTRAIN_THREADS: '2', SWARMTRAIN_KEYS: keys,
    };
    // The CLI parses strictly before it looks at --help: an unknown flag would exit 2.
    const run = runScript('node/docker-entry.sh', env, ['--help']);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(NODE_USAGE);
  });

  it('node/docker-entry.sh gives each running replica its own key and port, and a restarted replica its own back', async () => {
    // A stand-in for `node` on PATH: prints the arguments the script execs it with, then runs until killed.
    const bin = join(keys, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'node'), '#!/bin/sh\necho "$@"\nexec sleep 60\n', { mode: 0o755 });
    const env = {
      PATH: `${bin}:${process.env.PATH}`, HOME: process.env.HOME, SWARMTRAIN_JOIN: JOIN, SWARMTRAIN_KEYS: join(keys, 'shared'),
    };
    const replicas: ChildProcess[] = [];
    const startReplica = async () => {
      const child = spawn(join(root, 'node/docker-entry.sh'), [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
      replicas.push(child);
      const [line] = await once(child.stdout!, 'data') as [Buffer];
      const args = line.toString().trim().split(' ');
      return { child, key: flagValue(args, '--key'), listen: flagValue(args, '--listen') };
    };
    try {
      const first = await startReplica();
      const second = await startReplica();
      const third = await startReplica();
      expect([first, second, third].map((r) => [r.key, r.listen])).toEqual([1, 2, 3].map((slot) =>
        [join(keys, 'shared', `node-${slot}.key`), `/ip4/0.0.0.0/tcp/${4001 + slot}`]));
      // The second stops (its process, holding the lock, exits); the next start takes its slot, not a fourth.
      second.child.kill('SIGKILL');
      await once(second.child, 'close');
      expect((await startReplica()).key).toBe(second.key);
    } finally {
      for (const child of replicas) child.kill('SIGKILL');
    }
  });

  it('node/docker-entry.sh without SWARMTRAIN_JOIN says what to set and exits 2', () => {
    const run = runScript('node/docker-entry.sh', {});
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/set SWARMTRAIN_JOIN to the coordinator's multiaddr/);
  });

  it('coordinator/docker-entry.sh passes only flags `swarmtrain-coordinator` accepts', () => {
    const env = { SWARMTRAIN_TOKEN: 'secret', SWARMTRAIN_VOCAB: '512', SWARMTRAIN_TOKENIZER: 'tokenizer.json' };
    const run = runScript('coordinator/docker-entry.sh', env, ['--help']);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(COORDINATOR_USAGE);
  });
});

// --- docker-compose.yml, through docker-compose's own parser and validator ---------------------

// Never skipped: where docker-compose is missing these tests fail and say how to install it (.ci/run does).
const composeMissing = spawnSync('docker-compose', ['version'], { encoding: 'utf8' }).status !== 0
  ? 'docker-compose is not installed (apt-get install docker-compose)'
  : spawnSync('python3', ['-c', 'import yaml'], { encoding: 'utf8' }).status !== 0
    ? 'python3 with yaml (to read docker-compose config) is missing'
    : undefined;

interface Service {
  entrypoint?: string[];
  environment?: Record<string, string>;
  profiles?: string[];
  volumes?: string[];
  /** docker-compose 1.29 writes short syntax, [host_ip:][published:]target[/protocol]. */
  ports?: string[];
  network_mode?: string;
  container_name?: string;
  healthcheck?: { disable?: boolean; test?: string[] };
}

/** A port mapping's parts: the host address it binds (all of them when absent) and the container's port. */
function portMapping(mapping: string): { hostIp?: string; target: number } {
  const parts = mapping.replace(/\/(tcp|udp)$/, '').split(':');
  return { hostIp: parts.length === 3 ? parts[0] : undefined, target: Number(parts.at(-1)) };
}

/** `docker-compose config` (validated, variables at their defaults) as an object, for the base file and `overrides`. */
interface ComposeConfig { services: Record<string, Service>; volumes?: Record<string, unknown> }

function composeConfig(profiles: string[], overrides: string[] = []): ComposeConfig {
  expect(composeMissing, 'what the docker-compose.yml checks need').toBeUndefined();
  // No .env and no SWARMTRAIN_* from this shell: the defaults are what is checked.
  const dir = mkdtempSync(join(tmpdir(), 'swarmtrain-compose-'));
  writeFileSync(join(dir, '.env'), '');
  const files = ['docker-compose.yml', ...overrides].flatMap((file) => ['-f', join(root, file)]);
  const args = [...files, '--env-file', join(dir, '.env'), ...profiles.flatMap((p) => ['--profile', p]), 'config'];
  const config = spawnSync('docker-compose', args, { env: { PATH: process.env.PATH, HOME: process.env.HOME }, encoding: 'utf8' });
  rmSync(dir, { recursive: true });
  expect(config.stderr, `docker-compose ${args.join(' ')}`).toBe('');
  expect(config.status).toBe(0);
  const yamlToJson = 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)';
  const json = spawnSync('python3', ['-c', yamlToJson], { input: config.stdout, encoding: 'utf8' });
  expect(json.status, json.stderr).toBe(0);
  return JSON.parse(json.stdout) as ComposeConfig;
}

describe('docker-compose.yml', () => {
  let withProfile: ReturnType<typeof composeConfig> | undefined;
  beforeAll(() => {
    withProfile = composeConfig(['coordinator']);
  });

  it('validates as it is and with the coordinator profile; the coordinator is only in that profile', () => {
    const plain = composeConfig([]);
    expect(Object.keys(plain.services).sort()).toEqual(['coordinator', 'node']);
    expect(plain.services.node.profiles).toBeUndefined();
    expect(withProfile!.services.coordinator.profiles).toEqual(['coordinator']);
  });

  it("sets exactly the variables each service's entry script reads, and keeps keys on a volume", () => {
    for (const [name, service] of Object.entries(withProfile!.services)) {
      const script = repoPath((service.entrypoint ?? entrypointOf(runtime))[0], runtime.workdir);
      expectExecutableScript(script);
      expect(new Set(Object.keys(service.environment ?? {})), `${name}: environment vs ${script}`).toEqual(variablesRead(read(script)));
      // The coordinator's one key file; the node's folder of per-replica keys.
      const key = service.environment!.SWARMTRAIN_KEY ?? service.environment!.SWARMTRAIN_KEYS;
      const mounts = (service.volumes ?? []).map((v) => v.split(':'));
      const volume = mounts.find(([source, target]) => `${key}/`.startsWith(`${target}/`) && withProfile!.volumes?.[source] !== undefined);
      expect(volume, `${name}: its key ${key} is on no named volume`).toBeDefined();
    }
  });

  it('scales nodes: no fixed key, container name or published port shared by replicas', () => {
    const node = withProfile!.services.node;
    expect(node.environment!.SWARMTRAIN_KEY).toBeUndefined();
    expect(node.environment!.SWARMTRAIN_KEYS).toBeDefined();
    expect(node.container_name).toBeUndefined();
    expect(node.ports).toBeUndefined();
  });

  it('uses bridge networking and publishes on 127.0.0.1 only, unless told otherwise; host networking is an opt-in file', () => {
    for (const [name, service] of Object.entries(withProfile!.services)) {
      expect(service.network_mode, name).toBeUndefined();
      expect(service.healthcheck?.disable, `${name} turns the image's HEALTHCHECK off`).toBeFalsy();
      for (const port of service.ports ?? []) expect(portMapping(port).hostIp, `${name} publishes ${port}`).toBe('127.0.0.1');
    }
    const host = composeConfig(['coordinator'], ['docker-compose.host.yml']);
    expect(host.services.node.network_mode).toBe('host');
    expect(host.services.coordinator.network_mode).toBeUndefined();
  });

  it(
    'the coordinator runs the service by default, publishing its swarm port and HTTP API; the demo job it can serve instead is valid',
    () => {
      const coordinator = withProfile!.services.coordinator;
      const env = coordinator.environment!;
      expect(env.SWARMTRAIN_JOB).toBe('');
      const job = validateJob(JSON.parse(read('coordinator/jobs/demo.json')));
      createConfig(job.model as Partial<ModelConfig>); // throws on an inconsistent model
      // Given neither SWARMTRAIN_VOCAB nor a tokenizer, the coordinator trains one of the model's vocabSize.
      if (env.SWARMTRAIN_VOCAB === '' && env.SWARMTRAIN_TOKENIZER === '') expect(job.model.vocabSize).toBeGreaterThan(0);
      const port = Number(/\/tcp\/(\d+)$/.exec(env.SWARMTRAIN_LISTEN)?.[1]);
      expect(coordinator.ports?.map((p) => portMapping(p).target)).toEqual([port, 8080]);
      // The entry script serves the API on 8080 inside the container, and the data in the volume at /data.
      expect(read('coordinator/docker-entry.sh')).toMatch(/--data \/data --http 0\.0\.0\.0:8080/);
      expect(JSON.stringify(coordinator.volumes)).toMatch(/coordinator-data:\/data/);
    },
  );
});
