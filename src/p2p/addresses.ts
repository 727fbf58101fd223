// Which of a peer's addresses another peer can use. Loopback and private (RFC 1918, CGNAT, link-local,
// reserved) addresses only work from the same machine or network: the coordinator hands them only to
// peers that share it, judged by where it sees each peer connect from. Public ones go to all; a relayed
// address goes where its relay's address does. Receivers that get the same addresses of everyone share a view.
import { isLoopback, isPrivate } from '@libp2p/utils';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';

export type AddressScope = 'loopback' | 'private' | 'public';

/** How far an address reaches (a relayed one: its first hop, the relay): this machine, a private network, or anywhere. */
export function addressScope(addr: Multiaddr | string): AddressScope {
  const ma = typeof addr === 'string' ? multiaddr(addr) : addr;
  if (isLoopback(ma)) return 'loopback';
  return isPrivate(ma) ? 'private' : 'public';
}

export function isRelayed(addr: Multiaddr | string): boolean {
  return (typeof addr === 'string' ? multiaddr(addr) : addr).getComponents().some((c) => c.name === 'p2p-circuit');
}

/** The IP a connection came from (its remote address), or undefined for a relayed or non-IP one. */
export function connectionIp(remote: Multiaddr): string | undefined {
  if (isRelayed(remote)) return undefined;
  return remote.getComponents().find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
}

function ipScope(ip: string): AddressScope {
  return addressScope(ip.includes(':') ? `/ip6/${ip}` : `/ip4/${ip}`);
}

/**
 * The addresses of an owner that a receiver can use, given the IP each connects to the coordinator from
 * (`lan`: every address to everyone, for a swarm on one routed private network). A private address goes
 * to a receiver behind the same IP (same machine or NAT) or when both reach the coordinator over private
 * networks (a LAN, a Docker network); loopback only when both run on the coordinator's machine (from any
 * loopback address: 127.0.0.0/8 and ::1 are all this machine).
 */
export function usableAddresses(addrs: readonly string[], from: { owner?: string; receiver?: string; lan?: boolean }): string[] {
  const { owner, receiver, lan } = from;
  if (lan || (owner !== undefined && receiver !== undefined && ipScope(owner) === 'loopback' && ipScope(receiver) === 'loopback')) {
    return [...addrs];
  }
  const sameNetwork = owner !== undefined && receiver !== undefined
    && (owner === receiver || (ipScope(owner) !== 'public' && ipScope(receiver) !== 'public'));
  return addrs.filter((addr) => {
    const scope = addressScope(addr);
    return scope === 'public' || (scope === 'private' && sameNetwork);
  });
}

/**
 * A group of receivers to whom usableAddresses gives the same addresses of every owner: `key` names it,
 * `receiver` is the IP of any one of them. With lan, everyone; receivers behind private IPs; receivers on
 * the coordinator's machine (any loopback IP); behind one shared public IP (one NAT); and those alone on their public IP or
 * seen only over a relay, who get public addresses only (their own too: a node never dials itself).
 */
export interface AddressView {
  key: string;
  receiver?: string;
}

const PUBLIC_VIEW: AddressView = { key: 'public' };

/** The view of a receiver connecting from `receiver` (undefined: over a relay); `shared`: another node connects from there too. */
export function addressView(receiver: string | undefined, { lan = false, shared }: { lan?: boolean; shared: boolean }): AddressView {
  if (lan) return { key: 'lan' };
  if (receiver === undefined) return PUBLIC_VIEW;
  const scope = ipScope(receiver);
  if (scope === 'private' || scope === 'loopback') return { key: scope, receiver };
  return scope === 'public' && !shared ? PUBLIC_VIEW : { key: receiver, receiver };
}
