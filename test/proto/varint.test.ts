import { describe, expect, it } from 'vitest';
import { varintLength, writeVarint } from '../../proto/varint.ts';

/** LEB128 by BigInt shifts: the reference the number arithmetic must match past 32 bits. */
function referenceVarint(value: number): number[] {
  const bytes: number[] = [];
  let v = BigInt(value);
  while (v >= 0x80n) {
    bytes.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  bytes.push(Number(v));
  return bytes;
}

describe('varints', () => {
  it('match the BigInt reference at every byte boundary, past 32 bits, and report their length', () => {
    const values = [0, 1, 127, 128, 300, 16_383, 16_384, 2 ** 21 - 1, 2 ** 21, 2 ** 28, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 45 + 7, 2 ** 53 - 1];
    for (const value of values) {
      const expected = referenceVarint(value);
      expect(varintLength(value), String(value)).toBe(expected.length);
      const out = new Uint8Array(expected.length + 2).fill(0xee);
      expect(writeVarint(out, 1, value), String(value)).toBe(1 + expected.length);
      expect([...out], String(value)).toEqual([0xee, ...expected, 0xee]);
    }
  });
});
