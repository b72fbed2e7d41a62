import { open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { connect } from 'node:net';
import { execa, type Options } from 'execa';
import pino, { type Logger } from 'pino';
import { VmsnapError } from '../../errors.js';
import type { DomainState, ManifestDisk, SnapshotManifest } from '../../domain/model.js';
import type { QemuDomain } from '../../config/load-config.js';
import { FILE_MODE, fsyncPath } from '../../catalog/fs-safe.js';
import { QemuImg } from '../../storage/qcow2/qemu-img.js';
import type { HypervisorDriver, OnlineSnapshotRequest, RevertRequest } from '../driver.js';
import { QemuMonitor, shellQuotePath } from './qemu-monitor.js';
import { createQemuSnapshot, findDevice, matchDevice } from './qemu-snapshot.js';
import { assertMemoryImage, revertDisks } from '../driver-steps.js';
import { recoverQemuCreate } from './qemu-recover.js';
import { faultPoint } from '../../fault.js';

export interface QemuDriverOptions {
  qemuImg?: QemuImg;
  logger?: Logger;
  /** Connecting to the QMP socket and its greeting. */
  qmpTimeoutMs?: number;
  /** One QMP command's answer (jobs and migrations are polled, so this stays short). */
  qmpCommandTimeoutMs?: number;
  /** Longest a memory save or load may take. */
  saveTimeoutMs?: number;
  /** Longest a live migration may try to converge before vmsnap pauses the guest instead. */
  convergeTimeoutMs?: number;
  /** Longest to wait for a started or stopped QEMU. */
  startTimeoutMs?: number;
  /** false: --live uses live migrate-to-file even where QEMU offers background-snapshot (benchmarks, tests). */
  backgroundSnapshot?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * QEMU/KVM domains through their QMP socket. A socket that does not answer
 * means the domain is shut off; qemu-img's image lock is the second guard,
 * so a QEMU whose QMP socket is misconfigured is never taken for shut off.
 */
export function createQemuDriver(domain: QemuDomain, options: QemuDriverOptions = {}): HypervisorDriver {
  const img = options.qemuImg ?? new QemuImg();
  const logger = options.logger ?? pino({ level: 'silent' });
  const timeoutMs = options.qmpTimeoutMs ?? 5_000;
  const saveTimeoutMs = options.saveTimeoutMs ?? 30 * 60_000;
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const monitor = (): QemuMonitor => new QemuMonitor(domain.qmpSocket, { connectTimeoutMs: timeoutMs, commandTimeoutMs: options.qmpCommandTimeoutMs ?? Math.max(timeoutMs, 30_000) });

  async function withMonitor<T>(fn: (mon: QemuMonitor) => Promise<T>): Promise<T> {
    const mon = monitor();
    try {
      return await fn(mon);
    } finally {
      mon.close();
    }
  }

  async function getState(): Promise<DomainState> {
    const answered = await probeSocket(domain.qmpSocket, timeoutMs);
    if (!answered) {
      await assertImagesUnlocked(domain, img);
      return 'shutoff';
    }
    const s = await withMonitor((mon) => mon.status());
    return s.running ? 'running' : 'paused';
  }

  /** QEMU quits; resolves once its QMP socket is gone and its images are unlocked. */
  async function destroy(): Promise<void> {
    if (await probeSocket(domain.qmpSocket, timeoutMs)) {
      await withMonitor((mon) => mon.execute('quit')).catch(() => undefined);
    }
    // While QEMU exits, its socket may still accept, close mid-greeting or
    // mid-command, and its images stay locked for a moment: all mean "not yet".
    const deadline = Date.now() + startTimeoutMs;
    let last: unknown;
    for (;;) {
      try {
        if ((await getState()) === 'shutoff') return;
      } catch (err) {
        last = err;
      }
      if (Date.now() > deadline) {
        throw new VmsnapError('timeout', `domain ${domain.name}: QEMU did not exit within ${startTimeoutMs} ms of quit${last instanceof Error ? ` (${last.message})` : ''}`, { cause: last });
      }
      await sleep(100);
    }
  }

  /** Run the domain's launch command (plus extra arguments) and wait for its QMP socket. */
  async function launch(extra: string[]): Promise<void> {
    const argv = domain.launch;
    if (argv === undefined || argv.length === 0) {
      throw new VmsnapError(
        'config',
        `domain ${domain.name} has no "launch" command in the config, so vmsnap cannot start it; add launch: [qemu-system-x86_64, ...] (the argv that starts this domain)`,
      );
    }
    const [file, ...args] = argv as [string, ...string[]];
    const logFile = join(domain.snapshotRoot, domain.name, 'qemu-launch.log');
    // A detached child with its output in a file: QEMU outlives this process.
    const log = await open(logFile, 'a', FILE_MODE);
    let exitCode: number | undefined;
    try {
      // execa passes file descriptors straight to the child (a `{file}` target would keep this
      // process alive to pipe QEMU's output); its types only list 0-2, hence the cast.
      const stdio = ['ignore', log.fd, log.fd] as unknown as Options['stdio'];
      const child = execa(file, [...args, ...extra], { detached: true, cleanup: false, reject: false, stdio });
      child.unref();
      void child.then((r) => {
        exitCode = r.exitCode ?? -1;
      });
    } finally {
      await log.close();
    }
    const deadline = Date.now() + startTimeoutMs;
    while (!(await probeSocket(domain.qmpSocket, timeoutMs).catch(() => false))) {
      if (exitCode !== undefined && exitCode !== 0) {
        throw new VmsnapError('command-failed', `domain ${domain.name}: the launch command exited with ${exitCode}; see ${logFile}`);
      }
      if (Date.now() > deadline) {
        throw new VmsnapError('timeout', `domain ${domain.name}: QMP socket ${domain.qmpSocket} did not appear within ${startTimeoutMs} ms of launch; see ${logFile}`);
      }
      await sleep(50);
    }
  }

  async function start(opts: { paused: boolean }): Promise<void> {
    await launch(opts.paused ? ['-S'] : []);
  }

  async function setRunState(mon: QemuMonitor, target: 'running' | 'paused'): Promise<void> {
    const s = await mon.status();
    if (target === 'running' && !s.running) await mon.execute('cont');
    if (target === 'paused' && s.running) await mon.execute('stop');
  }

  async function revertFullSystem(manifest: SnapshotManifest, req: RevertRequest): Promise<void> {
    const memory = manifest.memory;
    if (memory.mode === 'internal') {
      if ((await getState()) === 'shutoff') await start({ paused: true });
      await withMonitor(async (mon) => {
        const devices = await mon.blockDevices();
        const nodeOf = (target: string): string => findDevice(domain, devices, { target, path: domain.disks.find((x) => x.target === target)?.path ?? '' }).nodeName;
        const internal = manifest.disks.filter((d) => d.mode === 'internal');
        req.onProgress?.({ step: 'load' });
        await mon.runJob(
          'snapshot-load',
          { 'job-id': `vmsnap-load-${Date.now()}`, tag: internal[0]?.tag ?? manifest.name, vmstate: nodeOf(memory.disk), devices: internal.map((d) => nodeOf(d.target)) },
          saveTimeoutMs,
        );
        await setRunState(mon, req.targetState);
      });
      return;
    }
    const image = await assertMemoryImage(manifest);
    if (domain.launch === undefined) {
      throw new VmsnapError('config', `domain ${domain.name} has no "launch" command in the config; reverting to a snapshot with a memory file restarts QEMU with -incoming and needs it`);
    }
    req.onProgress?.({ step: 'stop' });
    await destroy();
    faultPoint('revert:stopped', undefined);
    await revertDisks(domain, manifest, req.backends, req.onProgress);
    req.onProgress?.({ step: 'load' });
    await launch(['-S', '-incoming', 'defer']);
    await withMonitor(async (mon) => {
      await mon.execute('migrate-incoming', { uri: `exec:cat ${shellQuotePath(image.file)}` });
      const deadline = Date.now() + saveTimeoutMs;
      for (;;) {
        const s = await mon.status();
        const m = await mon.migration();
        if (m.status === 'failed') throw new VmsnapError('qmp', `loading ${image.file} failed${m.errorDesc !== undefined ? `: ${m.errorDesc}` : ''}`);
        if (s.status !== 'inmigrate' && m.status === 'completed') break;
        if (Date.now() > deadline) throw new VmsnapError('timeout', `loading ${image.file} did not finish within ${saveTimeoutMs} ms`);
        await sleep(100);
      }
      await setRunState(mon, req.targetState);
    });
  }

  /**
   * Delete a snapshot while QEMU runs the domain. Internal tags go with the
   * snapshot-delete job. An external frozen image in QEMU's active chain is
   * streamed into the active layer (block-stream), after which QEMU no longer
   * holds it or anything above it; the storage backend then rebases the
   * images that had it as backing, offline, and removes the file.
   *
   * Why not block-commit: QEMU reopens an image read-write *by its file
   * name*, and vmsnap renames files under QEMU to keep the configured path
   * active, so committing into a frozen image could open the wrong file.
   * Streaming writes only into the active layer, which QEMU already holds
   * read-write. Returns the entries it handled completely (internal tags).
   */
  async function deleteOnline(manifest: SnapshotManifest): Promise<ManifestDisk[]> {
    const handled: ManifestDisk[] = [];
    await withMonitor(async (mon) => {
      const devices = await mon.blockDevices();
      const deviceFor = (entry: ManifestDisk) => matchDevice(devices, entry);
      const internal = manifest.disks.filter((d) => d.mode === 'internal');
      for (const e of internal) {
        const dev = deviceFor(e);
        if (dev === undefined || e.tag === undefined) continue;
        const holder = (await img.chain(e.path, { shared: true })).find((i) => i.snapshots?.some((t) => t.name === e.tag));
        if (holder === undefined) {
          handled.push(e); // already gone
          continue;
        }
        if (holder.filename !== e.path) {
          throw new VmsnapError(
            'conflict',
            `disk ${e.target}: internal snapshot "${e.tag}" lives in ${holder.filename}, which a later external snapshot froze and QEMU holds read-only; delete it while the domain is shut off`,
          );
        }
        await mon.runJob('snapshot-delete', { 'job-id': `vmsnap-del-${Date.now()}`, tag: e.tag, devices: [dev.nodeName] }, saveTimeoutMs);
        handled.push(e);
      }
      for (const entry of manifest.disks.filter((d) => d.mode === 'external' && d.method === 'qcow2-external')) {
        const dev = deviceFor(entry);
        if (dev === undefined || entry.file === undefined) continue;
        const chain = await img.chain(entry.path, { shared: true });
        const files = chain.map((i) => i.filename);
        const k = files.indexOf(entry.file);
        if (k <= 0) continue; // not in the active chain: the backend rebases its children offline
        const tags = (chain[k]?.snapshots ?? []).map((t) => t.name);
        if (tags.length > 0) {
          throw new VmsnapError('conflict', `disk ${entry.target}: ${entry.file} also holds internal snapshots (${tags.join(', ')}); delete those first`);
        }
        const graph = await mon.chain(dev.nodeName);
        const nodes = graph.map((g) => g.node);
        if (nodes.length !== files.length) {
          throw new VmsnapError('conflict', `disk ${entry.target}: QEMU's chain has ${nodes.length} images and ${entry.path}'s has ${files.length}; refusing to change it`);
        }
        const below = files[k + 1];
        await mon.runBlockJob(
          'block-stream',
          { 'job-id': `vmsnap-stream-${Date.now()}`, device: dev.nodeName, ...(below !== undefined ? { 'base-node': nodes[k + 1], 'backing-file': below } : {}) },
          saveTimeoutMs,
        );
        // QEMU no longer uses the images between the active layer and `below`;
        // the storage backend now rebases the images that still name this one
        // as their backing (they are files QEMU does not hold) and removes it.
        await mon.releaseNodes(graph.slice(1, k + 1));
      }
    });
    return handled;
  }

  return {
    name: 'qemu',
    getState,
    canStart: () => domain.launch !== undefined && domain.launch.length > 0,
    start,
    destroy,
    revertFullSystem,
    deleteOnline,
    async recoverCreate(journal, backends) {
      const running = await probeSocket(domain.qmpSocket, timeoutMs).catch(() => false);
      if (!running) return recoverQemuCreate(domain, undefined, journal, backends, img, logger);
      return withMonitor((mon) => recoverQemuCreate(domain, mon, journal, backends, img, logger));
    },
    async createOnline(req: OnlineSnapshotRequest) {
      const mon = monitor();
      try {
        const result = await createQemuSnapshot(domain, mon, req, {
          img,
          logger,
          saveTimeoutMs,
          convergeTimeoutMs: options.convergeTimeoutMs ?? 60_000,
          backgroundSnapshot: options.backgroundSnapshot ?? true,
        });
        if (req.halt) {
          mon.close();
          const t0 = performance.now();
          await destroy();
          result.durationsMs['halt'] = Math.round(performance.now() - t0);
        }
        return result;
      } finally {
        mon.close();
      }
    },
  };
}

/** Resolves true when something accepts a connection on the socket; false for ENOENT/ECONNREFUSED. */
function probeSocket(path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new VmsnapError('timeout', `QMP socket ${path} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(true);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      if (isNoListener(err)) resolve(false);
      else reject(new VmsnapError('unavailable', `QMP socket ${path}: ${err.message}`, { cause: err }));
    });
  });
}

/** ENOENT or ECONNREFUSED on the QMP socket: no QEMU is listening there. */
function isNoListener(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e !== undefined && e !== null; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

async function assertImagesUnlocked(domain: QemuDomain, img: QemuImg): Promise<void> {
  for (const disk of domain.disks) {
    try {
      await img.info(disk.path);
    } catch (err) {
      if (err instanceof VmsnapError && err.code === 'unavailable') {
        throw new VmsnapError(
          'unavailable',
          `domain ${domain.name}: QMP socket ${domain.qmpSocket} does not answer but ${disk.path} is locked by a running QEMU; fix qmpSocket in the config or stop the domain`,
          { cause: err, retryable: true },
        );
      }
      if ((err as { code?: string }).code === 'command-failed') {
        throw new VmsnapError('not-found', `domain ${domain.name}: disk ${disk.target} (${disk.path}) cannot be read: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
  }
}
