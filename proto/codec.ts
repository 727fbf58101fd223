// Encoding and decoding of every protocol's messages. A request travels as the message itself;
// a response travels in an envelope, { ok: <response> } or { error: { code, message } }, so a
// responder can always say why it did not answer. Decoding checks, in order: the size cap, that
// the bytes are one plain MessagePack value, the protocol version (join), the schema, then
// tensor sizes and other cross-field rules. It throws ProtocolError and nothing else.
import type { TSchema } from '@sinclair/typebox';
import type { ValueError } from '@sinclair/typebox/errors';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ProtocolError } from './errors.ts';
import { ErrorReplySchema, type ErrorReply } from './messages.ts';
import { packPlain, unpackPlain } from './msgpack.ts';
import { PROTOCOLS, type ProtocolName, type ProtocolSpec, type RequestOf, type ResponseOf } from './protocols.ts';
import { versionMismatch } from './version.ts';

/** A response envelope: exactly one of `ok` and `error`. */
export type Reply<T> = { ok: T; error?: undefined } | { error: ErrorReply; ok?: undefined };

/** What the p2p layer needs from a wire format; swap it to test what a misbehaving peer would send. */
export interface MessageCodec {
  encodeRequest<P extends ProtocolName>(protocol: P, message: RequestOf<P>): Uint8Array;
  decodeRequest<P extends ProtocolName>(protocol: P, bytes: Uint8Array): RequestOf<P>;
  encodeReply<P extends ProtocolName>(protocol: P, reply: Reply<ResponseOf<P>>): Uint8Array;
  decodeReply<P extends ProtocolName>(protocol: P, bytes: Uint8Array): Reply<ResponseOf<P>>;
}

type Part = 'request' | 'response';

interface Checkers {
  request: TypeCheck<TSchema>;
  response: TypeCheck<TSchema>;
}

const checkers = new Map<ProtocolName, Checkers>();
for (const [name, spec] of Object.entries(PROTOCOLS) as [ProtocolName, ProtocolSpec][]) {
  checkers.set(name, { request: TypeCompiler.Compile(spec.request), response: TypeCompiler.Compile(spec.response) });
}
const errorReplyChecker = TypeCompiler.Compile(ErrorReplySchema);

function specOf(protocol: ProtocolName): ProtocolSpec {
  const spec: ProtocolSpec | undefined = PROTOCOLS[protocol];
  if (spec === undefined) throw new TypeError(`unknown protocol ${JSON.stringify(protocol)}`);
  return spec;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** A union reports only "Expected union value": the variant that failed deepest says more. */
function mostSpecific(error: ValueError): ValueError {
  let best = error;
  for (const variant of error.errors) {
    const inner = variant.First();
    if (inner !== undefined && inner.path.length > best.path.length) best = mostSpecific(inner);
  }
  return best;
}

function schemaCheck(checker: TypeCheck<TSchema>, value: unknown, where: string): void {
  if (checker.Check(value)) return;
  const first = checker.Errors(value).First();
  const error = first === undefined ? undefined : mostSpecific(first);
  throw new ProtocolError('schema', `${where}: ${error?.path || '/'}: ${error?.message ?? 'does not match the schema'}`);
}

/** Validates a message of one protocol part (schema, version, cross-field rules). */
function checkMessage(protocol: ProtocolName, part: Part, value: unknown): void {
  const spec = specOf(protocol);
  const where = `${spec.id} ${part}`;
  if (spec.versioned && isRecord(value) && typeof value.version === 'string') {
    const mismatch = versionMismatch(value.version);
    if (mismatch !== undefined) throw new ProtocolError('version', mismatch);
  }
  schemaCheck(checkers.get(protocol)![part], value, where);
  const extra = part === 'request' ? spec.checkRequest : spec.checkResponse;
  try {
    extra?.(value);
  } catch (err) {
    if (err instanceof ProtocolError) throw new ProtocolError(err.reason, `${where}: ${err.message}`);
    throw err;
  }
}

function capOf(protocol: ProtocolName, part: Part): number {
  const spec = specOf(protocol);
  return part === 'request' ? spec.maxRequestBytes : spec.maxResponseBytes;
}

function checkSize(protocol: ProtocolName, part: Part, byteLength: number): void {
  const cap = capOf(protocol, part);
  if (byteLength > cap) throw new ProtocolError('too-large', `${specOf(protocol).id} ${part} of ${byteLength} bytes exceeds the ${cap}-byte cap`);
}

function unpack(protocol: ProtocolName, part: Part, bytes: Uint8Array): unknown {
  if (!(bytes instanceof Uint8Array)) throw new ProtocolError('malformed', `${specOf(protocol).id} ${part}: expected bytes`);
  checkSize(protocol, part, bytes.byteLength);
  try {
    return unpackPlain(bytes);
  } catch (err) {
    throw new ProtocolError('malformed', `${specOf(protocol).id} ${part}: ${(err as Error).message}`);
  }
}

/** Packs an already validated value, refusing it if it would exceed the cap. */
function pack(protocol: ProtocolName, part: Part, value: unknown): Uint8Array {
  const bytes = packPlain(value);
  checkSize(protocol, part, bytes.byteLength);
  return bytes;
}

// Decoding must throw ProtocolError and nothing else: anything unforeseen (a stack overflow
// inside a library, say) becomes a malformed-message error instead of escaping.
function guarded<T>(protocol: ProtocolName, part: Part, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    const id = PROTOCOLS[protocol]?.id ?? JSON.stringify(protocol);
    throw new ProtocolError('malformed', `${id} ${part}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

export function encodeRequest<P extends ProtocolName>(protocol: P, message: RequestOf<P>): Uint8Array {
  checkMessage(protocol, 'request', message);
  return pack(protocol, 'request', message);
}

export function decodeRequest<P extends ProtocolName>(protocol: P, bytes: Uint8Array): RequestOf<P> {
  return guarded(protocol, 'request', () => {
    const value = unpack(protocol, 'request', bytes);
    checkMessage(protocol, 'request', value);
    return value as RequestOf<P>;
  });
}

export function encodeReply<P extends ProtocolName>(protocol: P, reply: Reply<ResponseOf<P>>): Uint8Array {
  if (reply.error !== undefined) {
    schemaCheck(errorReplyChecker, reply.error, `${specOf(protocol).id} error reply`);
    return pack(protocol, 'response', { error: reply.error });
  }
  checkMessage(protocol, 'response', reply.ok);
  return pack(protocol, 'response', { ok: reply.ok });
}

export function decodeReply<P extends ProtocolName>(protocol: P, bytes: Uint8Array): Reply<ResponseOf<P>> {
  return guarded(protocol, 'response', () => {
    const envelope = unpack(protocol, 'response', bytes);
    const where = `${specOf(protocol).id} response`;
    if (!isRecord(envelope) || Object.keys(envelope).length !== 1 || !('ok' in envelope || 'error' in envelope)) {
      throw new ProtocolError('schema', `${where}: expected { ok: <response> } or { error: { code, message } }`);
    }
    if ('error' in envelope) {
      schemaCheck(errorReplyChecker, envelope.error, `${where} error`);
      return { error: envelope.error as ErrorReply };
    }
    checkMessage(protocol, 'response', envelope.ok);
    return { ok: envelope.ok as ResponseOf<P> };
  });
}

/** The default wire format: plain MessagePack. */
export const msgpackCodec: MessageCodec = { encodeRequest, decodeRequest, encodeReply, decodeReply };
