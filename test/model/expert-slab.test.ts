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
});
