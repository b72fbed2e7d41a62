/**
 * Guest downtime (STOP → RESUME, as vmsnap records it in the manifest) of
 * each snapshot method of the QEMU driver and of the libvirt driver, on the
 * real test guest with 60% of its RAM full and 64 MiB rewritten in a loop.
 * The libvirt methods run the same guest as a libvirt domain (a libvirtd is
 * started if none answers on qemu:///system; root).
 *
 *   npm run bench:downtime [-- --mem 512,2048 --runs 3 --methods pause-save,internal,background,live-migrate,libvirt-live,libvirt-internal]
 *
 * Prints one JSON document: per method and RAM size the median downtime,
 * every run's downtime, total time and memory file size. Needs the test
 * guest (test/guest/build-guest.sh) and writes under $TMPDIR.
 */
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import pino from 'pino';
import { loadConfig, findDomain, type QemuDomain } from '../src/config/load-config.js';
import { createQemuDriver } from '../src/hypervisor/qemu/qemu-driver.js';
import { createLibvirtDriver } from '../src/hypervisor/libvirt/libvirt-driver.js';
import type { LibvirtDomain } from '../src/config/load-config.js';
import { defineLibvirtGuest, LIBVIRT_URI } from '../test/helpers/libvirt.js';
import { createSnapshot, type CreateSnapshotOptions } from '../src/pipeline/create-snapshot.js';
import { deleteSnapshot } from '../src/pipeline/delete-snapshot.js';
import { createBackends } from '../src/storage/create-backend.js';
import type { PipelineDeps } from '../src/pipeline/context.js';

type QemuMethod = 'pause-save' | 'internal' | 'background' | 'live-migrate';
type LibvirtMethod = 'libvirt-external' | 'libvirt-live' | 'libvirt-internal';
type Method = QemuMethod | LibvirtMethod;
const QEMU_METHODS: Method[] = ['pause-save', 'internal', 'background', 'live-migrate'];
const LIBVIRT_METHODS: Method[] = ['libvirt-external', 'libvirt-live', 'libvirt-internal'];
const ALL: Method[] = [...QEMU_METHODS, ...LIBVIRT_METHODS];

const { values } = parseArgs({
  options: {
    mem: { type: 'string', default: '512,2048' },
    runs: { type: 'string', default: '3' },
    methods: { type: 'string', default: ALL.join(',') },
  },
});
const mems = (values.mem ?? '').split(',').map((v) => Number.parseInt(v, 10));
const runs = Number.parseInt(values.runs ?? '3', 10);
const methods = (values.methods ?? '').split(',') as Method[];
for (const m of methods) if (!ALL.includes(m)) throw new Error(`--methods: unknown method ${m}; one of ${ALL.join(', ')}`);
if (mems.some((m) => !Number.isInteger(m) || m < 128) || !Number.isInteger(runs) || runs < 1) {
  throw new Error('--mem takes MiB sizes >= 128 (e.g. 512,2048), --runs a count >= 1');
}

const guestDir = process.env['VMSNAP_GUEST_DIR'] ?? new URL('../../.cache/guest', import.meta.url).pathname;
if (!existsSync(join(guestDir, 'vmlinuz'))) throw new Error(`no test guest in ${guestDir}: run test/guest/build-guest.sh`);
process.env['VMSNAP_GUEST_DIR'] = guestDir; // for the libvirt guest helper

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : Math.round(((s[mid - 1] as number) + (s[mid] as number)) / 2);
};

async function bootGuest(dir: string, memMiB: number): Promise<{ cfg: string; stop: () => Promise<void> }> {
  const disk = join(dir, 'vda.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '256M']);
  const qmp = join(dir, 'qmp.sock');
  const serial = join(dir, 'serial.log');
  const pidFile = join(dir, 'qemu.pid');
  const fill = Math.floor(memMiB * 0.6);
  const argv = [
    '-machine', 'pc-i440fx-7.2', '-accel', process.env['VMSNAP_TEST_ACCEL'] ?? 'tcg', '-m', String(memMiB), '-smp', '1',
    '-nodefaults', '-display', 'none', '-daemonize', '-pidfile', pidFile, '-no-reboot',
    '-kernel', join(guestDir, 'vmlinuz'), '-initrd', join(guestDir, 'initrd.img'),
    '-append', `console=ttyS0 quiet panic=-1 vmsnap.fill_mb=${fill} vmsnap.dirty_mb=64 vmsnap.tick_ms=200`,
    '-chardev', `file,id=ser0,path=${serial},append=on`, '-serial', 'chardev:ser0',
    '-qmp', `unix:${qmp},server=on,wait=off`,
    '-blockdev', `driver=file,filename=${disk},node-name=disk0-file`,
    '-blockdev', 'driver=qcow2,file=disk0-file,node-name=disk0',
    '-device', 'virtio-blk-pci,drive=disk0,id=vda',
  ];
  await execa('qemu-system-x86_64', argv);
  for (let i = 0; ; i++) {
    const log = await readFile(serial, 'utf8').catch(() => '');
    if (log.includes('COUNTER 2')) break;
    if (i > 1200 || log.includes('Kernel panic')) throw new Error(`the guest did not boot; see ${serial}`);
    await sleep(100);
  }
  const cfg = join(dir, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `hosts: [{ name: bench }]\ndomains:\n  - name: bench1\n    driver: qemu\n    qmpSocket: ${qmp}\n    snapshotRoot: ${join(dir, 'snaps')}\n    disks:\n      - { target: vda, path: ${disk}, format: qcow2 }\n`,
  );
  return {
    cfg,
    async stop() {
      const pid = Number.parseInt(await readFile(pidFile, 'utf8'), 10);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
}

/** The same guest as a libvirt domain (type qemu: TCG), on a fresh 256 MiB qcow2. */
async function bootLibvirtGuest(dir: string, memMiB: number): Promise<{ cfg: string; stop: () => Promise<void> }> {
  const disk = join(dir, 'vda.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '256M']);
  const guest = await defineLibvirtGuest(join(dir, 'vm'), [{ target: 'vda', path: disk }], {
    guest: true,
    memMiB,
    cmdline: `vmsnap.fill_mb=${Math.floor(memMiB * 0.6)} vmsnap.dirty_mb=64`,
  });
  try {
    await guest.start();
    await guest.waitForCounterAbove(1, 120_000);
  } catch (err) {
    await guest.remove();
    throw err;
  }
  const cfg = join(dir, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `hosts: [{ name: bench }]\ndomains:\n  - name: bench1\n    driver: libvirt\n    uri: ${LIBVIRT_URI}\n    libvirtName: ${guest.name}\n    snapshotRoot: ${join(dir, 'snaps')}\n    disks:\n      - { target: vda, path: ${disk}, format: qcow2 }\n`,
  );
  return { cfg, stop: () => guest.remove() };
}

function optionsFor(method: Method): CreateSnapshotOptions {
  switch (method) {
    case 'libvirt-external':
      return { memory: 'external' };
    case 'libvirt-live':
      return { memory: 'external', live: true };
    case 'libvirt-internal':
      return { memory: 'internal' };
    case 'pause-save':
      return { disks: { vda: { mode: 'external' } } };
    case 'internal':
      return { memory: 'internal' };
    case 'background':
    case 'live-migrate':
      return { live: true, disks: { vda: { mode: 'external' } } };
  }
}

const results: Record<string, unknown>[] = [];
const started = Date.now();
const groups: { driver: 'qemu' | 'libvirt'; methods: Method[]; boot: typeof bootGuest }[] = [
  { driver: 'qemu', methods: methods.filter((m) => QEMU_METHODS.includes(m)), boot: bootGuest },
  { driver: 'libvirt', methods: methods.filter((m) => LIBVIRT_METHODS.includes(m)), boot: bootLibvirtGuest },
];
for (const group of groups) {
  if (group.methods.length === 0) continue;
  for (const memMiB of mems) {
    const dir = await mkdtemp(join(tmpdir(), 'vb-'));
    await mkdir(join(dir, 'snaps'));
    const guest = await group.boot(dir, memMiB);
    try {
      const domain = findDomain(await loadConfig(guest.cfg), 'bench1');
      for (const method of group.methods) {
        const deps: PipelineDeps = {
          backends: createBackends(),
          logger: pino({ level: 'silent' }),
          now: () => new Date(),
          driverFor: (d) =>
            group.driver === 'libvirt'
              ? createLibvirtDriver(d as LibvirtDomain)
              : createQemuDriver(d as QemuDomain, { backgroundSnapshot: method !== 'live-migrate', convergeTimeoutMs: 120_000 }),
        };
        const downtimes: number[] = [];
        const totals: number[] = [];
        const ran: string[] = [];
        let memoryBytes = 0;
        for (let run = 0; run < runs; run++) {
          const name = `${method}-${run}`;
          const t0 = performance.now();
          const report = await createSnapshot(deps, domain, { name, ...optionsFor(method) });
          totals.push(Math.round(performance.now() - t0));
          const m = report.manifest;
          if (m === undefined) throw new Error('no manifest');
          downtimes.push(m.downtimeMs ?? -1);
          ran.push(m.method);
          if (m.memory.mode === 'external') memoryBytes = m.memory.bytes;
          await deleteSnapshot(deps, domain, name);
          process.stderr.write(`bench: ${memMiB} MiB ${method} run ${run + 1}/${runs}: downtime ${m.downtimeMs} ms (${m.method})\n`);
        }
        results.push({
          driver: group.driver,
          memMiB,
          method,
          methodsRan: [...new Set(ran)],
          medianDowntimeMs: median(downtimes),
          downtimesMs: downtimes,
          medianTotalMs: median(totals),
          memoryFileMiB: method.endsWith('internal') ? null : Math.round(memoryBytes / 1048576),
        });
      }
    } finally {
      await guest.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }
}

process.stdout.write(
  `${JSON.stringify(
    {
      bench: 'downtime',
      qemu: (await execa('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0],
      libvirt: methods.some((m) => LIBVIRT_METHODS.includes(m)) ? (await execa('virsh', ['--version'])).stdout.trim() : null,
      accel: process.env['VMSNAP_TEST_ACCEL'] ?? 'tcg',
      runs,
      guest: 'test guest, 60% of RAM full, 64 MiB rewritten in a loop',
      results,
      elapsedMs: Date.now() - started,
    },
    null,
    2,
  )}\n`,
);
