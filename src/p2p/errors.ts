// What a request or a served stream can fail with. Every failure caused by a peer maps to one of
// these, so callers decide by class (retry elsewhere on Timeout, fail over on Refused, ...).
import type { ErrorCode } from '../../proto/index.ts';

export type RpcErrorCode = 'timeout' | 'too-large' | 'malformed' | 'remote' | 'refused' | 'cancelled';

export class RpcError extends Error {
  constructor(
    readonly code: RpcErrorCode,
    message: string,
    /** A finer cause for logs, e.g. "stalled", "truncated", "schema", "tensor". */
    readonly reason: string = code,
  ) {
    super(message);
  }
}

/** A deadline passed: the whole request, or one read or write (a stalled peer). */
export class TimeoutError extends RpcError {
  override name = 'TimeoutError';
  constructor(message: string, reason?: string) {
    super('timeout', message, reason);
  }
}

/** A message is over its protocol's size cap (or its length prefix is longer than the cap needs). */
export class TooLargeError extends RpcError {
  override name = 'TooLargeError';
  constructor(message: string, reason?: string) {
    super('too-large', message, reason);
  }
}

/** The peer's bytes are not a valid message: garbage, wrong schema, truncated stream. */
export class MalformedError extends RpcError {
  override name = 'MalformedError';
  constructor(message: string, reason?: string) {
    super('malformed', message, reason);
  }
}

/** The peer answered with an error reply, or reset the stream without answering. */
export class RemoteError extends RpcError {
  override name = 'RemoteError';
  constructor(
    readonly remoteCode: ErrorCode | 'reset',
    message: string,
  ) {
    super('remote', message, remoteCode);
  }
}

/**
 * The peer will not serve this request: it is busy, does not speak the protocol or version,
 * could not be reached, or a handler refused it. Handlers throw it to refuse with a reason.
 */
export class RefusedError extends RpcError {
  override name = 'RefusedError';
  constructor(message: string, reason?: string) {
    super('refused', message, reason);
  }
}

/** The caller's signal aborted the request. */
export class CancelledError extends RpcError {
  override name = 'CancelledError';
  constructor(message: string) {
    super('cancelled', message);
  }
}
