import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { guestArtifacts, serialCounter, type SerialCounter } from './bare-vm.js';

/**
 * A real libvirtd for the tests (root, no systemd: see ../shared/QEMU-NOTES.md)
 * and test guests defined as libvirt domains.
 */
export const LIBVIRT_URI = 'qemu:///system';
const virsh = (args: string[]) => execa('virsh', ['-q', '-c', LIBVIRT_URI, ...args]);

async function answers(): Promise<boolean> {
  return (await execa('virsh', ['-c', LIBVIRT_URI, 'version'], { reject: false, timeout: 10_000 })).exitCode === 0;
}

/** Start virtlogd and libvirtd unless a libvirtd already answers. */
export async function ensureLibvirtd(): Promise<void> {
  if (await answers()) return;
  for (const d of ['/var/run/libvirt', '/var/lib/libvirt/qemu', '/var/log/libvirt/qemu']) await mkdir(d, { recursive: true });
  const conf = '/etc/libvirt/qemu.conf';
  const text = await readFile(conf, 'utf8').catch(() => '');
  if (!/^\s*security_driver\s*=/m.test(text)) {
    await writeFile(conf, `${text}\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\n`);
  }
  // libvirtd resolves this user before it reads qemu.conf.
  if ((await execa('id', ['libvirt-qemu'], { reject: false })).exitCode !== 0) {
    await execa('useradd', ['-r', '-s', '/usr/sbin/nologin', 'libvirt-qemu']);
  }
  if ((await execa('pgrep', ['-x', 'virtlogd'], { reject: false })).exitCode !== 0) await execa('virtlogd', ['-d']);
  if ((await execa('pgrep', ['-x', 'libvirtd'], { reject: false })).exitCode !== 0) await execa('libvirtd', ['-d']);
  for (let i = 0; i < 100; i++) {
    if (await answers()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('libvirtd did not answer on qemu:///system within 10 s; see /var/log/libvirt');
}

export interface LibvirtGuest extends SerialCounter {
  name: string;
  serialLog: string;
  start(): Promise<void>;
  state(): Promise<string>;
  /** The file disk `target` reads from now. */
  source(target: string): Promise<string>;
  /** Write 1 MiB of `pattern` at `mib` through QEMU's block layer (HMP qemu-io), as the guest would. */
  write(target: string, mib: number, pattern: number): Promise<void>;
  holds(target: string, mib: number, pattern: number): Promise<boolean>;
  /** Destroy and undefine the domain with its snapshot metadata. */
  remove(): Promise<void>;
}

/**
 * A libvirt domain (type qemu: TCG) on the given qcow2 disks. With `guest`
 * it boots the test guest (kernel + busybox initramfs, counter on the serial
 * log, qemu-guest-agent); without, it sits in the firmware, which is enough
 * for block-layer tests.
 */
export async function defineLibvirtGuest(
  dir: string,
  disks: readonly { target: string; path: string }[],
  opts: { memMiB?: number; guest?: boolean; name?: string; tickMs?: number; cmdline?: string } = {},
): Promise<LibvirtGuest> {
  await ensureLibvirtd();
  await mkdir(dir, { recursive: true });
  const name = opts.name ?? `vmsnap-t-${randomBytes(4).toString('hex')}`;
  const serialLog = join(dir, 'serial.log');
  const os = opts.guest === true ? (() => {
    const { kernel, initrd } = guestArtifacts();
    return `<kernel>${kernel}</kernel><initrd>${initrd}</initrd><cmdline>console=ttyS0 quiet panic=-1 vmsnap.tick_ms=${opts.tickMs ?? 200}${opts.cmdline !== undefined ? ` ${opts.cmdline}` : ''}</cmdline>`;
  })() : '';
  const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>${opts.memMiB ?? 128}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>${os}</os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${disks.map((d) => `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${d.path}'/><target dev='${d.target}' bus='virtio'/></disk>`).join('\n')}
    <serial type='file'><source path='${serialLog}' append='on'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='${join(dir, 'qga.sock')}'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
`;
  const file = join(dir, `${name}.xml`);
  await writeFile(file, xml);
  await virsh(['define', '--file', file]);

  const source = async (target: string): Promise<string> => {
    const { stdout } = await virsh(['domblklist', '--domain', name]);
    const line = stdout.split('\n').map((l) => l.trim().split(/\s+/)).find((f) => f[0] === target);
    if (line?.[1] === undefined) throw new Error(`${name} has no disk ${target}`);
    return line[1];
  };
  const qdev = async (target: string): Promise<string> => {
    const { stdout } = await virsh(['dumpxml', '--domain', name]);
    const disk = stdout.split('</disk>').find((d) => d.includes(`dev='${target}'`));
    const alias = disk === undefined ? undefined : /<alias name='([^']+)'/.exec(disk)?.[1];
    if (alias === undefined) throw new Error(`no alias for ${target} in the live XML of ${name}`);
    return `/machine/peripheral/${alias}/virtio-backend`;
  };
  const hmp = async (line: string): Promise<string> => (await virsh(['qemu-monitor-command', '--domain', name, '--hmp', '--cmd', line])).stdout;

  return {
    name,
    serialLog,
    async start() {
      await virsh(['start', '--domain', name]);
    },
    async state() {
      return (await virsh(['domstate', '--domain', name])).stdout.trim();
    },
    source,
    async write(target, mib, pattern) {
      const out = await hmp(`qemu-io -d ${await qdev(target)} "write -P ${pattern} ${mib}M 1M"`);
      if (out.trim() !== '') throw new Error(`qemu-io write on ${target}: ${out}`);
    },
    async holds(target, mib, pattern) {
      await hmp(`qemu-io -d ${await qdev(target)} "flush"`);
      const path = await source(target);
      const { stdout } = await execa('qemu-io', ['-U', '-r', '-f', 'qcow2', '-c', `read -P ${pattern} ${mib}M 1M`, path], { reject: false });
      if (!stdout.includes('read ') && !stdout.includes('Pattern verification failed')) throw new Error(`qemu-io read on ${path}: ${stdout}`);
      return !stdout.includes('Pattern verification failed');
    },
    ...serialCounter(serialLog),
    async remove() {
      await execa('virsh', ['-c', LIBVIRT_URI, 'destroy', '--domain', name], { reject: false });
      await execa('virsh', ['-c', LIBVIRT_URI, 'undefine', '--domain', name, '--snapshots-metadata'], { reject: false });
    },
  };
}

