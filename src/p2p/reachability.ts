// A node behind a NAT takes a circuit relay v2 reservation, so peers reach it through the relay (and
// DCUtR may then upgrade their connections to direct ones). Whether to: `private` always; `public`
// never; `auto` when a relay sees it connect from an address none of its interfaces has (a NAT in
// between) and it advertises no public address of its own (an --announce, or one AutoNAT confirmed).
// The relays are the peers that identify with the hop protocol: the coordinator, and nodes that opt in.
import type { Libp2pEvents, PeerId, TypedEventTarget } from '@libp2p/interface';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { networkInterfaces } from 'node:os';
import { addressScope, connectionIp, isRelayed } from './addresses.ts';

export type Reachability = 'auto' | 'public' | 'private';
export const REACHABILITY_MODES = ['auto', 'public', 'private'] as const satisfies readonly Reachability[];

const HOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/hop';
/** A relay may refuse at first (e.g. before it admitted this node): tries, and the wait before each retry. */
const RESERVE_ATTEMPTS = 5;
const RESERVE_RETRY_MS = 2_000;

export type ReachabilityEvent =
  | { event: 'relay-reserved'; relay: string; addrs: string[] }
  | { event: 'relay-refused'; relay: string; attempt: number; reason: string };

export interface ReachabilityInit {
  mode: Reachability;
  onEvent?: (event: ReachabilityEvent) => void;
}

/** The parts of libp2p's components this service uses. */
interface ReachabilityComponents {
  events: TypedEventTarget<Libp2pEvents>;
  transportManager: { listen(addrs: Multiaddr[]): Promise<void> };
  addressManager: { getAddresses(): Multiaddr[] };
}

export function reachability(init: ReachabilityInit): (components: ReachabilityComponents) => RelayReservations {
  return (components) => new RelayReservations(components, init);
}

export class RelayReservations {
  private readonly reserving = new Set<string>();
  private stopped = false;

  constructor(private readonly components: ReachabilityComponents, private readonly init: ReachabilityInit) {}

  start(): void {
    this.stopped = false;
    this.components.events.addEventListener('peer:identify', this.onIdentify);
    this.components.events.addEventListener('peer:disconnect', this.onDisconnect);
  }

  stop(): void {
    this.stopped = true;
    this.components.events.removeEventListener('peer:identify', this.onIdentify);
    this.components.events.removeEventListener('peer:disconnect', this.onDisconnect);
  }

  /** A relay gone takes its reservation with it: the next identify with it (a reconnection) reserves again. */
  private readonly onDisconnect = (event: CustomEvent<PeerId>) => {
    this.reserving.delete(event.detail.toString());
  };

  private readonly onIdentify = (event: CustomEvent<Libp2pEvents['peer:identify']['detail']>) => {
    const { peerId, protocols, observedAddr, connection } = event.detail;
    // Only a relay reached directly can carry circuits to this node.
    if (!protocols.includes(HOP_PROTOCOL) || connectionIp(connection.remoteAddr) === undefined) return;
    if (this.reserving.has(peerId.toString()) || !this.needsRelay(observedAddr)) return;
    void this.reserve(peerId, connection.remoteAddr);
  };

  /** Whether peers need a relay to reach this node, given where a relay saw it connect from. */
  private needsRelay(observed: Multiaddr | undefined): boolean {
    if (this.init.mode !== 'auto') return this.init.mode === 'private';
    const advertisesPublic = this.components.addressManager.getAddresses().some((a) => !isRelayed(a) && addressScope(a) === 'public');
    const seenFrom = observed && connectionIp(observed);
    return !advertisesPublic && seenFrom !== undefined && !localIps().has(seenFrom);
  }

  private async reserve(relay: PeerId, remote: Multiaddr): Promise<void> {
    const name = relay.toString();
    this.reserving.add(name);
    const relayAddr = remote.getComponents().some((c) => c.name === 'p2p') ? remote : remote.encapsulate(`/p2p/${name}`);
    for (let attempt = 1; attempt <= RESERVE_ATTEMPTS && !this.stopped; attempt++) {
      try {
        await this.components.transportManager.listen([multiaddr(`${relayAddr}/p2p-circuit`)]);
        const addrs = this.components.addressManager.getAddresses().filter((a) => isRelayed(a)).map(String);
        this.init.onEvent?.({ event: 'relay-reserved', relay: name, addrs });
        return;
      } catch (err) {
        this.init.onEvent?.({ event: 'relay-refused', relay: name, attempt, reason: (err as Error).message.slice(0, 500) });
        await new Promise((resolve) => setTimeout(resolve, RESERVE_RETRY_MS * attempt));
      }
    }
    this.reserving.delete(name);
  }
}

function localIps(): Set<string> {
  return new Set(Object.values(networkInterfaces()).flatMap((list) => list ?? []).map((i) => i.address));
}
