// Expert activations on the wire: f32 rows travel exactly; bf16 rows take half the bytes and
// come back within bf16's rounding (half an ulp: 2^-8 relative, ties to even); what a peer sends is checked.
import { describe, expect, it } from 'vitest';
import { MAX_ROW_MAGNITUDE, rowsOf, wireRows } from '../../node/experts.ts';
import { rng } from '../helpers.ts';

const ROWS = 5;
const HIDDEN = 24;

function randomRows(seed: number): Float32Array {
  const random = rng(seed);
  // Spread over many magnitudes, as activations and their gradients are.
  return Float32Array.from({ length: ROWS * HIDDEN }, (_, i) => random() * 10 ** ((i % 9) - 6));
}

describe('expert rows on the wire', () => {
  it('f32: exact, copied out of the caller\'s buffer', () => {
    const values = randomRows(1);
    const tensor = wireRows(ROWS, HIDDEN, values, 'f32');
    expect(tensor).toMatchObject({ dtype: 'F32', shape: [ROWS, HIDDEN] });
    expect(tensor.data.byteLength).toBe(4 * ROWS * HIDDEN);
    values[0] += 1; // the tensor does not alias the source (heap views sit on shared memory)
    expect(rowsOf(tensor, ROWS, HIDDEN)).toEqual(Float32Array.from(randomRows(1)));
  });

  it('bf16: half the bytes, each value within 2^-8 of its magnitude, zero and signs kept', () => {
    const values = randomRows(2);
    values[3] = 0;
    values[4] = -0;
    const tensor = wireRows(ROWS, HIDDEN, values, 'bf16');
    expect(tensor).toMatchObject({ dtype: 'BF16', shape: [ROWS, HIDDEN] });
    expect(tensor.data.byteLength).toBe(2 * ROWS * HIDDEN);
    const back = rowsOf(tensor, ROWS, HIDDEN) as Float32Array;
    for (let i = 0; i < values.length; i++) {
      expect(Math.abs(back[i] - values[i]), `value ${i}`).toBeLessThanOrEqual(Math.abs(values[i]) * 2 ** -8);
      expect(Math.sign(back[i])).toBe(Math.sign(values[i]));
    }
    expect(Object.is(back[4], -0)).toBe(true);
    // Ties go to even: 1 + 2^-8 sits halfway between bf16 neighbours 1 and 1 + 2^-7.
    const tie = rowsOf(wireRows(1, 1, Float32Array.of(1 + 2 ** -8), 'bf16'), 1, 1) as Float32Array;
    expect(tie[0]).toBe(1);
  });

  it('decodes bf16 rows at an odd offset in a larger Node Buffer, as decoded messages hold them', () => {
    const tensor = wireRows(ROWS, HIDDEN, randomRows(5), 'bf16');
    const pool = Buffer.alloc(tensor.data.byteLength + 3); // odd length: a view of it cannot be read as 16-bit words
    pool.set(tensor.data, 1);
    const odd = pool.subarray(1, 1 + tensor.data.byteLength);
    expect(rowsOf({ ...tensor, data: odd }, ROWS, HIDDEN)).toEqual(rowsOf(tensor, ROWS, HIDDEN));
  });

  it('refuses another dtype, another shape, non-finite and huge values, saying why', () => {
    const good = wireRows(ROWS, HIDDEN, randomRows(3), 'bf16');
    expect(rowsOf({ ...good, dtype: 'F16' }, ROWS, HIDDEN)).toBe('expected F32 or BF16 rows, got F16');
    expect(rowsOf(good, ROWS + 1, HIDDEN)).toBe(`expected shape [${ROWS + 1}, ${HIDDEN}], got [${ROWS}, ${HIDDEN}]`);
    const poisoned = randomRows(4);
    poisoned[7] = NaN;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'bf16'), ROWS, HIDDEN)).toBe('non-finite value NaN at 7');
    poisoned[7] = -Infinity;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBe('non-finite value -Infinity at 7');
    // Finite but huge: would overflow the holder's gradient sums.
    poisoned[7] = 3e38;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toMatch(/^out-of-range value 3\.0*\d*e\+38 at 7$/);
    poisoned[7] = MAX_ROW_MAGNITUDE;
    expect(rowsOf(wireRows(ROWS, HIDDEN, poisoned, 'f32'), ROWS, HIDDEN)).toBeInstanceOf(Float32Array);
  });
});
