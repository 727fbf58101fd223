// The swarm's transport: a libp2p host and capped, timed request/response over its streams.
import './polyfill.ts'; // before any libp2p import
export * from './addresses.ts';
export * from './errors.ts';
export { frameStream } from './framing.ts';
export * from './host.ts';
export * from './reachability.ts';
export * from './rpc.ts';
export * from './signing.ts';
export * from './state.ts';
export * from './turn-batches.ts';
