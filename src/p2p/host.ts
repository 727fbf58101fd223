// The libp2p host every swarm process runs: TCP, noise encryption, yamux multiplexing,
// identify and ping, listening on loopback unless told otherwise; optionally a circuit relay
// server for admitted peers, or the client side (relayed addresses, AutoNAT, DCUtR hole punching).
// With a key file the node keeps its peer id across restarts, so the coordinator recognises it.
import './polyfill.ts'; // before any libp2p import
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { autoNAT } from '@libp2p/autonat';
import { circuitRelayServer, circuitRelayTransport, type CircuitRelayService } from '@libp2p/circuit-relay-v2';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { dcutr } from '@libp2p/dcutr';
import { identify, type Identify } from '@libp2p/identify';
import type { ConnectionGater, PrivateKey } from '@libp2p/interface';
import { ping, type Ping } from '@libp2p/ping';
import { tcp } from '@libp2p/tcp';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p, type Libp2pInit } from 'libp2p';
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { reachability, type ReachabilityInit } from './reachability.ts';

export type Host = Libp2p<{ identify: Identify; ping: Ping; relay?: CircuitRelayService }>;

/** A circuit relay v2 server for the swarm's members (the coordinator, or a reachable node that opts in). */
export interface RelayServerOptions {
  /** Whether a peer may reserve a slot: only admitted swarm members may. */
  mayReserve(peerId: string): boolean;
  /** Reservations held at once. Default 256. */
  maxReservations?: number;
  /** How long a reservation lasts before the client must renew it. Default 1 h. */
  reservationTtlMs?: number;
  /**
   * Bytes (both directions) and time one relayed connection may carry; the relay resets it beyond them.
   * Default 1 GiB and 1 h: a relayed node trains over it when hole punching fails.
   */
  dataLimitBytes?: bigint;
  durationLimitMs?: number;
}

export interface HostOptions {
  /** Multiaddrs to listen on. Default: an ephemeral TCP port on 127.0.0.1. */
  listen?: string[];
  /** Where the node's private key lives; created on first use. Without it (or privateKey) the identity is ephemeral. */
  keyFile?: string;
  /** The identity key itself (see identityKey), for a caller that also signs with it. */
  privateKey?: PrivateKey;
  /** libp2p's connection limits, when its defaults (300 connections, 5 new ones a second per address) are too few. */
  connectionManager?: Libp2pInit['connectionManager'];
  /**
   * Whether this host pings its connections (libp2p's connection monitor: every connection at once, every 10 s,
   * each ping a new stream). Default true. A coordinator turns it off: with a thousand nodes it was a burst of a
   * thousand streams every 10 s that held heartbeats back; its nodes' heartbeats and their own pings show them
   * alive, and a vanished node's socket closes after TCP's two idle minutes.
   */
  pingConnections?: boolean;
  /** Transports to use instead of TCP (a test can wrap TCP to add latency or faults). */
  transports?: Libp2pInit['transports'];
  connectionGater?: ConnectionGater;
  /**
   * Addresses to advertise besides the listening ones (a public address forwarded to this host by a NAT or
   * a container's port mapping). Relayed addresses and those AutoNAT confirms are advertised too.
   */
  announce?: string[];
  /** Serve as a circuit relay for admitted peers. */
  relayServer?: RelayServerOptions;
  /**
   * Reach and be reached through relays: dial /p2p-circuit addresses, listen on them (a `/p2p-circuit`
   * listen address reserves a slot), learn whether this host is reachable (AutoNAT), and upgrade
   * relayed connections to direct ones by hole punching (DCUtR).
   */
  relayClient?: boolean;
  /** With relayClient: when to reserve a slot on the relays this host connects to (see reachability.ts). Default auto. */
  reachability?: ReachabilityInit;
}

export const DEFAULT_LISTEN = ['/ip4/127.0.0.1/tcp/0'];

/**
 * libp2p pings every connection every 10 s and aborts it when a ping takes longer than its timeout (5 s at
 * least). A ping's bytes queue behind what other streams already wrote, and yamux lets each stream write
 * up to its window ahead of the receiver (16 MiB by default): on a slow link one large message then held
 * pings back for seconds and the whole connection was cut mid-transfer (seen through a relay at 20 Mbit/s,
 * which halves the rate: 4 MiB and more; 8 MiB direct). Capping the window bounds the queue to 1 MiB per
 * busy stream (a stream still moves 1 MiB per round trip: 10 MiB/s at 100 ms), and the longer minimum
 * lets a dozen of them be busy on a 5 Mbit/s link; a dead connection is still found within half a minute.
 */
const MAX_STREAM_WINDOW_BYTES = 1024 * 1024;
const MIN_PING_TIMEOUT_MS = 20_000;

/** Creates and starts a host. */
export async function createHost(options: HostOptions = {}): Promise<Host> {
  const privateKey = options.privateKey ?? await identityKey(options.keyFile);
  const { relayServer, relayClient } = options;
  // The caller's gater stays the prototype, so a class instance keeps its methods.
  const gater: ConnectionGater = Object.create(options.connectionGater ?? null);
  if (relayServer) gater.denyInboundRelayReservation = (peer) => !relayServer.mayReserve(peer.toString());
  const transports = options.transports ?? [tcp()];
  const listen = options.listen ?? DEFAULT_LISTEN;
  return createLibp2p({
    privateKey,
    addresses: { listen, appendAnnounce: [...(options.announce ?? []), ...listen.filter(isConcrete)] },
    transports: relayClient ? [...transports, circuitRelayTransport()] : transports,
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: MAX_STREAM_WINDOW_BYTES } })],
    connectionGater: gater,
    ...(options.connectionManager ? { connectionManager: options.connectionManager } : {}),
    connectionMonitor: { enabled: options.pingConnections ?? true, pingTimeout: { minTimeout: MIN_PING_TIMEOUT_MS } },
    services: {
      identify: identify(),
      ping: ping(),
      ...(relayServer ? { relay: relayService(relayServer) } : {}),
      ...(relayClient ? { autoNAT: autoNAT(), dcutr: dcutr(), reachability: reachability(options.reachability ?? { mode: 'auto' }) } : {}),
    },
  }) as Promise<Host>;
}

/**
 * A listen address naming one IP and port: advertised as given. (libp2p advertises a public address
 * only once AutoNAT confirms it, which takes several peers; one the operator chose is known.)
 */
function isConcrete(addr: string): boolean {
  const components = multiaddr(addr).getComponents();
  const host = components.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
  const port = components.find((c) => c.name === 'tcp')?.value;
  return host !== undefined && host !== '0.0.0.0' && host !== '::' && port !== undefined && port !== '0';
}

function relayService(options: RelayServerOptions): ReturnType<typeof circuitRelayServer> {
  return circuitRelayServer({
    reservations: {
      maxReservations: options.maxReservations ?? 256,
      reservationTtl: options.reservationTtlMs ?? 3_600_000,
      applyDefaultLimit: true,
      defaultDataLimit: options.dataLimitBytes ?? 2n ** 30n,
      defaultDurationLimit: options.durationLimitMs ?? 3_600_000,
    },
  });
}

/** The host's identity: kept in `keyFile` (see loadOrCreatePrivateKey), or a fresh Ed25519 key for this run only. */
export async function identityKey(keyFile?: string): Promise<PrivateKey> {
  return keyFile === undefined ? generateKeyPair('Ed25519') : loadOrCreatePrivateKey(keyFile);
}

/**
 * Reads the private key in `path` (libp2p protobuf encoding), or creates an Ed25519 key there.
 * A file that exists but holds no valid key is an error, never overwritten: it may be someone's identity.
 */
export async function loadOrCreatePrivateKey(path: string): Promise<PrivateKey> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const key = await generateKeyPair('Ed25519');
    // Another process may have created the file meanwhile: then its key is the identity.
    return (await writePrivateKey(path, key)) ? key : loadOrCreatePrivateKey(path);
  }
  try {
    return privateKeyFromProtobuf(bytes);
  } catch (err) {
    throw new Error(`${path}: not a libp2p private key (${(err as Error).message}); move it away to create a new identity`);
  }
}

/**
 * Writes a temporary file and hard-links it into place, so a crash never leaves half a key and an
 * existing key is never replaced (false when `path` appeared meanwhile). Readable by the owner only.
 */
async function writePrivateKey(path: string, key: PrivateKey): Promise<boolean> {
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temporary, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' });
    await link(temporary, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await rm(temporary, { force: true });
  }
}
