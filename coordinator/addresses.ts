// The addresses each node advertises (in its join, then in heartbeats as they change: a relay
// reservation, an address AutoNAT confirmed) and the IP the coordinator sees it connect from. A plan
// sent to a node carries of every peer only the addresses that node can use: the same for every node
// of its view (usableAddresses, addressView). A change makes a new plan version, which every node fetches.
import { multiaddr } from '@multiformats/multiaddr';
import { addressView, usableAddresses, type AddressView } from '../src/p2p/index.ts';

interface Entry {
  addrs: string[];
  /** The IP this node's connection to the coordinator comes from; unknown for a relayed one. */
  seenFrom?: string;
}

export class AddressBook {
  private readonly entries = new Map<string, Entry>();
  /** How many nodes connect from each IP: one alone on a public IP shares the view of all such nodes. */
  private readonly nodesAt = new Map<string, number>();

  /** lan: give every peer every address (one routed private network), not only the ones it can use. */
  constructor(private readonly lan = false) {}

  /** Records a node's addresses; whether they (or where it connects from) changed. */
  set(peer: string, addrs: readonly string[], seenFrom: string | undefined): boolean {
    const before = this.entries.get(peer);
    if (before && before.seenFrom === seenFrom && before.addrs.join(' ') === addrs.join(' ')) return false;
    this.entries.set(peer, { addrs: [...addrs], ...(seenFrom === undefined ? {} : { seenFrom }) });
    if (before?.seenFrom !== seenFrom) {
      this.count(before?.seenFrom, -1);
      this.count(seenFrom, 1);
    }
    return true;
  }

  private count(ip: string | undefined, change: number): void {
    if (ip === undefined) return;
    const count = (this.nodesAt.get(ip) ?? 0) + change;
    if (count > 0) this.nodesAt.set(ip, count);
    else this.nodesAt.delete(ip);
  }

  /** Every address of a node, for the coordinator's own dials. */
  get(peer: string): string[] | undefined {
    return this.entries.get(peer)?.addrs;
  }

  /** The view of `receiver`: what its plans are made and signed for. */
  view(receiver: string): AddressView {
    const ip = this.entries.get(receiver)?.seenFrom;
    return addressView(ip, { lan: this.lan, shared: ip !== undefined && (this.nodesAt.get(ip) ?? 0) > 1 });
  }

  /** The addresses of `peer` that receivers of `view` can use. */
  usableIn(view: AddressView, peer: string): string[] {
    const entry = this.entries.get(peer);
    if (!entry) return [];
    return usableAddresses(entry.addrs, { owner: entry.seenFrom, receiver: view.receiver, lan: this.lan });
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
