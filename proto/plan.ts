// What the coordinator signs of a plan (the admitted peers and who holds which expert): a
// canonical byte string in a fixed field order, whatever key order a decoder produced, bound to
// the job so a plan of one job cannot pass for another's.
import type { Plan } from './messages.ts';
import { packPlain } from './msgpack.ts';

const DOMAIN = 'swarmtrain/plan/1';

export function planSigningBytes(jobId: string, plan: Plan): Uint8Array {
  return packPlain([
    DOMAIN, jobId, plan.version,
    plan.experts.map(({ layer, expert, holders }) => [layer, expert, holders]),
    plan.peers.map(({ peerId, addrs }) => [peerId, addrs]),
    plan.degraded ?? null,
  ]);
}
