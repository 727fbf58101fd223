// One valid request and response per protocol, for round trips and as the base of bad inputs.
import {
  f32Tensor, groupId, PROTOCOL_VERSION, type ProtocolName, type RequestOf, type ResponseOf, type Tensor,
} from '../../proto/index.ts';
import { fillRandom, rng } from '../helpers.ts';

export const PEER_ID = '12D3KooWLkKj62grNMSsRNUPgQpvh3tLrfpB5pKERtN6ZU3XFwx4';

export function randomF32(shape: number[], seed: number): Tensor {
  const values = new Float32Array(shape.reduce((n, d) => n * d, 1));
  fillRandom(values, rng(seed));
  return f32Tensor(shape, values);
}

export type Samples = { [P in ProtocolName]: { request: RequestOf<P>; response: ResponseOf<P> } };

export function samples(): Samples {
  const int8 = { dtype: 'I8' as const, shape: [2, 2], data: new Uint8Array([1, 255, 127, 128]) };
  const delta = {
    jobId: 'job-1',
    group: groupId({ kind: 'expert', layer: 1, expert: 5 }),
    round: 9,
    steps: 50,
    codec: 'int8-block32',
    parts: [{ name: 'w1.q', tensor: int8 }, { name: 'w1.scale', tensor: randomF32([1], 5) }],
  };
  const expertCall = (seed: number) => ({
    jobId: 'job-1', step: 12, call: 3, layer: 1, expert: 5, rows: 3, tensor: randomF32([3, 8], seed),
  });
  return {
    join: {
      request: {
        version: PROTOCOL_VERSION, nodeId: PEER_ID, token: 's3cret', cores: 2, gemmGflops: 81.25, memoryBytes: 8 * 2 ** 30,
        addrs: [`/ip4/127.0.0.1/tcp/4001/p2p/${PEER_ID}`],
      },
      response: {
        admitted: true,
        version: PROTOCOL_VERSION,
        job: {
          jobId: 'job-1', model: { vocabSize: 512, hiddenSize: 64, normTopkProb: true }, mode: 'lora', lora: { rank: 8, alpha: 16 },
          baseFormat: 'q4', basePath: 'int', seed: 3, corpus: 'moby-dick', documents: { from: 0, to: 40 }, batchSize: 8, seqLen: 64,
          heldOutFraction: 0.05, totalBatches: 400, expectedNodes: 3, lr: 0.003, minLr: 0.0003, warmupSteps: 20,
          averaging: { mode: 'periodic', every: 4, deadlineMs: 2000 }, expertTimeoutMs: 5000,
        },
        tokenizer: '{"model":{"type":"BPE"}}',
        plan: {
          version: 4,
          experts: [{ layer: 0, expert: 3, holders: [PEER_ID] }, { layer: 1, expert: 0, holders: [] }],
          peers: [{ peerId: PEER_ID, addrs: ['/ip4/127.0.0.1/tcp/4001'] }],
          degraded: 'expert 1.0 has no holder',
        },
        planSignature: Uint8Array.from({ length: 64 }, (_, i) => i),
        heartbeatMs: 5000,
        completedBatches: 12,
      },
    },
    heartbeat: {
      request: {
        jobId: 'job-1', step: 120, loss: 3.25, tokensPerSecond: 2150.5, bytesSent: 5e9, bytesReceived: 123,
        staleness: 2, droppedExpertCalls: 0, planVersion: 3,
      },
      response: { accepted: true, stop: false, plan: { version: 4, experts: [], peers: [] }, planSignature: new Uint8Array(64).fill(7) },
    },
    lease: {
      request: { jobId: 'job-1', maxBatches: 4 },
      response: { jobId: 'job-1', leaseId: 77, batchIds: [8, 9, 10, 11], deadline: 1_760_000_000_000, done: false, planVersion: 4 },
    },
    leaseReport: {
      request: { jobId: 'job-1', leaseId: 77, completedBatchIds: [8, 9] },
      response: { accepted: false, reason: 'lease expired' },
    },
    expertForward: { request: expertCall(1), response: expertCall(2) },
    expertBackward: { request: { ...expertCall(3), input: randomF32([3, 8], 7) }, response: expertCall(4) },
    expertCalls: {
      request: {
        direction: 'backward', calls: [{ ...expertCall(5), forwardCall: 2 }, { ...expertCall(6), call: 4, input: randomF32([3, 8], 8) }],
      },
      response: { answers: [expertCall(9)], refusals: [{ call: 4, reason: 'expert 1.5 is not held here' }] },
    },
    delta: { request: delta, response: { accepted: true } },
    deltas: {
      request: { deltas: [delta, { ...delta, group: groupId({ kind: 'trunk' }), part: { index: 1, count: 2 } }] },
      response: { refusals: [{ index: 1, reason: 'trunk is cut into 3 parts here, got 2' }] },
    },
    state: {
      request: { jobId: 'job-1', group: groupId({ kind: 'trunk' }), names: ['embed', 'head'] },
      response: {
        jobId: 'job-1', group: groupId({ kind: 'trunk' }), round: 9, available: ['embed', 'head', 'norm'],
        parts: [{ name: 'embed', tensor: randomF32([4, 2], 6) }],
      },
    },
    blobChunk: {
      request: { blob: 'ab'.repeat(32), offset: 4096, length: 3 },
      response: { blob: 'ab'.repeat(32), offset: 4096, data: new Uint8Array([1, 2, 3]) },
    },
  };
}
