// A node's networking: the host it runs (what it advertises, whether it relays for other nodes, when
// it reserves a slot on a relay), the addresses it reports to the coordinator, and one event per
// connection saying whether it is direct or goes through a relay (DCUtR may replace the one by the other).
import { isRelayed, type Host, type HostOptions, type Reachability, type ReachabilityEvent } from '../src/p2p/index.ts';

export interface NodeNetworkOptions {
  /** Multiaddrs to listen on (default /ip4/127.0.0.1/tcp/0). */
  listen?: string[];
  /** Multiaddrs to advertise besides the listening ones (e.g. a port forwarded to this node). */
  announce?: string[];
  /** Serve as a circuit relay for the swarm's admitted nodes (for a node others can reach directly). */
  relay?: boolean;
  /** When to reserve a slot on a relay (the coordinator, or a node with `relay`). Default auto: when behind a NAT. */
  reachability?: Reachability;
}

export type LinkEvent = ReachabilityEvent
  | { event: 'link'; peer: string; via: 'direct' | 'relay'; direction: 'inbound' | 'outbound'; addr: string };

/** The host options of a node; `admitted` says who may reserve a slot when it relays. */
export function nodeHostOptions(
  options: NodeNetworkOptions & { keyFile?: string }, admitted: (peer: string) => boolean, emit: (event: LinkEvent) => void,
): HostOptions {
  return {
    ...(options.listen ? { listen: options.listen } : {}),
    ...(options.keyFile ? { keyFile: options.keyFile } : {}),
    ...(options.announce ? { announce: options.announce } : {}),
    // Every node dials relayed addresses (peers behind NATs have no other), so the client side is always on.
    relayClient: true,
    reachability: { mode: options.reachability ?? 'auto', onEvent: emit },
    ...(options.relay ? { relayServer: { mayReserve: admitted } } : {}),
  };
}

/** Reports every new connection to a peer: direct, or through a relay. */
export function reportLinks(host: Host, emit: (event: LinkEvent) => void): void {
  host.addEventListener('connection:open', ({ detail: connection }) => {
    const via = connection.limits !== undefined || isRelayed(connection.remoteAddr) ? 'relay' : 'direct';
    const { remotePeer, direction, remoteAddr } = connection;
    emit({ event: 'link', peer: remotePeer.toString(), via, direction, addr: remoteAddr.toString() });
  });
}

/** What the node tells the coordinator it can be reached at now: listening or announced, relayed once it holds a reservation. */
export function advertisedAddrs(host: Host): string[] {
  return host.getMultiaddrs().map(String).slice(0, 16);
}
