import { createServer, connect, type Server, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile, chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { QmpClient } from '../../src/hypervisor/qemu/qmp-client.js';

/**
 * Real QEMU VMs for the tests, in two kinds:
 * - bare (no kernel): the firmware finds nothing to boot and idles, which is
 *   all the block layer, migration and QMP need; starts in milliseconds. The
 *   test writes "guest data" through QEMU's own block layer (HMP qemu-io on
 *   the device), exactly where a guest's writes go.
 * - guest: the tiny Debian kernel + busybox guest of test/guest/build-guest.sh,
 *   whose counter (in guest RAM, printed on the serial console and written to
 *   offset 0 of its disks) shows what a revert really restored.
 */
/** Counter methods are for the guest only (a bare VM prints none). */
export interface BareVm extends SerialCounter {
  dir: string;
  qmpSocket: string;
  testSocket: string;
  /** Guest only: the guest agent's socket (virtio-serial port org.qemu.guest_agent.0). */
  agentSocket: string;
  /** argv that starts this VM (daemonized); vmsnap's `launch`. */
  launch: string[];
  start(): Promise<void>;
  /** Write `pattern` (a byte) over 1 MiB at `mib` MiB of the device, through QEMU. */
  write(device: string, mib: number, pattern: number): Promise<void>;
  /** True when 1 MiB at `mib` holds `pattern` as QEMU sees the disk now (through its chain). */
  holds(device: string, mib: number, pattern: number): Promise<boolean>;
  status(): Promise<string>;
  /** Guest only: the serial console log, appended across restarts. */
  serialLog: string;
  /** Guest only: the counter the guest last wrote at offset 0 of a disk, read from outside. */
  diskCounter(device: string): Promise<number>;
  qmp<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  isRunning(): Promise<boolean>;
  kill(): Promise<void>;
}

export interface BareVmDisk {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
}

export interface GuestOptions {
  fillMiB?: number;
  dirtyMiB?: number;
  tickMs?: number;
}

/** Where build-guest.sh put the guest; a clear error when it has not run. */
/** The test guest's counter as its serial log shows it ("COUNTER n" every tick). */
export interface SerialCounter {
  /** COUNTER values printed on the console, in order. */
  counters(): Promise<number[]>;
  /** Wait until the console shows a counter above `n`; returns it. */
  waitForCounterAbove(n: number, timeoutMs?: number): Promise<number>;
  /**
   * Where the guest resumed after a revert: the first counter after `from`
   * log lines that does not follow the one before (the guest counts by one; a
   * revert jumps back, or forward to a snapshot newer than where the guest
   * is; the old QEMU may still have printed a few lines before it stopped).
   * `wasOff`: the domain printed nothing since, so its first new line is it.
   */
  resumedAfter(from: number, wasOff?: boolean): Promise<number>;
}

export function serialCounter(serialLog: string): SerialCounter {
  const counters = async (): Promise<number[]> => {
    const text = await readFile(serialLog, 'utf8').catch(() => '');
    return [...text.matchAll(/^COUNTER (\d+)\r?$/gm)].map((m) => Number(m[1]));
  };
  return {
    counters,
    async waitForCounterAbove(n, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const last = (await counters()).at(-1);
        if (last !== undefined && last > n) return last;
        if (Date.now() > deadline) throw new Error(`the guest's counter did not pass ${n} within ${timeoutMs} ms (last ${last ?? 'none'}); see ${serialLog}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async resumedAfter(from, wasOff = false) {
      for (let i = 0; i < 600; i++) {
        const all = await counters();
        if (wasOff && all.length > from) return all[from] as number;
        for (let j = Math.max(from, 1); j < all.length; j++) {
          if (all[j] !== (all[j - 1] as number) + 1) return all[j] as number;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`the guest's counter never jumped after the revert; see ${serialLog}`);
    },
  };
}

export function guestArtifacts(): { kernel: string; initrd: string } {
  const dir = process.env['VMSNAP_GUEST_DIR'] ?? new URL('../../.cache/guest', import.meta.url).pathname;
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  if (!existsSync(kernel) || !existsSync(initrd)) {
    throw new Error(`the test guest is missing in ${dir}: run test/guest/build-guest.sh (.ci/run and npm run setup do)`);
  }
  return { kernel, initrd };
}

let accel: Promise<'kvm' | 'tcg'> | undefined;

/**
 * KVM when a guest really boots under it, else TCG. /dev/kvm can exist and
 * still not work (these machines: no vmx/svm), so the probe boots the guest.
 * VMSNAP_TEST_ACCEL=kvm|tcg skips the probe.
 */
export function pickAccel(): Promise<'kvm' | 'tcg'> {
  const forced = process.env['VMSNAP_TEST_ACCEL'];
  if (forced === 'kvm' || forced === 'tcg') return Promise.resolve(forced);
  accel ??= (async () => {
    if (!existsSync('/dev/kvm')) return 'tcg';
    // One probe per boot of this machine: the answer is kept in /tmp for the other test files.
    const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')).trim();
    const cache = join('/tmp', `vmsnap-accel-${bootId}`);
    const known = (await readFile(cache, 'utf8').catch(() => '')).trim();
    if (known === 'kvm' || known === 'tcg') return known;
    const found = await probeKvm();
    await writeFile(cache, found).catch(() => undefined);
    return found;
  })();
  return accel;
}

async function probeKvm(): Promise<'kvm' | 'tcg'> {
  const { kernel, initrd } = guestArtifacts();
  const dir = join('/tmp', `vmsnap-kvm-probe-${process.pid}`);
  await mkdir(dir, { recursive: true });
  const log = join(dir, 'serial');
  const probe = execa('qemu-system-x86_64', ['-accel', 'kvm', '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1', '-serial', `file:${log}`], { reject: false });
  try {
    for (let i = 0; i < 100; i++) {
      if ((await readFile(log, 'utf8').catch(() => '')).includes('VMSNAP-READY')) return 'kvm';
      if (probe.exitCode !== null) return 'tcg';
      await new Promise((r) => setTimeout(r, 100));
    }
    return 'tcg';
  } finally {
    probe.kill('SIGKILL');
    await probe;
    await rm(dir, { recursive: true, force: true });
  }
}

export async function createBareVm(dir: string, disks: BareVmDisk[], memMiB = 128, guest?: GuestOptions, opts: { randomRam?: boolean } = {}): Promise<BareVm> {
  await mkdir(dir, { recursive: true });
  // A bare VM's RAM is zero pages, which a memory save skips; random RAM makes its image as big as the RAM.
  const ramArgs: string[] = [];
  if (opts.randomRam === true) {
    const ramFile = join(dir, 'ram.img');
    await execa('dd', ['if=/dev/urandom', `of=${ramFile}`, 'bs=1M', `count=${memMiB}`, 'status=none']);
    ramArgs.push('-object', `memory-backend-file,id=ram0,size=${memMiB}M,mem-path=${ramFile},share=off`);
  }
  const serialLog = join(dir, 'serial.log');
  const kernelArgs: string[] = [];
  if (guest !== undefined) {
    const { kernel, initrd } = guestArtifacts();
    const cmdline = ['console=ttyS0', 'quiet', 'panic=-1', `vmsnap.fill_mb=${guest.fillMiB ?? 0}`, `vmsnap.dirty_mb=${guest.dirtyMiB ?? 0}`, `vmsnap.tick_ms=${guest.tickMs ?? 200}`];
    kernelArgs.push('-kernel', kernel, '-initrd', initrd, '-append', cmdline.join(' '), '-no-reboot',
      '-chardev', `file,id=ser0,path=${serialLog},append=on`, '-serial', 'chardev:ser0',
      '-device', 'virtio-serial', '-chardev', `socket,id=qga0,path=${join(dir, 'qga.sock')},server=on,wait=off`,
      '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0');
  }
  const qmpSocket = join(dir, 'qmp.sock');
  const testSocket = join(dir, 'test.sock');
  const pidFile = join(dir, 'qemu.pid');
  const args = [
    '-machine', opts.randomRam === true ? 'pc-i440fx-7.2,memory-backend=ram0' : 'pc-i440fx-7.2', ...ramArgs,
    '-accel', guest !== undefined ? await pickAccel() : 'tcg', '-m', String(memMiB), ...kernelArgs, '-nodefaults', '-display', 'none', '-daemonize',
    '-pidfile', pidFile,
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    '-chardev', `socket,id=test,path=${testSocket},server=on,wait=off`, '-mon', 'chardev=test,mode=control',
    ...disks.flatMap((d, i) => [
      '-blockdev', `driver=file,filename=${d.path},node-name=disk${i}-file`,
      '-blockdev', `driver=${d.format},file=disk${i}-file,node-name=disk${i}`,
      '-device', `virtio-blk-pci,drive=disk${i},id=${d.id}`,
    ]),
  ];
  // A launcher script, as an operator would have: vmsnap appends -S -incoming defer to it.
  const launcher = join(dir, 'launch.sh');
  await writeFile(launcher, `#!/bin/sh\nexec qemu-system-x86_64 ${args.map((a) => `'${a}'`).join(' ')} "$@"\n`);
  await chmod(launcher, 0o755);

  let test: QmpClient | undefined;
  const testClient = async (): Promise<QmpClient> => {
    if (test !== undefined && !test.isClosed) return test;
    test = await QmpClient.connect(testSocket);
    return test;
  };
  const hmp = async (line: string): Promise<string> => (await testClient()).execute<string>('human-monitor-command', { 'command-line': line });
  const qdev = (device: string) => `/machine/peripheral/${device}/virtio-backend`;
  const pid = async (): Promise<number | undefined> => {
    const text = await readFile(pidFile, 'utf8').catch(() => undefined);
    const n = text === undefined ? NaN : Number.parseInt(text, 10);
    return Number.isNaN(n) ? undefined : n;
  };
  const alive = async (): Promise<boolean> => {
    const p = await pid();
    if (p === undefined) return false;
    try {
      process.kill(p, 0);
      const stat = await readFile(`/proc/${p}/stat`, 'utf8');
      return !/^\d+ \([^)]*\) Z/.test(stat); // a zombie is not running
    } catch {
      return false;
    }
  };

  return {
    dir,
    agentSocket: join(dir, 'qga.sock'),
    serialLog,
    ...serialCounter(serialLog),
    async diskCounter(device) {
      const disk = disks.find((d) => d.id === device);
      if (disk === undefined) throw new Error(`no disk ${device}`);
      const { stdout } = await execa('qemu-io', ['-U', '-r', '-f', disk.format, '-c', 'read -v 0 32', disk.path]);
      const text = stdout.split('\n').filter((l) => /^[0-9a-f]{8}:/.test(l)).map((l) => l.slice(60)).join('');
      const m = /COUNTER.(\d+)/.exec(text);
      if (m === null) throw new Error(`no counter at offset 0 of ${disk.path}: ${stdout}`);
      return Number(m[1]);
    },
    qmpSocket,
    testSocket,
    launch: [launcher],
    async start() {
      await execa(launcher, []);
    },
    async write(device, mib, pattern) {
      const out = await hmp(`qemu-io -d ${qdev(device)} "write -P ${pattern} ${mib}M 1M"`);
      if (out.trim() !== '') throw new Error(`qemu-io write on ${device}: ${out}`);
    },
    async holds(device, mib, pattern) {
      // HMP's qemu-io prints to QEMU's stdout, not to the monitor: flush QEMU's
      // caches, then read the image from outside, as QEMU sees it, with -U.
      await hmp(`qemu-io -d ${qdev(device)} "flush"`);
      const disk = disks.find((d) => d.id === device);
      if (disk === undefined) throw new Error(`no disk ${device}`);
      const { stdout } = await execa('qemu-io', ['-U', '-r', '-f', disk.format, '-c', `read -P ${pattern} ${mib}M 1M`, disk.path], { reject: false });
      if (!/^read 1048576\/1048576 bytes/m.test(stdout) && !/Pattern verification failed/.test(stdout)) {
        throw new Error(`qemu-io read on ${disk.path}: ${stdout}`);
      }
      return !/Pattern verification failed/.test(stdout);
    },
    async status() {
      return (await (await testClient()).execute<{ status: string }>('query-status')).status;
    },
    async qmp(command, a) {
      return (await testClient()).execute(command, a);
    },
    isRunning: alive,
    async kill() {
      test?.close();
      test = undefined;
      const p = await pid();
      if (p !== undefined) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      for (let i = 0; i < 100 && (await alive()); i++) await new Promise((r) => setTimeout(r, 20));
    },
  };
}

/**
 * A QMP socket in front of the real one that the test can cut: every
 * connection is forwarded, and `cutWhen` drops vmsnap's connection when it
 * sends a matching command (which never reaches QEMU). Later connections
 * pass, as they would after a real QMP hiccup.
 */
export class QmpProxy {
  private server: Server | undefined;
  private readonly conns = new Set<Socket>();
  cuts = 0;
  cutWhen: ((line: string) => boolean) | undefined;
  /** Stop passing anything on the connection that sends a matching command (it stays open, silent). */
  hangWhen: ((line: string) => boolean) | undefined;
  hangs = 0;

  constructor(
    readonly path: string,
    readonly target: string,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect(this.target);
      this.conns.add(client);
      upstream.pipe(client);
      let buf = '';
      let hung = false;
      client.on('data', (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop() ?? '';
        if (hung) return;
        if (this.hangWhen !== undefined && lines.some((l) => this.hangWhen?.(l))) {
          this.hangWhen = undefined;
          this.hangs++;
          hung = true;
          upstream.unpipe(client);
          return;
        }
        if (this.cutWhen !== undefined && lines.some((l) => this.cutWhen?.(l))) {
          // The matching command never reaches QEMU: the connection dies under it.
          this.cutWhen = undefined;
          this.cuts++;
          client.destroy();
          upstream.destroy();
          return;
        }
        upstream.write(d);
      });
      const close = () => {
        this.conns.delete(client);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', close);
      client.on('error', close);
      upstream.on('close', close);
      upstream.on('error', close);
    });
    await new Promise<void>((r) => this.server?.listen(this.path, r));
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server === undefined ? r() : this.server.close(() => r())));
  }
}

/**
 * A vmsnap config with one qemu domain on a test VM, host "hv1": what every
 * VM test writes, in one place.
 */
export function vmConfig(opts: {
  domain: string;
  vm: BareVm;
  disks: readonly BareVmDisk[];
  snapshotRoot: string;
  /** Default the VM's own QMP socket (a proxy in some tests). */
  qmpSocket?: string;
  launch?: boolean;
  agent?: boolean;
  stateDir?: string;
  /** YAML appended at the end (policies). */
  extra?: string;
}): string {
  const lines = [
    ...(opts.stateDir !== undefined ? [`stateDir: ${opts.stateDir}`] : []),
    'hosts: [{ name: hv1 }]',
    'domains:',
    `  - name: ${opts.domain}`,
    '    driver: qemu',
    `    qmpSocket: ${opts.qmpSocket ?? opts.vm.qmpSocket}`,
    `    snapshotRoot: ${opts.snapshotRoot}`,
    ...(opts.agent === true ? [`    guestAgentSocket: ${opts.vm.agentSocket}`] : []),
    ...(opts.launch === true ? [`    launch: [${opts.vm.launch.join(', ')}]`] : []),
    '    disks:',
    ...opts.disks.map((d) => `      - { target: ${d.id}, path: ${d.path}, format: ${d.format} }`),
  ];
  return `${lines.join('\n')}\n${opts.extra ?? ''}`;
}
