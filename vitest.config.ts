import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Kernel tests spawn worker threads of their own; keep test files from oversubscribing 2 cores.
    fileParallelism: false,
  },
});
