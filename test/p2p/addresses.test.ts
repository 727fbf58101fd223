// Which peer addresses each node is given: public ones to all, private ones only within a machine, a NAT
// or the coordinator's private network, loopback only on the coordinator's machine; a relayed address
// goes where its relay's does. Checked against hand-classified addresses.
import { describe, expect, it } from 'vitest';
import { AddressBook } from '../../coordinator/addresses.ts';
import { addressScope, usableAddresses } from '../../src/p2p/index.ts';

const PEER = '12D3KooWGzHzzzhd11NhQHFWYkY4aXA3iAfqUKuHtWt2xuuKhGMP';
const RELAY = '12D3KooWRLRkeHxynnXHrCKhAJLruQvGigYeUM5QHWgj5eSW6Skx';
const loopback = `/ip4/127.0.0.1/tcp/4002/p2p/${PEER}`;
const home = `/ip4/192.168.1.2/tcp/4002/p2p/${PEER}`;
const docker = `/ip4/172.18.0.3/tcp/4003/p2p/${PEER}`;
const forwarded = `/ip4/11.0.1.2/tcp/4002/p2p/${PEER}`;
const named = `/dns4/node.example.org/tcp/4002/p2p/${PEER}`;
const relayedPublic = `/ip4/11.0.0.1/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${PEER}`;
const relayedLocal = `/ip4/127.0.0.1/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${PEER}`;
const all = [loopback, home, docker, forwarded, named, relayedPublic, relayedLocal];

describe('address scopes', () => {
  it('tells loopback, private (RFC 1918, CGNAT, link-local) and public addresses apart; a relayed one by its relay', () => {
    expect(all.map(addressScope)).toEqual(['loopback', 'private', 'private', 'public', 'public', 'public', 'loopback']);
    expect(['/ip4/100.64.3.4/tcp/1', '/ip4/169.254.0.9/tcp/1', '/ip4/10.1.2.3/tcp/1', '/ip6/::1/tcp/1'].map(addressScope))
      .toEqual(['private', 'private', 'private', 'loopback']);
  });
});

describe('the addresses a receiver can use', () => {
  it('behind different public addresses: only public and publicly relayed ones', () => {
    expect(usableAddresses(all, { owner: '11.0.1.2', receiver: '11.0.2.2' })).toEqual([forwarded, named, relayedPublic]);
  });

  it('behind the same public address (one NAT, one machine): private ones too, but not loopback', () => {
    expect(usableAddresses(all, { owner: '11.0.1.2', receiver: '11.0.1.2' })).toEqual([home, docker, forwarded, named, relayedPublic]);
  });

  it('both reaching the coordinator over private networks (a LAN, a Docker network): private ones too', () => {
    expect(usableAddresses(all, { owner: '172.18.0.3', receiver: '172.18.0.4' })).toEqual([home, docker, forwarded, named, relayedPublic]);
  });

  it("both on the coordinator's machine, or with --lan: everything", () => {
    expect(usableAddresses(all, { owner: '127.0.0.1', receiver: '127.0.0.1' })).toEqual(all);
    expect(usableAddresses(all, { owner: '11.0.1.2', receiver: '11.0.2.2', lan: true })).toEqual(all);
  });

  it('where the coordinator did not see one of them connect directly: only public ones', () => {
    expect(usableAddresses(all, { owner: undefined, receiver: '11.0.2.2' })).toEqual([forwarded, named, relayedPublic]);
  });
});

describe("the coordinator's address book", () => {
  it('gives each receiver what it can use, and says who has not yet got a change', () => {
    const book = new AddressBook();
    book.set('a', [home, forwarded], '11.0.1.2');
    book.set('b', [home], '11.0.2.2');
    expect(book.changedFor('b')).toBe(true);
    expect(book.usableBy('b', 'a')).toEqual([forwarded]);
    expect(book.changedFor('b')).toBe(false);
    book.set('a', [home, forwarded], '11.0.1.2'); // the same again: no change
    expect(book.changedFor('b')).toBe(false);
    book.set('a', [home, forwarded, relayedPublic], '11.0.1.2'); // a relay reservation
    expect(book.changedFor('b')).toBe(true);
    expect(book.usableBy('b', 'a')).toEqual([forwarded, relayedPublic]);
    expect(book.get('a')).toEqual([home, forwarded, relayedPublic]); // all of them, for the coordinator's own dials
  });
});
