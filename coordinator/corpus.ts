// A job on the operator's own text: the corpus read once at the coordinator becomes one blob in memory,
// named in the job (corpusBlob: sha256 and chunk hashes) that every node fetches and checks.
import type { JobSpec } from '../proto/index.ts';
import { jobWithText, type JobText } from '../src/train/job.ts';
import { encodeCorpus, type TextCorpus } from '../src/train/text-corpus.ts';
import { MemoryBlobs } from '../src/weights/index.ts';

export function jobOnText(job: JobSpec, corpus: TextCorpus): { job: JobSpec; text: JobText; blobs: MemoryBlobs } {
  const blobs = new MemoryBlobs();
  const spec = blobs.add(encodeCorpus(corpus.documents));
  return { job: jobWithText(job, spec), text: { sha256: spec.sha256, documents: corpus.documents }, blobs };
}
