// A job on a base checkpoint, at the coordinator's join path: the join reply carries the manifest signed with
// the coordinator's key, admitted nodes fetch its tensors from the coordinator bit for bit, others are refused;
// a job contradicting the base, a tokenizer it cannot read, a bad folder and a forged manifest are refused clearly.
import { generateKeyPair } from '@libp2p/crypto/keys';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCoordinator } from '../../coordinator/cli.ts';
import { CoordinatorServer } from '../../coordinator/server.ts';
import { NodeBase } from '../../node/base.ts';
import { JobError, msgpackCodec, PROTOCOL_VERSION, type JobSpec } from '../../proto/index.ts';
import { saveHfModel } from '../../src/io/hf.ts';
import { createConfig } from '../../src/model/config.ts';
import { createHost, Rpc, type Host } from '../../src/p2p/index.ts';
import { jobDocuments } from '../../src/train/job.ts';
import { BpeTokenizer } from '../../src/train/tokenizer.ts';
import { BlobStore, buildManifest, FetchError, ManifestError, signManifest, WeightFetcher } from '../../src/weights/index.ts';
import { f32Sha256, randomParams } from '../weights/checkpoints.ts';

// A vocabulary of 300 fits a byte-level tokenizer (256 bytes, merges, <|endoftext|>).
const CONFIG = createConfig({
  vocabSize: 300, hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16, numExperts: 2, expertsPerToken: 1,
  expertHiddenSize: 32, maxSeqLen: 32,
});
const PARAMS = randomParams(CONFIG, 5);
const JOB: JobSpec = {
  jobId: 'base-unit', model: {}, mode: 'lora', lora: { rank: 2, alpha: 4 }, baseFormat: 'q8', basePath: 'fp32', seed: 1,
  corpus: 'moby-dick', documents: { from: 0, to: 5 }, batchSize: 2, seqLen: 16, heldOutFraction: 0.1, totalBatches: 4, expectedNodes: 1,
  lr: 1e-3, minLr: 1e-4, warmupSteps: 0, averaging: { mode: 'periodic', every: 2, deadlineMs: 1000 }, expertTimeoutMs: 1000,
};
const tokenizer = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 300 });

let dir: string;
let hosts: Host[];
let server: CoordinatorServer | undefined;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'swarmtrain-base-unit-'));
  await saveHfModel(join(dir, 'base'), { config: CONFIG, layout: { family: 'mixtral', packedExperts: false }, params: PARAMS });
  hosts = await Promise.all([createHost(), createHost()]);
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

const rpcOf = (host: Host) => new Rpc({ transport: host, codec: msgpackCodec, onReject: () => {} });
const joinRequest = (host: Host) => ({
  version: PROTOCOL_VERSION, nodeId: host.peerId.toString(), token: '', cores: 1, gemmGflops: 10, memoryBytes: 2 ** 30,
  addrs: host.getMultiaddrs().map(String),
});

async function startWithBase(job: Partial<JobSpec> = {}, tok = tokenizer) {
  const { manifest, blobs } = await buildManifest(join(dir, 'base'));
  return CoordinatorServer.start({ job: { ...JOB, ...job }, tokenizer: tok, joinToken: '', base: { manifest, blobs, name: join(dir, 'base') } });
}

describe('the coordinator of a job with a base', () => {
  it("sends the manifest signed with its key; an admitted node fetches the base's tensors bit for bit, a stranger is refused", async () => {
    server = await startWithBase();
    const [node, stranger] = hosts;
    const reply = await rpcOf(node).request(server.addrs[0], 'join', joinRequest(node));
    if (!reply.admitted) throw new Error(reply.reason);
    expect(reply.base).toBeDefined();
    const store = join(dir, 'node-store');
    const base = await NodeBase.open(reply.base!, server.peerId, { rpc: rpcOf(node), dataDir: store, admitted: () => true });
    expect(base.config).toEqual(CONFIG);
    const coordinator = { peer: server.peerId, addrs: server.addrs };
    const { tensors: decoded, summary } = await base.fetch(['trunk', 'expert.0.1'], () => [coordinator]);
    const tensors = new Map(decoded);
    expect(summary.bytesBySource[server.peerId]).toBe(summary.fetchedBytes);
    expect(tensors.has('embed') && tensors.has('layers.0.experts.1.gate')).toBe(true);
    expect(tensors.has('layers.0.experts.0.gate')).toBe(false); // only the groups asked for
    for (const [name, tensor] of tensors) expect(f32Sha256(tensor.data), name).toBe(f32Sha256(PARAMS.get(name)!.data));
    // Fetched again: everything is in the store already.
    expect((await base.fetch(['trunk'], () => [coordinator])).summary.fetchedBytes).toBe(0);

    const fetcher = new WeightFetcher({ rpc: rpcOf(stranger), store: new BlobStore(join(dir, 'stranger-store')) });
    const refused = fetcher.fetchGroups(base.manifest, ['trunk'], [coordinator]);
    await expect(refused).rejects.toThrow(FetchError);
    await expect(refused).rejects.toThrow(/refused/);
  });

  it('refuses a job whose model contradicts the base, and a tokenizer larger than its vocabulary, naming what to fix', async () => {
    await expect(startWithBase({ model: { hiddenSize: 64 } })).rejects.toThrow(JobError);
    await expect(startWithBase({ model: { hiddenSize: 64 } })).rejects.toThrow(/model.hiddenSize is 64 but the base checkpoint's is 32/);
    await expect(startWithBase({ model: { maxSeqLen: 64 } })).rejects.toThrow(/maxSeqLen/); // longer than the base allows
    const large = BpeTokenizer.train(jobDocuments(JOB).documents, { vocabSize: 320 });
    await expect(startWithBase({}, large)).rejects.toThrow(/320 tokens, more than the base checkpoint's vocabulary of 300/);
    // What the base leaves to the job: a shorter context and the router's auxiliary loss.
    server = await startWithBase({ model: { maxSeqLen: 16, routerAuxLossCoef: 0.02, hiddenSize: 32 } });
  });
});

describe('a node given a base', () => {
  it('refuses a manifest not signed by the coordinator it joined, or not the base the reply names', async () => {
    const { manifest, id } = await buildManifest(join(dir, 'base'));
    const coordinatorKey = await generateKeyPair('Ed25519');
    const otherKey = await generateKeyPair('Ed25519');
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id');
    const coordinator = peerIdFromPrivateKey(coordinatorKey).toString();
    const rpc = { request: async () => { throw new Error('unused'); }, handle: async () => {} };
    const components = { rpc, dataDir: dir, admitted: () => true };
    const forged = { id, manifest, signature: signManifest(otherKey, manifest).signature };
    await expect(NodeBase.open(forged, coordinator, components as never)).rejects.toThrow(ManifestError);
    const signed = { id, manifest, signature: signManifest(coordinatorKey, manifest).signature };
    const swapped = { ...signed, manifest: { ...manifest, tensors: manifest.tensors.slice(1) } };
    await expect(NodeBase.open(swapped, coordinator, components as never)).rejects.toThrow(/not the base/);
    await expect(NodeBase.open(signed, coordinator, components as never)).resolves.toBeInstanceOf(NodeBase);
  });
});

describe('swarmtrain-coordinator --base', () => {
  const run = async (args: string[]) => {
    let stderr = '';
    const io = { stdout: { write: () => true }, stderr: { write: (text: string) => ((stderr += text), true) } };
    const code = await runCoordinator(args, io as never);
    return { code, stderr };
  };

  it('exits 2 with the reason for a folder that is not a checkpoint, or a base without a tokenizer of its own', async () => {
    const jobFile = join(dir, 'job.json');
    await writeFile(jobFile, JSON.stringify(JOB));
    const missing = await run(['--job', jobFile, '--base', join(dir, 'nowhere')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/base .*nowhere: .*config/);
    const untokenized = await run(['--job', jobFile, '--base', join(dir, 'base')]);
    expect(untokenized.code).toBe(2);
    expect(untokenized.stderr).toMatch(/needs its own tokenizer: put tokenizer.json in the folder or give --tokenizer/);
    const vocab = await run(['--job', jobFile, '--base', join(dir, 'base'), '--vocab', '300']);
    expect(vocab.code).toBe(2);
    expect(vocab.stderr).toMatch(/--vocab would train a new one/);
  });
});
