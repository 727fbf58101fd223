/**
 * Why peer bytes were refused: too-large (over the protocol's cap), malformed (not one plain
 * MessagePack value), schema (wrong or missing fields), tensor (bytes disagree with shape and
 * dtype), version (an incompatible major protocol version).
 */
export type ProtocolErrorReason = 'too-large' | 'malformed' | 'schema' | 'tensor' | 'version';

/** The only error a decode function throws, whatever the input. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(
    readonly reason: ProtocolErrorReason,
    message: string,
  ) {
    super(message);
  }
}

/** A job spec that is malformed or does not fit its tokenizer, corpus or model. */
export class JobError extends Error {
  override name = 'JobError';
}
