import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  decodeReply,
  decodeRequest,
  encodeReply,
  encodeRequest,
  f32Tensor,
  PROTOCOL_NAMES,
  PROTOCOL_VERSION,
  PROTOCOLS,
  ProtocolError,
  TENSOR_MESSAGE_CAP,
  tensorF32,
  type ProtocolErrorReason,
  type ProtocolName,
} from '../../proto/index.ts';
import { rng } from '../helpers.ts';
import { decodePlain, encodeWide, type Plain } from '../reference/msgpack.ts';
import { samples } from './samples.ts';

/** Byte arrays as plain number arrays, so messages compare whatever Uint8Array subclass holds them. */
function plainify(value: unknown): unknown {
  if (value instanceof Uint8Array) return Array.from(value);
  if (Array.isArray(value)) return value.map(plainify);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainify(v)]));
  return value;
}

function refusal(decode: () => unknown): ProtocolError {
  try {
    decode();
  } catch (err) {
    expect(err, String(err)).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('decoded without error');
}

function expectRefused(decode: () => unknown, reason: ProtocolErrorReason, message?: RegExp): void {
  const err = refusal(decode);
  expect(err.reason, err.message).toBe(reason);
  if (message) expect(err.message).toMatch(message);
}

/** A deep copy with `edit` applied to it: the way to build a bad message from a good one. */
function edited<T>(message: T, edit: (copy: Record<string, any>) => void): Record<string, any> {
  const copy = structuredClone(message) as Record<string, any>;
  edit(copy);
  return copy;
}

const plainPackr = new Packr({ useRecords: false });
const pack = (value: unknown) => plainPackr.pack(value);

describe('proto: round trips', () => {
  const all = samples();

  it('every request and response decodes to what was encoded', () => {
    for (const name of PROTOCOL_NAMES) {
      const { request, response } = all[name];
      expect(plainify(decodeRequest(name, encodeRequest(name, request as never))), name).toEqual(plainify(request));
      expect(plainify(decodeReply(name, encodeReply(name, { ok: response as never }))), name).toEqual({ ok: plainify(response) });
      const error = { code: 'busy', message: 'try later' } as const;
      expect(decodeReply(name, encodeReply(name, { error }))).toEqual({ error });
    }
  });

  it('the bytes are plain MessagePack maps that an independent decoder reads back', () => {
    for (const name of PROTOCOL_NAMES) {
      const { request, response } = all[name];
      expect(plainify(decodePlain(encodeRequest(name, request as never))), name).toEqual(plainify(request));
      expect(plainify(decodePlain(encodeReply(name, { ok: response as never }))), name).toEqual({ ok: plainify(response) });
    }
  });

  it('decodes what an independent encoder writes in the widest forms (map32, str32, bin32, int64)', () => {
    for (const name of PROTOCOL_NAMES) {
      const { request, response } = all[name];
      expect(plainify(decodeRequest(name, encodeWide(request as Plain))), name).toEqual(plainify(request));
      expect(plainify(decodeReply(name, encodeWide({ ok: response as Plain }))), name).toEqual({ ok: plainify(response) });
    }
  });

  it('carries tensors as raw little-endian bytes and reads them back aligned or not', () => {
    const tensor = f32Tensor([2], new Float32Array([1, -2]));
    expect(Array.from(tensor.data)).toEqual([0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);
    const call = { ...all.expertForward.request, rows: 1, tensor: f32Tensor([1, 2], new Float32Array([1.5, -0.25])) };
    const bytes = encodeRequest('expertForward', call);
    for (const offset of [0, 1, 2, 3]) {
      const shifted = new Uint8Array(bytes.length + offset + 5);
      shifted.set(bytes, offset);
      // Node Buffers too: network bytes arrive as Buffers, whose slice() is a view, not a copy.
      for (const source of [shifted, Buffer.from(shifted.buffer)]) {
        const decoded = decodeRequest('expertForward', source.subarray(offset, offset + bytes.length));
        expect(Array.from(tensorF32(decoded.tensor))).toEqual([1.5, -0.25]);
      }
    }
  });

  it('leaves an absent optional field out of the bytes (no undefined extension)', () => {
    const { loss: _loss, ...noLoss } = all.heartbeat.request;
    const withUndefined = { ...noLoss, loss: undefined };
    const bytes = encodeRequest('heartbeat', withUndefined);
    expect(Object.keys(decodePlain(bytes) as object)).not.toContain('loss');
    expect(decodeRequest('heartbeat', bytes)).toEqual(noLoss);
  });
});

describe('proto: rejections', () => {
  const all = samples();

  it('refuses wrong types with the path of the field', () => {
    const cases: [ProtocolName, Record<string, any>, RegExp][] = [
      ['heartbeat', edited(all.heartbeat.request, (m) => (m.step = '120')), /\/step/],
      ['heartbeat', edited(all.heartbeat.request, (m) => (m.loss = NaN)), /\/loss/],
      ['heartbeat', edited(all.heartbeat.request, (m) => (m.bytesSent = -1)), /\/bytesSent/],
      ['heartbeat', edited(all.heartbeat.request, (m) => (m.tokensPerSecond = Infinity)), /\/tokensPerSecond/],
      ['join', edited(all.join.request, (m) => (m.cores = 1.5)), /\/cores/],
      ['join', edited(all.join.request, (m) => (m.nodeId = 'has spaces')), /\/nodeId/],
      ['join', edited(all.join.request, (m) => (m.token = 'x'.repeat(513))), /\/token/],
      ['lease', edited(all.lease.request, (m) => (m.maxBatches = 0)), /\/maxBatches/],
      ['leaseReport', edited(all.leaseReport.request, (m) => (m.completedBatchIds = [1, 'two'])), /\/completedBatchIds\/1/],
      ['expertForward', edited(all.expertForward.request, (m) => (m.tensor.dtype = 'F64')), /\/tensor\/dtype/],
      ['expertForward', edited(all.expertForward.request, (m) => (m.tensor.data = Array.from(m.tensor.data))), /\/tensor\/data/],
      ['expertForward', edited(all.expertForward.request, (m) => (m.tensor.shape = [3, 8, 1, 1, 1, 1, 1, 1, 1])), /\/tensor\/shape/],
      ['delta', edited(all.delta.request, (m) => (m.group = '')), /\/group/],
      ['state', edited(all.state.request, (m) => (m.names = 'embed')), /\/names/],
    ];
    for (const [name, message, path] of cases) {
      expectRefused(() => decodeRequest(name, pack(message)), 'schema', path);
      // The sender checks too: a bad message never reaches the wire.
      expectRefused(() => encodeRequest(name, message as never), 'schema', path);
    }
    expectRefused(() => decodeReply('join', pack({ ok: edited(all.join.response, (m) => (m.heartbeatMs = 5)) })), 'schema', /heartbeatMs/);
    // A uint64 beyond 2^53 decodes as a bigint, which no field accepts.
    expectRefused(() => decodeRequest('heartbeat', pack({ ...all.heartbeat.request, step: 2n ** 60n })), 'schema', /\/step/);
    expectRefused(() => decodeReply('heartbeat', pack({ error: { code: 'teapot', message: '' } })), 'schema', /code/);
  });

  it('refuses every missing field of every message', () => {
    for (const name of PROTOCOL_NAMES) {
      const schemas = PROTOCOLS[name];
      for (const part of ['request', 'response'] as const) {
        const message = all[name][part] as Record<string, unknown>;
        const required = 'required' in schemas[part] ? (schemas[part].required as string[]) : Object.keys(message);
        expect(required.length, `${name} ${part}`).toBeGreaterThan(0);
        for (const key of required) {
          const { [key]: _dropped, ...rest } = message;
          const decode = part === 'request' ? () => decodeRequest(name, pack(rest)) : () => decodeReply(name, pack({ ok: rest }));
          expectRefused(decode, 'schema', key === 'version' ? /version/ : /./);
        }
      }
    }
  });

  it('refuses tensors whose bytes disagree with shape and dtype', () => {
    const request = all.expertForward.request;
    const cases: [ProtocolName, Record<string, any>][] = [
      ['expertForward', edited(request, (m) => (m.tensor.data = m.tensor.data.subarray(1)))],
      ['expertForward', edited(request, (m) => (m.tensor.data = new Uint8Array(m.tensor.data.length + 1)))],
      ['expertForward', edited(request, (m) => (m.tensor.dtype = 'F16'))], // 2-byte elements: half the bytes expected
      ['expertBackward', edited(request, (m) => (m.rows = 4))], // shape [3, 8] does not hold 4 rows
      ['expertBackward', edited(request, (m) => (m.tensor.shape = [24]))],
      ['expertForward', edited(request, (m) => (m.tensor = { dtype: 'I8', shape: [3, 8], data: new Uint8Array(24) }))],
      ['delta', edited(all.delta.request, (m) => (m.parts[1].tensor.shape = [2]))],
    ];
    for (const [name, message] of cases) expectRefused(() => decodeRequest(name, pack(message)), 'tensor', /tensor|parts/);
    expectRefused(() => decodeReply('state', pack({ ok: edited(all.state.response, (m) => (m.parts[0].tensor.shape = [4, 3])) })),
      'tensor', /embed.*32 bytes, got 32|needs 48 bytes/);
    expectRefused(() => decodeRequest('delta', pack(edited(all.delta.request, (m) => (m.parts[1].name = 'w1.q')))),
      'schema', /appears twice/);
  });

  it('carries I8 expert rows with their scales, and refuses scales that do not fit the rows', () => {
    const request = all.expertForward.request; // rows 3, hidden 8
    const codes = { dtype: 'I8', shape: [3, 8], data: new Uint8Array(24).fill(5) };
    const scales = (shape: number[]) => ({ dtype: 'F32', shape, data: new Uint8Array(4 * shape.reduce((a, b) => a * b, 1)) });
    for (const shape of [[3, 1], [3, 2], [3, 8]]) {
      const call = edited(request, (m) => Object.assign(m, { tensor: codes, scales: scales(shape) }));
      expect(decodeRequest('expertForward', pack(call))).toMatchObject({ tensor: { dtype: 'I8' }, scales: { shape } });
    }
    const backward = edited(request, (m) => Object.assign(m, { input: codes, inputScales: scales([3, 1]) }));
    expect(decodeRequest('expertBackward', pack(backward))).toMatchObject({ input: { dtype: 'I8' }, inputScales: { shape: [3, 1] } });
    const cases: [ProtocolName, Record<string, any>, RegExp][] = [
      ['expertForward', edited(request, (m) => (m.tensor = codes)), /tensor: I8 rows need their scales/],
      ['expertForward', edited(request, (m) => (m.scales = scales([3, 1]))), /tensor: only I8 rows carry scales/],
      ['expertForward', edited(request, (m) => Object.assign(m, { tensor: codes, scales: scales([3, 3]) })),
        /a divisor of 8\], got F32 \[3, 3\]/],
      ['expertForward', edited(request, (m) => Object.assign(m, { tensor: codes, scales: scales([2, 1]) })), /got F32 \[2, 1\]/],
      ['expertForward', edited(request, (m) => Object.assign(m, { tensor: codes, scales: { ...scales([3, 1]), dtype: 'F16' } })),
        /got F16/],
      ['expertForward', edited(request, (m) => Object.assign(m, { tensor: codes, scales: { ...scales([3, 1]), data: new Uint8Array(8) } })),
        /scales: .*needs 12 bytes/],
      ['expertBackward', edited(request, (m) => (m.input = codes)), /input: I8 rows need their scales/],
    ];
    for (const [name, message, reason] of cases) expectRefused(() => decodeRequest(name, pack(message)), 'tensor', reason);
  });

  it('refuses a batch of expert calls whole when one call is malformed, naming the call', () => {
    const backward = all.expertCalls.request; // [a backward naming its forward, one carrying the input]
    const forward = { direction: 'forward', calls: [all.expertForward.request, { ...all.expertForward.request, call: 4 }] };
    expect(decodeRequest('expertCalls', pack(forward))).toMatchObject({ direction: 'forward', calls: [{ call: 3 }, { call: 4 }] });
    const cases: [Record<string, any>, ProtocolErrorReason, RegExp][] = [
      [edited(forward, (m) => (m.calls[1].rows = 4)), 'tensor', /: calls\[1\]: tensor: shape must be \[rows=4/],
      [edited(forward, (m) => (m.calls[1].call = 3)), 'schema', /calls: call 3 appears twice/],
      [edited(forward, (m) => (m.calls[0].forwardCall = 1)), 'schema', /: calls\[0\]: a forward call carries no input and no forwardCall/],
      [edited(backward, (m) => delete m.calls[0].forwardCall), 'schema', /: calls\[0\]: a backward call carries either/],
      [edited(backward, (m) => (m.calls[1].forwardCall = 1)), 'schema', /: calls\[1\]: a backward call carries either/],
      [edited(backward, (m) => (m.calls[1].input.shape = [3, 4])), 'tensor', /: calls\[1\]: input: /],
      [edited(forward, (m) => (m.calls = [])), 'schema', /calls/],
    ];
    for (const [message, reason, pattern] of cases) expectRefused(() => decodeRequest('expertCalls', pack(message)), reason, pattern);
    const replies = all.expertCalls.response;
    expectRefused(() => decodeReply('expertCalls', pack({ ok: edited(replies, (m) => (m.refusals[0].call = m.answers[0].call)) })),
      'schema', /appears twice/);
  });

  it('refuses oversized messages by their length alone, and will not encode one', () => {
    for (const name of PROTOCOL_NAMES) {
      const { maxRequestBytes, maxResponseBytes } = PROTOCOLS[name];
      if (maxRequestBytes < TENSOR_MESSAGE_CAP) {
        expectRefused(() => decodeRequest(name, new Uint8Array(maxRequestBytes + 1)), 'too-large',
          new RegExp(`${maxRequestBytes}-byte cap`));
      }
      if (maxResponseBytes < TENSOR_MESSAGE_CAP) expectRefused(() => decodeReply(name, new Uint8Array(maxResponseBytes + 1)), 'too-large');
    }
    const rows = TENSOR_MESSAGE_CAP / (4 * 1024);
    const huge = { ...all.expertForward.request, rows, tensor: f32Tensor([rows, 1024], new Float32Array(rows * 1024)) };
    expectRefused(() => encodeRequest('expertForward', huge), 'too-large', /exceeds the 67108864-byte cap/);
    const tooBig = new Uint8Array(TENSOR_MESSAGE_CAP + 1);
    expectRefused(() => decodeRequest('expertForward', tooBig), 'too-large');
    // A padded string makes a small-protocol message too large while every field stays valid.
    const longKey = pack({ ...all.heartbeat.request, padding: 'x'.repeat(PROTOCOLS.heartbeat.maxRequestBytes) });
    expectRefused(() => decodeRequest('heartbeat', longKey), 'too-large');
  });

  it('refuses an incompatible major version, naming both versions', () => {
    const [major] = PROTOCOL_VERSION.split('.').map(Number);
    const newer = `${major + 1}.0.0`;
    const both = new RegExp(`${newer.replace(/\./g, '\\.')}.*${PROTOCOL_VERSION.replace(/\./g, '\\.')}`);
    // Even a future join request whose other fields changed gets the version reason, not a schema one.
    expectRefused(() => decodeRequest('join', pack({ version: newer, somethingNew: true })), 'version', both);
    expectRefused(() => decodeRequest('join', pack({ ...all.join.request, version: newer })), 'version', both);
    expectRefused(() => decodeReply('join', pack({ ok: { ...all.join.response, version: newer } })), 'version', both);
    expectRefused(() => encodeRequest('join', { ...all.join.request, version: newer }), 'version', both);
    expectRefused(() => decodeRequest('join', pack({ ...all.join.request, version: 'one' })), 'version', /"one"/);
    const minorBump = `${major}.99.7`;
    expect(decodeRequest('join', pack({ ...all.join.request, version: minorBump })).version).toBe(minorBump);
  });

  it('refuses bytes that are not one plain MessagePack value', () => {
    const valid = encodeRequest('heartbeat', all.heartbeat.request);
    const cases: [Uint8Array, RegExp][] = [
      [new Uint8Array(0), /truncated/],
      [new Uint8Array([0xc1]), /not a MessagePack value/],
      [new Uint8Array([...valid, 0x00]), /1 trailing bytes/],
      [new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]), /claims 4294967295 values/],
      [new Uint8Array([0xdb, 0xff, 0xff, 0xff, 0xff, 0x41]), /truncated/],
      [new Uint8Array([0x81, 0x01, 0x02]), /map key at byte 1 is not a string/],
      [new Uint8Array([...Array.from({ length: 100 }, () => 0x91), 0xc0]), /nesting deeper than 16/],
      [new TextEncoder().encode('{"jobId": "job-1"}'), /not a MessagePack value|trailing/],
      [new Packr({ useRecords: false }).pack({ at: new Date(0) }), /extension \(timestamp\)/],
      [new Packr({ useRecords: false, moreTypes: true }).pack({ set: new Set([1]) }), /extension/],
      [new Packr({ useRecords: false, moreTypes: true }).pack({ error: new Error('x') }), /extension/],
      [new Packr({ useRecords: false, useBigIntExtension: true }).pack({ big: 2n ** 70n }), /extension/],
      [new Packr({ useRecords: false, moreTypes: true }).pack({ floats: new Float32Array(2) }), /extension/],
      [new Packr({ useRecords: false }).pack({ gone: undefined }), /extension/],
    ];
    for (const [bytes, message] of cases) expectRefused(() => decodeRequest('heartbeat', bytes), 'malformed', message);
    for (let cut = 0; cut < valid.length; cut++) {
      expectRefused(() => decodeRequest('heartbeat', valid.subarray(0, cut)), 'malformed', /truncated/);
    }
    expectRefused(() => decodeRequest('heartbeat', 'not bytes' as unknown as Uint8Array), 'malformed', /expected bytes/);
  });

  it('refuses msgpackr record encoding, which msgpackr itself would decode', () => {
    const recordPackr = new Packr({ useRecords: true });
    for (const name of PROTOCOL_NAMES) {
      const bytes = recordPackr.pack(all[name].request);
      expect(plainify(new Packr({ useRecords: false }).unpack(bytes))).toEqual(plainify(all[name].request));
      expectRefused(() => decodeRequest(name, bytes), 'malformed', /record definition/);
      expectRefused(() => decodeReply(name, recordPackr.pack({ ok: all[name].response })), 'malformed', /record definition/);
    }
  });

  it('refuses reply envelopes that are not exactly one of ok and error', () => {
    const ack = { accepted: true };
    for (const envelope of [ack, { ok: ack, error: { code: 'busy', message: '' } }, {}, [ack], null]) {
      expectRefused(() => decodeReply('heartbeat', pack(envelope)), 'schema', /expected \{ ok/);
    }
  });

  it('keeps a __proto__ key from touching any prototype', () => {
    const hostile = JSON.parse(`{"__proto__": {"accepted": false, "polluted": true}, "accepted": true}`) as Plain;
    const decoded = decodeReply('leaseReport', encodeWide({ ok: hostile }));
    expect(decoded.ok?.accepted).toBe(true);
    expect(Object.getPrototypeOf(decoded.ok)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('throws nothing but ProtocolError for random bytes and random corruptions of valid messages', () => {
    const random = rng(2024);
    const byte = () => Math.floor((random() + 1) * 128) & 0xff;
    let decoded = 0;
    for (let trial = 0; trial < 4000; trial++) {
      const name = PROTOCOL_NAMES[trial % PROTOCOL_NAMES.length];
      let bytes: Uint8Array;
      if (trial % 2 === 0) {
        bytes = Uint8Array.from({ length: 1 + (trial % 64) }, byte);
      } else {
        bytes = encodeRequest(name, all[name].request as never).slice();
        for (let flips = 1 + (trial % 3); flips > 0; flips--) bytes[Math.floor(((random() + 1) / 2) * bytes.length)] = byte();
      }
      for (const decode of [() => decodeRequest(name, bytes), () => decodeReply(name, bytes)]) {
        try {
          decode();
          decoded++;
        } catch (err) {
          expect(err, `${name}: ${String(err)}`).toBeInstanceOf(ProtocolError);
        }
      }
    }
    // Some corruptions (a changed digit in a number, a string byte) still make valid messages.
    expect(decoded).toBeGreaterThan(0);
  });
});
