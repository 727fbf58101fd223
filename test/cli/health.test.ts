// `swarmtrain health` and the status files behind the Docker HEALTHCHECK: a fresh file is healthy;
// a stale, missing or malformed one is not, with a reason; and in a real swarm of processes the
// coordinator's and a training node's files are healthy, and the node's goes stale once its coordinator is gone.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCommand, type CommandIO } from '../../src/cli/command.ts';
import { checkHealth, HEALTH_COMMAND, statusWriter, writeStatus, type Status } from '../../src/cli/health.ts';
import { startSwarm } from '../../src/harness/local-swarm.ts';
import { validateJob, type JobSpec } from '../../proto/index.ts';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'swarmtrain-health-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const NOW = 1_750_000_000_000;
const status = (updatedAt: number): Status => ({ role: 'node', peerId: '12D3KooWExample', updatedAt, step: 7 });

async function health(argv: string[]) {
  let stdout = '';
  let stderr = '';
  const io: CommandIO = { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) }, env: {} };
  const code = await runCommand(HEALTH_COMMAND, argv, io);
  return { code, stdout, stderr };
}

describe('checkHealth', () => {
  it('a file written within the allowed age is healthy, up to the age itself', () => {
    const file = join(dir, 'status.json');
    writeStatus(file, status(NOW - 60_000));
    expect(checkHealth(file, 60_000, NOW)).toEqual({ healthy: true, status: status(NOW - 60_000) });
    expect(readdirSync(dir)).toEqual(['status.json']); // written whole, nothing left beside it
  });

  it('a stale file is unhealthy and says how old its last sign of work is', () => {
    const file = join(dir, 'status.json');
    writeStatus(file, status(NOW - 60_001));
    expect(checkHealth(file, 60_000, NOW)).toEqual({ healthy: false, reason: 'node 12D3KooWExample: last sign of work 60 s ago' });
  });

  it('a missing, non-JSON or incomplete file is unhealthy, with the reason', () => {
    const file = join(dir, 'status.json');
    expect(checkHealth(file, 60_000, NOW)).toEqual({ healthy: false, reason: `no status file ${file} (not joined or not listening yet)` });
    writeFileSync(file, '{"role":"node",');
    expect(checkHealth(file, 60_000, NOW)).toEqual({ healthy: false, reason: `${file}: not JSON` });
    for (const text of ['null', '[]', '{"peerId":"x"}', '{"updatedAt":"yesterday","peerId":"x"}', `{"updatedAt":${NOW}}`]) {
      writeFileSync(file, text);
      expect(checkHealth(file, 60_000, NOW), text).toEqual({ healthy: false, reason: `${file}: no updatedAt or peerId` });
    }
  });

  it('a status file that cannot be written is reported once, and the writer carries on', () => {
    const warnings: string[] = [];
    const write = statusWriter(join(dir, 'no-such-folder', 'status.json'), (message) => warnings.push(message));
    write(status(NOW));
    write(status(NOW + 1));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^status file .*no-such-folder\/status\.json: ENOENT/);
  });
});

describe('swarmtrain health', () => {
  it('exits 0 for a fresh file, 1 with the reason for a stale or missing one, 2 for bad options', async () => {
    const file = join(dir, 'status.json');
    writeStatus(file, status(Date.now()));
    expect(await health(['--status', file])).toEqual({ code: 0, stdout: 'healthy: node 12D3KooWExample\n', stderr: '' });
    writeStatus(file, status(Date.now() - 11_000));
    expect(await health(['--status', file, '--max-age-s', '10'])).toEqual({
      code: 1, stdout: '', stderr: 'unhealthy: node 12D3KooWExample: last sign of work 11 s ago\n',
    });
    expect(await health(['--status', file])).toMatchObject({ code: 0 }); // within the default 60 s
    expect((await health(['--status', join(dir, 'absent.json')])).code).toBe(1);
    expect(await health(['--status', file, '--max-age-s', '0'])).toEqual({
      code: 2, stdout: '', stderr: 'swarmtrain health: --max-age-s must be an integer ≥ 1, got "0"\n',
    });
  });
});

describe('status files of running processes', () => {
  it("the coordinator's and a training node's are healthy; the node's goes stale once the coordinator is gone", async () => {
    // The demo job with a smaller model, and batches enough not to finish during the test.
    const demo = JSON.parse(readFileSync(fileURLToPath(new URL('../../coordinator/jobs/demo.json', import.meta.url)), 'utf8')) as JobSpec;
    const job = validateJob({
      ...demo, jobId: 'health', totalBatches: 100_000, batchSize: 2, seqLen: 16,
      model: {
        ...demo.model, vocabSize: 300, hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 16,
        expertHiddenSize: 32, maxSeqLen: 16,
      },
    });
    const coordinatorStatus = join(dir, 'coordinator.json');
    const nodeStatus = join(dir, 'node.json');
    const swarm = await startSwarm(job, ['--heartbeat-ms', '200', '--status-file', coordinatorStatus]);
    try {
      const node = swarm.startNode(['--memory-budget', '256MB', '--status-file', nodeStatus]);
      const joined = await node.waitFor((e) => e.event === 'joined', 120_000, 'joined');
      await node.waitFor((e) => e.event === 'step' && e.step >= 2, 120_000, 'step 2');
      // The coordinator rewrites its file every 5 s: the first one may predate the join.
      const coordinatorHealth = () => {
        const health = checkHealth(coordinatorStatus, 10_000);
        return health.healthy && health.status;
      };
      const coordinatorPeer = swarm.address.split('/p2p/')[1];
      await expect.poll(coordinatorHealth, { timeout: 15_000 }).toMatchObject({ role: 'coordinator', peerId: coordinatorPeer, alive: 1 });
      const healthy = checkHealth(nodeStatus, 10_000);
      expect(healthy.healthy && healthy.status).toMatchObject({ role: 'node', peerId: joined.node });
      expect((healthy.healthy && healthy.status.step) as number).toBeGreaterThanOrEqual(2);

      // Without its coordinator a node gets no lease and no heartbeat answered: its file stops changing.
      swarm.coordinator.kill('SIGKILL');
      await swarm.coordinator.exited;
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      expect(checkHealth(nodeStatus, 2_000)).toMatchObject({ healthy: false });
    } finally {
      await swarm.stop();
    }
  }, 240_000);
});
