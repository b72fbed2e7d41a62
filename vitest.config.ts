import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests drive real qemu-img, redis-server and QEMU guests on a
    // 2-core machine: run files one after another so timings stay honest.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    // The CLI's JSON logs go to fd 2 directly; keep test output to test results.
    env: { VMSNAP_LOG_LEVEL: 'silent' },
  },
});
