import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // libp2p 3 calls Promise.withResolvers, which Node 20 lacks.
    setupFiles: ['src/p2p/polyfill.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Kernel tests spawn worker threads of their own; keep test files from oversubscribing 2 cores.
    fileParallelism: false,
  },
});
