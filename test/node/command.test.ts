// `swarmtrain node` exit codes: bad input (options, a join address without the coordinator's peer
// id) is 2; a coordinator that cannot be reached is a network failure, 1, not bad input.
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { CommandIO } from '../../src/cli/command.ts';
import { nodeCommand } from '../../node/command.ts';

const PEER_ID = '12D3KooWDvPbw4wevnX5Bv2VPJix9iQHA3oZDeXt8EjonUiaPFN2';

async function run(argv: string[]) {
  let stdout = '';
  let stderr = '';
  const io: CommandIO = { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) }, env: {} };
  const code = await nodeCommand(argv, io);
  return { code, stdout, stderr };
}

/** A loopback TCP port nobody listens on (one the system just handed out and took back). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('swarmtrain node', () => {
  it('exits 2 with one line for bad options', async () => {
    const join = ['--join', `/ip4/127.0.0.1/tcp/1/p2p/${PEER_ID}`];
    const cases: [string[], string][] = [
      [[], 'swarmtrain node: --join <multiaddr> is required (see swarmtrain node --help)\n'],
      [[...join, '--threads', '65'], 'swarmtrain node: --threads must be an integer from 1 to 64, got "65"\n'],
      [[...join, '--memory-budget', 'lots'], 'swarmtrain node: --memory-budget must be a size like 512MB or 2GB, got "lots"\n'],
      [[...join, '--fault', 'fire'], 'swarmtrain node: --fault must be one of nan, scale1000, got "fire"\n'],
    ];
    for (const [argv, stderr] of cases) expect(await run(argv), argv.join(' ')).toEqual({ code: 2, stdout: '', stderr });
  });

  it('exits 2 for a join address without the coordinator peer id', async () => {
    const result = await run(['--join', '/ip4/127.0.0.1/tcp/1']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^swarmtrain node: \/ip4\/127\.0\.0\.1\/tcp\/1 does not end in \/p2p\/<the coordinator's peer id>/);
  });

  it('exits 1, a failure and not bad input, when the coordinator cannot be reached', async () => {
    const result = await run(['--join', `/ip4/127.0.0.1/tcp/${await closedPort()}/p2p/${PEER_ID}`, '--give-up-after', '2']);
    expect(result.stderr.split('\n')).toHaveLength(2); // one line and its newline
    expect(result.stderr).toMatch(/^swarmtrain node: /);
    expect(result.code).toBe(1);
  }, 30_000);
});
