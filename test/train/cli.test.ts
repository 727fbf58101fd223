// The train and generate commands, run in-process on a tiny model: the run folder's contents,
// falling loss, a resumed run equal to the uninterrupted one, generation from runs, checkpoints
// and adapters, LoRA adapter export, and one-line errors with exit code 2 for bad input; plus
// the real executable shim in a child process.
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../node/cli.ts';
import type { CommandIO } from '../../src/cli/command.ts';
import { saveHfModel } from '../../src/io/hf.ts';
import { readPeftAdapter } from '../../src/io/peft.ts';
import { createKernels } from '../../src/kernels/index.ts';
import { Model } from '../../src/model/model.ts';
import { loadCheckpoint } from '../../src/train/checkpoint.ts';
import { generateCommand, trainCommand } from '../../src/train/cli.ts';
import { generate } from '../../src/train/generate.ts';
import { BpeTokenizer, END_OF_TEXT } from '../../src/train/tokenizer.ts';
import { bitEqual } from '../helpers.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
let dir: string;
let tiny: string[];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-cli-'));
  const config = join(dir, 'tiny.json');
  await writeFile(config, JSON.stringify({
    hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16,
    numExperts: 4, expertsPerToken: 2, expertHiddenSize: 128, maxSeqLen: 64,
  }));
  tiny = ['--config', config, '--seq', '32', '--batch', '4', '--vocab', '300', '--threads', '2'];
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs a command with captured output. */
async function run(command: (argv: string[], io: CommandIO) => Promise<number>, argv: string[]) {
  let stdout = '';
  let stderr = '';
  const io: CommandIO = { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) } };
  const code = await command(argv, io);
  return { code, stdout, stderr };
}

const readJsonl = async (path: string) =>
  (await readFile(path, 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as Record<string, number | string>);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('train --local', () => {
  let runDir: string;
  let runStdout: string;
  beforeAll(async () => {
    runDir = join(dir, 'run');
    const result = await run(trainCommand, [
      '--local', '--corpus', 'moby-dick', '--out', runDir, ...tiny, '--steps', '40', '--lr', '1e-2', '--warmup', '5',
      '--eval-every', '20', '--checkpoint-every', '20', '--sample-every', '20', '--sample-tokens', '8',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    runStdout = result.stdout;
  });

  it('writes the run folder: run.json, tokenizer, metrics, periodic and final checkpoints', async () => {
    for (const file of [
      'run.json', 'tokenizer.json', 'metrics.jsonl', 'checkpoints/step-20/state.json',
      'final/model.safetensors', 'final/optimizer.safetensors',
    ]) {
      expect(existsSync(join(runDir, file)), file).toBe(true);
    }
    expect(existsSync(join(runDir, 'checkpoints/step-40'))).toBe(false); // the last step is final/
    expect(BpeTokenizer.load(join(runDir, 'tokenizer.json')).vocabSize).toBe(300);
    expect((await loadCheckpoint(join(runDir, 'final'))).state.step).toBe(40);
    const spec = JSON.parse(await readFile(join(runDir, 'run.json'), 'utf8'));
    expect(spec).toMatchObject({ corpus: 'moby-dick', steps: 40, seq: 32, batch: 4, vocab: 300, lr: 1e-2, minLr: 1e-3, mode: 'full' });
  });

  it('prints progress lines (step, loss, held-out loss and bits/byte, tokens/s, ETA) and samples', () => {
    const lines = runStdout.split('\n');
    const final = lines.find((line) => line.startsWith('step 40/40'));
    expect(final).toMatch(/^step 40\/40 \| loss \d+\.\d{4} \| held-out \d+\.\d{4} \(\d+\.\d{3} bits\/byte\) \| [\d,]+ tok\/s \| ETA \d+s$/);
    // Not a terminal: a line every 10 steps (--log-every) and at each evaluation (steps 20 and 40).
    expect(lines.filter((line) => line.startsWith('step ')).map((line) => line.split(/[ /]/)[1])).toEqual(['10', '20', '30', '40']);
    expect(runStdout).toContain('--- sample at step 20 ---');
    expect(runStdout).toContain('--- sample at step 40 ---');
  });

  it('metrics: one line per step and per evaluation; loss falls over 40 steps', async () => {
    const metrics = await readJsonl(join(runDir, 'metrics.jsonl'));
    const steps = metrics.filter((m) => m.type === 'train');
    const evals = metrics.filter((m) => m.type === 'eval');
    expect(steps.map((m) => m.step)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(evals.map((m) => m.step)).toEqual([0, 20, 40]);
    // Measured: training loss 5.70 over the first 5 steps, 4.23 over the last 5; held-out 5.71 → 4.16.
    expect(mean(steps.slice(0, 5).map((m) => m.loss as number)) - mean(steps.slice(-5).map((m) => m.loss as number))).toBeGreaterThan(0.8);
    expect(evals[2].loss as number).toBeLessThan((evals[0].loss as number) - 0.8);
    expect(evals[2].bitsPerByte as number).toBeLessThan(evals[0].bitsPerByte as number);
  });

  it('--resume continues from the newest checkpoint and matches the uninterrupted run exactly', async () => {
    const out = join(dir, 'resume');
    const argv = [
      '--local', '--corpus', 'moby-dick', '--out', out, ...tiny,
      '--steps', '8', '--eval-every', '4', '--checkpoint-every', '4', '--sample-tokens', '4',
    ];
    expect((await run(trainCommand, argv)).code).toBe(0);
    const straight = await readJsonl(join(out, 'metrics.jsonl'));
    const finalFiles = async () => Promise.all(['model', 'optimizer'].map((f) => readFile(join(out, 'final', `${f}.safetensors`))));
    const straightFinal = await finalFiles();
    expect((await run(trainCommand, argv)).stderr).toMatch(/already holds a run/);

    // Interrupted after the step-4 checkpoint: metrics went on to step 8, final/ never came.
    await rm(join(out, 'final'), { recursive: true });
    const resumed = await run(trainCommand, ['--local', '--out', out, '--resume', '--threads', '1']);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain(`resuming from ${join(out, 'checkpoints', 'step-4')}`);
    const withoutTime = (records: Record<string, unknown>[]) => records.map(({ seconds: _seconds, ...rest }) => rest);
    expect(withoutTime(await readJsonl(join(out, 'metrics.jsonl')))).toEqual(withoutTime(straight));
    const [model, optimizer] = await finalFiles();
    expect(model.equals(straightFinal[0])).toBe(true);
    expect(optimizer.equals(straightFinal[1])).toBe(true);

    const again = await run(trainCommand, ['--local', '--out', out, '--resume', '--lr', '0.5']);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/--lr 0\.5 differs from the run's 0\.003/);
    expect((await run(trainCommand, ['--local', '--out', out, '--resume'])).stdout).toMatch(/already finished its 8 steps/);
    await writeFile(join(out, 'final', 'state.json'), '{"version": 1, "step": -1}');
    const corrupt = await run(trainCommand, ['--local', '--out', out, '--resume']);
    expect(corrupt.code).toBe(2);
    expect(corrupt.stderr).toMatch(/final\/state\.json: step must be a non-negative integer/);
  });

  it('generate prints the continuation the model gives, from a run folder or a checkpoint', async () => {
    const args = ['--prompt', 'Call me Ishmael', '--tokens', '12', '--temperature', '0', '--threads', '2'];
    const fromRun = await run(generateCommand, ['--run', runDir, ...args]);
    expect(fromRun.code).toBe(0);
    const fromCheckpoint = await run(generateCommand, ['--checkpoint', join(runDir, 'final'), ...args]);
    expect(fromCheckpoint.stdout).toBe(fromRun.stdout);

    // The same continuation straight from the engine.
    const kernels = await createKernels({ threads: 2 });
    try {
      const { state, params } = await loadCheckpoint(join(runDir, 'final'));
      const model = new Model(kernels, state.config, { mode: 'full' }, params);
      const tokenizer = BpeTokenizer.load(join(runDir, 'tokenizer.json'));
      const ids = await generate(model, tokenizer.encode('Call me Ishmael'), { maxNewTokens: 12, eosId: tokenizer.specialId(END_OF_TEXT) });
      expect(fromRun.stdout).toBe(`${tokenizer.decode(ids)}\n`);
      expect(fromRun.stdout.trim().length).toBeGreaterThan(0);
    } finally {
      await kernels.close();
    }
    const sampled = ['--run', runDir, '--tokens', '12', '--temperature', '1', '--top-p', '0.9', '--seed', '7'];
    expect((await run(generateCommand, sampled)).stdout).toBe((await run(generateCommand, sampled)).stdout);
  });

  it('lora on the run with --export-adapter writes a PEFT adapter holding the trained LoRA matrices', async () => {
    const out = join(dir, 'lora');
    const result = await run(trainCommand, [
      '--local', '--corpus', 'typescript-lib', '--out', out, '--mode', 'lora', '--base', runDir, '--rank', '4', '--alpha', '8',
      '--base-format', 'q8', '--steps', '6', '--eval-every', '0', '--sample-tokens', '4', '--export-adapter',
      '--threads', '2', '--seq', '32', '--batch', '4',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(await readFile(join(out, 'tokenizer.json'), 'utf8')).toBe(await readFile(join(runDir, 'tokenizer.json'), 'utf8'));
    const { state, params } = await loadCheckpoint(join(out, 'final'));
    expect(state.base).toBe(join(runDir, 'final'));
    const adapter = await readPeftAdapter(join(out, 'adapter'), state.config, 'mixtral');
    expect([adapter.rank, adapter.alpha, adapter.baseModel]).toEqual([4, 8, join(runDir, 'final')]);
    expect([...adapter.tensors.keys()].sort()).toEqual([...params.keys()].sort());
    for (const [name, t] of adapter.tensors) expect(bitEqual(t.data, params.get(name)!.data), name).toBe(true);
    expect(adapter.tensors.get('layers.0.attn.q.lora_b')!.data.some((x) => x !== 0)).toBe(true); // trained, not the zero init

    const fromRun = await run(generateCommand, ['--run', out, '--prompt', 'interface ', '--tokens', '6']);
    const fromAdapter = await run(generateCommand, [
      '--checkpoint', join(runDir, 'final'), '--adapter', join(out, 'adapter'), '--prompt', 'interface ', '--tokens', '6',
    ]);
    expect([fromRun.code, fromAdapter.code]).toEqual([0, 0]);
    expect(fromAdapter.stdout.length).toBeGreaterThan(1);
  });

  it('lora on a Hugging Face qwen2_moe folder exports the adapter with Qwen2-MoE module names', async () => {
    const qwenConfig = join(dir, 'qwen.json');
    await writeFile(qwenConfig, JSON.stringify({
      hiddenSize: 64, numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 16, numExperts: 4, expertsPerToken: 2, expertHiddenSize: 64,
      sharedExpertHiddenSize: 64, attentionBias: true, normTopkProb: false, maxSeqLen: 64,
    }));
    const pretrained = join(dir, 'qwen-run');
    const trained = await run(trainCommand, [
      '--local', '--corpus', 'moby-dick', '--out', pretrained, ...tiny,
      '--config', qwenConfig, '--vocab', '320', '--steps', '2', '--sample-tokens', '2',
    ]);
    expect(trained.code).toBe(0);
    const { state, params } = await loadCheckpoint(join(pretrained, 'final'));
    const hf = join(dir, 'qwen-hf');
    await saveHfModel(hf, { config: state.config, layout: { family: 'qwen2_moe', packedExperts: false }, params });
    await cp(join(pretrained, 'tokenizer.json'), join(hf, 'tokenizer.json'));
    const shorter = join(dir, 'shorter.json');
    await writeFile(shorter, '{"maxSeqLen": 48}'); // a training-time field may differ from the base

    const out = join(dir, 'qwen-lora');
    const result = await run(trainCommand, [
      '--local', '--corpus', 'typescript-lib', '--out', out, '--mode', 'lora', '--base', hf, '--config', shorter, '--rank', '4',
      '--base-format', 'q4', '--base-path', 'int', '--steps', '3', '--seq', '32', '--batch', '4',
      '--sample-tokens', '2', '--export-adapter',
    ]);
    expect(result.stderr).toBe('');
    expect(result.stdout).toContain('(qwen2_moe module names)');
    const adapter = await readPeftAdapter(join(out, 'adapter'), state.config, 'qwen2_moe');
    expect(adapter.tensors.has('layers.0.shared_expert.up.lora_b')).toBe(true);
    await expect(readPeftAdapter(join(out, 'adapter'), state.config, 'mixtral')).rejects.toThrow(/not a LoRA matrix of this mixtral model/);
  });

  it('bad input: one line on stderr, exit code 2', async () => {
    const badConfig = join(dir, 'bad-config.json');
    await writeFile(badConfig, '{"hiddenSize": "big"}');
    const narrow = join(dir, 'narrow.json');
    await writeFile(narrow, '{"hiddenSize": 32}');
    const corruptBase = join(dir, 'corrupt-base');
    await cp(join(runDir, 'final'), corruptBase, { recursive: true });
    await writeFile(join(corruptBase, 'model.safetensors'), 'short');
    const out = join(dir, 'bad');
    const base = ['--local', '--corpus', 'moby-dick', '--out', out];
    const cases: [typeof trainCommand, string[], RegExp][] = [
      [trainCommand, ['--corpus', 'moby-dick', '--out', out], /pass --local/],
      [trainCommand, ['--local', '--corpus', 'moby-dik', '--out', out],
        /--corpus must be one of sotu, moby-dick, typescript-lib or a file or folder of your text, got "moby-dik"/],
      [trainCommand, [...base, '--steps', '1.5'], /--steps must be an integer ≥ 1, got "1\.5"/],
      [trainCommand, [...base, '--lr', 'fast'], /--lr must be a positive number, got "fast"/],
      [trainCommand, [...base, '--lr'], /--lr needs a value/],
      [trainCommand, ['--local', '--frobnicate'], /unknown option --frobnicate \(see swarmtrain train --help\)/],
      [trainCommand, ['--local', '--corpus', 'moby-dick'], /--out <dir> is required/],
      [trainCommand, [...base, '--rank', '4'], /--rank applies to --mode lora only/],
      [trainCommand, [...base, '--mode', 'lora'], /--mode lora needs --base/],
      [trainCommand, [...base, '--export-adapter'], /--export-adapter needs --mode lora/],
      [trainCommand, [...base, '--config', badConfig],
        /bad-config\.json: model config: hiddenSize must be a positive int number, got "big"/],
      [trainCommand, [...base, '--config', join(dir, 'absent.json')], /absent\.json: cannot read/],
      [trainCommand, [...base, '--mode', 'lora', '--base', join(dir, 'nowhere')], /nowhere is not a checkpoint/],
      [trainCommand, [...base, '--mode', 'lora', '--base', corruptBase], /corrupt-base\/model\.safetensors/],
      [trainCommand, [...base, '--mode', 'lora', '--base', runDir, '--config', narrow], /--config sets hiddenSize 32, but the base has 64/],
      [trainCommand, [...tiny, ...base, '--seq', '128'], /--seq 128 exceeds the model's maxSeqLen 64/],
      [trainCommand, ['--local', '--out', join(dir, 'nothing'), '--resume'], /no run to resume/],
      [generateCommand, ['--prompt', 'x'], /give one of --run <dir>, --checkpoint <dir> or --base <hf dir>/],
      [generateCommand, ['--run', runDir, '--base', runDir], /give one of --run <dir>, --checkpoint <dir> or --base <hf dir>/],
      [generateCommand, ['--run', runDir, '--tokens', '0'], /--tokens must be an integer ≥ 1/],
      [generateCommand, ['--run', runDir, '--top-p', '2'], /--top-p must be a number in \(0, 1\]/],
      [generateCommand, ['--checkpoint', corruptBase, '--tokenizer', join(runDir, 'tokenizer.json')], /model\.safetensors/],
      [generateCommand, ['--checkpoint', corruptBase], /no tokenizer\.json beside/],
    ];
    for (const [command, argv, message] of cases) {
      const result = await run(command, argv);
      expect(result.code, argv.join(' ')).toBe(2);
      expect(result.stderr, argv.join(' ')).toMatch(message);
      expect(result.stderr.split('\n').length, result.stderr).toBe(2); // one line and its newline
      expect(result.stderr).not.toMatch(/\n\s+at /);
    }
    expect(existsSync(out)).toBe(false); // failed setups write nothing
  });
});

describe('swarmtrain dispatcher', () => {
  it('runs subcommands and refuses unknown ones', async () => {
    const help = await run(runCli, ['train', '--help']);
    expect([help.code, help.stdout]).toEqual([0, expect.stringContaining('--export-adapter')]);
    const unknown = await run(runCli, ['frobnicate']);
    expect([unknown.code, unknown.stderr]).toEqual([2, expect.stringMatching(/^swarmtrain: unknown command "frobnicate"/)]);
  });

  it('the executable shim node/bin.mjs runs the CLI in a child process', async () => {
    const exec = (args: string[]) => new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
      execFile(process.execPath, [join(repoRoot, 'node/bin.mjs'), ...args], { cwd: repoRoot }, (err, stdout, stderr) => {
        done({ code: err ? Number(err.code) : 0, stdout, stderr });
      });
    });
    const help = await exec(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: swarmtrain <command>[\s\S]*train --local[\s\S]*generate/);
    const bad = await exec(['train', '--local', '--out', join(dir, 'never'), '--steps', 'many']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe('swarmtrain train: --steps must be an integer ≥ 1, got "many"\n');
  });
});
