// How a group's delta is cut into parts (for messages under the size cap, and for reduce-scatter)
// and who owns each part. Pure: the same shapes and counts give the same parts on every holder.

/** A tensor of a group: its name and shape (row-major; a row is everything after the first axis). */
export interface PartTensor {
  name: string;
  shape: readonly number[];
}

/** Rows [rowStart, rowEnd) of one tensor, the values [offset, offset + length) of its flat array. */
export interface Segment {
  /** Index of the tensor in the group's order. */
  tensor: number;
  name: string;
  rowStart: number;
  rowEnd: number;
  offset: number;
  length: number;
  /** The tensor's own shape when the segment is all of it, else [rows, ...the tensor's row shape]. */
  shape: number[];
}

/** One part: consecutive rows of the group's tensors taken in order, at most one segment per tensor. */
export interface Part {
  index: number;
  segments: Segment[];
}

const valuesOf = (shape: readonly number[]) => shape.reduce((n, d) => n * d, 1);
const rowsOf = (shape: readonly number[]) => (shape.length === 0 ? 1 : shape[0]);
const rowValuesOf = (shape: readonly number[]) => valuesOf(shape.slice(1));

/**
 * Parts a group is cut into: `owners` parts per owner (1 for all-to-all, the group's holder
 * count for reduce-scatter) times as many rounds of that as it takes for every part to hold at
 * most `maxPartValues` values. A part is cut at row boundaries, so it may exceed its even share
 * by up to one row: the budget left for the even share is maxPartValues minus the longest row.
 */
export function partCount(tensors: readonly PartTensor[], owners: number, maxPartValues: number): number {
  if (!Number.isInteger(owners) || owners < 1) throw new RangeError(`partCount: owners must be a positive integer, got ${owners}`);
  const longestRow = Math.max(0, ...tensors.map((t) => rowValuesOf(t.shape)));
  const budget = maxPartValues - longestRow;
  if (budget < 1) throw new RangeError(`partCount: a row of ${longestRow} values does not fit a part of ${maxPartValues} values`);
  const total = tensors.reduce((n, t) => n + valuesOf(t.shape), 0);
  return owners * Math.max(1, Math.ceil(total / (owners * budget)));
}

/**
 * Cuts the group's values (its tensors laid end to end) into `count` parts of about equal size:
 * part k ends at the first row boundary at or after total·(k+1)/count. A part may be empty
 * (fewer rows than parts), which costs a message with no tensors.
 */
export function partition(tensors: readonly PartTensor[], count: number): Part[] {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`partition: count must be a positive integer, got ${count}`);
  const total = tensors.reduce((n, t) => n + valuesOf(t.shape), 0);
  const parts: Part[] = Array.from({ length: count }, (_, index) => ({ index, segments: [] }));
  let start = 0; // flat position of the tensor's first value
  tensors.forEach((t, tensor) => {
    const rows = rowsOf(t.shape);
    const rowValues = rowValuesOf(t.shape);
    let row = 0;
    while (row < rows) {
      // The part holding this row's first value; it takes rows up to its end boundary.
      const at = start + row * rowValues;
      const k = Math.min(count - 1, Math.floor((at * count) / Math.max(1, total)));
      const end = Math.ceil((total * (k + 1)) / count);
      const rowEnd = k === count - 1 ? rows : Math.min(rows, Math.max(row + 1, Math.ceil((end - start) / Math.max(1, rowValues))));
      const whole = row === 0 && rowEnd === rows;
      parts[k].segments.push({
        tensor, name: t.name, rowStart: row, rowEnd, offset: row * rowValues, length: (rowEnd - row) * rowValues,
        shape: whole ? [...t.shape] : [rowEnd - row, ...t.shape.slice(1)],
      });
      row = rowEnd;
    }
    start += valuesOf(t.shape);
  });
  return parts;
}

/** The part's values of a group, as views into `values` (one array per segment). */
export function slicePart(values: readonly Float32Array[], part: Part): Float32Array[] {
  return part.segments.map((s) => values[s.tensor].subarray(s.offset, s.offset + s.length));
}

/** Whether a part holds every tensor of the group whole (a group that fits one message): its values are the group's. */
export function isWholeGroup(part: Part, lengths: readonly number[]): boolean {
  const { segments } = part;
  return segments.length === lengths.length && segments.every((s, i) => s.tensor === i && s.offset === 0 && s.length === lengths[i]);
}

/** Writes a part's values (one array per segment) into the group's tensors. */
export function writePart(values: readonly Float32Array[], part: Part, partValues: readonly Float32Array[]): void {
  part.segments.forEach((s, i) => values[s.tensor].set(partValues[i], s.offset));
}

/** The holders in the order every holder agrees on (peer ids sorted). */
export function holderOrder(members: readonly string[]): string[] {
  return [...members].sort();
}

/** Who aggregates part `index` under reduce-scatter: holders take parts in turn. */
export function ownerOf(index: number, ordered: readonly string[]): string {
  return ordered[index % ordered.length];
}

/** Who aggregates part `index` when its owner's result does not come: the next holder in order (the owner itself if alone). */
export function fallbackOf(index: number, ordered: readonly string[]): string {
  return ordered[(index + 1) % ordered.length];
}
