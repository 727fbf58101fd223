// The coordinator's cache of signed plans: one signature per (version, address view) however many
// nodes ask, a delta's base being the plan the node was sent (in its view), deltas computed once, and
// only the newest versions kept. Checked by counting the signatures made and against planDelta itself.
import { describe, expect, it } from 'vitest';
import { SignedPlans } from '../../coordinator/signed-plans.ts';
import { applyPlanDelta, planDelta, type Plan } from '../../proto/index.ts';

/** A plan of `version` whose one peer has the address `addr` (what a view changes). */
const planOf = (version: number, addr: string): Plan => ({
  version, experts: [{ layer: 0, expert: 0, holders: ['p'] }], peers: [{ peerId: 'p', addrs: [addr] }],
});

function counted(history?: number) {
  const signed: Plan[] = [];
  const plans = new SignedPlans((plan) => {
    signed.push(plan);
    return new Uint8Array([plan.version]);
  }, history);
  return { plans, signed };
}

describe('signed plans', () => {
  it('are made and signed once per version and view, however many nodes ask', () => {
    const { plans, signed } = counted();
    const local = (version: number) => () => planOf(version, '/ip4/127.0.0.1/tcp/1');
    const remote = (version: number) => () => planOf(version, '/ip4/11.0.0.1/tcp/1');
    const first = plans.signed('a', 1, 'loopback', local(1));
    expect(plans.signed('b', 1, 'loopback', local(1))).toBe(first);
    const other = plans.signed('c', 1, 'public', remote(1));
    expect(other.plan.peers[0]!.addrs).toEqual(['/ip4/11.0.0.1/tcp/1']);
    plans.signed('a', 2, 'loopback', local(2));
    plans.signed('b', 2, 'loopback', local(2));
    expect(signed.map((plan) => `${plan.version} ${plan.peers[0]!.addrs[0]}`))
      .toEqual(['1 /ip4/127.0.0.1/tcp/1', '1 /ip4/11.0.0.1/tcp/1', '2 /ip4/127.0.0.1/tcp/1']);
  });

  it('take a delta from the plan the node holds, in the view it was sent, once per pair of plans', () => {
    const { plans } = counted();
    const v1 = plans.signed('a', 1, 'public', () => planOf(1, '/ip4/11.0.0.1/tcp/1'));
    plans.signed('b', 1, 'public', () => planOf(1, '/ip4/11.0.0.1/tcp/1'));
    // a's view changed since (another node now connects from its IP): its v2 is another wire form
    const v2 = plans.signed('a', 2, '11.0.0.9', () => planOf(2, '/ip4/192.168.1.2/tcp/1'));
    expect(plans.held('b', 1)).toBe(v1.plan);
    expect(plans.held('a', 2)).toBe(v2.plan);
    expect(plans.held('a', 1)).toBeUndefined(); // not in the view it was sent last
    expect(plans.held('nobody', 1)).toBeUndefined();
    const delta = plans.delta(v1.plan, v2.plan);
    expect(delta).toEqual(planDelta(v1.plan, v2.plan));
    expect(plans.delta(v1.plan, v2.plan)).toBe(delta);
    expect(applyPlanDelta(v1.plan, delta)).toEqual(v2.plan);
  });

  it('keep the newest versions only', () => {
    const { plans } = counted(3);
    for (let version = 1; version <= 5; version++) plans.signed('a', version, 'lan', () => planOf(version, '/ip4/10.0.0.1/tcp/1'));
    expect([1, 2, 3, 4, 5].map((version) => plans.held('a', version)?.version)).toEqual([undefined, undefined, 3, 4, 5]);
  });
});
