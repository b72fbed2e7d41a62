import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { guestArtifacts, readDiskCounter, startGuest, type Guest, type GuestDiskSpec } from '../helpers/qemu-guest.js';

/**
 * The harness itself (test/helpers/qemu-guest.ts) on the real guest of
 * test/guest/build-guest.sh: it boots, counts on its console and on both of
 * its disks, stops, and its launchArgv boots the same guest again. A missing
 * guest fails here with the command that builds it; it is never skipped.
 */
let base: string;
let disks: GuestDiskSpec[];
const running: Guest[] = [];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vgh-'));
  disks = [
    { path: join(base, 'vda.qcow2'), format: 'qcow2', nodeName: 'disk0', id: 'vda' },
    { path: join(base, 'vdb.raw'), format: 'raw', nodeName: 'disk1', id: 'vdb' },
  ];
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', disks[0]!.path, '64M']);
  await execa('qemu-img', ['create', '-q', '-f', 'raw', disks[1]!.path, '16M']);
});

afterEach(async () => {
  for (const guest of running.splice(0)) await guest.stop();
});

afterAll(async () => {
  if (base !== undefined) await rm(base, { recursive: true, force: true });
});

/** Poll `read` until it yields a value that `ok` accepts; the last error or value otherwise. */
async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await read();
      if (ok(v) || Date.now() > deadline) return v;
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    await sleep(100);
  }
}

describe('the QEMU test guest harness', () => {
  let guest: Guest | undefined;

  it('boots, counts on the serial console and on both disks, and stops', async () => {
    guestArtifacts(); // fails (never skips) with "run test/guest/build-guest.sh" when the guest is not built
    guest = await startGuest({ dir: join(base, 'g'), disks, tickMs: 100, fillMiB: 32, dirtyMiB: 8 });
    running.push(guest);
    expect(await guest.isRunning()).toBe(true);
    expect(await guest.pid()).toBeGreaterThan(0);

    await guest.waitReady();
    const first = await guest.waitForCounterAbove(0);
    const later = await guest.waitForCounterAbove(first + 2);
    expect(later).toBeGreaterThan(first);
    // In log order the counter goes 1, 2, 3, ... with nothing skipped.
    const all = await guest.counters();
    expect(all.slice(0, 3)).toEqual([1, 2, 3]);
    expect(all.every((n, i) => n === i + 1)).toBe(true);
    expect(await guest.lastCounter()).toBe(all.at(-1));

    // The guest writes its counter at offset 0 of every disk, read here while it runs.
    for (const d of disks) {
      expect(await eventually(() => readDiskCounter(d.path, d.format), (n) => n > 0, 10_000), d.id).toBeGreaterThan(0);
    }

    await guest.stop();
    expect(await guest.isRunning()).toBe(false);
    expect(await guest.pid()).toBeUndefined();
    await guest.stop(); // idempotent
  });

  it('its launchArgv boots the same guest again', async () => {
    guestArtifacts();
    expect(guest, 'the previous test started no guest').toBeDefined();
    const again = guest as Guest;
    expect(again.launchArgv[0]).toMatch(/^\/.*qemu-system-x86_64$/);
    const before = (await again.counters()).length;
    const [program, ...args] = again.launchArgv as [string, ...string[]];
    await execa(program, args);
    running.push(again);
    expect(await again.isRunning()).toBe(true);

    // A fresh boot: the same serial log goes on with a counter from 1 again.
    const fresh = await eventually(
      async () => (await again.counters()).slice(before),
      (c) => c.length >= 3,
      45_000,
    );
    expect(fresh.slice(0, 3)).toEqual([1, 2, 3]);
    await again.stop();
    expect(await again.isRunning()).toBe(false);
  });
});
