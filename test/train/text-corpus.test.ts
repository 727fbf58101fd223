// The operator's own text as a corpus: a .txt file split into paragraphs, a folder of .txt files, JSONL
// with a "text" field (a bad line named), the blob form a swarm job's nodes fetch, the job's documents
// taken from it only when its sha256 is the job's, and `train --local --corpus <file>` on it.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSpec } from '../../proto/index.ts';
import { runCoordinator } from '../../coordinator/cli.ts';
import { jobOnText } from '../../coordinator/corpus.ts';
import type { CommandIO } from '../../src/cli/command.ts';
import { trainCommand } from '../../src/train/cli.ts';
import { jobDocuments } from '../../src/train/job.ts';
import { CorpusError, decodeCorpus, encodeCorpus, loadNamedCorpus, loadTextCorpus } from '../../src/train/text-corpus.ts';
import { sha256Hex } from '../../src/weights/index.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-text-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('loadTextCorpus', () => {
  it('a .txt file: paragraphs separated by blank lines (any line ending, blank lines of spaces) are the documents', async () => {
    const path = join(dir, 'notes.txt');
    await writeFile(path, 'First line\nsame paragraph.\r\n\r\nSecond — ünïcödé 🙂.\n  \t\n\n\nThird.\n');
    const corpus = loadTextCorpus(path);
    expect(corpus.documents).toEqual(['First line\nsame paragraph.', 'Second — ünïcödé 🙂.', 'Third.']);
    expect(corpus.titles).toEqual(['notes.txt ¶1', 'notes.txt ¶2', 'notes.txt ¶3']);
    expect(corpus.bytes).toBe(corpus.documents.reduce((n, d) => n + Buffer.byteLength(d), 0));
    expect(corpus.name).toBe('notes.txt');
  });

  it('a folder: each .txt file is one document, in name order; other files are ignored', async () => {
    const folder = join(dir, 'folder');
    await mkdir(folder);
    await writeFile(join(folder, 'b.txt'), 'Bee.\n\nStill bee.');
    await writeFile(join(folder, 'a.txt'), 'Ay.');
    await writeFile(join(folder, 'c.md'), 'not text for us');
    const corpus = loadTextCorpus(folder);
    expect(corpus.documents).toEqual(['Ay.', 'Bee.\n\nStill bee.']);
    expect(corpus.titles).toEqual(['a.txt', 'b.txt']);
  });

  it('JSONL: one document per line\'s "text"; a bad line is an error naming the file and line', async () => {
    const good = join(dir, 'good.jsonl');
    await writeFile(good, '{"text": "one", "id": 1}\n\n{"text": "two\\nlines"}\n');
    expect(loadTextCorpus(good).documents).toEqual(['one', 'two\nlines']);
    expect(loadTextCorpus(good).titles).toEqual(['good.jsonl:1', 'good.jsonl:3']);
    const bad = join(dir, 'bad.jsonl');
    await writeFile(bad, '{"text": "fine"}\n{"text": 3}\n');
    expect(() => loadTextCorpus(bad)).toThrow(`corpus ${bad} line 2: expected an object with a string field "text"`);
    await writeFile(bad, '{"text": "fine"}\n{"text": "fine"}\n{"text": \n');
    expect(() => loadTextCorpus(bad)).toThrow(new RegExp(`corpus ${bad} line 3: not JSON`));
  });

  it('refuses a missing path, an empty file, a folder without .txt files and bytes that are not UTF-8', async () => {
    expect(() => loadTextCorpus(join(dir, 'absent.txt'))).toThrow(/no such file or folder/);
    await writeFile(join(dir, 'empty.txt'), '\n\n  \n');
    expect(() => loadTextCorpus(join(dir, 'empty.txt'))).toThrow(/no text in it/);
    await mkdir(join(dir, 'no-txt'));
    expect(() => loadTextCorpus(join(dir, 'no-txt'))).toThrow(/needs .txt files/);
    await writeFile(join(dir, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9]));
    expect(() => loadTextCorpus(join(dir, 'latin1.txt'))).toThrow(CorpusError);
    expect(loadNamedCorpus('moby-dick').documents.length).toBeGreaterThan(100); // a bundled name is still that corpus
  });
});

describe('a job on the operator\'s text', () => {
  const JOB = {
    jobId: 'text-job', corpus: 'my-notes', documents: { from: 1, to: 3 },
  } as JobSpec;

  it('travels as a blob named by its sha256; the job\'s documents come from it, and only from the right one', () => {
    const documents = ['zero', 'one 🙂', 'two\n\nparagraphs', 'three'];
    const corpus = { name: 'x.txt', documents, titles: documents, bytes: 0 };
    const { job, text, blobs } = jobOnText(JOB, corpus);
    const bytes = encodeCorpus(documents);
    expect(job.corpusBlob).toEqual({ sha256: sha256Hex(bytes), bytes: bytes.byteLength, chunks: [sha256Hex(bytes)] });
    expect(job.corpus).toBe('my-notes'); // the label stays
    expect(decodeCorpus(bytes)).toEqual(documents);
    expect(jobDocuments(job, text).documents).toEqual(['one 🙂', 'two\n\nparagraphs']);
    expect(() => jobDocuments(job)).toThrow(/its corpus is the blob [0-9a-f]{64}, whose text is not given \(the coordinator's --corpus <path> sets it\)/);
    expect(() => jobDocuments(job, { sha256: '0'.repeat(64), documents })).toThrow(/not 0{64}/);
    return expect(blobs.size(job.corpusBlob!.sha256)).resolves.toBe(bytes.byteLength);
  });
});

describe('swarmtrain-coordinator --corpus', () => {
  it('exits 2 naming the file and line of a bad JSONL line, before serving anything', async () => {
    const jobFile = join(dir, 'job.json');
    await writeFile(jobFile, JSON.stringify({
      jobId: 'j', model: {}, mode: 'full', baseFormat: 'f32', basePath: 'fp32', seed: 1, corpus: 'mine', batchSize: 2, seqLen: 8,
      heldOutFraction: 0.1, totalBatches: 4, expectedNodes: 1, lr: 1e-3, minLr: 1e-4, warmupSteps: 0,
      averaging: { mode: 'periodic', every: 2, deadlineMs: 1000 }, expertTimeoutMs: 1000,
    }));
    const corpus = join(dir, 'broken.jsonl');
    await writeFile(corpus, '{"text": "fine"}\n{"body": "no text field"}\n');
    let stderr = '';
    const code = await runCoordinator(['--job', jobFile, '--corpus', corpus, '--vocab', '300'], {
      stdout: { write: () => {} }, stderr: { write: (text: string) => (stderr += text) },
    });
    expect(code).toBe(2);
    expect(stderr).toBe(`swarmtrain coordinator: corpus ${corpus} line 2: expected an object with a string field "text"\n`);
  });
});

describe('train --local --corpus <your text>', () => {
  it('trains on a .txt file: the loss falls, run.json keeps its absolute path', async () => {
    const text = join(dir, 'story.txt');
    const paragraph = (i: number) => `The ${i % 2 ? 'cat' : 'dog'} sat on the mat number ${i}, and it was a good mat.`;
    await writeFile(text, Array.from({ length: 120 }, (_, i) => paragraph(i)).join('\n\n'));
    const config = join(dir, 'tiny.json');
    await writeFile(config, JSON.stringify({
      hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16, numExperts: 2, expertsPerToken: 1, expertHiddenSize: 32, maxSeqLen: 32,
    }));
    const out = join(dir, 'run');
    let stderr = '';
    const io: CommandIO = { stdout: { write: () => {} }, stderr: { write: (s: string) => (stderr += s) } };
    const code = await trainCommand([
      '--local', '--corpus', text, '--out', out, '--config', config, '--seq', '16', '--batch', '4', '--vocab', '300',
      '--threads', '1', '--steps', '30', '--lr', '1e-2', '--warmup', '3', '--eval-every', '0', '--checkpoint-every', '0', '--sample-every', '0',
    ], io);
    expect(code, stderr).toBe(0);
    expect(JSON.parse(await readFile(join(out, 'run.json'), 'utf8')).corpus).toBe(text);
    const train = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'train');
    expect(train.at(-1).loss).toBeLessThan(train[0].loss - 1);
    const missing = await trainCommand(['--local', '--corpus', join(dir, 'nope.txt'), '--out', join(dir, 'run2')], io);
    expect(missing).toBe(2);
    expect(stderr).toMatch(/--corpus must be one of .* or a file or folder of your text, got ".*nope\.txt"/);
  });
});
