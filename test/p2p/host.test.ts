import { afterAll, expect, it } from 'vitest';
import { createHost, type Host } from '../../src/p2p/index.ts';

const hosts: Host[] = [];
afterAll(async () => {
  await Promise.all(hosts.map((host) => host.stop()));
});

// libp2p's connection monitor pings every connection every 10 s and records the round trip on the connection:
// a host that pings has a round trip on its connection after one period, one made with pingConnections: false none.
it('a host made with pingConnections: false does not ping its connections', { timeout: 20_000 }, async () => {
  const [peer, pinging, quiet] = await Promise.all([
    createHost({ pingConnections: false }), createHost(), createHost({ pingConnections: false }),
  ]);
  hosts.push(peer, pinging, quiet);
  const [fromPinging, fromQuiet] = await Promise.all([pinging.dial(peer.getMultiaddrs()[0]!), quiet.dial(peer.getMultiaddrs()[0]!)]);
  await new Promise((resolve) => setTimeout(resolve, 11_000));
  expect(fromPinging.status).toBe('open');
  expect(fromPinging.rtt).toBeGreaterThanOrEqual(0);
  expect(fromQuiet.status).toBe('open');
  expect(fromQuiet.rtt).toBeUndefined();
});
