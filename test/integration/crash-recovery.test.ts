import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import { createBareVm, vmConfig, type BareVm, type BareVmDisk } from '../helpers/bare-vm.js';
import { checkChain, createImage } from '../helpers/images.js';
import { vmsnap, vmsnapBinary } from '../helpers/cli.js';

/**
 * SIGKILL at the step boundaries of a running domain's snapshot (the built
 * binary with VMSNAP_FAULT set dies right after that journal entry is on
 * disk), then `vmsnap recover`: the guest runs again, the snapshot is either
 * listed complete or gone without a trace, and every image checks clean.
 */
let base: string;
let vm: BareVm;
let cfg: string;
let vda: string;
let vdb: string;
let root: string;

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), 'vc-'));
  vda = join(base, 'vda.qcow2');
  vdb = join(base, 'vdb.raw');
  root = join(base, 'snaps');
  cfg = join(base, 'vmsnap.yaml');
  await mkdir(root);
  await createImage(vda, 'qcow2', '64M');
  await createImage(vdb, 'raw', '8M');
  const disks: BareVmDisk[] = [
    { id: 'vda', path: vda, format: 'qcow2' },
    { id: 'vdb', path: vdb, format: 'raw' },
  ];
  vm = await createBareVm(join(base, 'vm'), disks);
  await vm.start();
  await writeFile(cfg, vmConfig({ domain: 'vm1', vm, disks, snapshotRoot: root, launch: true }));
});

afterEach(async () => {
  await vm.kill();
  await rm(base, { recursive: true, force: true });
});

const leftovers = async () => (await readdir(base)).filter((n) => n.includes('vmsnap-overlay'));

describe('SIGKILL during an online snapshot, then vmsnap recover', () => {
  it.each([
    { fault: 'paused', outcome: 'removed', flags: ['--disk', 'vda=external'] },
    { fault: 'migrating', outcome: 'removed', flags: ['--disk', 'vda=external'] },
    { fault: 'disks:internal:done', outcome: 'removed', flags: [] },
    { fault: 'disks:external:done', outcome: 'completed', flags: ['--disk', 'vda=external'] },
    { fault: 'commit:start', outcome: 'completed', flags: ['--disk', 'vda=external'] },
    { fault: 'disks:start', outcome: 'removed', flags: ['--live', '--disk', 'vda=external'] },
    { fault: 'memory:start', outcome: 'completed', flags: ['--live', '--disk', 'vda=external'] },
  ])('killed at $fault ($flags): the guest runs, the snapshot is $outcome, the chain is clean', async ({ fault, outcome, flags }) => {
    await vm.write('vda', 0, 0x71);
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'create', 'vm1', '--name', 's1', ...flags], { env: { VMSNAP_FAULT: fault } });
    expect(killed.signal).toBe('SIGKILL');
    expect((await new Catalog(root).list('vm1')).snapshots).toEqual([]); // never listed half-made

    const r = await vmsnap(['-c', cfg, 'recover', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [report] = JSON.parse(r.stdout) as { completed: string[]; removed: string[] }[];
    expect(report?.[outcome as 'completed' | 'removed']).toEqual(['s1']);

    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 0, 0x71)).toBe(true);
    // The guest writes again, to the image the config names.
    await vm.write('vda', 1, 0x72);
    expect(await vm.holds('vda', 1, 0x72)).toBe(true);
    await checkChain(vda, { inUse: true });
    const listing = await new Catalog(root).list('vm1');
    expect(listing.partial).toEqual([]);
    if (outcome === 'completed') {
      expect(listing.snapshots.map((s) => s.name)).toEqual(['s1']);
      expect(listing.snapshots[0]?.notes?.[0]).toMatch(/completed by recovery/);
      for (const d of listing.snapshots[0]?.disks ?? []) if (d.file?.endsWith('.qcow2')) await checkChain(d.file);
      // ...and revertible.
      await vm.write('vda', 0, 0x73);
      const back = await vmsnap(['-c', cfg, 'snapshot', 'revert', 'vm1', 's1', '--force']);
      expect(back.code).toBe(0);
      expect(await vm.holds('vda', 0, 0x71)).toBe(true);
    } else {
      expect(listing.snapshots).toEqual([]);
      expect(await readdir(join(root, 'vm1'))).not.toContain('s1');
      expect(await checkChain(vda, { inUse: true })).toEqual([vda]);
    }
    expect(await leftovers()).toEqual([]);
  });

  it('killed during a revert after QEMU was stopped: recover runs the revert again and the guest is back', async () => {
    await vm.write('vda', 0, 0x81);
    expect((await vmsnap(['-c', cfg, 'snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vda=external'])).code).toBe(0);
    await vm.write('vda', 0, 0x82);
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'revert', 'vm1', 's1'], { env: { VMSNAP_FAULT: 'revert:stopped' } });
    expect(killed.signal).toBe('SIGKILL');
    expect(await vm.isRunning()).toBe(false);
    const r = await vmsnap(['-c', cfg, 'recover', '--json']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)[0]).toMatchObject({ reverted: 's1' });
    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 0, 0x81)).toBe(true);
    await checkChain(vda, { inUse: true });
  });

  it('killed during a delete (after the snapshot was unlisted): recover finishes it, data and chain intact', async () => {
    await vm.write('vda', 0, 0x91);
    expect((await vmsnap(['-c', cfg, 'snapshot', 'create', 'vm1', '--name', 'a', '--disk', 'vda=external'])).code).toBe(0);
    await vm.write('vda', 1, 0x92);
    expect((await vmsnap(['-c', cfg, 'snapshot', 'create', 'vm1', '--name', 'b', '--disk', 'vda=external'])).code).toBe(0);
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'delete', 'vm1', 'a'], { env: { VMSNAP_FAULT: 'delete:marked' } });
    expect(killed.signal).toBe('SIGKILL');
    expect((await new Catalog(root).list('vm1')).snapshots.map((s) => s.name)).toEqual(['b']);
    const r = await vmsnap(['-c', cfg, 'recover', '--json']);
    expect(JSON.parse(r.stdout)[0]).toMatchObject({ deleted: ['a'] });
    expect(await readdir(join(root, 'vm1'))).not.toContain('a');
    expect(await vm.holds('vda', 0, 0x91)).toBe(true);
    expect(await vm.holds('vda', 1, 0x92)).toBe(true);
    await checkChain(vda, { inUse: true });
    for (const s of (await new Catalog(root).list('vm1')).snapshots) for (const d of s.disks) if (d.file?.endsWith('.qcow2')) await checkChain(d.file);
  });

  it.each(['internal', 'external'])('killed inside an offline (%s) disk snapshot, before its step was journaled done: recover takes it back', async (mode) => {
    await vm.kill(); // shut off: the offline path
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'create', 'vm1', '--name', 's1', '--disk', `vda=${mode}`, '--disk', 'vdb=no'], {
      env: { VMSNAP_FAULT: 'disk:vda:created' },
    });
    expect(killed.signal).toBe('SIGKILL');
    const r = await vmsnap(['-c', cfg, 'recover', '--json']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)[0]).toMatchObject({ removed: ['s1'] });
    expect(await checkChain(vda)).toEqual([vda]);
    const { stdout } = await execa('qemu-img', ['snapshot', '-l', vda]);
    expect(stdout).not.toContain('s1');
    expect(await readdir(join(root, 'vm1'))).not.toContain('s1');
    expect(await leftovers()).toEqual([]);
  });
});
