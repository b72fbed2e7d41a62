import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, open, rename, stat, statfs, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { VmsnapError, atStep } from '../../errors.js';
import type { QemuDomain } from '../../config/load-config.js';
import type { ManifestDisk, ManifestMemory } from '../../domain/model.js';
import type { ResolvedDiskPlan } from '../../domain/resolve-spec.js';
import { FILE_MODE, fsyncPath, pathExists, removeFileIfPresent } from '../../catalog/fs-safe.js';
import { describeExternalFile } from '../../storage/backend.js';
import { frozenPath } from '../../storage/qcow2/qcow2-backend.js';
import type { QemuImg } from '../../storage/qcow2/qemu-img.js';
import { tempBeside } from '../../storage/replace-file.js';
import type { OnlineSnapshotRequest, OnlineSnapshotResult } from '../driver.js';
import { GuestAgent } from './guest-agent.js';
import { stepRunner } from '../driver-steps.js';
import { shellQuotePath, type BlockDevice, type MigrationInfo, type QemuMonitor } from './qemu-monitor.js';

/**
 * A snapshot of a running (or paused) QEMU domain over QMP:
 * pause → save memory → snapshot disks → resume, and the undo of whatever
 * was started when a step fails (a domain we paused is always resumed).
 *
 * qcow2 disks are snapshotted by QEMU in one `transaction`; disks of other
 * backends (raw copies) are captured by their backend while the vCPUs are
 * stopped, which QEMU flushed. External qcow2 snapshots keep the configured
 * path active (see the README's architecture section): the current image is
 * hard-linked to its frozen name and a fresh overlay renamed over the path,
 * *before* the pause, then attached with `blockdev-add` + `blockdev-snapshot`.
 */

export interface QemuSnapshotOptions {
  img: QemuImg;
  logger: Logger;
  /** Longest a memory save may take. */
  saveTimeoutMs: number;
  /** Longest a live migration may try to converge before falling back to pause-save. */
  convergeTimeoutMs: number;
  /** Use QEMU's background-snapshot for --live when it takes it (default); false forces live migrate-to-file. */
  backgroundSnapshot: boolean;
}

interface PreparedOverlay {
  disk: ResolvedDiskPlan;
  device: BlockDevice;
  frozen: string;
  /** Temporary unique name of the new overlay until it is installed at the disk's path. */
  overlay: string;
  overlayNode: string;
}

type Method = 'pause-save' | 'internal' | 'background' | 'live-migrate' | 'disk-only';

const MEMORY_FILE = 'memory.bin';

export const MEMORY_FILE_NAME = MEMORY_FILE;

export async function createQemuSnapshot(
  domain: QemuDomain,
  mon: QemuMonitor,
  req: OnlineSnapshotRequest,
  opts: QemuSnapshotOptions,
): Promise<OnlineSnapshotResult> {
  const log = opts.logger.child({ domain: domain.name, snapshot: req.name });
  const { plan } = req;
  const durationsMs: Record<string, number> = {};
  const files: string[] = [];
  const timed = stepRunner(req, durationsMs);

  const status = await mon.status();
  const wasRunning = status.running;
  const devices = await mon.blockDevices();
  const active = plan.disks.filter((d) => d.mode !== 'no');
  const qemuDisks = active.filter((d) => d.backend === 'qcow2');
  const copiedDisks = active.filter((d) => d.backend !== 'qcow2');
  const deviceOf = new Map(qemuDisks.map((d) => [d.target, findDevice(domain, devices, d)]));

  let method: Method;
  if (plan.memory === 'internal') method = 'internal';
  else if (plan.memory === 'no') method = 'disk-only';
  else if (plan.live && wasRunning) method = 'background';
  else method = 'pause-save';

  const memFile = join(req.dir, MEMORY_FILE);
  const eventsFrom = mon.allEvents().length;
  const prepared: PreparedOverlay[] = [];
  const made: ManifestDisk[] = [];
  const internalDisks = qemuDisks.filter((d) => d.mode === 'internal');
  const externalDisks = qemuDisks.filter((d) => d.mode === 'external');
  let stoppedByUs = false;
  let tagsTaken = false;
  let overlaysInUse = false;
  let memoryDone = false;
  let memoryLost: unknown;

  const stop = async (): Promise<void> => {
    const s = await mon.status();
    if (s.running) {
      // Journaled first: a crash right after `stop` must still know vmsnap paused the guest.
      await req.journal('pause', { wasRunning: true });
      await mon.execute('stop');
      stoppedByUs = true;
      await req.journal('paused');
    }
  };

  const copyDisks = async (): Promise<void> => {
    for (const disk of copiedDisks) {
      const entry = await timed(`disk:${disk.target}`, () =>
        req.backends[disk.backend].create(disk, { domain: domain.name, name: req.name, dir: req.dir, mode: 'external', ...(disk.file !== undefined ? { file: disk.file } : {}) }),
      );
      await req.journal(`copied:${disk.target}`, { entry });
      made.push(entry);
      if (entry.file !== undefined) files.push(entry.file);
    }
  };

  const tagAction = (disk: ResolvedDiskPlan) => ({
    type: 'blockdev-snapshot-internal-sync',
    data: { device: (deviceOf.get(disk.target) as BlockDevice).nodeName, name: req.name },
  });
  const overlayAction = (p: PreparedOverlay) => ({ type: 'blockdev-snapshot', data: { node: p.device.nodeName, overlay: p.overlayNode } });

  /** One QMP transaction: all of it or none of it. */
  const diskTransaction = async (which: 'internal' | 'external' | 'all'): Promise<void> => {
    const actions = [
      ...(which !== 'external' ? internalDisks.map(tagAction) : []),
      ...(which !== 'internal' ? prepared.map(overlayAction) : []),
    ];
    if (actions.length === 0) return;
    await timed(which === 'all' ? 'disks' : `disks:${which}`, () => mon.execute('transaction', { actions }));
    if (which !== 'external') tagsTaken = internalDisks.length > 0;
    if (which !== 'internal' && prepared.length > 0) {
      overlaysInUse = true;
      // QEMU reopened the old images read-only by their names during the
      // transaction; only now may the overlays take the configured paths.
      for (const p of prepared) await installOverlay(p);
    }
  };

  const saveMemory = async (live: boolean): Promise<void> => {
    await mon.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
    await timed('memory', async () => {
      await precreate(memFile);
      if (!files.includes(memFile)) files.push(memFile);
      await mon.execute('migrate', { uri: `exec:dd of=${shellQuotePath(memFile)} bs=1M status=none` });
      await req.journal('migrating');
      await mon.waitMigration({
        what: 'memory save',
        timeoutMs: live ? opts.convergeTimeoutMs : opts.saveTimeoutMs,
        onProgress: (m) => reportMigration(req, m),
      });
    });
    memoryDone = true;
  };

  /**
   * Paused: tags, memory, then overlays. Internal tags go before the memory
   * save because a finished migration leaves the block nodes inactive and
   * QEMU refuses internal snapshots on them; overlays go after it so that a
   * failed save is undone without touching data the guest wrote.
   */
  const pauseSave = async (): Promise<Method> => {
    await stop();
    await copyDisks();
    await diskTransaction('internal');
    await saveMemory(false);
    await diskTransaction('external');
    return 'pause-save';
  };

  // Quiesce: the guest agent freezes the guest's filesystems around the disk snapshot.
  let quiesced = false;
  let frozen = false;
  const notes: string[] = [];
  const agentPath = domain.guestAgentSocket;
  const freeze = async (): Promise<boolean> => {
    const q = req.quiesce;
    if (q === undefined) return false;
    if (agentPath === undefined) {
      throw new VmsnapError('invalid-spec', `domain ${domain.name} has no guestAgentSocket in the config, so it cannot be quiesced; add it or drop --quiesce`);
    }
    const t0 = performance.now();
    await req.journal('freeze', { phase: 'start', agent: agentPath });
    try {
      const agent = await GuestAgent.connect(agentPath, q.timeoutMs);
      try {
        frozen = true; // from here a thaw is owed, even if the freeze times out
        const count = await agent.execute<number>('guest-fsfreeze-freeze', undefined, q.timeoutMs);
        durationsMs['freeze'] = Math.round(performance.now() - t0);
        await req.journal('freeze', { phase: 'done', filesystems: count });
        return true;
      } finally {
        agent.close();
      }
    } catch (err) {
      if (frozen) await thaw();
      if (q.required) throw atStep('quiesce', err);
      notes.push(`not quiesced: ${(err as Error).message}`);
      log.warn({ err }, 'quiesce failed; going on unquiesced as the policy allows');
      return false;
    }
  };
  /** Thaw, with retries: a guest must never stay frozen because one call was lost. */
  const thaw = async (): Promise<void> => {
    const q = req.quiesce;
    if (q === undefined || agentPath === undefined) return;
    let last: unknown;
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        const agent = await GuestAgent.connect(agentPath, q.timeoutMs);
        try {
          await agent.execute('guest-fsfreeze-thaw', undefined, q.timeoutMs);
        } finally {
          agent.close();
        }
        frozen = false;
        await req.journal('thawed').catch(() => undefined);
        return;
      } catch (err) {
        last = err;
      }
    }
    frozen = false;
    const message = `THAW FAILED: the guest agent at ${agentPath} did not thaw after 3 tries (${(last as Error).message}); the guest's filesystems may still be frozen: run guest-fsfreeze-thaw through the agent`;
    notes.push(message);
    log.error({ err: last }, message);
  };

  // What recovery needs to finish or undo this run if the process dies.
  await req.journal('online', {
    wasRunning,
    method,
    memory: plan.memory,
    memoryFile: memFile,
    disks: plan.disks.map((d) => ({ target: d.target, path: d.path, format: d.format, backend: d.backend, mode: d.mode })),
  });
  try {
    // Everything that can be prepared while the guest runs is prepared first.
    await timed('prepare', async () => {
      if (plan.memory === 'external') await assertRoomForMemory(mon, req.dir, domain.name);
      if (method === 'internal' || internalDisks.length > 0) await assertNoTag(mon, req.name);
      for (const disk of externalDisks) {
        prepared.push(await prepareOverlay(disk, deviceOf.get(disk.target) as BlockDevice, req, mon, opts.img));
      }
    });

    if (req.quiesce !== undefined && wasRunning) quiesced = await freeze();

    switch (method) {
      case 'internal': {
        const nodes = internalDisks.map((d) => (deviceOf.get(d.target) as BlockDevice).nodeName);
        await timed('save', () =>
          mon.runJob('snapshot-save', { 'job-id': jobId('save'), tag: req.name, vmstate: nodes[0], devices: nodes }, opts.saveTimeoutMs),
        );
        tagsTaken = true;
        memoryDone = true;
        break;
      }
      case 'pause-save':
        method = await pauseSave();
        break;
      case 'disk-only':
        if (copiedDisks.length > 0) await stop(); // a copy needs the disk still
        await copyDisks();
        await diskTransaction('all');
        break;
      case 'background':
        method = await liveSave();
        break;
    }
    if (stoppedByUs && wasRunning && !req.halt) {
      await timed('resume', () => mon.ensureRunning());
      stoppedByUs = false;
    }
  } catch (err) {
    log.warn({ err, method }, 'online snapshot failed; undoing');
    await undo(err);
    if (frozen) await thaw();
    throw err;
  }
  if (frozen) await thaw();

  // The snapshot's data is all there; what follows only describes it.
  const events = mon.allEvents().slice(eventsFrom);
  const stopAt = events.find((e) => e.event === 'STOP');
  const resumeAt = stopAt === undefined ? undefined : events.find((e) => e.event === 'RESUME' && e.timestampMs >= stopAt.timestampMs);
  const downtimeMs = stopAt !== undefined && resumeAt !== undefined ? Math.round(resumeAt.timestampMs - stopAt.timestampMs) : null;

  for (const disk of plan.disks) {
    if (disk.mode === 'no') made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'no' });
  }
  for (const disk of internalDisks) {
    made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'internal', method: 'qcow2-internal', tag: req.name });
  }
  for (const p of prepared) {
    const info = await opts.img.info(p.frozen, { shared: true });
    made.push(await describeExternalFile(p.disk, 'qcow2-external', p.frozen, { backing: info['full-backing-filename'] ?? null }));
  }
  const order = new Map(plan.disks.map((d, i) => [d.target, i]));
  made.sort((a, b) => (order.get(a.target) ?? 0) - (order.get(b.target) ?? 0));

  let memory: ManifestMemory = { mode: 'no' };
  if (method === 'internal') memory = { mode: 'internal', disk: internalDisks[0]?.target ?? '' };
  else if (memoryDone) memory = await describeMemory(memFile);
  const kind = memory.mode === 'no' ? 'disk-only' : 'full';
  if (memoryLost !== undefined) await removeFileIfPresent(memFile);
  log.info({ method, downtimeMs, durationsMs }, 'online snapshot taken');
  return {
    method,
    kind,
    consistency: kind === 'full' ? 'full-system' : quiesced ? 'application' : 'crash',
    quiesced,
    ...(notes.length > 0 ? { notes } : {}),
    memory,
    disks: made,
    durationsMs,
    downtimeMs,
    files: files.filter((f) => f !== memFile || memoryDone),
    ...(memoryLost !== undefined
      ? { note: `the memory save failed after the disks were snapshotted (${(memoryLost as Error).message}); kept as a crash-consistent disk-only snapshot` }
      : {}),
  };

  /** Live memory: background-snapshot when QEMU takes the capability, else migrate-to-file as libvirt does. */
  async function liveSave(): Promise<Method> {
    if (!opts.backgroundSnapshot) return liveMigrate();
    try {
      await mon.setCapabilities({ 'background-snapshot': true });
    } catch (err) {
      log.info({ err }, 'background-snapshot refused; falling back to live migrate-to-file');
      return liveMigrate();
    }
    try {
      await stop();
      await copyDisks();
      await diskTransaction('all');
      const since = (await mon.connection()).events.length;
      await mon.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
      await precreate(memFile);
      files.push(memFile);
      const t0 = performance.now();
      req.onProgress?.({ step: 'memory' });
      await req.journal('memory', { phase: 'start', method: 'background' });
      try {
        await mon.execute('migrate', { uri: `exec:dd of=${shellQuotePath(memFile)} bs=1M status=none` });
        // QEMU 7.2 resumes the guest itself once the device state is saved; newer
        // QEMU restores the previous run state and leaves the resume to us.
        const resumed = await (await mon.connection()).waitForEvent((e) => e.event === 'RESUME', 3_000, since).catch(() => undefined);
        if (resumed === undefined && wasRunning && !req.halt) {
          await waitForMigrationActive(mon);
          await mon.ensureRunning();
        }
        stoppedByUs = false;
        await mon.waitMigration({ what: 'background memory snapshot', timeoutMs: opts.saveTimeoutMs, onProgress: (m) => reportMigration(req, m) });
      } catch (err) {
        if (!overlaysInUse) throw atStep('memory', err);
        // The guest already writes to the new overlays: the disks are a valid
        // snapshot of the moment of the pause, so they are kept as one.
        log.warn({ err }, 'background memory save failed after the disk snapshot; keeping a disk-only snapshot');
        memoryLost = err;
        await mon.cancelMigration().catch(() => undefined);
        await mon.ensureRunning().catch(() => undefined);
        return 'background';
      }
      durationsMs['memory'] = Math.round(performance.now() - t0);
      await req.journal('memory', { phase: 'done' });
      memoryDone = true;
      return 'background';
    } finally {
      await mon.setCapabilities({ 'background-snapshot': false }).catch(() => undefined);
    }
  }

  async function liveMigrate(): Promise<Method> {
    // After a live migration completes the block nodes are inactive and QEMU
    // 7.2 cannot take an internal snapshot until `cont`: pause-save instead.
    if (internalDisks.length > 0) return pauseSave();
    try {
      await saveMemory(true);
    } catch (err) {
      // A guest that dirties memory faster than it can be written never converges.
      log.warn({ err }, 'live migrate-to-file did not complete; falling back to pause-save');
      await mon.cancelMigration().catch(() => undefined);
      await removeFileIfPresent(memFile);
      memoryDone = false;
      return pauseSave();
    }
    // At completion QEMU stopped the guest (state postmigrate): disks now, then resume.
    stoppedByUs = true;
    await copyDisks();
    await diskTransaction('all');
    return 'live-migrate';
  }

  async function undo(cause: unknown): Promise<void> {
    const step = (cause as { step?: string }).step;
    const tryStep = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        log.error({ err, what }, 'undo step failed');
      }
    };
    await tryStep('cancel migration', () => mon.cancelMigration());
    await tryStep('disable background-snapshot', () => mon.setCapabilities({ 'background-snapshot': false }));
    if (tagsTaken) {
      for (const disk of internalDisks) {
        const dev = deviceOf.get(disk.target) as BlockDevice;
        await tryStep(`remove tag on ${disk.target}`, () => mon.execute('blockdev-snapshot-delete-internal-sync', { device: dev.nodeName, name: req.name }));
      }
    }
    if (!overlaysInUse) {
      for (const p of [...prepared].reverse()) await tryStep(`drop overlay of ${p.disk.target}`, () => dropPreparedOverlay(mon, p));
    }
    for (const entry of made) {
      const disk = copiedDisks.find((d) => d.target === entry.target);
      if (disk !== undefined) await tryStep(`undo copy of ${disk.target}`, () => req.backends[disk.backend].undoCreate(disk, entry));
    }
    // Whatever paused the guest (us, a save job, a finished migration), it runs again if it ran before.
    if (wasRunning) await tryStep('resume', () => mon.ensureRunning());
    await tryStep('remove memory file', () => removeFileIfPresent(memFile));
    log.info({ step }, 'undo finished');
  }
}

/** QEMU's device for a disk: by device id (the disk's target), else by the file QEMU has open. */
export function matchDevice(devices: readonly BlockDevice[], disk: Pick<ResolvedDiskPlan, 'target' | 'path'>): BlockDevice | undefined {
  return devices.find((d) => d.id === disk.target) ?? devices.find((d) => d.filename === disk.path || isInstalledOverlayOf(d.filename, disk.path));
}

export function findDevice(domain: QemuDomain, devices: BlockDevice[], disk: Pick<ResolvedDiskPlan, 'target' | 'path'>): BlockDevice {
  const dev = matchDevice(devices, disk);
  if (dev === undefined) {
    const seen = devices.map((d) => `${d.id || '?'}=${d.filename}`).join(', ') || 'none';
    throw new VmsnapError(
      'conflict',
      `domain ${domain.name}: QEMU has no block device "${disk.target}" and no device with ${disk.path} open (it has: ${seen}); name the device with id=${disk.target} (-device ...,id=${disk.target}) or fix the disk path`,
    );
  }
  return dev;
}

/** QEMU keeps the temporary name of an overlay vmsnap later renamed to the disk's path. */
function isInstalledOverlayOf(qemuFilename: string, diskPath: string): boolean {
  const prefix = tempBeside(diskPath, 'overlay-');
  return qemuFilename.startsWith(prefix) && /^[0-9a-f]{12}$/.test(qemuFilename.slice(prefix.length));
}

/**
 * A memory image is about the guest's RAM (less for zero pages, more for a
 * live save of a busy guest): refuse before filling the disk, not after.
 */
export async function assertRoomForMemory(mon: QemuMonitor, dir: string, domainName: string): Promise<void> {
  const { 'base-memory': ram } = await mon.execute<{ 'base-memory': number }>('query-memory-size-summary');
  const need = Math.ceil(ram * 1.1) + 64 * 1048576;
  const st = await statfs(dir);
  const free = st.bavail * st.bsize;
  if (free < need) {
    throw new VmsnapError(
      'unavailable',
      `snapshot folder ${dir} has ${Math.floor(free / 1048576)} MiB free and a full-system snapshot of ${domainName} needs about ${Math.ceil(need / 1048576)} MiB (its RAM plus a margin); free space, move snapshotRoot, or take --disk-only / --memory internal`,
      { retryable: false },
    );
  }
}

async function assertNoTag(mon: QemuMonitor, tag: string): Promise<void> {
  const snaps = await mon.execute<{ name: string }[]>('query-snapshots').catch(() => []);
  if (snaps.some((s) => s.name === tag)) {
    throw new VmsnapError('conflict', `QEMU already has an internal snapshot tagged "${tag}"; choose another name`);
  }
}

/**
 * Frozen name + fresh overlay, attached to QEMU but not yet in use. The
 * overlay keeps a temporary unique name until the transaction has run:
 * QEMU reopens the old image read-only *by its file name* while committing
 * the snapshot, so that name must still be the old image then.
 */
async function prepareOverlay(
  disk: ResolvedDiskPlan,
  device: BlockDevice,
  req: OnlineSnapshotRequest,
  mon: QemuMonitor,
  img: QemuImg,
): Promise<PreparedOverlay> {
  const frozen = await frozenPath(disk, { dir: req.dir, name: req.name, ...(disk.file !== undefined ? { file: disk.file } : {}) });
  if (await pathExists(frozen)) {
    throw new VmsnapError('conflict', `disk ${disk.target}: ${frozen} already exists; vmsnap never overwrites a file`);
  }
  const overlay = tempBeside(disk.path, `overlay-${randomBytes(6).toString('hex')}`);
  const mode = (await stat(disk.path)).mode & 0o7777;
  await link(disk.path, frozen);
  await fsyncPath(dirname(frozen));
  const overlayNode = `vs-${randomBytes(6).toString('hex')}`;
  await req.journal(`freeze:${disk.target}`, { frozen, path: disk.path, overlay, overlayNode });
  try {
    await img.createOverlayUnsafe(overlay, frozen, 'qcow2', device.virtualSize);
    const fh = await open(overlay, 'r');
    try {
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    // An explicit protocol node: QEMU never reopens it when the overlay is frozen later.
    await mon.execute('blockdev-add', { driver: 'file', 'node-name': `${overlayNode}-f`, filename: overlay });
    await mon.execute('blockdev-add', { driver: 'qcow2', 'node-name': overlayNode, file: `${overlayNode}-f`, backing: null });
  } catch (err) {
    await mon.execute('blockdev-del', { 'node-name': `${overlayNode}-f` }).catch(() => undefined);
    await removeFileIfPresent(overlay);
    await unlink(frozen);
    throw err;
  }
  return { disk, device, frozen, overlay, overlayNode };
}

/** After the transaction: the overlay QEMU now writes to takes the configured path. */
async function installOverlay(p: PreparedOverlay): Promise<void> {
  await rename(p.overlay, p.disk.path);
  await fsyncPath(dirname(p.disk.path));
}

/** Undo of a prepared overlay that QEMU never used: the frozen name is only a second link. */
async function dropPreparedOverlay(mon: QemuMonitor, p: PreparedOverlay): Promise<void> {
  await mon.execute('blockdev-del', { 'node-name': p.overlayNode }).catch(() => undefined);
  await mon.execute('blockdev-del', { 'node-name': `${p.overlayNode}-f` }).catch(() => undefined);
  await removeFileIfPresent(p.overlay);
  await unlink(p.frozen).catch(() => undefined);
}

async function precreate(file: string): Promise<void> {
  const fh = await open(file, 'wx', FILE_MODE);
  await fh.close();
}

export async function describeMemory(file: string): Promise<ManifestMemory> {
  await fsyncPath(file);
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
  const st = await stat(file);
  return { mode: 'external', file, bytes: st.size, sha256: hash.digest('hex') };
}

function reportMigration(req: OnlineSnapshotRequest, m: MigrationInfo): void {
  if (m.total <= 0) return;
  const fraction = Math.min(1, m.status === 'completed' ? 1 : m.transferred / m.total);
  req.onProgress?.({ step: 'memory', fraction, detail: `${Math.round(m.transferred / 1048576)}/${Math.round(m.total / 1048576)} MiB` });
}

async function waitForMigrationActive(mon: QemuMonitor): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const s = (await mon.migration()).status;
    if (s !== 'setup' && s !== 'none') return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

function jobId(what: string): string {
  return `vmsnap-${what}-${randomBytes(4).toString('hex')}`;
}
