// Builds the web UI into coordinator/ui/dist/ (run by `npm install` through `prepare`, and by
// `npm run build:ui`): one minified ES module and one stylesheet, both named by content hash so
// browsers may cache them for good, and index.html naming them. The create-job form checks what the
// API checks: the API's JobRequest schema (coordinator/api/schemas.ts) is written into the bundle here.
import { build } from 'esbuild';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { tsImport } from 'tsx/esm/api';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '../..');
const UI_DIST = join(here, 'dist');

const page = (script, stylesheet) => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>swarmtrain</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="${stylesheet}">
<script type="module" src="${script}"></script>
</head>
<body>
<div id="app"><p style="padding:1rem;font-family:system-ui,sans-serif">Loading swarmtrain…</p></div>
<noscript>The swarmtrain dashboard needs JavaScript; the HTTP API (/api/...) works without it.</noscript>
</body>
</html>
`;

/** Builds the UI into `outDir`; returns each output file with its size, raw and gzipped. */
export async function buildUi(outDir = UI_DIST) {
  const { JobRequestSchema } = await tsImport(join(root, 'coordinator/api/schemas.ts'), import.meta.url);
  await rm(outDir, { recursive: true, force: true });
  const result = await build({
    entryPoints: { app: join(here, 'src/main.ts') },
    outdir: outDir, entryNames: '[name]-[hash]',
    bundle: true, minify: true, format: 'esm', platform: 'browser', target: 'es2020',
    // JSON.stringify drops TypeBox's symbol keys: what is left is the plain JSON schema.
    define: { JOB_REQUEST_SCHEMA: JSON.stringify(JobRequestSchema) },
    metafile: true, legalComments: 'none', logLevel: 'warning',
  });
  const outputs = Object.keys(result.metafile.outputs).map((file) => basename(file));
  const script = outputs.find((file) => file.endsWith('.js'));
  const stylesheet = outputs.find((file) => file.endsWith('.css'));
  if (!script || !stylesheet) throw new Error(`UI build: expected a .js and a .css output, got ${outputs.join(', ')}`);
  await writeFile(join(outDir, 'index.html'), page(`./${script}`, `./${stylesheet}`));
  return Promise.all([script, stylesheet, 'index.html'].map(async (file) => {
    const contents = await readFile(join(outDir, file));
    return { file, bytes: contents.length, gzipBytes: gzipSync(contents, { level: 9 }).length };
  }));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const { file, bytes, gzipBytes } of await buildUi()) {
    console.log(`built coordinator/ui/dist/${file}: ${bytes} bytes, ${gzipBytes} gzipped`);
  }
}
