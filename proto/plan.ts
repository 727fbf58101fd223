// What the coordinator signs of a plan (the admitted peers and who holds which expert): a
// canonical byte string in a fixed field order, whatever key order a decoder produced, bound to
// the job so a plan of one job cannot pass for another's. And plan deltas: a node that holds one
// version rebuilds the next from the changes, then checks the signature of the whole.
import type { Plan, PlanDelta } from './messages.ts';
import { packPlain } from './msgpack.ts';

const DOMAIN = 'swarmtrain/plan/1';

export function planSigningBytes(jobId: string, plan: Plan): Uint8Array {
  return packPlain([
    DOMAIN, jobId, plan.version,
    plan.experts.map(({ layer, expert, holders, handover }) => [layer, expert, holders, handover ?? []]),
    plan.peers.map(({ peerId, addrs }) => [peerId, addrs]),
    plan.degraded ?? null,
  ]);
}

/** Peers in a plan are in this order (the planner's), so a plan rebuilt from a delta signs the same bytes. */
export const comparePeerIds = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The changes from `from` to `to` (same model: the same experts in the same order). */
export function planDelta(from: Plan, to: Plan): PlanDelta {
  const before = new Map(from.peers.map((p) => [p.peerId, p.addrs]));
  const after = new Set(to.peers.map((p) => p.peerId));
  return {
    from: from.version,
    version: to.version,
    experts: to.experts.filter((x, i) => !sameList(x.holders, from.experts[i]?.holders ?? [])
      || !sameList(x.handover ?? [], from.experts[i]?.handover ?? [])),
    peers: to.peers.filter((p) => !sameList(p.addrs, before.get(p.peerId) ?? [''])),
    gone: from.peers.filter((p) => !after.has(p.peerId)).map((p) => p.peerId),
    ...(to.degraded === undefined ? {} : { degraded: to.degraded }),
  };
}

/** `plan` with `delta` applied; throws when the delta is not for this plan (the node then asks for the whole one). */
export function applyPlanDelta(plan: Plan, delta: PlanDelta): Plan {
  if (delta.from !== plan.version) throw new Error(`plan delta from v${delta.from} does not apply to v${plan.version}`);
  const experts = plan.experts.map((x) => ({ ...x, holders: [...x.holders] }));
  for (const changed of delta.experts) {
    const target = experts.find((x) => x.layer === changed.layer && x.expert === changed.expert);
    if (!target) throw new Error(`plan delta names expert ${changed.layer}.${changed.expert}, which the plan has not`);
    target.holders = [...changed.holders];
    if (changed.handover) target.handover = [...changed.handover];
    else delete target.handover;
  }
  const peers = new Map(plan.peers.map((p) => [p.peerId, p.addrs]));
  for (const peerId of delta.gone) peers.delete(peerId);
  for (const { peerId, addrs } of delta.peers) peers.set(peerId, addrs);
  return {
    version: delta.version,
    experts,
    peers: [...peers].sort(([a], [b]) => comparePeerIds(a, b)).map(([peerId, addrs]) => ({ peerId, addrs: [...addrs] })),
    ...(delta.degraded === undefined ? {} : { degraded: delta.degraded }),
  };
}
