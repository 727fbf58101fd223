// The swarm's wire protocol: protocol ids, message types with runtime validation, the
// MessagePack codec, size caps and the protocol version. Pure: no I/O.
export * from './codec.ts';
export * from './errors.ts';
export * from './group.ts';
export * from './manifest.ts';
export * from './messages.ts';
export * from './plan.ts';
export * from './protocols.ts';
export * from './tensor.ts';
export * from './version.ts';
export { MAX_DEPTH, plainMsgpackProblem } from './msgpack.ts';
