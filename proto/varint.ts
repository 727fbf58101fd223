// Unsigned LEB128 varints (7 bits a byte, least significant group first, the high bit set on all but the last byte),
// as lpStream frames a message's length and the ':gaps' index codec codes positions. Values up to 2^53.

/** Bytes of the varint encoding of `value`. */
export function varintLength(value: number): number {
  let bytes = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) bytes++;
  return bytes;
}

/** Writes the varint of `value` into `out` at `at`; returns the index after it. */
export function writeVarint(out: Uint8Array, at: number, value: number): number {
  let v = value;
  for (; v >= 0x80; v = Math.floor(v / 0x80)) out[at++] = (v % 0x80) | 0x80;
  out[at++] = v;
  return at;
}
