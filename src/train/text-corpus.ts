// The operator's own text as a corpus: a .jsonl file (a "text" field per line, one document each), any
// other file as plain text (paragraphs, separated by blank lines, are its documents), or a folder of .txt
// files (one document each, in name order). A swarm job's corpus travels as one blob: its documents as JSON.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { CORPUS_NAMES, loadCorpus, type CorpusName } from './corpus.ts';

export interface TextCorpus {
  /** The file or folder name, a label for jobs and logs. */
  name: string;
  documents: string[];
  /** One label per document: "<file>:<line>" (JSONL), "<file> ¶<n>" (paragraphs), the file name (folders). */
  titles: string[];
  /** UTF-8 bytes of all documents. */
  bytes: number;
}

/** A corpus path that cannot be read as one: the message names the file (and line). */
export class CorpusError extends Error {
  override name = 'CorpusError';
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads a .txt file, a folder of .txt files or a .jsonl file (see the file's first comment). */
export function loadTextCorpus(path: string): TextCorpus {
  let isFolder: boolean;
  try {
    isFolder = statSync(path).isDirectory();
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or folder' : (err as Error).message;
    throw new CorpusError(`corpus ${path}: ${why}`);
  }
  const docs = isFolder ? readFolder(path) : path.endsWith('.jsonl') ? readJsonl(path) : readParagraphs(path);
  if (docs.length === 0) throw new CorpusError(`corpus ${path}: no text in it`);
  const bytes = docs.reduce((sum, doc) => sum + Buffer.byteLength(doc.text), 0);
  return { name: basename(path), documents: docs.map((d) => d.text), titles: docs.map((d) => d.title), bytes };
}

/** What `--corpus` names: a bundled corpus (sotu, moby-dick, typescript-lib), else a path to the operator's text. */
export function loadNamedCorpus(nameOrPath: string): { name: string; documents: string[] } {
  return isBundledCorpus(nameOrPath) ? loadCorpus(nameOrPath) : loadTextCorpus(nameOrPath);
}

export const isBundledCorpus = (value: string): value is CorpusName => (CORPUS_NAMES as readonly string[]).includes(value);

interface Doc { title: string; text: string }

function readText(path: string): string {
  try {
    return utf8.decode(readFileSync(path));
  } catch (err) {
    if (err instanceof TypeError) throw new CorpusError(`corpus ${path}: not UTF-8 text`);
    throw new CorpusError(`corpus ${path}: ${(err as Error).message}`);
  }
}

function readParagraphs(path: string): Doc[] {
  const paragraphs = readText(path).replace(/\r\n?/g, '\n').split(/\n[ \t]*\n/).map((p) => p.trim());
  const name = basename(path);
  return paragraphs.filter((p) => p !== '').map((text, i) => ({ title: `${name} ¶${i + 1}`, text }));
}

function readFolder(dir: string): Doc[] {
  const files = readdirSync(dir).filter((f) => f.endsWith('.txt')).sort();
  if (files.length === 0) throw new CorpusError(`corpus ${dir}: a folder needs .txt files, and it has none`);
  return files.map((f) => ({ title: f, text: readText(join(dir, f)) })).filter((d) => d.text.trim() !== '');
}

function readJsonl(path: string): Doc[] {
  const name = basename(path);
  const docs: Doc[] = [];
  readText(path).split('\n').forEach((line, index) => {
    if (line.trim() === '') return;
    const where = `corpus ${path} line ${index + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new CorpusError(`${where}: not JSON (${(err as Error).message})`);
    }
    const text = (value as { text?: unknown } | null)?.text;
    if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof text !== 'string') {
      throw new CorpusError(`${where}: expected an object with a string field "text"`);
    }
    if (text.trim() !== '') docs.push({ title: `${name}:${index + 1}`, text });
  });
  return docs;
}

/** The blob a job's corpus travels as: its documents, as a JSON array of strings in UTF-8. */
export function encodeCorpus(documents: readonly string[]): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(documents));
}

/** The documents of a corpus blob (whose sha256 the caller checked). */
export function decodeCorpus(data: Uint8Array): string[] {
  let documents: unknown;
  try {
    documents = JSON.parse(utf8.decode(data));
  } catch (err) {
    throw new CorpusError(`corpus blob: not a JSON array of documents (${(err as Error).message})`);
  }
  if (!Array.isArray(documents) || documents.some((d) => typeof d !== 'string')) {
    throw new CorpusError('corpus blob: not a JSON array of documents');
  }
  return documents as string[];
}
