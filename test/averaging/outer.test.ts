// The outer step of periodic averaging (src/averaging/outer.ts): the pseudo-gradient since the
// anchor, and Nesterov momentum over rounds against sequences computed by hand and in float64.
import { describe, expect, it } from 'vitest';
import { jsPasses, OuterStep, type RoundPasses } from '../../src/averaging/index.ts';
import { bitEqual, rng } from '../helpers.ts';

describe('outer step', () => {
  it('the delta is the values minus the anchor (the values at the last round)', () => {
    const outer = new OuterStep([Float32Array.from([1, 2, 3])]);
    expect(Array.from(outer.delta([Float32Array.from([1.5, 2, 2])])[0])).toEqual([0.5, 0, -1]);
  });

  it('delta() writes into the same arrays each round, and each round\'s are values − anchor of that round alone', () => {
    const random = rng(5);
    const outer = new OuterStep([Float32Array.from({ length: 9 }, () => random()), Float32Array.from([1, 2])]);
    const values = outer.anchor.map((a) => Float32Array.from(a));
    const first = outer.delta(values);
    for (let round = 0; round < 3; round++) {
      values.forEach((v) => v.forEach((_, j) => (v[j] += random())));
      const expected = values.map((v, i) => v.map((x, j) => x - outer.anchor[i][j]));
      const delta = outer.delta(values);
      expect(delta).toBe(first);
      delta.forEach((d, i) => expect(bitEqual(d, expected[i])).toBe(true));
      outer.apply(values, delta.map((d) => d.map((x) => x / 2)));
    }
  });

  it('lr 1 and momentum 0 is plain averaging: the anchor plus the mean delta, whatever the local values were', () => {
    const anchor = Float32Array.from([1, -2, 0.25]);
    const outer = new OuterStep([anchor]);
    const values = [Float32Array.from([9, 9, 9])];
    const mean = Float32Array.from([0.5, 0.125, -1]);
    outer.apply(values, [mean]);
    expect(bitEqual(values[0], anchor.map((a, j) => a + mean[j]))).toBe(true);
    expect(bitEqual(outer.anchor[0], values[0])).toBe(true);
  });

  it('a round alone: with lr 1 and momentum 0 the values stay bit for bit; otherwise the own delta is the mean', () => {
    const random = rng(3);
    const start = Float32Array.from({ length: 64 }, () => random());
    const moved = start.map((x) => x + 0.37 * random());
    const plain = new OuterStep([start]);
    const values = [Float32Array.from(moved)];
    plain.applyOwn(values);
    expect(bitEqual(values[0], moved)).toBe(true);
    expect(bitEqual(plain.anchor[0], moved)).toBe(true);
    const [own, reference] = [0, 1].map(() => new OuterStep([start], { lr: 0.7, momentum: 0.9 }));
    const [a, b] = [[Float32Array.from(moved)], [Float32Array.from(moved)]];
    own.applyOwn(a);
    reference.apply(b, reference.delta(b));
    expect(bitEqual(a[0], b[0])).toBe(true);
    expect(bitEqual(a[0], moved)).toBe(false);
  });

  it('Nesterov: m ← μ·m + Δ̄, θ ← θ + lr·(μ·m + Δ̄), by hand for lr 0.5, μ 0.9', () => {
    const outer = new OuterStep([Float32Array.from([1])], { lr: 0.5, momentum: 0.9 });
    const values = [Float32Array.from([1])];
    // m = 0.1, θ = 1 + 0.5·(0.09 + 0.1); m = 0.19, θ += 0.5·(0.171 + 0.1); m = −0.029, θ += 0.5·(−0.0261 − 0.2)
    const expected = [1.095, 1.2305, 1.11745];
    [0.1, 0.1, -0.2].forEach((delta, round) => {
      outer.apply(values, [Float32Array.from([delta])]);
      expect(values[0][0], `round ${round}`).toBeCloseTo(expected[round], 6);
    });
  });

  it('Nesterov over 20 rounds and several tensors follows a float64 run to f32 precision', () => {
    const random = rng(9);
    const lr = 0.7;
    const mu = 0.8;
    const start = [7, 3].map((n) => Float32Array.from({ length: n }, () => random()));
    const outer = new OuterStep(start, { lr, momentum: mu });
    const values = start.map((v) => Float32Array.from(v));
    const theta64 = start.map((v) => Array.from(v));
    const m64 = start.map((v) => new Array<number>(v.length).fill(0));
    for (let round = 0; round < 20; round++) {
      const mean = start.map((v) => Float32Array.from({ length: v.length }, () => random() * 0.1));
      // Local steps moved the values; the outer step starts from the anchor regardless.
      values.forEach((v) => v.forEach((_, j) => (v[j] += random())));
      outer.apply(values, mean);
      theta64.forEach((t, i) => t.forEach((_, j) => {
        m64[i][j] = mu * m64[i][j] + mean[i][j];
        t[j] += lr * (mu * m64[i][j] + mean[i][j]);
      }));
    }
    theta64.forEach((t, i) => t.forEach((x, j) => expect(Math.abs(values[i][j] - x)).toBeLessThan(1e-5)));
  });

  it('takes its arrays from the passes and gives each back once, when retired, or when the rounds under way settle', async () => {
    const live = new Set<Float32Array>();
    let freedTwice = 0;
    const passes: RoundPasses = {
      ...jsPasses,
      allocate: (length) => {
        const a = new Float32Array(length);
        live.add(a);
        return a;
      },
      free: (a) => void (live.delete(a) || freedTwice++),
    };
    const start = [Float32Array.from([1, 2, 3]), Float32Array.from([4])];
    const idle = new OuterStep(start, { passes, momentum: 0.5 });
    idle.apply(start.map((v) => v.map((x) => x + 1)), idle.delta(start));
    idle.boundary(start);
    expect(live.size, 'anchor, momentum, deltas, updates and boundaries of two tensors').toBe(10);
    idle.retire();
    expect(live.size).toBe(0);

    const busy = new OuterStep(start, { passes });
    const values = start.map((v) => Float32Array.from(v));
    let land!: (mean: Float32Array[]) => void;
    const round = busy.during(new Promise<Float32Array[]>((resolve) => (land = resolve)));
    const deltas = busy.delta(values);
    busy.retire();
    expect(live.size, 'a round under way keeps the arrays it writes its mean into').toBe(4);
    land(deltas);
    expect(await round).toBe(deltas);
    expect(live.size).toBe(0);
    expect(freedTwice).toBe(0);
    const failing = new OuterStep(start, { passes });
    const failed = failing.during(Promise.reject(new Error('no holder answered')));
    failing.retire();
    await expect(failed).rejects.toThrow('no holder answered');
    expect(live.size, 'a failed round gives them back too').toBe(0);
    failing.retire();
    expect(freedTwice, 'retired twice, freed once').toBe(0);
    await expect(failing.during(Promise.resolve())).rejects.toThrow(/retired/);
    expect(() => failing.delta(start), 'its arrays are forgotten, not read after they were freed').toThrow();
  });
});
