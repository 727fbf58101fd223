// The BPE merge loop shared by every tokenizer kind: given a piece's starting symbol ids, apply merges
// lowest rank first, leftmost first among equal ranks, as Hugging Face does.

/** Pair keys are left * PAIR_BASE + right: exact in a double for ids below 2^21. */
export const PAIR_BASE = 2 ** 21;
/** Heap keys are rank * RANK_SCALE + position. */
const RANK_SCALE = 2 ** 32;

/** A vocabulary's merges: the rank of each pair (by pair key) and the token each rank produces. */
export interface MergeTable {
  rankOf: Map<number, number>;
  mergeResult: Int32Array;
}

/** Merges `ids` (consumed) with a linked list of symbols and a heap of candidate pairs: O(n log n). */
export function applyMerges(ids: Int32Array, { rankOf, mergeResult }: MergeTable): number[] {
  const n = ids.length;
  if (n === 0) return [];
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  for (let i = 0; i < n; i++) { next[i] = i + 1; prev[i] = i - 1; }
  next[n - 1] = -1;
  const heap = new MinHeap();
  const consider = (i: number): void => {
    const rank = rankOf.get(ids[i] * PAIR_BASE + ids[next[i]]);
    if (rank !== undefined) heap.push(rank * RANK_SCALE + i);
  };
  for (let i = 0; i + 1 < n; i++) consider(i);
  while (heap.size > 0) {
    const key = heap.pop();
    const rank = Math.floor(key / RANK_SCALE);
    const i = key - rank * RANK_SCALE;
    const j = next[i];
    // Stale entry: the left token was merged away, or the pair at i changed since it was pushed.
    if (ids[i] < 0 || j < 0 || rankOf.get(ids[i] * PAIR_BASE + ids[j]) !== rank) continue;
    ids[i] = mergeResult[rank];
    ids[j] = -1;
    next[i] = next[j];
    if (next[i] >= 0) { prev[next[i]] = i; consider(i); }
    if (prev[i] >= 0) consider(prev[i]);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) out.push(ids[i]);
  return out;
}

/** Min-heap of numbers. */
class MinHeap {
  private readonly items: number[] = [];
  get size(): number { return this.items.length; }
  push(value: number): void {
    const items = this.items;
    let i = items.length;
    items.push(value);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent] <= value) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = value;
  }
  pop(): number {
    const items = this.items;
    const top = items[0];
    const last = items.pop()!;
    const n = items.length;
    if (n === 0) return top;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && items[child + 1] < items[child]) child++;
      if (items[child] >= last) break;
      items[i] = items[child];
      i = child;
    }
    items[i] = last;
    return top;
  }
}
