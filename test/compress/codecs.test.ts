import { describe, expect, it } from 'vitest';
import { groupId, type NamedTensor, type Tensor } from '../../proto/index.ts';
import {
  codecByName, codecsForGroups, CodecError, decodeTensors, encodedBytes, encodeTensors, encodeTensorsDecoded, parseCodecSpec, topKIndices,
  type Codec, type CodecPart, type CodecState,
} from '../../src/compress/index.ts';
import { f32ToF16Bits } from '../../proto/half.ts';
import { quantizeBlocks } from '../../src/compress/int8-block.ts';
import { bestRankError64 } from '../reference/lowrank64.ts';
import { bitEqual, rng } from '../helpers.ts';

const SPECS = ['f32', 'f16', 'int8-block:32', 'int8-block:7', 'topk-int8:0.01', 'topk-int8:0.3', 'powersgd:4'];
const SHAPES = [[1], [7], [33], [1001], [13, 17], [65, 3], [200, 150], [3, 5, 7]];

/** Values of mixed magnitude (|x| in ~[1e-7, 1e-2]) with a few exact zeros, like a parameter delta. */
function randomDelta(n: number, seed: number): Float32Array {
  const random = rng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = i % 11 === 5 ? 0 : random() * 10 ** (-2 - 5 * Math.abs(random()));
  return x;
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function view(part: CodecPart | undefined): { f32: Float32Array; bytes: Uint8Array } {
  const { data } = part!.tensor;
  const bytes = data.slice();
  return { bytes, f32: new Float32Array(bytes.buffer, 0, bytes.length >> 2) };
}

const partOf = (parts: CodecPart[], suffix: string) => parts.find((p) => p.suffix === suffix);

/** `parts` with the one of `suffix` replaced by `tensor`. */
function withPart(parts: CodecPart[], suffix: string, tensor: Partial<Tensor>): CodecPart[] {
  return parts.map((p) => (p.suffix === suffix ? { suffix, tensor: { ...p.tensor, ...tensor } } : p));
}

describe('round trips', () => {
  it.each(SPECS)('%s decodes what it encodes, for every shape, to the right length and finite values', (spec) => {
    const codec = parseCodecSpec(spec);
    expect(codec.spec).toBe(spec);
    SHAPES.forEach((shape, s) => {
      const x = randomDelta(count(shape), s + 1);
      const y = codec.decode(codec.encode(x, shape, {}), shape);
      expect(y.length).toBe(x.length);
      expect(y.every(Number.isFinite)).toBe(true);
      if (spec === 'f32') expect(bitEqual(y, x)).toBe(true);
    });
  });

  it('every codec encodes an all-zero delta and an empty tensor', () => {
    for (const spec of SPECS) {
      const codec = parseCodecSpec(spec);
      for (const shape of [[0], [4, 0], [40, 30]]) {
        const y = codec.decode(codec.encode(new Float32Array(count(shape)), shape, {}), shape);
        expect(y.every((v) => v === 0), `${spec} [${shape}]`).toBe(true);
      }
    }
  });

  it('encoders refuse wrong shapes and non-finite deltas with RangeError', () => {
    for (const spec of SPECS) {
      const codec = parseCodecSpec(spec);
      expect(() => codec.encode(new Float32Array(10), [3, 3], {})).toThrow(RangeError);
      expect(() => codec.encode(Float32Array.of(1, NaN, 2), [3], {})).toThrow(/non-finite/);
      expect(() => codec.encode(Float32Array.of(1, -Infinity, 2), [3], {})).toThrow(RangeError);
    }
  });

  it('encodeTensors / decodeTensors name parts by tensor and split them back', () => {
    const codec = parseCodecSpec('topk-int8:0.1');
    const tensors = [
      { name: 'layers.0.attn.q', shape: [20, 30], delta: randomDelta(600, 1), state: {} },
      { name: 'final_norm', shape: [30], delta: randomDelta(30, 2), state: {} },
    ];
    const named = encodeTensors(codec, tensors);
    expect(named.map((p) => p.name)).toEqual([
      'layers.0.attn.q:q', 'layers.0.attn.q:scale', 'layers.0.attn.q:gaps', 'layers.0.attn.q:shape',
      'final_norm:q', 'final_norm:scale', 'final_norm:gaps', 'final_norm:shape',
    ]);
    const decoded = decodeTensors(codec, tensors, [...named].reverse());
    tensors.forEach((t, i) => expect(decoded[i]).toEqual(codec.decode(codec.encode(t.delta, t.shape, {}), t.shape)));
    const stray: NamedTensor = { name: 'embed:q', tensor: named[0].tensor };
    expect(() => decodeTensors(codec, tensors, [...named, stray])).toThrow(/embed:q belongs to no tensor/);
    expect(() => decodeTensors(codec, tensors, named.slice(1))).toThrow(/layers\.0\.attn\.q: .*":q" is missing/);
    expect(() => encodeTensors(codec, [{ ...tensors[1], name: 'a:b' }])).toThrow(/contains ':'/);
  });

  it.each(SPECS)('%s: encodeTensorsDecoded gives the parts encodeTensors does and the bits decodeTensors gets from them', (spec) => {
    const codec = parseCodecSpec(spec);
    const tensors = (states: CodecState[]) =>
      SHAPES.map((shape, i) => ({ name: `t${i}`, shape, delta: randomDelta(count(shape), 20 + i), state: states[i] }));
    const [statesA, statesB, statesC] = [0, 1, 2].map(() => SHAPES.map((): CodecState => ({})));
    const wire = (message: NamedTensor[]) => message.map((p) => [p.name, p.tensor.dtype, p.tensor.shape, Array.from(p.tensor.data)]);
    for (let round = 0; round < 2; round++) { // a second round reads the error-feedback state the first left
      const plain = encodeTensors(codec, tensors(statesA));
      const { message, decoded } = encodeTensorsDecoded(codec, tensors(statesB));
      expect(wire(message)).toEqual(wire(plain));
      decodeTensors(codec, tensors(statesB), message).forEach((d, i) => expect(bitEqual(decoded[i], d)).toBe(true));
      // Into arrays of stale values: the same bits, in those arrays when the codec decodes into them.
      const stale = SHAPES.map((shape) => new Float32Array(count(shape)).fill(7));
      decodeTensors(codec, tensors(statesB), message, stale).forEach((d, i) => {
        expect(bitEqual(d, decoded[i])).toBe(true);
        if (spec.startsWith('int8-block')) expect(d).toBe(stale[i]);
      });
      // In place: the same message and bits, over the deltas when the codec decodes as it encodes.
      const overwritten = tensors(statesC);
      const inPlace = encodeTensorsDecoded(codec, overwritten, true);
      expect(wire(inPlace.message)).toEqual(wire(plain));
      inPlace.decoded.forEach((d, i) => {
        expect(bitEqual(d, decoded[i])).toBe(true);
        expect(d === overwritten[i].delta).toBe(codec.encodeDecoded !== undefined);
      });
    }
  });

  it('an encoder decoding in place still names the non-finite value it refuses', () => {
    const delta = Float32Array.of(1, 2, Infinity, 3);
    expect(() => encodeTensorsDecoded(parseCodecSpec('int8-block:2'), [{ name: 't', shape: [4], delta, state: {} }], true))
      .toThrow('int8-block:2: delta has a non-finite value Infinity at 2');
  });
});

describe('f16', () => {
  const codec = parseCodecSpec('f16');

  it('keeps relative error ≤ 2^-11 for values within 2^28 of the largest, ≤ 2^-25·scale below', () => {
    for (const [seed, top] of [[1, 1e-2], [2, 3e-7], [3, 60000], [4, 1e30]] as const) {
      const random = rng(seed);
      const x = new Float32Array(5003).map(() => random() * top * 2 ** (-40 * Math.abs(random())));
      const parts = codec.encode(x, [x.length], {});
      const y = codec.decode(parts, [x.length]);
      const scale = view(partOf(parts, ':scale')).f32[0];
      const max = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      expect(Number.isInteger(Math.log2(scale))).toBe(true);
      expect(max / scale).toBeGreaterThanOrEqual(2 ** 14);
      expect(max / scale).toBeLessThan(2 ** 15);
      for (let i = 0; i < x.length; i++) {
        const bound = Math.abs(x[i]) >= max * 2 ** -28 ? 2 ** -11 * Math.abs(x[i]) : 2 ** -25 * scale;
        expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(bound);
      }
    }
  });

  it('keeps small deltas that raw halves would flush (the reason for the scale)', () => {
    const x = Float32Array.of(1e-6, -3e-7, 2.5e-8);
    const y = codec.decode(codec.encode(x, [3], {}), [3]);
    for (let i = 0; i < 3; i++) expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(2 ** -11 * Math.abs(x[i]));
    expect(f32ToF16Bits(2.5e-8)).toBe(0); // what a plain f16 cast would send
  });

  it('stays finite at the top of the f32 range', () => {
    const x = Float32Array.of(3.4028234663852886e38, -3.4e38, 1);
    const y = codec.decode(codec.encode(x, [3], {}), [3]);
    for (let i = 0; i < 2; i++) expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(2 ** -10 * Math.abs(x[i]));
  });
});

describe('int8-block', () => {
  it.each([32, 7, 1])('block %i: scale = block absmax / 127 and |error| ≤ scale/2 per element', (blockSize) => {
    const codec = codecByName('int8-block', { blockSize });
    const x = randomDelta(1001, blockSize);
    const parts = codec.encode(x, [7, 11, 13], {});
    const y = codec.decode(parts, [7, 11, 13]);
    const scales = view(partOf(parts, ':scale')).f32;
    expect(scales.length).toBe(Math.ceil(1001 / blockSize));
    for (let b = 0; b < scales.length; b++) {
      const block = x.subarray(b * blockSize, (b + 1) * blockSize);
      expect(scales[b]).toBe(Math.fround(block.reduce((m, v) => Math.max(m, Math.abs(v)), 0) / 127));
    }
    for (let i = 0; i < x.length; i++) {
      // scale/2 from rounding to the nearest code, plus the f32 rounding of q·scale (|q| ≤ 127).
      expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(scales[Math.floor(i / blockSize)] * (0.5 + 127 * 2 ** -24));
    }
  });

  it('codes are Math.round(x · (1 / scale)) clamped to ±127, a hair under half a code and at subnormal scales too', () => {
    // Scales whose f64 inverse rounds down: x = scale / 2 lands at 0.5 − 2^-54, which rounds to 0 (floor(x + 0.5) gives 1).
    const scales = Array.from({ length: 2000 }, (_, k) => Math.fround(1e-4 * (1 + k / 997)));
    const hairUnderHalf = scales.filter((s) => Math.fround(s / 2) * (1 / s) === 0.49999999999999994);
    expect(hairUnderHalf.length).toBeGreaterThan(10);
    const random = rng(9);
    const blocks = hairUnderHalf.slice(0, 10).map((s) => [127 * s, s / 2, -s / 2, ...Array.from({ length: 13 }, () => 127 * s * random())]);
    blocks.push([190 * 2 ** -149, 2 ** -149, -(190 * 2 ** -149), ...new Array<number>(13).fill(0)]); // scale 2^-149: codes clamp
    const x = Float32Array.from(blocks.flat());
    const q = new Int8Array(x.length);
    const blockScales = new Float32Array(x.length / 16);
    const decoded = new Float32Array(x.length);
    expect(quantizeBlocks(x, 16, q, blockScales, decoded)).toBeUndefined();
    for (let i = 0; i < x.length; i++) {
      const scale = blockScales[i >> 4];
      expect(q[i], `value ${i}`).toBe(Math.max(-127, Math.min(127, Math.round(x[i] * (1 / scale)))) + 0); // an int8 has no -0
      expect(Object.is(decoded[i], Math.fround(q[i] * scale)), `decoded ${i}`).toBe(true);
    }
    expect([q[160], q[162]]).toEqual([127, -127]); // the subnormal block
  });

  it('quantizeBlocks reports the first non-finite value, wherever it falls in its block', () => {
    const x = new Float32Array(40).fill(1);
    x[37] = NaN;
    expect(quantizeBlocks(x, 8, new Int8Array(40), new Float32Array(5))).toEqual({ index: 37, value: NaN });
    x[34] = -Infinity;
    expect(quantizeBlocks(x, 8, new Int8Array(40), new Float32Array(5))).toEqual({ index: 34, value: -Infinity });
    x[9] = NaN;
    x[8] = Infinity;
    expect(quantizeBlocks(x, 8, new Int8Array(40), new Float32Array(5))).toEqual({ index: 8, value: Infinity });
    // A NaN codes as 0 and leaves its block's scale to the other values.
    const q = new Int8Array(40);
    const scales = new Float32Array(5);
    x[17] = NaN;
    x[20] = -3;
    quantizeBlocks(x, 8, q, scales);
    expect([scales[2], q[17], q[20], q[21]]).toEqual([Math.fround(3 / 127), 0, -127, Math.round(127 / 3)]);
  });
});

describe('top-k selection', () => {
  /** Reference: a full sort by |x| descending, ties by index, zeros dropped. */
  function topKBySort(x: Float32Array, k: number): number[] {
    const order = [...x.keys()].filter((i) => x[i] !== 0).sort((i, j) => Math.abs(x[j]) - Math.abs(x[i]) || i - j);
    return order.slice(0, k).sort((i, j) => i - j);
  }

  it.each([
    ['random', 100_003, 1000, (r: () => number) => r()],
    ['few distinct values (ties)', 70_001, 2500, (r: () => number) => Math.round(r() * 20) / 4],
    ['mostly zeros', 50_000, 2000, (r: () => number) => (r() > 0.98 ? r() : 0)],
    ['heavy tail', 40_000, 10_000, (r: () => number) => r() ** 9],
    ['small input', 999, 17, (r: () => number) => r()],
  ] as const)('matches a full sort on %s', (_, n, k, draw) => {
    const random = rng(n);
    const x = new Float32Array(n).map(() => draw(random));
    expect([...topKIndices(x, k)]).toEqual(topKBySort(x, k));
  });

  it('an all-equal input keeps the lowest indices', () => {
    expect([...topKIndices(new Float32Array(20_000).fill(-2), 3)]).toEqual([0, 1, 2]);
  });
});

describe('topk-int8', () => {
  it('keeps the largest ceil(fraction·n) of delta + residual within int8 error, and the residual is exactly the rest', () => {
    const codec = codecByName('topk-int8', { fraction: 0.05 });
    const n = 4099;
    const state: CodecState = {};
    let residual = new Float32Array(n);
    for (let round = 0; round < 3; round++) {
      const delta = randomDelta(n, 10 + round);
      const acc = delta.map((v, i) => v + residual[i]);
      const parts = codec.encode(delta, [n], state);
      const y = codec.decode(parts, [n]);
      const kept = [...y.keys()].filter((i) => y[i] !== 0);
      expect(kept.length).toBe(Math.ceil(0.05 * n));
      expect([...topKIndices(acc, kept.length)]).toEqual(kept);
      const scales = view(partOf(parts, ':scale')).f32;
      kept.forEach((i, j) => expect(Math.abs(y[i] - acc[i])).toBeLessThanOrEqual(scales[Math.floor(j / 32)] * (0.5 + 127 * 2 ** -24)));
      for (let i = 0; i < n; i++) expect(state.residual![i]).toBe(Math.fround(acc[i] - y[i]));
      residual = state.residual!.slice();
    }
  });

  it('without error feedback sends the top-k of the delta alone and keeps no state', () => {
    const codec = codecByName('topk-int8', { fraction: 0.1, errorFeedback: false });
    const state: CodecState = {};
    const x = randomDelta(500, 3);
    codec.encode(x, [500], state);
    const y = codec.decode(codec.encode(x, [500], state), [500]);
    expect(state).toEqual({});
    expect([...y.keys()].filter((i) => y[i] !== 0)).toEqual([...topKIndices(x, 50)]);
  });

  it('codes indices as varint gaps when sparse and as a bitmap when dense', () => {
    const x = randomDelta(10_000, 4).map((v) => v + 1e-3); // no zeros
    const sparse = codecByName('topk-int8', { fraction: 0.01 }).encode(x, [10_000], {});
    expect(partOf(sparse, ':gaps')).toBeDefined();
    expect(partOf(sparse, ':bitmap')).toBeUndefined();
    const dense = codecByName('topk-int8', { fraction: 0.3 }).encode(x, [10_000], {});
    expect(partOf(dense, ':bitmap')!.tensor.shape).toEqual([1250]);
    expect(partOf(dense, ':gaps')).toBeUndefined();
    // A gap ≥ 2^21 takes a 4-byte varint.
    const far = new Float32Array(2 ** 28 / 64 + 3);
    far[0] = 1;
    far[far.length - 1] = 1;
    const codec = codecByName('topk-int8', { fraction: 1e-6 });
    const parts = codec.encode(far, [far.length], {});
    expect(partOf(parts, ':gaps')!.tensor.data.length).toBe(1 + 4);
    expect(codec.decode(parts, [far.length])[far.length - 1]).toBe(1);
  });

  it('spends ~1 + 1/8 bytes per kept value plus ≤ 1.5 bytes per index at 1% of 1M values', () => {
    const n = 1 << 20;
    const parts = codecByName('topk-int8', { fraction: 0.01 }).encode(randomDelta(n, 5), [n], {});
    const kept = Math.ceil(0.01 * n);
    expect(partOf(parts, ':q')!.tensor.data.length).toBe(kept);
    expect(partOf(parts, ':gaps')!.tensor.data.length / kept).toBeLessThan(1.5);
    expect(encodedBytes(parts) / n).toBeLessThan(0.01 * (1 + 1 / 8 + 1.5));
  });
});

describe('powersgd', () => {
  /** A matrix [m×n] = U·diag(singular)·Vᵀ (orthonormal U, V from Gram-Schmidt) + uniform noise. */
  function lowRankPlusNoise(m: number, n: number, singular: number[], noise: number, seed: number): Float32Array {
    const random = rng(seed);
    const orthonormal = (rows: number) => {
      const cols: Float64Array[] = [];
      for (let c = 0; c < singular.length; c++) {
        const v = new Float64Array(rows).map(() => random());
        for (const u of cols) {
          const dot = v.reduce((s, x, i) => s + x * u[i], 0);
          v.forEach((_, i) => (v[i] -= dot * u[i]));
        }
        const norm = Math.hypot(...v);
        cols.push(v.map((x) => x / norm));
      }
      return cols;
    };
    const u = orthonormal(m);
    const v = orthonormal(n);
    const out = new Float32Array(m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        out[i * n + j] = singular.reduce((s, sv, c) => s + sv * u[c][i] * v[c][j], 0) + noise * random();
      }
    }
    return out;
  }

  const frobenius = (x: Float32Array, y: Float32Array) => Math.sqrt(x.reduce((s, v, i) => s + (v - y[i]) ** 2, 0));

  it('the float64 reference gives the exact best rank-r error of a matrix of known singular values', () => {
    const m = lowRankPlusNoise(30, 20, [5, 3, 2, 1, 0.5], 0, 1);
    expect(bestRankError64(m, 30, 20, 2)).toBeCloseTo(Math.hypot(2, 1, 0.5), 5);
    expect(bestRankError64(m, 30, 20, 5)).toBeLessThan(1e-5);
  });

  it('comes within 0.1% of the best rank-r error on low rank + noise, and each warm-started round tracks it', () => {
    const [m, n] = [71, 45];
    const matrix = lowRankPlusNoise(m, n, [10, 6, 3], 0.02, 7);
    const best = bestRankError64(matrix, m, n, 3);
    const codec = codecByName('powersgd', { rank: 3, errorFeedback: false });
    const state: CodecState = {};
    const parts = codec.encode(matrix, [m, n], state);
    expect(parts.map((p) => [p.suffix, p.tensor.shape])).toEqual([[':p', [m, 3]], [':q', [n, 3]]]);
    expect(frobenius(codec.decode(parts, [m, n]), matrix) / best).toBeLessThan(1.001);
    // A later round makes one power iteration from the state's Q: from a random Q that is far
    // off; from the previous round's Q it is good again at once.
    const roundError = () => frobenius(codec.decode(codec.encode(matrix, [m, n], state), [m, n]), matrix) / best;
    const random = rng(5);
    state.lowRankQ = new Float32Array(n * 3).map(() => random());
    expect(roundError()).toBeGreaterThan(1.5);
    expect(roundError()).toBeLessThan(1.02);
    roundError();
    expect(roundError()).toBeLessThan(1 + 1e-5);
  });

  it('error feedback keeps exactly what the factors miss', () => {
    const codec = codecByName('powersgd', { rank: 2 });
    const state: CodecState = {};
    const x = randomDelta(40 * 30, 8);
    const y = codec.decode(codec.encode(x, [40, 30], state), [40, 30]);
    for (let i = 0; i < x.length; i++) expect(state.residual![i]).toBe(Math.fround(x[i] - y[i]));
    expect(state.lowRankQ!.length).toBe(30 * 2);
  });

  it('sends 1-D tensors and matrices the factors would not shrink as int8-block:32', () => {
    const codec = codecByName('powersgd', { rank: 4 });
    const int8 = parseCodecSpec('int8-block:32');
    for (const shape of [[300], [8, 8], [2, 1000]]) {
      const x = randomDelta(count(shape), 9);
      const parts = codec.encode(x, shape, {});
      expect(parts.map((p) => p.suffix)).toEqual([':q', ':scale']);
      expect(codec.decode(parts, shape)).toEqual(int8.decode(int8.encode(x, shape, {}), shape));
    }
    expect(codec.encode(randomDelta(64 * 64, 1), [64, 64], {}).map((p) => p.suffix)).toEqual([':p', ':q']);
  });

  it('refuses a warm start of another tensor', () => {
    const codec = codecByName('powersgd', { rank: 2 });
    const state: CodecState = {};
    codec.encode(randomDelta(40 * 30, 1), [40, 30], state);
    expect(() => codec.encode(randomDelta(40 * 31, 1), [40, 31], { lowRankQ: state.lowRankQ })).toThrow(/state of another tensor/);
  });
});

describe('hostile input', () => {
  const shape = [50, 40];
  const x = randomDelta(2000, 11);
  const encoded = (spec: string) => parseCodecSpec(spec).encode(x, shape, {});
  const rejects = (spec: string, parts: CodecPart[], message: RegExp, expected = shape) => {
    expect(() => parseCodecSpec(spec).decode(parts, expected)).toThrow(CodecError);
    expect(() => parseCodecSpec(spec).decode(parts, expected)).toThrow(message);
  };

  it.each(SPECS)('%s: missing, extra, duplicate, truncated, mistyped and misshapen parts', (spec) => {
    const parts = encoded(spec);
    rejects(spec, parts.slice(1), /missing/);
    rejects(spec, [...parts, { suffix: ':extra', tensor: parts[0].tensor }], /unexpected part ":extra"/);
    rejects(spec, [...parts, parts[parts.length - 1]], /appears twice/);
    for (const { suffix, tensor } of parts) {
      rejects(spec, withPart(parts, suffix, { data: tensor.data.subarray(0, tensor.data.length - 1) }), /needs \d+ bytes|must be/);
      rejects(spec, withPart(parts, suffix, { dtype: tensor.dtype === 'U8' ? 'I8' : 'U8' }), /must be/);
      rejects(spec, withPart(parts, suffix, { shape: [...tensor.shape, 1] }), /must (have shape|be 1-D)/);
    }
    rejects(spec, parts, /must have shape|delta of shape/, [51, 40]);
    rejects(spec, parts, /must have shape|delta of shape|unexpected part/, [2000]);
  });

  it.each(['int8-block:32', 'topk-int8:0.01', 'f16'])('%s: NaN, infinite, negative and overflowing scales', (spec) => {
    const parts = encoded(spec);
    const scales = view(partOf(parts, ':scale'));
    for (const bad of [NaN, Infinity, -1, 3e38]) {
      scales.f32[0] = bad;
      rejects(spec, withPart(parts, ':scale', { data: scales.bytes.slice() }), /scale/);
    }
  });

  it('int8 codes of -128, f16 Inf/NaN and f32 NaN values are refused', () => {
    for (const spec of ['int8-block:32', 'topk-int8:0.01']) {
      const q = view(partOf(encoded(spec), ':q')).bytes;
      q[3] = 0x80;
      rejects(spec, withPart(encoded(spec), ':q', { data: q }), /code -128/);
    }
    const halves = view(partOf(encoded('f16'), ':f16')).bytes;
    halves[11] = 0x7c;
    rejects('f16', withPart(encoded('f16'), ':f16', { data: halves }), /Inf or NaN at 5/);
    const values = view(partOf(encoded('f32'), '')).f32;
    values[7] = NaN;
    rejects('f32', withPart(encoded('f32'), '', { data: new Uint8Array(values.buffer) }), /non-finite value NaN at 7/);
  });

  describe('top-k indices', () => {
    const spec = 'topk-int8:0.01';
    const parts = encoded(spec);
    const k = partOf(parts, ':q')!.tensor.data.length;
    const indices = [...parseCodecSpec(spec).decode(parts, shape).keys()].filter((i) => parseCodecSpec(spec).decode(parts, shape)[i] !== 0);
    /** LEB128 of each number, written out independently of indices.ts. */
    const leb128 = (values: number[]) => values.flatMap((v) => {
      const out: number[] = [];
      for (; v >= 128; v = Math.floor(v / 128)) out.push((v % 128) + 128);
      return [...out, v];
    });
    const differences = indices.map((v, j) => v - (j ? indices[j - 1] : 0));
    const gaps = (bytes: number[]) => [...parts.filter((p) => p.suffix !== ':gaps'), { suffix: ':gaps', tensor: { dtype: 'U8', shape: [bytes.length], data: Uint8Array.from(bytes) } as Tensor }];
    const valid = leb128(differences);

    it('out of range, repeated (not increasing), truncated, trailing, over-long and too-long varints', () => {
      expect(k).toBe(20);
      expect(indices.length).toBe(k);
      expect([...view(partOf(parts, ':gaps')).bytes]).toEqual(valid);
      const last = differences.slice(0, -1);
      rejects(spec, gaps(leb128([...last, 2000 - indices[k - 2]])), /index 2000 out of range for 2000/);
      rejects(spec, gaps(leb128([...differences.slice(0, 5), 0, ...differences.slice(6)])), /index 5 repeats the previous one/);
      rejects(spec, gaps(leb128(last)), /ends after 19 of 20/);
      rejects(spec, gaps([...valid, 1]), /1 bytes left/);
      rejects(spec, gaps([...leb128(last), 0x81, 0x00]), /over-long varint/);
      rejects(spec, gaps([0xff, 0xff, 0xff, 0xff, 0xff, 0x01, ...leb128(differences.slice(1))]), /longer than 5 bytes/);
      rejects(spec, gaps(leb128([...differences, ...differences, ...differences, ...differences, ...differences, 1])), /at most 100 elements/);
    });

    it('bitmaps with the wrong count, bits past the end, or both index parts', () => {
      const bitmap = (bytes: Uint8Array) => [...parts.filter((p) => p.suffix !== ':gaps'), { suffix: ':bitmap', tensor: { dtype: 'U8', shape: [bytes.length], data: bytes } as Tensor }];
      const y = parseCodecSpec(spec).decode(parts, shape);
      const bits = new Uint8Array(250);
      y.forEach((v, i) => v !== 0 && (bits[i >> 3] |= 1 << (i & 7)));
      expect(parseCodecSpec(spec).decode(bitmap(bits), shape)).toEqual(y);
      const extra = bits.slice();
      extra[249] |= 0x80;
      rejects(spec, bitmap(extra), /more than the 20/);
      rejects(spec, bitmap(new Uint8Array(250)), /marks 0 positions for 20/);
      const past = new Uint8Array(7); // 50 elements: bits 50..55 are past the end
      past[6] = 0x04;
      expect(() => parseCodecSpec('topk-int8:0.02').decode([
        { suffix: ':q', tensor: { dtype: 'I8', shape: [1], data: Uint8Array.of(1) } },
        { suffix: ':scale', tensor: { dtype: 'F32', shape: [1], data: new Uint8Array(Float32Array.of(1).buffer) } },
        { suffix: ':bitmap', tensor: { dtype: 'U8', shape: [7], data: past } },
        { suffix: ':shape', tensor: { dtype: 'I32', shape: [1], data: new Uint8Array(Int32Array.of(50).buffer) } },
      ], [50])).toThrow(/bits set past element 50/);
      rejects(spec, [...bitmap(bits), partOf(parts, ':gaps')!], /exactly one of/);
    });

    it('more kept values than the fraction allows', () => {
      const big = parseCodecSpec('topk-int8:0.02').encode(x, shape, {});
      rejects(spec, big, /at most 20 elements/);
    });
  });

  it('powersgd: non-finite and overflowing factors', () => {
    const parts = encoded('powersgd:4');
    const p = view(partOf(parts, ':p'));
    p.f32[9] = Infinity;
    rejects('powersgd:4', withPart(parts, ':p', { data: p.bytes.slice() }), /non-finite value at 9/);
    p.f32[9] = 1e30;
    const q = view(partOf(parts, ':q'));
    q.f32[0] = 1e30;
    rejects('powersgd:4', withPart(withPart(parts, ':p', { data: p.bytes }), ':q', { data: q.bytes }), /overflow/);
  });

  it('random corruption of valid parts gives a finite delta or a CodecError, never another error', () => {
    const random = rng(99);
    let refused = 0;
    for (const spec of SPECS) {
      const codec = parseCodecSpec(spec);
      const clean = codec.encode(x, shape, {});
      for (let trial = 0; trial < 200; trial++) {
        const parts = clean.map(({ suffix, tensor }) => {
          const data = tensor.data.slice();
          for (let flips = 0; flips < 3; flips++) if (data.length) data[Math.floor(Math.abs(random()) * data.length)] ^= 1 << Math.floor(Math.abs(random()) * 8);
          const cut = random() > 0.9 ? Math.floor(Math.abs(random()) * data.length) : data.length;
          return { suffix, tensor: { ...tensor, data: data.subarray(0, cut) } };
        });
        try {
          const y = codec.decode(parts, shape);
          expect(y.length).toBe(2000);
          expect(y.every(Number.isFinite)).toBe(true);
        } catch (err) {
          expect(err, `${spec}: ${(err as Error).message}`).toBeInstanceOf(CodecError);
          refused++;
        }
      }
    }
    expect(refused).toBeGreaterThan(100);
  });
});

describe('error feedback', () => {
  // SGD on f(x) = ½ Σ a_i (x_i − b_i)², each step's gradient sent through top-k at 1%. Every
  // 50th coordinate also gets gradient noise ±2, larger than any other gradient (|a(x − b)| ≤ 1
  // from x = 0): plain top-k then spends all its slots on those noisy coordinates and never
  // moves the others, while error feedback accumulates their small gradients until they win a
  // slot, so x follows full-gradient SGD with some delay.
  function minimize(codec: Codec): number {
    const n = 10_000;
    const random = rng(7);
    const a = new Float32Array(n).map(() => 0.75 + 0.25 * random());
    const b = new Float32Array(n).map(() => random());
    const noise = rng(3);
    const x = new Float32Array(n);
    const gradient = new Float32Array(n);
    const state: CodecState = {};
    const lr = 0.005;
    for (let step = 0; step < 2000; step++) {
      for (let i = 0; i < n; i++) gradient[i] = a[i] * (x[i] - b[i]) + (i % 50 === 0 ? (noise() < 0 ? -2 : 2) : 0);
      const sent = codec.decode(codec.encode(gradient, [n], state), [n]);
      for (let i = 0; i < n; i++) x[i] -= lr * sent[i];
    }
    return Math.hypot(...x.map((v, i) => v - b[i])) / Math.hypot(...b);
  }

  it('converges close to the optimum with error feedback, and stalls far away without', () => {
    expect(minimize(codecByName('topk-int8', { fraction: 0.01 }))).toBeLessThan(0.05);
    expect(minimize(codecByName('topk-int8', { fraction: 0.01, errorFeedback: false }))).toBeGreaterThan(0.95);
  });
});

describe('sizes on a 1M-value delta', () => {
  it.each([
    ['f32', 4, 4],
    ['f16', 2, 2.0001],
    ['int8-block:32', 1.125, 1.125],
    ['topk-int8:0.01', 0.02, 0.0265],
    ['powersgd:4', 0.03125, 0.03125], // (1024 + 1024) · 4 f32
  ] as const)('%s: between %f and %f bytes per value', (spec, low, high) => {
    const shape = [1024, 1024];
    const bytes = encodedBytes(parseCodecSpec(spec).encode(randomDelta(1 << 20, 12), shape, {})) / (1 << 20);
    expect(bytes).toBeGreaterThanOrEqual(low);
    expect(bytes).toBeLessThanOrEqual(high);
  });
});

describe('codec specs', () => {
  it('parses names with their one argument and prints them back', () => {
    expect(parseCodecSpec('int8-block').spec).toBe('int8-block:32');
    expect(parseCodecSpec('topk-int8').spec).toBe('topk-int8:0.01');
    expect(parseCodecSpec('powersgd').spec).toBe('powersgd:4');
    for (const spec of ['f32', 'f16', 'int8-block:64', 'topk-int8:0.001', 'topk-int8:1', 'powersgd:16']) expect(parseCodecSpec(spec).spec).toBe(spec);
    expect(codecByName('powersgd', { rank: 2, errorFeedback: false }).spec).toBe('powersgd:2');
  });

  it.each([
    ['gzip', /unknown codec "gzip"; known: f32, f16, int8-block, topk-int8, powersgd/],
    ['f16:2', /f16 takes no argument/],
    ['topk-int8:0', /fraction must be in \(0, 1\], got 0/],
    ['topk-int8:1.5', /fraction must be in/],
    ['topk-int8:abc', /got NaN/],
    ['topk-int8:', /got NaN/],
    ['powersgd:2.5', /rank must be an integer in \[1, 256\], got 2.5/],
    ['int8-block:0', /block size must be an integer/],
    ['int8-block:32:1', /one ":" argument at most/],
  ])('refuses "%s"', (spec, message) => {
    expect(() => parseCodecSpec(spec)).toThrow(RangeError);
    expect(() => parseCodecSpec(spec)).toThrow(message);
  });

  it('codecByName refuses options the codec does not take', () => {
    expect(() => codecByName('f16', { rank: 2 })).toThrow(/f16 takes no option rank/);
    expect(() => codecByName('int8-block', { errorFeedback: true })).toThrow(/takes no option errorFeedback/);
    expect(() => codecByName('toString')).toThrow(/unknown codec/);
  });

  it('picks a codec per group: exact group, then kind, then the default; bad specs fail up front', () => {
    const codecOf = codecsForGroups({ default: 'int8-block', groups: { expert: 'topk-int8:0.05', 'expert.1.2': 'f16' } });
    expect(codecOf(groupId({ kind: 'trunk' })).spec).toBe('int8-block:32');
    expect(codecOf(groupId({ kind: 'expert', layer: 0, expert: 3 })).spec).toBe('topk-int8:0.05');
    expect(codecOf(groupId({ kind: 'expert', layer: 1, expert: 2 })).spec).toBe('f16');
    expect(() => codecsForGroups({ default: 'f32', groups: { trunk: 'powersgd:0' } })).toThrow(/powersgd:0/);
  });
});
