// Node 20 lacks Promise.withResolvers (Node 22 has it) and libp2p 3 calls it unguarded, so this
// module must be imported before any libp2p import (host.ts does; vitest loads it as a setup file).
type Resolvers = { promise: Promise<unknown>; resolve: (value: unknown) => void; reject: (reason?: unknown) => void };

if (typeof (Promise as { withResolvers?: unknown }).withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers(this: PromiseConstructor): Resolvers {
      let resolve!: Resolvers['resolve'];
      let reject!: Resolvers['reject'];
      const promise = new this<unknown>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}
