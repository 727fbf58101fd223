// Base weights over the swarm: the signed manifest of a checkpoint, the content-addressed store,
// the blob server and the fetcher that fails over between sources.
export * from './fetch.ts';
export * from './manifest.ts';
export * from './memory.ts';
export * from './serve.ts';
export * from './store.ts';
