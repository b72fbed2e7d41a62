import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent } from '../../src/hypervisor/qemu/guest-agent.js';
import { createBareVm, guestArtifacts, type BareVm } from '../helpers/bare-vm.js';
import { createImage } from '../helpers/images.js';

/**
 * The test guest of test/guest/build-guest.sh itself: it boots, counts on
 * its console and on both of its disks, answers through its guest agent,
 * and its launch command boots it again. A missing guest fails here with the
 * command that builds it; it is never skipped.
 */
let base: string;
let vm: BareVm;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vt-'));
  await createImage(join(base, 'vda.qcow2'), 'qcow2', '64M');
  await createImage(join(base, 'vdb.raw'), 'raw', '16M');
});

afterAll(async () => {
  await vm?.kill();
  await rm(base, { recursive: true, force: true });
});

describe('the test guest', () => {
  it('boots, counts on its console and on both disks, and answers through its guest agent', async () => {
    guestArtifacts(); // throws "run test/guest/build-guest.sh" when the guest is not built
    vm = await createBareVm(join(base, 'vm'), [
      { id: 'vda', path: join(base, 'vda.qcow2'), format: 'qcow2' },
      { id: 'vdb', path: join(base, 'vdb.raw'), format: 'raw' },
    ], 256, { fillMiB: 32, dirtyMiB: 8, tickMs: 100 });
    await vm.start();
    const n = await vm.waitForCounterAbove(3, 90_000);
    const counted = await vm.counters();
    expect(counted.slice(0, 3)).toEqual([1, 2, 3]);
    expect(await vm.diskCounter('vda')).toBeGreaterThan(0);
    expect(await vm.diskCounter('vdb')).toBeGreaterThan(0);
    const agent = await GuestAgent.connect(vm.agentSocket, 10_000);
    try {
      expect(await agent.execute('guest-ping', undefined, 5_000)).toEqual({});
    } finally {
      agent.close();
    }
    await vm.waitForCounterAbove(n + 2);
  });

  it('its launch command boots the same guest again, counting from 1', async () => {
    await vm.kill();
    expect(await vm.isRunning()).toBe(false);
    const before = (await vm.counters()).length;
    await execa(vm.launch[0] as string, vm.launch.slice(1));
    for (let i = 0; i < 600 && (await vm.counters()).length < before + 2; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await vm.counters()).slice(before, before + 2)).toEqual([1, 2]);
  });
});
