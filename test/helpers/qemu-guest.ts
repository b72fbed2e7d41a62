import { existsSync } from 'node:fs';
import { access, constants, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { delimiter, join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

/**
 * The real test guest as a QEMU process: the tiny Debian kernel + busybox
 * initramfs of test/guest/build-guest.sh, whose /init keeps a counter in RAM,
 * prints it on the serial console ("COUNTER n") and writes it at offset 0 of
 * every virtio disk. What a revert restored shows in that counter.
 *
 * Self-contained on purpose: nothing here imports from src/, so the harness
 * keeps working while vmsnap itself changes.
 */

export interface GuestDiskSpec {
  path: string;
  format: 'qcow2' | 'raw';
  /** Block node name of the format layer, e.g. 'disk0' (the file layer is '<nodeName>-file'). */
  nodeName: string;
  /** Device id, e.g. 'vda'. */
  id: string;
}

export interface GuestOptions {
  /** Directory for the sockets, pidfile and serial log; keep it short (unix socket paths max 107 bytes). */
  dir: string;
  /** Guest RAM; 256 MiB by default. */
  memMiB?: number;
  disks: GuestDiskSpec[];
  /** MiB of non-zero data the guest writes once into RAM (vmsnap.fill_mb). */
  fillMiB?: number;
  /** MiB the guest keeps rewriting, to dirty RAM during a live migration (vmsnap.dirty_mb). */
  dirtyMiB?: number;
  /** Counter period in ms (vmsnap.tick_ms); 200 by default. */
  tickMs?: number;
}

export interface Guest {
  /** QMP monitor for vmsnap (QMP takes one client at a time). */
  qmpSocket: string;
  /** A second QMP monitor, for the test itself. */
  testQmpSocket: string;
  /** The serial console, appended across restarts of the same guest. */
  serialLog: string;
  pidFile: string;
  /**
   * The argv that starts this same guest again, daemonized (argv[0] is the
   * absolute qemu-system-x86_64). vmsnap appends ['-S', '-incoming', 'defer']
   * to restart it for a revert.
   */
  launchArgv: string[];
  /** Wait for VMSNAP-READY on the console, printed after this guest was started. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** The counter on the last COUNTER line of the console (0 when there is none yet). */
  lastCounter(): Promise<number>;
  /** Every counter on the console, in log order. */
  counters(): Promise<number[]>;
  /** Wait until the last console counter is above n; returns it. */
  waitForCounterAbove(n: number, timeoutMs?: number): Promise<number>;
  /** The QEMU pid from the pidfile; undefined when that QEMU is not running. */
  pid(): Promise<number | undefined>;
  isRunning(): Promise<boolean>;
  /** QMP 'quit' on the test monitor, SIGKILL if that does not end it; waits for the exit. Idempotent. */
  stop(): Promise<void>;
}

const QEMU = 'qemu-system-x86_64';
/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const REPO = fileURLToPath(new URL('../../', import.meta.url));

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Where build-guest.sh put the guest; a clear error naming the fix when it has not run. */
export function guestArtifacts(): { kernel: string; initrd: string } {
  const dir = process.env['VMSNAP_GUEST_DIR'] ?? join(REPO, '.cache', 'guest');
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  const missing = [kernel, initrd].filter((f) => !existsSync(f));
  if (missing.length > 0) {
    throw new Error(
      `the test guest is not built (missing ${missing.join(', ')}): run \`bash test/guest/build-guest.sh\` as root ` +
        `(scripts/setup.sh and .ci/run do), or point VMSNAP_GUEST_DIR at a built guest`,
    );
  }
  return { kernel, initrd };
}

/** The absolute path of a program on PATH, as argv[0] of a launch command must be. */
async function which(program: string): Promise<string> {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = resolve(dir, program);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(`${program} is not on PATH: apt-get install -y qemu-system-x86`);
}

function assertSocketPath(path: string): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH) {
    throw new Error(
      `unix socket path ${path} is ${bytes} bytes, over the ${MAX_SOCKET_PATH} a socket allows: ` +
        `give the guest a shorter dir (e.g. mkdtemp(join(os.tmpdir(), 'vg-')))`,
    );
  }
}

function kernelCmdline(options: GuestOptions): string {
  return [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    `vmsnap.fill_mb=${options.fillMiB ?? 0}`,
    `vmsnap.dirty_mb=${options.dirtyMiB ?? 0}`,
    `vmsnap.tick_ms=${options.tickMs ?? 200}`,
  ].join(' ');
}

function diskArgs(disks: GuestDiskSpec[]): string[] {
  return disks.flatMap((d) => [
    '-blockdev', `driver=file,filename=${d.path},node-name=${d.nodeName}-file`,
    '-blockdev', `driver=${d.format},file=${d.nodeName}-file,node-name=${d.nodeName}`,
    '-device', `virtio-blk-pci,drive=${d.nodeName},id=${d.id}`,
  ]);
}

// --- pickAccel --------------------------------------------------------------------

let accelMemo: Promise<'kvm' | 'tcg'> | undefined;

/**
 * 'kvm' when the guest really boots under KVM, else 'tcg'. /dev/kvm can exist
 * and still hang or abort guests, so the probe boots the guest and waits for
 * VMSNAP-READY (about 20 s at most). The answer is memoized in this process
 * and, for this boot of the host, in a file under os.tmpdir(), so each test
 * file does not pay for the probe again. VMSNAP_TEST_ACCEL=kvm|tcg forces it.
 */
export function pickAccel(): Promise<'kvm' | 'tcg'> {
  const forced = process.env['VMSNAP_TEST_ACCEL'];
  if (forced === 'kvm' || forced === 'tcg') return Promise.resolve(forced);
  if (forced !== undefined && forced !== '') {
    return Promise.reject(new Error(`VMSNAP_TEST_ACCEL=${forced}: use kvm or tcg, or unset it to probe`));
  }
  accelMemo ??= cachedProbe();
  return accelMemo;
}

async function cachedProbe(): Promise<'kvm' | 'tcg'> {
  const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim();
  const memo = bootId === '' ? undefined : join(tmpdir(), `vmsnap-accel-${bootId}`);
  if (memo !== undefined) {
    const known = (await readFile(memo, 'utf8').catch(() => '')).trim();
    if (known === 'kvm' || known === 'tcg') return known;
  }
  const accel = existsSync('/dev/kvm') ? await probeKvm(20_000) : 'tcg';
  if (memo !== undefined) await writeFile(memo, `${accel}\n`).catch(() => undefined);
  return accel;
}

async function probeKvm(timeoutMs: number): Promise<'kvm' | 'tcg'> {
  const { kernel, initrd } = guestArtifacts();
  const dir = await mkdtemp(join(tmpdir(), 'vmsnap-kvm-'));
  const log = join(dir, 'serial.log');
  const probe = execa(
    await which(QEMU),
    ['-accel', 'kvm', '-machine', 'pc-i440fx-7.2', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot',
      '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1',
      '-chardev', `file,id=ser0,path=${log}`, '-serial', 'chardev:ser0'],
    { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'ignore' },
  );
  try {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if ((await readFile(log, 'utf8').catch(() => '')).includes('VMSNAP-READY')) return 'kvm';
      if (probe.exitCode !== null) return 'tcg'; // KVM refused or aborted
      await sleep(100);
    }
    return 'tcg'; // hung
  } finally {
    probe.kill('SIGKILL');
    await probe;
    await rm(dir, { recursive: true, force: true });
  }
}

// --- a minimal QMP client (one command per connection) ------------------------------

interface QmpReply {
  id?: unknown;
  return?: unknown;
  error?: { class: string; desc: string };
  QMP?: unknown;
  event?: string;
}

/**
 * Connect, read the greeting, negotiate capabilities, run one command and
 * return its result; events are skipped. When `closeIsSuccess` (for 'quit'),
 * QEMU closing the socket before it replies counts as done.
 */
export function qmpCommand<T = unknown>(
  socket: string,
  command: string,
  args?: Record<string, unknown>,
  { timeoutMs = 10_000, closeIsSuccess = false }: { timeoutMs?: number; closeIsSuccess?: boolean } = {},
): Promise<T> {
  return new Promise<T>((resolvePromise, rejectPromise) => {
    const conn = connect(socket);
    let buffer = '';
    let sent = false;
    let settled = false;
    const finish = (error: Error | undefined, value?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.destroy();
      if (error === undefined) resolvePromise(value as T);
      else rejectPromise(error);
    };
    const timer = setTimeout(() => finish(new Error(`QMP ${command} on ${socket}: no reply within ${timeoutMs} ms`)), timeoutMs);
    const send = (id: string, execute: string, a?: Record<string, unknown>) =>
      conn.write(`${JSON.stringify(a === undefined ? { execute, id } : { execute, arguments: a, id })}\n`);

    conn.setEncoding('utf8');
    conn.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line === '') continue;
        let msg: QmpReply;
        try {
          msg = JSON.parse(line) as QmpReply;
        } catch {
          finish(new Error(`QMP ${command} on ${socket}: not JSON: ${line}`));
          return;
        }
        if (msg.QMP !== undefined) send('caps', 'qmp_capabilities');
        else if (msg.event !== undefined) continue;
        else if (msg.id === 'caps') {
          if (msg.error !== undefined) finish(new Error(`QMP qmp_capabilities on ${socket}: ${msg.error.desc}`));
          else {
            sent = true;
            send('cmd', command, args);
          }
        } else if (msg.id === 'cmd') {
          if (msg.error !== undefined) finish(new Error(`QMP ${command} on ${socket}: ${msg.error.class}: ${msg.error.desc}`));
          else finish(undefined, msg.return);
        }
      }
    });
    conn.on('error', (e) => finish(sent && closeIsSuccess ? undefined : new Error(`QMP ${command} on ${socket}: ${e.message}`)));
    conn.on('close', () => finish(sent && closeIsSuccess ? undefined : new Error(`QMP ${command} on ${socket}: connection closed before the reply`)));
  });
}

// --- serial log -------------------------------------------------------------------------

async function fileSize(path: string): Promise<number> {
  return (await stat(path).catch(() => undefined))?.size ?? 0;
}

/** COUNTER values on complete lines of the log (a line still being written is not read). */
function parseCounters(text: string): number[] {
  const complete = text.slice(0, text.lastIndexOf('\n') + 1);
  return [...complete.matchAll(/^COUNTER (\d+)\r?$/gm)].map((m) => Number(m[1]));
}

async function logTail(path: string, lines = 15): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.split('\n').slice(-lines).join('\n');
}

// --- processes ------------------------------------------------------------------------

/** The pid in `pidFile` when that process is alive, not a zombie, and is the QEMU that wrote it. */
async function livePid(pidFile: string): Promise<number | undefined> {
  const text = await readFile(pidFile, 'utf8').catch(() => undefined);
  const pid = text === undefined ? NaN : Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const procStat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (procStat === undefined || /^\d+ \(.*\) Z /.test(procStat)) return undefined; // gone, or a zombie
  // The pid may have been reused since: it must be a QEMU with this pidfile.
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.split('\0').includes(pidFile) ? pid : undefined;
}

async function waitGone(pidFile: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if ((await livePid(pidFile)) === undefined) return true;
    await sleep(50);
  }
  return (await livePid(pidFile)) === undefined;
}

// --- startGuest ----------------------------------------------------------------------------

/** Start the guest daemonized (it does not wait for the guest to boot: see waitReady). */
export async function startGuest(options: GuestOptions): Promise<Guest> {
  const { kernel, initrd } = guestArtifacts();
  await mkdir(options.dir, { recursive: true });
  const dir = resolve(options.dir);
  const qmpSocket = join(dir, 'qmp.sock');
  const testQmpSocket = join(dir, 'tqmp.sock');
  const serialLog = join(dir, 'serial.log');
  const pidFile = join(dir, 'qemu.pid');
  assertSocketPath(qmpSocket);
  assertSocketPath(testQmpSocket);
  if ((await livePid(pidFile)) !== undefined) {
    throw new Error(`a guest from ${pidFile} is still running: stop it first, or give this one another dir`);
  }

  const launchArgv = [
    await which(QEMU),
    '-accel', await pickAccel(),
    // Explicit machine type: an -incoming restart must get the same one.
    '-machine', 'pc-i440fx-7.2',
    '-m', String(options.memMiB ?? 256),
    '-smp', '1',
    '-nodefaults',
    '-display', 'none', // -nographic does not go with -daemonize
    '-daemonize',
    '-pidfile', pidFile,
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', kernelCmdline(options),
    '-chardev', `file,id=ser0,path=${serialLog},append=on`,
    '-serial', 'chardev:ser0',
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    '-chardev', `socket,id=tqmp,path=${testQmpSocket},server=on,wait=off`,
    '-mon', 'chardev=tqmp,mode=control',
    '-no-reboot',
    ...diskArgs(options.disks),
  ];

  // The console log is appended across restarts: waitReady reads what comes after this.
  const readyFrom = await fileSize(serialLog);
  const [program, ...args] = launchArgv as [string, ...string[]];
  const started = await execa(program, args, { reject: false, stdin: 'ignore', timeout: 30_000 });
  if (started.exitCode !== 0) {
    throw new Error(`QEMU did not start (exit ${String(started.exitCode)}): ${started.stderr.trim() || started.stdout.trim()}\n  argv: ${launchArgv.join(' ')}`);
  }

  const counters = async (): Promise<number[]> => parseCounters(await readFile(serialLog, 'utf8').catch(() => ''));
  const lastCounter = async (): Promise<number> => (await counters()).at(-1) ?? 0;
  const pid = () => livePid(pidFile);

  return {
    qmpSocket,
    testQmpSocket,
    serialLog,
    pidFile,
    launchArgv,
    async waitReady(timeoutMs = 45_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = await readFile(serialLog, 'utf8').catch(() => '');
        if (text.slice(readyFrom).includes('VMSNAP-READY')) return;
        if ((await pid()) === undefined) {
          throw new Error(`the guest exited before VMSNAP-READY; end of ${serialLog}:\n${await logTail(serialLog)}`);
        }
        if (Date.now() > deadline) {
          throw new Error(`no VMSNAP-READY within ${timeoutMs} ms; end of ${serialLog}:\n${await logTail(serialLog)}`);
        }
        await sleep(100);
      }
    },
    lastCounter,
    counters,
    async waitForCounterAbove(n, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const last = await lastCounter();
        if (last > n) return last;
        if (Date.now() > deadline) {
          throw new Error(`the guest's counter did not pass ${n} within ${timeoutMs} ms (last ${last}); end of ${serialLog}:\n${await logTail(serialLog)}`);
        }
        await sleep(50);
      }
    },
    pid,
    async isRunning() {
      return (await pid()) !== undefined;
    },
    async stop() {
      let p = await pid();
      if (p === undefined) return;
      try {
        await qmpCommand(testQmpSocket, 'quit', undefined, { timeoutMs: 5_000, closeIsSuccess: true });
        if (await waitGone(pidFile, 10_000)) return;
      } catch {
        // the monitor is gone or stuck: kill below
      }
      p = await pid();
      if (p === undefined) return;
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // exited meanwhile
      }
      if (!(await waitGone(pidFile, 10_000))) throw new Error(`QEMU ${p} (${pidFile}) survived SIGKILL`);
    },
  };
}

// --- disks ----------------------------------------------------------------------------------

/**
 * The counter the guest last wrote at offset 0 of a disk image, read from
 * outside with qemu-io -U (works while the guest runs).
 */
export async function readDiskCounter(path: string, format: 'qcow2' | 'raw'): Promise<number> {
  const { stdout } = await execa('qemu-io', ['-U', '-r', '-f', format, '-c', 'read -v 0 512', path]);
  // Lines like "00000000:  43 4f 55 4e 54 45 52 20 ...  COUNTER.5.......": take the hex bytes.
  const bytes: number[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^[0-9a-f]{8}:\s+((?:[0-9a-f]{2}\s){1,16})/.exec(line);
    if (m?.[1] !== undefined) bytes.push(...m[1].trim().split(/\s+/).map((h) => Number.parseInt(h, 16)));
  }
  if (bytes.length === 0) throw new Error(`qemu-io printed no data for offset 0 of ${path}:\n${stdout}`);
  const text = Buffer.from(bytes).toString('latin1');
  const m = /^COUNTER (\d+)\n/.exec(text);
  if (m?.[1] === undefined) {
    const shown = JSON.stringify(text.replace(/\0+$/, '').slice(0, 40));
    throw new Error(`offset 0 of ${path} holds no "COUNTER n" line (found ${shown}${shown === '""' ? ': all zeros, the guest has not written yet' : ''})`);
  }
  return Number(m[1]);
}
