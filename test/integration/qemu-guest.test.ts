import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findDomain, loadConfig, type QemuDomain } from '../../src/config/load-config.js';
import { createQemuDriver } from '../../src/hypervisor/qemu/qemu-driver.js';
import { createSnapshot } from '../../src/pipeline/create-snapshot.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { createBareVm, vmConfig, type BareVm, type BareVmDisk } from '../helpers/bare-vm.js';
import { checkChain, createImage } from '../helpers/images.js';
import { vmsnap } from '../helpers/cli.js';

/**
 * The real guest (a Debian kernel and busybox, see test/guest/build-guest.sh)
 * keeps a counter in RAM, prints it on the serial console and writes it to
 * its disks. For every snapshot method: the snapshot is listed as what it
 * is, the guest keeps running, and a revert brings the counter back to its
 * value at snapshot time, from where the guest counts on.
 */
let base: string;
let vm: BareVm;
let cfgPath: string;
let root: string;
let vda: string;
let vdb: string;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vg-'));
  vda = join(base, 'vda.qcow2');
  vdb = join(base, 'vdb.raw');
  root = join(base, 'snaps');
  cfgPath = join(base, 'vmsnap.yaml');
  await createImage(vda, 'qcow2', '64M');
  await createImage(vdb, 'raw', '8M');
  vm = await createBareVm(
    join(base, 'vm'),
    [
      { id: 'vda', path: vda, format: 'qcow2' },
      { id: 'vdb', path: vdb, format: 'raw' },
    ],
    256,
    { fillMiB: 64, dirtyMiB: 16, tickMs: 100 },
  );
  const disks: BareVmDisk[] = [
    { id: 'vda', path: vda, format: 'qcow2' },
    { id: 'vdb', path: vdb, format: 'raw' },
  ];
  await writeFile(cfgPath, vmConfig({ domain: 'guest1', vm, disks, snapshotRoot: root, launch: true, agent: true }));
  await vm.start();
  await vm.waitForCounterAbove(2, 90_000);
});

afterAll(async () => {
  await vm.kill();
  await rm(base, { recursive: true, force: true });
});

async function cli(...args: string[]) {
  return vmsnap(['-c', cfgPath, ...args]);
}

const last = async (): Promise<number> => (await vm.counters()).at(-1) ?? 0;

interface Taken {
  name: string;
  before: number;
  after: number;
}

async function take(name: string, method: string, create: () => Promise<void>): Promise<Taken> {
  const before = await last();
  await create();
  const after = await last();
  const m = (await new Catalog(root).list('guest1')).snapshots.find((s) => s.name === name);
  expect(m).toMatchObject({ name, method, kind: 'full', state: 'running', consistency: 'full-system' });
  // The guest runs on: its counter moves past the snapshot.
  await vm.waitForCounterAbove(after + 3);
  return { name, before, after };
}

async function revertAndCheck(t: Taken): Promise<void> {
  const from = (await vm.counters()).length;
  const r = await cli('snapshot', 'revert', 'guest1', t.name, '--force');
  expect(r.stderr).not.toMatch(/^vmsnap: (?!warning)/m);
  expect(r.code).toBe(0);
  const resumed = await vm.resumedAfter(from);
  expect(resumed).toBeGreaterThan(t.before);
  expect(resumed).toBeLessThanOrEqual(t.after + 1);
  // ...and keeps running from there.
  await vm.waitForCounterAbove(resumed + 3);
  expect(await vm.status()).toBe('running');
}

describe('the real guest, snapshotted while it runs', () => {
  const taken: Record<string, Taken> = {};

  it('pause-save (memory file, internal qcow2 tag, raw copy)', async () => {
    taken['pause-save'] = await take('ps', 'pause-save', async () => {
      const r = await cli('snapshot', 'create', 'guest1', '--name', 'ps');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    });
  });

  it('internal (snapshot-save: memory inside the qcow2)', async () => {
    taken['internal'] = await take('int', 'internal', async () => {
      expect((await cli('snapshot', 'create', 'guest1', '--name', 'int', '--memory', 'internal', '--disk', 'vdb=no')).code).toBe(0);
    });
  });

  it.each(['internal', 'pause-save'])('revert to the %s snapshot brings the counter back', async (method) => {
    await revertAndCheck(taken[method] as Taken);
  });

  it('deleting the internal snapshots (snapshot-delete job) keeps the image valid and the guest running', async () => {
    for (const name of ['int', 'ps']) {
      const r = await cli('snapshot', 'delete', 'guest1', name);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      await checkChain(vda, { inUse: true });
    }
    const now = await last();
    await vm.waitForCounterAbove(now + 3);
  });

  it('background (--live, external overlay)', async () => {
    taken['background'] = await take('bg', 'background', async () => {
      expect((await cli('snapshot', 'create', 'guest1', '--name', 'bg', '--live', '--disk', 'vda=external')).code).toBe(0);
    });
  });

  it('live migrate-to-file (external overlay)', async () => {
    taken['live-migrate'] = await take('lm', 'live-migrate', async () => {
      const domain = findDomain(await loadConfig(cfgPath), 'guest1') as QemuDomain;
      const deps = createPipelineDeps(pino({ level: 'silent' }));
      deps.driverFor = (d) => createQemuDriver(d as QemuDomain, { backgroundSnapshot: false });
      await createSnapshot(deps, domain, { name: 'lm', live: true, disks: { vda: { mode: 'external' } } });
    });
  });

  it.each(['live-migrate', 'background'])('revert to the %s snapshot brings the counter back', async (method) => {
    await revertAndCheck(taken[method] as Taken);
    // The guest writes its counter to its disks again, from the reverted value on.
    const onDisk = await vm.diskCounter('vdb');
    expect(onDisk).toBeGreaterThan((taken[method] as Taken).before);
  });

  it('--quiesce freezes the guest through its real qemu-guest-agent and records it', async () => {
    const r = await cli('snapshot', 'create', 'guest1', '--name', 'q', '--disk-only', '--disk', 'vdb=no', '--quiesce');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const m = (await new Catalog(root).list('guest1')).snapshots.find((s) => s.name === 'q');
    expect(m).toMatchObject({ kind: 'disk-only', consistency: 'application', quiesced: true });
    expect(m?.durationsMs['freeze']).toBeGreaterThanOrEqual(0);
    const now = await last();
    await vm.waitForCounterAbove(now + 3); // thawed: the guest goes on writing
    expect((await cli('snapshot', 'delete', 'guest1', 'q')).code).toBe(0);
  });

  it('deleting the external snapshots (block-stream) keeps the chain valid and the guest running', async () => {
    for (const name of ['bg', 'lm']) {
      const r = await cli('snapshot', 'delete', 'guest1', name);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      await checkChain(vda, { inUse: true });
    }
    expect((await new Catalog(root).list('guest1')).snapshots).toEqual([]);
    const now = await last();
    await vm.waitForCounterAbove(now + 3);
    expect(await vm.diskCounter('vda')).toBeGreaterThan(now);
  });
});
