// Plan signatures: the coordinator signs the canonical bytes of a plan with its identity key; a
// node accepts the plan only when the signature checks out against the coordinator's peer id.
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { describe, expect, it } from 'vitest';
import { applyPlanDelta, planDelta, planSigningBytes, type Plan } from '../../proto/index.ts';
import { signedBy, signSync } from '../../src/p2p/index.ts';

const A = '12D3KooWRvUC4xFKUA844kqcUiAURoMmzMc1YAwUBuQA9Uv3RX4N';
const B = '12D3KooWK4m642h4RkAMKdHZ9VSh6D2fuBz2hUvibZhhw2w3GLA6';
const PLAN: Plan = {
  version: 3,
  experts: [{ layer: 0, expert: 0, holders: [A, B] }, { layer: 0, expert: 1, holders: [B] }],
  peers: [{ peerId: A, addrs: [`/ip4/127.0.0.1/tcp/4001/p2p/${A}`] }, { peerId: B, addrs: [`/ip4/127.0.0.1/tcp/4002/p2p/${B}`] }],
  degraded: 'expert 0.1 has 1 of 2 holders',
};

async function signer() {
  const key = await generateKeyPair('Ed25519');
  return { key, id: peerIdFromPrivateKey(key).toString() };
}

describe('plan signatures', () => {
  it('sign the plan whatever order its keys were decoded in', () => {
    const reordered: Plan = {
      degraded: PLAN.degraded!,
      peers: PLAN.peers.map(({ addrs, peerId }) => ({ addrs, peerId })),
      experts: PLAN.experts.map(({ holders, expert, layer }) => ({ holders, expert, layer })),
      version: PLAN.version,
    };
    expect(planSigningBytes('job', reordered)).toEqual(planSigningBytes('job', PLAN));
  });

  it("verify against the signer's peer id, and fail for any change to the plan, another job or another signer", async () => {
    const coordinator = await signer();
    const other = await signer();
    const signature = signSync(coordinator.key, planSigningBytes('job', PLAN));
    expect(signedBy(coordinator.id, planSigningBytes('job', PLAN), signature)).toBe(true);
    const forged: Plan[] = [
      { ...PLAN, version: 4 },
      { ...PLAN, experts: [{ layer: 0, expert: 0, holders: [A, B] }, { layer: 0, expert: 1, holders: [B, A] }] },
      { ...PLAN, peers: [...PLAN.peers, { peerId: 'QmAttacker', addrs: [] }] },
      { ...PLAN, degraded: undefined },
      { ...PLAN, experts: [PLAN.experts[0], { ...PLAN.experts[1], handover: [A] }] },
    ];
    for (const plan of forged) expect(signedBy(coordinator.id, planSigningBytes('job', plan), signature), JSON.stringify(plan)).toBe(false);
    expect(signedBy(coordinator.id, planSigningBytes('another-job', PLAN), signature)).toBe(false);
    expect(signedBy(other.id, planSigningBytes('job', PLAN), signature)).toBe(false);
    expect(signedBy(coordinator.id, planSigningBytes('job', PLAN), signSync(other.key, planSigningBytes('job', PLAN)))).toBe(false);
  });

  it('survive deltas that only add or drop a handover (the holders unchanged), signing the same bytes once rebuilt', () => {
    const before: Plan = { ...PLAN, peers: [...PLAN.peers].reverse() }; // in the planner's order, as a rebuilt plan has them
    const moved: Plan = { ...before, version: 4, experts: [PLAN.experts[0], { ...PLAN.experts[1], handover: [A] }] };
    const settled: Plan = { ...moved, version: 5, experts: PLAN.experts };
    for (const [from, to] of [[before, moved], [moved, settled]] as const) {
      const delta = planDelta(from, to);
      expect(delta.experts).toEqual([to.experts[1]]);
      expect(planSigningBytes('job', applyPlanDelta(from, delta))).toEqual(planSigningBytes('job', to));
    }
  });

  it('reject malformed signatures without throwing', async () => {
    const { id } = await signer();
    for (const bad of [new Uint8Array(0), new Uint8Array(3), new Uint8Array(64), new Uint8Array(200)]) {
      expect(signedBy(id, planSigningBytes('job', PLAN), bad)).toBe(false);
    }
  });
});
