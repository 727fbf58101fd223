// The slab the experts of a layer keep their activations in: consecutive regions per forward,
// a fixed size whatever the routing, and clear errors instead of silently shared memory.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKernels, type Kernels } from '../../src/kernels/index.ts';
import { ExpertSlab } from '../../src/model/expert.ts';

let kernels: Kernels;
beforeAll(async () => {
  kernels = await createKernels();
});
afterAll(() => kernels.close());

describe('ExpertSlab', () => {
  it('hands out consecutive regions per forward and reuses them in the next, without growing', () => {
    const slab = new ExpertSlab(kernels, 4);
    slab.reserve(10);
    const allocated = kernels.heap.allocatedBytes;
    for (const split of [[3, 7], [9, 1], [2, 2, 6]]) {
      slab.beginForward();
      const claims = split.map((rows) => slab.claim(rows));
      const views = claims.map((c) => slab.views(c));
      views.forEach((v, i) => {
        expect(v.g.length).toBe(split[i] * 4);
        v.g.fill(i + 1);
        v.u.fill(-(i + 1));
      });
      // Disjoint: each region still holds what its expert wrote.
      views.forEach((v, i) => expect([...new Set(v.g)]).toEqual([i + 1]));
      views.forEach((v, i) => expect([...new Set(v.u)]).toEqual([-(i + 1)]));
    }
    expect(kernels.heap.allocatedBytes).toBe(allocated);
  });

  it('refuses more rows than reserved within a forward, and regions of an earlier forward', () => {
    const slab = new ExpertSlab(kernels, 2);
    slab.reserve(5);
    slab.beginForward();
    const first = slab.claim(4);
    expect(() => slab.claim(2)).toThrow(/6 routed rows in one forward, more than the 5 reserved/);
    slab.beginForward();
    expect(() => slab.views(first)).toThrow(/overwritten by a later forward/);
  });

  it('grows at the start of a forward; keeps bf16 bit patterns with bf16 storage', () => {
    const slab = new ExpertSlab(kernels, 3, 'bf16');
    slab.beginForward();
    const claim = slab.claim(7);
    const { g, u } = slab.views(claim);
    expect(g).toBeInstanceOf(Uint16Array);
    expect(u.length).toBe(21);
  });

  it('hands a forward\'s one claim over without a copy, allocates the next afresh, and takes handed-over buffers back', () => {
    const slab = new ExpertSlab(kernels, 4);
    const allocated = kernels.heap.allocatedBytes;
    slab.beginForward();
    const first = slab.claim(3);
    slab.views(first).g.fill(7);
    const saved = slab.handOver(first);
    expect([saved.g.length, [...new Set(saved.g)]]).toEqual([12, [7]]);
    // The slab holds nothing now: a second forward allocates its own buffers beside the handed-over ones.
    slab.beginForward();
    const second = slab.claim(5);
    slab.views(second).g.fill(9);
    expect([...new Set(saved.g)]).toEqual([7]);
    // Taking the first back frees the second's buffers; the handed-over values are the claim's, as they were.
    const again = slab.adopt(saved, 3);
    expect(slab.views(again).g.byteOffset).toBe(saved.g.byteOffset);
    expect([...new Set(slab.views(again).g)]).toEqual([7]);
    slab.release();
    expect(kernels.heap.allocatedBytes).toBe(allocated);
    // Only a forward's one claim can go: another claim of the same forward would point into given-away memory.
    slab.reserve(3);
    slab.beginForward();
    slab.claim(2);
    const other = slab.claim(1);
    expect(() => slab.handOver(other)).toThrow(/only a forward's one claim/);
    // Nor one of fewer rows than the buffers hold: they would be counted by the claim's length, and freed whole.
    slab.beginForward();
    expect(() => slab.handOver(slab.claim(2))).toThrow(/filling the slab/);
    slab.release();
  });

  it('sizes an owning expert\'s forward exactly, so what it hands over is all it holds', () => {
    const slab = new ExpertSlab(kernels, 16);
    const allocated = kernels.heap.allocatedBytes;
    slab.beginOwnForward(5);
    const big = slab.handOver(slab.claim(5));
    slab.adopt(big, 5); // a backward took a 5-row forward back
    slab.beginOwnForward(2); // the next forward has 2 rows: the 5-row buffers go
    const small = slab.handOver(slab.claim(2));
    expect(kernels.heap.allocatedBytes - allocated).toBe(small.g.byteLength + small.u.byteLength);
    kernels.heap.release(small.g);
    kernels.heap.release(small.u);
    expect(kernels.heap.allocatedBytes).toBe(allocated);
  });
});
