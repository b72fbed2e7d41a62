import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { findDomain, loadConfig } from '../../src/config/load-config.js';
import { createBareVm, vmConfig } from '../helpers/bare-vm.js';
import { defineLibvirtGuest, LIBVIRT_URI } from '../helpers/libvirt.js';
import { createImage } from '../helpers/images.js';
import { describeHypervisorDriver, type HypervisorFixture } from './hypervisor-driver.js';

/** QEMU over QMP, on a real QEMU whose disk data is written through its block layer. */
describeHypervisorDriver('qemu', async (): Promise<HypervisorFixture> => {
  const base = await mkdtemp(join(tmpdir(), 'vhq-'));
  const vda = join(base, 'vda.qcow2');
  await createImage(vda, 'qcow2', '64M');
  const disks = [{ id: 'vda', path: vda, format: 'qcow2' as const }];
  const vm = await createBareVm(join(base, 'vm'), disks);
  const cfg = join(base, 'vmsnap.yaml');
  await writeFile(cfg, vmConfig({ domain: 'vm1', vm, disks, snapshotRoot: join(base, 'snaps'), launch: true }));
  return {
    domain: findDomain(await loadConfig(cfg), 'vm1'),
    snapshotRoot: join(base, 'snaps'),
    start: () => vm.start(),
    write: (p) => vm.write('vda', 0, p),
    holds: (p) => vm.holds('vda', 0, p),
    async cleanup() {
      await vm.kill();
      await rm(base, { recursive: true, force: true });
    },
  };
});

/**
 * Xen through the fake `xl` of test/fake-xl (Xen cannot run here). The
 * guest's data is the image itself, written with qemu-io as the guest would.
 */
describeHypervisorDriver('xen (fake xl)', async (): Promise<HypervisorFixture> => {
  const base = await mkdtemp(join(tmpdir(), 'vhx-'));
  const state = join(base, 'xl');
  await mkdir(state);
  process.env['FAKE_XL_DIR'] = state;
  const disk = join(base, 'xg.qcow2');
  await createImage(disk, 'qcow2');
  const xlConfig = join(base, 'xg.cfg');
  await writeFile(xlConfig, 'name = "xg"\n');
  const xl = new URL('../fake-xl/xl', import.meta.url).pathname;
  const cfg = join(base, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `hosts: [{ name: hv1 }]\ndomains:\n  - name: xg\n    driver: xen\n    xl: ${xl}\n    snapshotRoot: ${join(base, 'snaps')}\n    disks: [{ target: xvda, path: ${disk}, format: qcow2 }]\n`,
  );
  return {
    domain: findDomain(await loadConfig(cfg), 'xg'),
    snapshotRoot: join(base, 'snaps'),
    async start() {
      await execa(xl, ['create', xlConfig], { env: { FAKE_XL_DIR: state } });
    },
    async write(p) {
      await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${p} 0 64k`, disk]);
    },
    async holds(p) {
      const { stdout } = await execa('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${p} 0 64k`, disk], { reject: false });
      return !stdout.includes('Pattern verification failed');
    },
    async cleanup() {
      delete process.env['FAKE_XL_DIR'];
      await rm(base, { recursive: true, force: true });
    },
  };
});

/** libvirt through a real libvirtd, on a domain that sits in its firmware (block-layer data only). */
describeHypervisorDriver('libvirt', async (): Promise<HypervisorFixture> => {
  const base = await mkdtemp(join(tmpdir(), 'vhl-'));
  const vda = join(base, 'vda.qcow2');
  await createImage(vda, 'qcow2', '64M');
  const guest = await defineLibvirtGuest(join(base, 'vm'), [{ target: 'vda', path: vda }], { memMiB: 64 });
  const cfg = join(base, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `hosts: [{ name: hv1 }]\ndomains:\n  - name: lv1\n    driver: libvirt\n    uri: ${LIBVIRT_URI}\n    libvirtName: ${guest.name}\n    snapshotRoot: ${join(base, 'snaps')}\n    disks: [{ target: vda, path: ${vda}, format: qcow2 }]\n`,
  );
  return {
    domain: findDomain(await loadConfig(cfg), 'lv1'),
    snapshotRoot: join(base, 'snaps'),
    start: () => guest.start(),
    write: (p) => guest.write('vda', 0, p),
    holds: (p) => guest.holds('vda', 0, p),
    async cleanup() {
      await guest.remove();
      await rm(base, { recursive: true, force: true });
    },
  };
});
