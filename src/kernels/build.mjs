// Compiles the AssemblyScript kernels to WebAssembly. Run by `npm install` (prepare) and
// `npm run build:kernels`. Two builds of the same source: plain SIMD, and relaxed SIMD
// (fused multiply-add), both on a shared, imported memory so a worker pool can drive either.
import asc from 'assemblyscript/asc';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, 'build');
const entry = join(here, 'assembly', 'index.ts');

const common = [
  entry,
  '--enable', 'simd',
  '--enable', 'threads',
  '--importMemory', '--sharedMemory',
  '--initialMemory', '16', '--maximumMemory', '65536',
  '--runtime', 'stub',
  '-O3', '--noAssert',
];

const builds = {
  simd: [],
  relaxed: ['--enable', 'relaxed-simd'],
};

await mkdir(outDir, { recursive: true });
for (const [name, extra] of Object.entries(builds)) {
  const { error, stderr } = await asc.main([
    ...common, ...extra,
    '--outFile', join(outDir, `${name}.wasm`),
    '--textFile', join(outDir, `${name}.wat`),
  ]);
  if (error) {
    console.error(stderr.toString());
    console.error(`kernel build '${name}' failed: ${error.message}`);
    process.exit(1);
  }
  console.log(`built src/kernels/build/${name}.wasm`);
}
