// A job's checkpoints on the coordinator's disk: <dir>/<round>/ holds one safetensors file per
// parameter group and manifest.json (each file's sha256), written last: a folder without a manifest
// whose checksums hold is incomplete or damaged, and readers fall back to the previous one.
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGroupId } from '../proto/index.ts';
import { decodeSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import type { F32Tensor } from '../src/model/config.ts';
import { sha256Hex } from '../src/weights/index.ts';

export const CHECKPOINT_MANIFEST_VERSION = 1;

/** Parameter group id -> its tensors by canonical name. */
export type GroupStates = Map<string, Map<string, F32Tensor>>;

export interface CheckpointManifest {
  version: number;
  jobId: string;
  round: number;
  /** Micro-batches the job had completed when the checkpoint was gathered. */
  completedBatches: number;
  /** File name -> its group, size and sha256 (hex). */
  files: Record<string, { group: string; bytes: number; sha256: string }>;
}

export interface StoredCheckpoint {
  dir: string;
  manifest: CheckpointManifest;
  groups: GroupStates;
}

export class CheckpointCorruptError extends Error {
  override name = 'CheckpointCorruptError';
}

const MANIFEST = 'manifest.json';

/** Writes `groups` as <checkpoints>/<round>/ (replacing an older folder of that round); returns the bytes written. */
export async function writeCheckpoint(
  checkpoints: string, info: Omit<CheckpointManifest, 'version' | 'files'>, groups: GroupStates,
): Promise<{ dir: string; bytes: number; manifest: CheckpointManifest }> {
  const dir = join(checkpoints, String(info.round));
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const files: CheckpointManifest['files'] = {};
  let bytes = 0;
  for (const [group, tensors] of groups) {
    const file = `${group}.safetensors`;
    await writeSafetensors(join(dir, file), [...tensors].map(([name, t]) => [name, { dtype: 'F32', shape: t.shape, data: t.data }]));
    // Hashed as read back: the checksum vouches for what is on disk.
    const written = await readFile(join(dir, file));
    files[file] = { group, bytes: written.length, sha256: sha256Hex(written) };
    bytes += written.length;
  }
  const manifest: CheckpointManifest = { version: CHECKPOINT_MANIFEST_VERSION, ...info, files };
  const temporary = join(dir, `${MANIFEST}.${process.pid}.partial`);
  await writeFile(temporary, `${JSON.stringify(manifest, null, 2)}\n`);
  await rename(temporary, join(dir, MANIFEST));
  return { dir, bytes, manifest };
}

/** Reads one checkpoint folder, checking every file against the manifest; any problem is a CheckpointCorruptError. */
export async function readCheckpoint(dir: string): Promise<StoredCheckpoint> {
  const fail = (what: string): never => { throw new CheckpointCorruptError(`checkpoint ${dir}: ${what}`); };
  let manifest: CheckpointManifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as CheckpointManifest;
  } catch (err) {
    return fail(`no readable ${MANIFEST} (${(err as Error).message}): incomplete`);
  }
  if (manifest?.version !== CHECKPOINT_MANIFEST_VERSION) {
    fail(`${MANIFEST} version ${String(manifest?.version)} is not ${CHECKPOINT_MANIFEST_VERSION}`);
  }
  const { round, files } = manifest;
  if (!Number.isSafeInteger(round) || typeof files !== 'object' || files === null) fail(`${MANIFEST} lacks round or files`);
  const groups: GroupStates = new Map();
  for (const [file, { group, sha256: expected }] of Object.entries(manifest.files)) {
    if (file !== `${group}.safetensors` || !parseGroupId(group)) fail(`${MANIFEST} lists ${file} for group ${group}`);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(join(dir, file));
    } catch (err) {
      return fail(`${file}: ${(err as Error).message}`);
    }
    const actual = sha256Hex(bytes);
    if (actual !== expected) fail(`${file}: sha256 ${actual} is not the manifest's ${expected}`);
    const tensors = new Map<string, F32Tensor>();
    for (const [name, t] of decodeSafetensors(bytes, join(dir, file)).tensors) {
      if (!(t.data instanceof Float32Array)) fail(`${file}: tensor ${name} is ${t.dtype}, expected F32`);
      tensors.set(name, { shape: t.shape, data: t.data as Float32Array });
    }
    groups.set(group, tensors);
  }
  return { dir, manifest, groups };
}

/** Rounds that have a checkpoint folder, newest first. */
async function rounds(checkpoints: string): Promise<number[]> {
  const names = await readdir(checkpoints).catch(() => [] as string[]);
  return names.filter((name) => /^(0|[1-9]\d*)$/.test(name)).map(Number).sort((a, b) => b - a);
}

/** The newest checkpoint that reads back whole; `skipped` says why newer ones were passed over. */
export async function latestCheckpoint(checkpoints: string): Promise<{ checkpoint?: StoredCheckpoint; skipped: string[] }> {
  const skipped: string[] = [];
  for (const round of await rounds(checkpoints)) {
    try {
      return { checkpoint: await readCheckpoint(join(checkpoints, String(round))), skipped };
    } catch (err) {
      if (!(err instanceof CheckpointCorruptError)) throw err;
      skipped.push(err.message);
    }
  }
  return { skipped };
}

/** Removes all but the newest `keep` checkpoint folders. */
export async function pruneCheckpoints(checkpoints: string, keep: number): Promise<void> {
  for (const round of (await rounds(checkpoints)).slice(keep)) await rm(join(checkpoints, String(round)), { recursive: true, force: true });
}
