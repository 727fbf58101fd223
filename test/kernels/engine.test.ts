// The kernels on the Node.js this suite runs on (CI runs it on Node 20 and on Node 24): loading
// them prints nothing, and relaxed SIMD is used wherever the engine has it.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';

it('loading the kernels in a fresh process prints nothing and picks the relaxed build', () => {
  const script = "import('./src/kernels/index.ts').then(async ({ createKernels }) => {"
    + ' const k = await createKernels({ threads: 2 }); console.log(JSON.stringify(k.info)); process.exit(0); })';
  const run = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: join(import.meta.dirname, '../..'), encoding: 'utf8', timeout: 30_000,
  });
  expect(run.stderr).toBe('');
  expect(run.status).toBe(0);
  // Every Node this project supports (20.19+) has relaxed SIMD, behind a flag before 22.
  expect(JSON.parse(run.stdout)).toEqual({ build: 'relaxed', threads: 2, relaxedAvailable: true });
});
