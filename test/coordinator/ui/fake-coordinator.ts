// A coordinator for the web UI's browser test and for working on the UI by hand: the real HTTP API
// (buildApi) and the UI plugin on a real port, over the in-memory FakeSwarmService, seeded with a
// swarm in mid-run: nodes in every status, a running job with loss samples, a placement with
// degraded and dead cells.
//   npx tsx test/coordinator/ui/fake-coordinator.ts [port]   serves it with token "dev-token", training on
import type { MetricPoint, NodeView, Placement } from '../../../coordinator/api/service.ts';
import { buildApi, listenApi } from '../../../coordinator/http/app.ts';
import { uiPlugin } from '../../../coordinator/ui/plugin.ts';
import { FakeSwarmService } from '../fake-service.ts';

export interface FakeCoordinator {
  url: string;
  close(): Promise<void>;
}

/** Serves `service` through the API and the UI on 127.0.0.1:`port` (0: any free port). */
export async function serveFake(
  service: FakeSwarmService, options: { apiToken: string; protectReads?: boolean; port?: number },
): Promise<FakeCoordinator> {
  const app = buildApi({ service, apiToken: options.apiToken, protectReads: options.protectReads, heartbeatMs: 2000 });
  await app.register(uiPlugin);
  const url = await listenApi(app, `127.0.0.1:${options.port ?? 0}`);
  return { url, close: () => app.close() };
}

/** The seeded nodes: two training, one slow, one gone. */
export const PEERS = {
  alpha: '12D3KooWAlphaNodeTrains1111', bravo: '12D3KooWBravoNodeTrains2222', charlie: '12D3KooWCharlieSlow333333',
  delta: '12D3KooWDeltaGone44444444',
};

/** A training loss that falls like a real one, with noise that is the same on every run. */
export function lossAt(batch: number): number {
  return 2 + 4.5 / Math.sqrt(1 + batch / 8) + 0.15 * Math.sin(batch * 1.7);
}

/** A sample of the seeded job at `batch`: loss, held-out every 10 batches, traffic growing with the batches. */
export function sampleAt(batch: number): Partial<MetricPoint> {
  return {
    loss: lossAt(batch), ...(batch % 10 === 0 ? { heldOut: lossAt(batch) + 0.2 } : {}),
    tokensPerSecond: 2400 + 100 * Math.sin(batch), nodes: 3, bytesSent: batch * 180_000, bytesReceived: batch * 170_000,
    refusedUpdates: Math.floor(batch / 120), droppedExpertCalls: Math.floor(batch / 90), staleness: 3.5,
  };
}

/**
 * Seeds `service` with three live nodes and a gone one, a running job of `totalBatches` trained
 * `batches` micro-batches, and its placement: 4 layers × 8 experts at replication 2, where the
 * gone node's cells are degraded and one cell (layer 3, expert 7) has only the gone node.
 */
export async function seedSwarm(service: FakeSwarmService, { totalBatches = 2000, batches = 60 } = {}): Promise<string> {
  const { alpha, bravo, charlie, delta } = PEERS;
  const pairs = [[alpha, bravo], [bravo, charlie], [alpha, charlie]];
  const job = await service.createJob({ name: 'moby-dick-moe', totalBatches, lr: 0.003, minLr: 0.0003 });
  const cells: Placement['cells'] = [];
  for (let layer = 0; layer < 4; layer++) {
    for (let expert = 0; expert < 8; expert++) {
      const holders = layer === 3 && expert === 7 ? [delta] : expert % 4 === 3 ? [charlie, delta] : pairs[expert % 3];
      cells.push({ layer, expert, holders });
    }
  }
  const experts = (peer: string) => cells.filter((cell) => cell.holders.includes(peer)).map(({ layer, expert }) => ({ layer, expert }));
  const node = (nodeId: string, status: NodeView['status'], more: Partial<NodeView>) => service.setNode({
    nodeId, status, experts: experts(nodeId), ...(status === 'gone' ? {} : { jobId: job.id }), ...more,
  });
  node(alpha, 'training', { cores: 8, gemmGflops: 310, memoryBytes: 8 * 2 ** 30, bytesSent: 6.1e9, bytesReceived: 5.8e9, step: batches });
  node(bravo, 'training', { cores: 4, gemmGflops: 150, memoryBytes: 4 * 2 ** 30, bytesSent: 3.3e9, bytesReceived: 3.1e9, step: batches,
    flaggedPeers: [charlie] });
  node(charlie, 'slow', { cores: 2, gemmGflops: 41, memoryBytes: 2 ** 31, bytesSent: 9.4e8, bytesReceived: 1.2e9, step: batches / 2 });
  node(delta, 'gone', {
    cores: 2, gemmGflops: 38, memoryBytes: 2 ** 31, bytesSent: 4.4e8, bytesReceived: 4.0e8, lastSeen: Date.now() - 95_000,
  });
  service.setPlacement({ jobId: job.id, version: 3, numLayers: 4, numExperts: 8, replication: 2, cells });
  trainFor(service, job.id, batches);
  service.addCheckpoint(job.id, 1, { 'model.safetensors': Buffer.alloc(4096, 7), 'manifest.json': '{"round":1}' });
  return job.id;
}

/** The job trains `batches` more micro-batches, one sample each, a second after its last one (seeded runs end now). */
export function trainFor(service: FakeSwarmService, jobId: string, batches: number): void {
  const from = service.getJob(jobId)!.completed;
  const last = service.metrics(jobId, 1)[0]?.at ?? Date.now() - batches * 1000;
  for (let i = 1; i <= batches; i++) {
    service.now = () => last + i * 1000;
    service.advance(jobId, 1, sampleAt(from + i));
  }
  service.now = Date.now;
}

if (process.argv[1]?.endsWith('fake-coordinator.ts')) {
  const service = new FakeSwarmService();
  const jobId = await seedSwarm(service);
  const coordinator = await serveFake(service, { apiToken: 'dev-token', port: Number(process.argv[2] ?? 8080) });
  setInterval(() => {
    if (service.getJob(jobId)?.state === 'running') trainFor(service, jobId, 1);
  }, 1000);
  console.log(`fake coordinator with the UI at ${coordinator.url}/ (token dev-token)`);
}
