// Packaging, checked without a Docker engine: what the Dockerfile copies exists in the repo and
// survives .dockerignore; the runtime stage gets every kernel the build produces; the entry
// scripts exist, are executable and reach their CLI with every flag they pass accepted; and,
// where docker-compose (1.29, `apt-get install docker-compose`) is installed, the compose file
// validates with and without its profile, and each service's variables are the ones its entry
// script reads, its key file lies on a volume, and the coordinator's demo job is a valid job.
// The compiled bundle the image runs (src/bundle.ts) is built and run here too.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { COORDINATOR_USAGE } from '../coordinator/cli.ts';
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
    const regex = new RegExp(`^${glob.replace(/[.+^$()|[\]{}]/g, '\\$&').replace(/\*\*/g, '\u0000').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]').replace(/\u0000/g, '.*')}$`);
    // Leaving out a folder leaves out everything in it.
    return parts.some((_, i) => regex.test(parts.slice(0, i + 1).join('/')));
  });
}

/** The repo file an absolute path of the image stands for: the runtime copies the repo to its WORKDIR. */
function repoPath(imagePath: string, workdir: string): string {
  expect(imagePath.startsWith(`${workdir}/`), `${imagePath} is outside the image's ${workdir}`).toBe(true);
  return imagePath.slice(workdir.length + 1);
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
  const result = spawnSync(join(root, path), args, { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

const stages = dockerfileStages(read('Dockerfile'));
const runtime = stages.at(-1)!;
const build = stages.find((s) => s.name === 'build');
const ignorePatterns = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
/** The repo paths the runtime stage copies out of the build stage. */
const fromBuildStage = (): string[] =>
  copiesOf(runtime).filter((c) => c.from === 'build').flatMap((c) => c.sources.map((s) => repoPath(s, build!.workdir)));
const entrypointOf = (stage: Stage): string[] => JSON.parse(stage.instructions.findLast((i) => i.keyword === 'ENTRYPOINT')!.args) as string[];

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
    const script = /^node (\S+)$/.exec(prepare)?.[1];
    expect(script, `prepare is ${JSON.stringify(prepare)}`).toBeDefined();
    const npmCi = build!.instructions.findIndex((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args));
    const copiedBefore = copiesOf({ ...build!, instructions: build!.instructions.slice(0, npmCi) }).flatMap((c) => c.sources);
    expect(npmCi).toBeGreaterThan(0);
    expect(copiedBefore).toContain(script);

    // The runtime copies the build stage's .wasm files by name: they must be every build there is
    // (src/kernels/build/ exists after `npm install`, which runs the same script).
    const kernels = fromBuildStage().filter((path) => path.startsWith('src/kernels/'));
    const built = readdirSync(join(root, 'src/kernels/build')).filter((f) => f.endsWith('.wasm')).map((f) => `src/kernels/build/${f}`);
    expect(built.length).toBeGreaterThan(0);
    expect(kernels.sort()).toEqual(built.sort());
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
});

describe('compiled bundle (npm run build)', () => {
  it('the image builds it and runs it', () => {
    expect(build!.instructions.some((i) => i.keyword === 'RUN' && /\bnpm run build\b/.test(i.args))).toBe(true);
    expect(fromBuildStage()).toContain('dist/');
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

describe('entry scripts', () => {
  it('node/docker-entry.sh passes only flags `swarmtrain node` accepts', () => {
    const env = { SWARMTRAIN_JOIN: '/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDvPbw4wevnX5Bv2VPJix9iQHA3oZDeXt8EjonUiaPFN2', SWARMTRAIN_TOKEN: 'secret', SWARMTRAIN_MEMORY: '1GB', SWARMTRAIN_THREADS: '2' };
    // The CLI parses strictly before it looks at --help: an unknown flag would exit 2.
    const run = runScript('node/docker-entry.sh', env, ['--help']);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(NODE_USAGE);
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

const composeMissing = spawnSync('docker-compose', ['version'], { encoding: 'utf8' }).status !== 0 ? 'docker-compose is not installed'
  : spawnSync('python3', ['-c', 'import yaml'], { encoding: 'utf8' }).status !== 0 ? 'python3 with yaml (to read docker-compose config) is missing'
    : undefined;
if (composeMissing && process.env.CI !== 'true') {
  console.warn(`test/packaging.test.ts: ${composeMissing} (apt-get install docker-compose); skipping the docker-compose.yml checks`);
}

it.runIf(composeMissing !== undefined && process.env.CI === 'true')('CI has docker-compose, which .ci/run installs', () => {
  expect.fail(`${composeMissing}: the docker-compose.yml checks must run in CI`);
});

interface Service {
  entrypoint?: string[];
  environment?: Record<string, string>;
  profiles?: string[];
  volumes?: string[];
  ports?: { target: number; published: number }[];
}

/** `docker-compose config` (validated, variables at their defaults) as an object. */
function composeConfig(profiles: string[]): { services: Record<string, Service>; volumes?: Record<string, unknown> } {
  // No .env and no SWARMTRAIN_* from this shell: the defaults are what is checked.
  const dir = mkdtempSync(join(tmpdir(), 'swarmtrain-compose-'));
  writeFileSync(join(dir, '.env'), '');
  const args = ['-f', join(root, 'docker-compose.yml'), '--env-file', join(dir, '.env'), ...profiles.flatMap((p) => ['--profile', p]), 'config'];
  const config = spawnSync('docker-compose', args, { env: { PATH: process.env.PATH, HOME: process.env.HOME }, encoding: 'utf8' });
  rmSync(dir, { recursive: true });
  expect(config.stderr, `docker-compose ${args.join(' ')}`).toBe('');
  expect(config.status).toBe(0);
  const json = spawnSync('python3', ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'], { input: config.stdout, encoding: 'utf8' });
  expect(json.status, json.stderr).toBe(0);
  return JSON.parse(json.stdout) as ReturnType<typeof composeConfig>;
}

describe.skipIf(composeMissing !== undefined)('docker-compose.yml', () => {
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

  it("sets exactly the variables each service's entry script reads, and keeps its key on a volume", () => {
    for (const [name, service] of Object.entries(withProfile!.services)) {
      const script = repoPath((service.entrypoint ?? entrypointOf(runtime))[0], runtime.workdir);
      expectExecutableScript(script);
      expect(new Set(Object.keys(service.environment ?? {})), `${name}: environment vs ${script}`).toEqual(variablesRead(read(script)));
      const key = service.environment!.SWARMTRAIN_KEY;
      const mounts = (service.volumes ?? []).map((v) => v.split(':'));
      const volume = mounts.find(([source, target]) => key.startsWith(`${target}/`) && withProfile!.volumes?.[source] !== undefined);
      expect(volume, `${name}: its key ${key} is on no named volume`).toBeDefined();
    }
  });

  it('the coordinator serves a valid demo job from the repo on its published port', () => {
    const coordinator = withProfile!.services.coordinator;
    const env = coordinator.environment!;
    const job = validateJob(JSON.parse(read(repoPath(posix.resolve(runtime.workdir, env.SWARMTRAIN_JOB), runtime.workdir))));
    createConfig(job.model as Partial<ModelConfig>); // throws on an inconsistent model
    // Given neither SWARMTRAIN_VOCAB nor a tokenizer, the coordinator trains one of the model's vocabSize.
    if (env.SWARMTRAIN_VOCAB === '' && env.SWARMTRAIN_TOKENIZER === '') expect(job.model.vocabSize).toBeGreaterThan(0);
    const port = Number(/\/tcp\/(\d+)$/.exec(env.SWARMTRAIN_LISTEN)?.[1]);
    expect(coordinator.ports?.map((p) => p.target)).toEqual([port]);
  });
});
