// Small groups per round (Moshpit averaging): the holders of a parameter group are laid on a grid of
// d dimensions with sides of at most G, and round r averages along dimension r mod d. Pure: every
// holder computes the same groups from the round and the member list, without talking.
//
// Why a grid and not fresh random groups each round: when the sides multiply to N exactly (N = 8
// with G = 4 is 2 × 4, 16 is 4 × 4), one pass over the d dimensions (an "epoch") leaves every holder
// with the exact mean of all N, as an all-reduce would; random groups only approach it. Each epoch
// the holders are shuffled onto the grid anew (seeded by the epoch), so who meets whom keeps changing
// and a grid that is not full (N = 5, 7, ...) still mixes everyone over a few epochs.
import { uniform } from '../model/init.ts';

/** The grid's sides: d sides in [1, G], d the fewest with G^d ≥ N; a product equal to N when one exists, else the smallest above. */
export function gridSides(members: number, maxSize: number): number[] {
  if (!Number.isInteger(members) || members < 1) throw new RangeError(`gridSides: members must be a positive integer, got ${members}`);
  if (!Number.isInteger(maxSize) || maxSize < 2) throw new RangeError(`gridSides: the group size must be an integer ≥ 2, got ${maxSize}`);
  let dims = 1;
  while (maxSize ** dims < members) dims++;
  let best: number[] = [];
  let bestProduct = Infinity;
  // Non-decreasing sides, so each grid is tried once; G ≤ 64 and N ≤ 4096 keep this to a few thousand tuples.
  const search = (sides: number[], product: number): void => {
    if (sides.length === dims) {
      if (product >= members && product < bestProduct) [best, bestProduct] = [[...sides], product];
      return;
    }
    for (let side = Math.max(2, sides.at(-1) ?? 2); side <= maxSize; side++) {
      if (product * side ** (dims - sides.length) >= bestProduct) break; // every larger side only grows the product
      search([...sides, side], product * side);
    }
  };
  if (members === 1) return [1];
  search([], 1);
  return best;
}

/**
 * The groups of round `round`: disjoint, covering every member, each of at most `maxSize` (groups
 * within a group listed in peer-id order, groups in order of their first member). On a grid that is
 * not full, a member left alone joins the smallest other group that has room; it stays alone only
 * when every other group is full.
 */
export function roundGroups(members: readonly string[], round: number, maxSize: number): string[][] {
  if (!Number.isInteger(round) || round < 0) throw new RangeError(`roundGroups: round must be an integer ≥ 0, got ${round}`);
  const ordered = [...new Set(members)].sort();
  if (ordered.length === 0) return [];
  const sides = gridSides(ordered.length, maxSize);
  if (sides.length === 1) return [ordered];
  const dim = round % sides.length;
  const epoch = Math.floor(round / sides.length);
  const random = uniform(0x9e3779b9 ^ epoch); // the same epoch shuffles the same way on every holder
  const shuffled = [...ordered];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  // Cell p has coordinates p in mixed radix `sides`; a group is the cells that differ only in coordinate `dim`.
  const stride = sides.slice(0, dim).reduce((a, b) => a * b, 1);
  const byKey = new Map<number, string[]>();
  shuffled.forEach((member, cell) => {
    const key = cell - (Math.floor(cell / stride) % sides[dim]) * stride;
    const group = byKey.get(key);
    if (group) group.push(member);
    else byKey.set(key, [member]);
  });
  const groups = [...byKey.values()];
  for (const alone of groups.filter((g) => g.length === 1)) {
    if (alone.length !== 1) continue; // another one alone joined it
    const room = groups.filter((g) => g !== alone && g.length > 0 && g.length < maxSize).sort((a, b) => a.length - b.length)[0];
    if (!room) continue;
    room.push(alone.pop()!);
  }
  return groups.filter((g) => g.length > 0).map((g) => g.sort()).sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

/** The group of round `round` that `member` averages with (itself included). */
export function groupOf(member: string, members: readonly string[], round: number, maxSize: number): string[] {
  const group = roundGroups(members, round, maxSize).find((g) => g.includes(member));
  if (!group) throw new RangeError(`groupOf: ${member} is not a member`);
  return group;
}
