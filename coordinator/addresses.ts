// The addresses each node advertises (in its join, then in heartbeats as they change: a relay
// reservation, an address AutoNAT confirmed) and the IP the coordinator sees it connect from. A plan
// sent to a node carries of every peer only the addresses that node can use (usableAddresses); when
// any node's addresses change, every node gets the plan again, at its next heartbeat.
import { multiaddr } from '@multiformats/multiaddr';
import { usableAddresses } from '../src/p2p/index.ts';

interface Entry {
  addrs: string[];
  /** The IP this node's connection to the coordinator comes from; unknown for a relayed one. */
  seenFrom?: string;
}

export class AddressBook {
  private readonly entries = new Map<string, Entry>();
  /** Bumped on every change; each receiver's value when it last got a plan. */
  private version = 0;
  private readonly delivered = new Map<string, number>();

  /** lan: give every peer every address (one routed private network), not only the ones it can use. */
  constructor(private readonly lan = false) {}

  /** Records a node's addresses; a change reaches the other nodes with their next plan. */
  set(peer: string, addrs: readonly string[], seenFrom: string | undefined): void {
    const before = this.entries.get(peer);
    if (before && before.seenFrom === seenFrom && before.addrs.join(' ') === addrs.join(' ')) return;
    this.entries.set(peer, { addrs: [...addrs], ...(seenFrom === undefined ? {} : { seenFrom }) });
    this.version++;
  }

  /** Every address of a node, for the coordinator's own dials. */
  get(peer: string): string[] | undefined {
    return this.entries.get(peer)?.addrs;
  }

  /** The addresses of `peer` that `receiver` can use; noted as delivered to it. */
  usableBy(receiver: string, peer: string): string[] {
    this.delivered.set(receiver, this.version);
    const entry = this.entries.get(peer);
    if (!entry) return [];
    return usableAddresses(entry.addrs, { owner: entry.seenFrom, receiver: this.entries.get(receiver)?.seenFrom, lan: this.lan });
  }

  /** Whether some node's addresses changed since `receiver` last got a plan. */
  changedFor(receiver: string): boolean {
    return (this.delivered.get(receiver) ?? -1) < this.version;
  }
}

/** A multiaddr that parses and ends in /p2p/<peer>: a node may only advertise itself. */
export function advertises(addr: string, peer: string): boolean {
  try {
    const last = multiaddr(addr).getComponents().at(-1);
    return last?.name === 'p2p' && last.value === peer;
  } catch {
    return false;
  }
}
