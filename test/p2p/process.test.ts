// Two separate Node processes on 127.0.0.1: this test process and a peer process
// (test/p2p/peer.ts) started with tsx, talking over real TCP + noise + yamux.
import { peerIdFromString } from '@libp2p/peer-id';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { msgpackCodec, tensorF32 } from '../../proto/index.ts';
import { createHost, loadOrCreatePrivateKey, RefusedError, Rpc, type Host, type Rejection } from '../../src/p2p/index.ts';
import { samples } from '../proto/samples.ts';
import { deferred, JOIN_TOKEN, misbehaviours, RejectionLog, sendRaw } from './peers.ts';

const IO_TIMEOUT_MS = 500;

interface PeerProcess {
  peerId: string;
  /** The peer's listening address with its /p2p/ id. */
  address: string;
  log: RejectionLog;
  stop(): Promise<void>;
}

async function startPeer(keyFile: string): Promise<PeerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/p2p/peer.ts', keyFile, String(IO_TIMEOUT_MS)], {
    cwd: join(import.meta.dirname, '../..'),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const log = new RejectionLog();
  const listening = deferred<{ peerId: string; addrs: string[] } | Error>();
  const exited = deferred();
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const message = JSON.parse(line) as { rejection?: Rejection; peerId?: string; addrs?: string[] };
    if (message.rejection) log.push(message.rejection);
    else if (message.peerId) listening.resolve(message as { peerId: string; addrs: string[] });
  });
  child.on('exit', (code) => {
    listening.resolve(new Error(`peer process exited with code ${code} before listening: ${stderr}`));
    exited.resolve();
  });
  const ready = await listening.promise;
  if (ready instanceof Error) throw ready;
  return {
    peerId: ready.peerId,
    address: ready.addrs[0],
    log,
    stop: async () => {
      child.stdin!.end();
      await exited.promise;
    },
  };
}

describe('p2p between two processes', () => {
  let dir: string;
  let peer: PeerProcess;
  let client: Host;
  let rpc: Rpc;
  const all = samples();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'swarmtrain-p2p-'));
    [peer, client] = await Promise.all([startPeer(join(dir, 'peer.key')), createHost()]);
    rpc = new Rpc({ transport: client, codec: msgpackCodec });
  });

  afterAll(async () => {
    await Promise.all([peer?.stop(), client?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  async function stillServes(): Promise<void> {
    const call = all.expertForward.request;
    const reply = await rpc.request(peer.address, 'expertForward', call);
    expect(Array.from(tensorF32(reply.tensor))).toEqual(Array.from(tensorF32(call.tensor), (x) => 2 * x));
  }

  it('answers requests over TCP on 127.0.0.1', async () => {
    expect(peer.address).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3Koo/);
    expect(await rpc.request(peer.address, 'heartbeat', all.heartbeat.request)).toEqual({ accepted: true, stop: false });
    await stillServes();
    const joined = await rpc.request(peer.address, 'join', { ...all.join.request, token: JOIN_TOKEN });
    expect(joined).toMatchObject({ admitted: true, job: { jobId: 'job-1' } });
    await expect(rpc.request(peer.address, 'join', all.join.request)).rejects.toBeInstanceOf(RefusedError);
  });

  for (const bad of misbehaviours()) {
    it(`the peer process cuts off ${bad.name}, logs why, and keeps serving`, async () => {
      const from = peer.log.entries.length;
      await stillServes(); // connected, so the raw stream below can dial by peer id
      const outcome = await sendRaw(client, peerIdFromString(peer.peerId), bad);
      const rejection = await peer.log.waitFor((r) => r.reason === bad.reason, from);
      expect(rejection).toMatchObject({ peer: client.peerId.toString(), direction: 'request' });
      if (bad.replyCode !== undefined) expect(outcome.reply?.error?.code).toBe(bad.replyCode);
      await stillServes();
    });
  }

  it('keeps its peer id across a restart with the same key file, and only then', async () => {
    const keyFile = join(dir, 'restart.key');
    const first = await startPeer(keyFile);
    await first.stop();
    const again = await startPeer(keyFile);
    const other = await startPeer(join(dir, 'other.key'));
    expect(again.peerId).toBe(first.peerId);
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600); // a private key: the owner's eyes only
    expect(other.peerId).not.toBe(first.peerId);
    // The restarted process answers under its old identity.
    expect(await rpc.request(again.address, 'heartbeat', all.heartbeat.request)).toEqual({ accepted: true, stop: false });
    await Promise.all([again.stop(), other.stop()]);
  });

  it('refuses to start from a key file that holds no key, rather than overwrite it', async () => {
    const keyFile = join(dir, 'corrupt.key');
    await writeFile(keyFile, 'not a key');
    await expect(loadOrCreatePrivateKey(keyFile)).rejects.toThrow(/corrupt\.key: not a libp2p private key/);
    await expect(startPeer(keyFile)).rejects.toThrow(/exited with code 1 before listening: [^]*not a libp2p private key/);
  });
});
