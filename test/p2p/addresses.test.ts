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
    expect(usableAddresses(all, { owner: '127.0.0.1', receiver: '127.3.0.9' })).toEqual(all); // 127.0.0.0/8 is all this machine
    expect(usableAddresses(all, { owner: '11.0.1.2', receiver: '11.0.2.2', lan: true })).toEqual(all);
  });

  it('where the coordinator did not see one of them connect directly: only public ones', () => {
    expect(usableAddresses(all, { owner: undefined, receiver: '11.0.2.2' })).toEqual([forwarded, named, relayedPublic]);
  });
});

describe("the coordinator's address book", () => {
  it('says when a node\'s addresses (or where it connects from) changed, and keeps all of them for its own dials', () => {
    const book = new AddressBook();
    expect(book.set('a', [home, forwarded], '11.0.1.2')).toBe(true);
    expect(book.set('a', [home, forwarded], '11.0.1.2')).toBe(false); // the same again
    expect(book.set('a', [home, forwarded, relayedPublic], '11.0.1.2')).toBe(true); // a relay reservation
    expect(book.set('a', [home, forwarded, relayedPublic], '11.0.9.9')).toBe(true); // the same, from elsewhere
    expect(book.get('a')).toEqual([home, forwarded, relayedPublic]);
  });

  // Where each node connects from (undefined: only over a relay), every one advertising all the addresses above.
  const seenFrom: Record<string, string | undefined> = {
    local1: '127.0.0.1', local2: '127.0.0.1', local3: '127.1.2.3', lan: '192.168.1.7', vpn: '10.0.0.7', docker: '172.18.0.4',
    natA1: '11.0.1.2', natA2: '11.0.1.2', alone1: '11.0.2.2', alone2: '11.0.3.3', relayed: undefined,
  };
  const names = Object.keys(seenFrom);
  const bookOf = (lan = false) => {
    const book = new AddressBook(lan);
    for (const name of names) book.set(name, all, seenFrom[name]);
    return book;
  };
  const viewGroups = (book: AddressBook) => {
    const groups = new Map<string, string[]>();
    for (const name of names) groups.set(book.view(name).key, [...(groups.get(book.view(name).key) ?? []), name]);
    return [...groups.values()];
  };

  it('puts receivers in views, each receiver getting of every other node what usableAddresses gives it', () => {
    const book = bookOf();
    expect(viewGroups(book)).toEqual([
      ['local1', 'local2', 'local3'], ['lan', 'vpn', 'docker'], ['natA1', 'natA2'], ['alone1', 'alone2', 'relayed'],
    ]);
    for (const receiver of names) {
      for (const owner of names.filter((name) => name !== receiver)) {
        const expected = usableAddresses(all, { owner: seenFrom[owner], receiver: seenFrom[receiver] });
        expect(book.usableIn(book.view(receiver), owner), `${owner} for ${receiver}`).toEqual(expected);
      }
    }
    // Its own addresses, which a node never dials, as the others of its view get them: public ones alone on a public IP.
    expect(book.usableIn(book.view('alone1'), 'alone1')).toEqual([forwarded, named, relayedPublic]);
    expect(book.usableIn(book.view('natA1'), 'natA1')).toEqual([home, docker, forwarded, named, relayedPublic]);
  });

  it('gives a node alone on its public IP a view of its own once another node connects from there; with --lan, one view', () => {
    const book = bookOf();
    book.set('alone1-neighbour', all, '11.0.2.2');
    expect(book.view('alone1')).toEqual({ key: '11.0.2.2', receiver: '11.0.2.2' });
    expect(book.usableIn(book.view('alone1'), 'alone1-neighbour')).toEqual([home, docker, forwarded, named, relayedPublic]);
    book.set('alone1-neighbour', all, '11.0.4.4'); // it moved: alone1 is alone again
    expect(book.view('alone1').key).toBe('public');
    const lan = bookOf(true);
    expect(viewGroups(lan)).toEqual([names]);
    for (const owner of names) expect(lan.usableIn(lan.view('alone1'), owner)).toEqual(all);
  });
});
