// Parameter-group ids, as deltas and state requests carry them: "trunk" (held by every node) or
// "expert.<layer>.<expert>" (one expert of one layer, held by its replicas). Built and parsed only here.
export type GroupRef = { kind: 'trunk' } | { kind: 'expert'; layer: number; expert: number };
export type ExpertGroup = Extract<GroupRef, { kind: 'expert' }>;

export const TRUNK_GROUP = 'trunk';

/** The largest layer or expert index, here and in every message that carries one (messages.ts's Index). */
export const MAX_INDEX = 2 ** 20;
/** Canonical decimal only (no sign, no leading zero), so parse and build round-trip. */
const EXPERT_ID = /^expert\.(0|[1-9]\d{0,6})\.(0|[1-9]\d{0,6})$/;

export function groupId(group: GroupRef): string {
  if (group.kind === 'trunk') return TRUNK_GROUP;
  const { layer, expert } = group;
  if (!isIndex(layer) || !isIndex(expert)) {
    throw new RangeError(`groupId: layer and expert must be integers in [0, ${MAX_INDEX}], got ${layer} and ${expert}`);
  }
  return `expert.${layer}.${expert}`;
}

/** The group an id names, or undefined for anything groupId does not build (untrusted input). */
export function parseGroupId(id: string): GroupRef | undefined {
  if (id === TRUNK_GROUP) return { kind: 'trunk' };
  const match = EXPERT_ID.exec(id);
  if (!match) return undefined;
  const [layer, expert] = [Number(match[1]), Number(match[2])];
  return isIndex(layer) && isIndex(expert) ? { kind: 'expert', layer, expert } : undefined;
}

const isIndex = (n: number) => Number.isSafeInteger(n) && n >= 0 && n <= MAX_INDEX;
