import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, open, rename, stat, unlink } from 'node:fs/promises';
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
}

interface PreparedOverlay {
  disk: ResolvedDiskPlan;
  device: BlockDevice;
  frozen: string;
  overlayNode: string;
}

type Method = 'pause-save' | 'internal' | 'background' | 'live-migrate' | 'disk-only';

const MEMORY_FILE = 'memory.bin';

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
  const timed = async <T>(step: string, fn: () => Promise<T>): Promise<T> => {
    req.onProgress?.({ step });
    await req.journal(step, { phase: 'start' });
    const t0 = performance.now();
    try {
      const out = await fn();
      durationsMs[step] = Math.round(performance.now() - t0);
      await req.journal(step, { phase: 'done' });
      return out;
    } catch (err) {
      throw atStep(step, err);
    }
  };

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
  let stoppedByUs = false;
  let transactionDone = false;
  let memoryDone = false;

  const stop = async (): Promise<void> => {
    const s = await mon.status();
    if (s.running) {
      await mon.execute('stop');
      stoppedByUs = true;
    }
  };

  const copyDisks = async (): Promise<void> => {
    for (const disk of copiedDisks) {
      const entry = await timed(`disk:${disk.target}`, () =>
        req.backends[disk.backend].create(disk, { domain: domain.name, name: req.name, dir: req.dir, mode: 'external', ...(disk.file !== undefined ? { file: disk.file } : {}) }),
      );
      made.push(entry);
      if (entry.file !== undefined) files.push(entry.file);
    }
  };

  const diskTransaction = async (): Promise<void> => {
    if (qemuDisks.length === 0) return;
    const actions = qemuDisks.map((disk) => {
      const dev = deviceOf.get(disk.target) as BlockDevice;
      if (disk.mode === 'internal') {
        return { type: 'blockdev-snapshot-internal-sync', data: { device: dev.nodeName, name: req.name } };
      }
      const p = prepared.find((x) => x.disk.target === disk.target) as PreparedOverlay;
      return { type: 'blockdev-snapshot', data: { node: dev.nodeName, overlay: p.overlayNode } };
    });
    await timed('disks', () => mon.execute('transaction', { actions }));
    transactionDone = true;
  };

  const saveMemory = async (live: boolean): Promise<void> => {
    await mon.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
    await timed('memory', async () => {
      await precreate(memFile);
      files.push(memFile);
      await mon.execute('migrate', { uri: `exec:dd of=${shellQuotePath(memFile)} bs=1M status=none` });
      await mon.waitMigration({
        what: 'memory save',
        timeoutMs: live ? opts.convergeTimeoutMs : opts.saveTimeoutMs,
        onProgress: (m) => reportMigration(req, m),
      });
    });
    memoryDone = true;
  };

  try {
    // Everything that can be prepared while the guest runs is prepared first.
    await timed('prepare', async () => {
      if (method === 'internal') await assertNoTag(mon, req.name);
      for (const disk of qemuDisks.filter((d) => d.mode === 'external')) {
        prepared.push(await prepareOverlay(disk, deviceOf.get(disk.target) as BlockDevice, req, mon, opts.img));
      }
    });

    switch (method) {
      case 'internal': {
        const nodes = qemuDisks.map((d) => (deviceOf.get(d.target) as BlockDevice).nodeName);
        await timed('save', () =>
          mon.runJob('snapshot-save', { 'job-id': jobId('save'), tag: req.name, vmstate: nodes[0], devices: nodes }, opts.saveTimeoutMs),
        );
        transactionDone = true;
        memoryDone = true;
        break;
      }
      case 'pause-save':
        await stop();
        await saveMemory(false);
        await copyDisks();
        await diskTransaction();
        break;
      case 'disk-only':
        if (copiedDisks.length > 0) await stop(); // a copy needs the disk still
        await copyDisks();
        await diskTransaction();
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
    throw err;
  }

  // The snapshot's data is all there; what follows only describes it.
  const events = mon.allEvents().slice(eventsFrom);
  const stopAt = events.find((e) => e.event === 'STOP');
  const resumeAt = stopAt === undefined ? undefined : events.find((e) => e.event === 'RESUME' && e.timestampMs >= stopAt.timestampMs);
  const downtimeMs = stopAt !== undefined && resumeAt !== undefined ? Math.round(resumeAt.timestampMs - stopAt.timestampMs) : null;

  for (const disk of plan.disks) {
    if (disk.mode === 'no') made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'no' });
  }
  for (const disk of qemuDisks) {
    if (disk.mode === 'internal') {
      made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'internal', method: 'qcow2-internal', tag: req.name });
    } else {
      const p = prepared.find((x) => x.disk.target === disk.target) as PreparedOverlay;
      const chain = await opts.img.info(p.frozen, { shared: true });
      made.push(await describeExternalFile(disk, 'qcow2-external', p.frozen, { backing: chain['full-backing-filename'] ?? null }));
    }
  }
  const order = new Map(plan.disks.map((d, i) => [d.target, i]));
  made.sort((a, b) => (order.get(a.target) ?? 0) - (order.get(b.target) ?? 0));

  let memory: ManifestMemory = { mode: 'no' };
  if (method === 'internal') memory = { mode: 'internal', disk: qemuDisks[0]?.target ?? '' };
  else if (memoryDone) memory = await describeMemory(memFile);
  log.info({ method, downtimeMs, durationsMs }, 'online snapshot taken');
  return {
    method,
    kind: plan.kind,
    consistency: plan.kind === 'disk-only' ? 'crash' : 'full-system',
    memory,
    disks: made,
    durationsMs,
    downtimeMs,
    files,
  };

  /** Live memory: background-snapshot when QEMU takes the capability, else migrate-to-file as libvirt does. */
  async function liveSave(): Promise<Method> {
    try {
      await mon.setCapabilities({ 'background-snapshot': true });
    } catch (err) {
      log.info({ err }, 'background-snapshot refused; falling back to live migrate-to-file');
      return liveMigrate();
    }
    try {
      await stop();
      await copyDisks();
      await diskTransaction();
      const since = (await mon.connection()).events.length;
      await mon.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
      await precreate(memFile);
      files.push(memFile);
      const t0 = performance.now();
      req.onProgress?.({ step: 'memory' });
      await req.journal('memory', { phase: 'start', method: 'background' });
      await mon.execute('migrate', { uri: `exec:dd of=${shellQuotePath(memFile)} bs=1M status=none` });
      // QEMU 7.2 resumes the guest itself once the device state is saved; newer
      // QEMU restores the previous run state and leaves the resume to us.
      const resumed = await (await mon.connection()).waitForEvent((e) => e.event === 'RESUME', 3_000, since).catch(() => undefined);
      if (resumed === undefined && wasRunning && !req.halt) {
        await waitForMigrationActive(mon);
        await mon.ensureRunning();
      }
      stoppedByUs = false;
      try {
        await mon.waitMigration({ what: 'background memory snapshot', timeoutMs: opts.saveTimeoutMs, onProgress: (m) => reportMigration(req, m) });
      } catch (err) {
        throw atStep('memory', err);
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
    try {
      await saveMemory(true);
    } catch (err) {
      // A guest that dirties memory faster than it can be written never converges.
      log.warn({ err }, 'live migrate-to-file did not complete; falling back to pause-save');
      await mon.cancelMigration().catch(() => undefined);
      await removeFileIfPresent(memFile);
      await stop();
      await saveMemory(false);
      await copyDisks();
      await diskTransaction();
      return 'pause-save';
    }
    // At completion QEMU stopped the guest (state postmigrate): disks now, then resume.
    stoppedByUs = true;
    await copyDisks();
    await diskTransaction();
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
    if (transactionDone && method !== 'internal') {
      // The disks moved on; only the memory part failed. Keep nothing half-made:
      // internal tags are removed, external overlays committed back below.
      for (const disk of qemuDisks.filter((d) => d.mode === 'internal')) {
        const dev = deviceOf.get(disk.target) as BlockDevice;
        await tryStep(`remove tag on ${disk.target}`, () =>
          mon.execute('blockdev-snapshot-delete-internal-sync', { device: dev.nodeName, name: req.name }),
        );
      }
      for (const p of prepared) {
        await tryStep(`merge overlay of ${p.disk.target}`, () => commitOverlayBack(mon, p));
      }
    } else if (method === 'internal') {
      await tryStep('remove internal snapshot', async () => {
        const nodes = qemuDisks.map((d) => (deviceOf.get(d.target) as BlockDevice).nodeName);
        await mon.runJob('snapshot-delete', { 'job-id': jobId('undo'), tag: req.name, devices: nodes }, 120_000);
      });
    } else {
      for (const p of prepared.reverse()) {
        await tryStep(`drop overlay of ${p.disk.target}`, () => dropPreparedOverlay(mon, p));
      }
    }
    for (const entry of made) {
      const disk = copiedDisks.find((d) => d.target === entry.target);
      if (disk !== undefined) await tryStep(`undo copy of ${disk.target}`, () => req.backends[disk.backend].undoCreate(disk, entry));
    }
    if (stoppedByUs && wasRunning) {
      await tryStep('resume', () => mon.ensureRunning());
    } else if (wasRunning) {
      // Not stopped by us as far as we know; make sure (a save job or a migration may have paused it).
      await tryStep('resume', () => mon.ensureRunning());
    }
    await tryStep('remove memory file', () => removeFileIfPresent(memFile));
    log.info({ step }, 'undo finished');
  }
}

function findDevice(domain: QemuDomain, devices: BlockDevice[], disk: ResolvedDiskPlan): BlockDevice {
  const dev = devices.find((d) => d.id === disk.target) ?? devices.find((d) => d.filename === disk.path);
  if (dev === undefined) {
    const seen = devices.map((d) => `${d.id || '?'}=${d.filename}`).join(', ') || 'none';
    throw new VmsnapError(
      'conflict',
      `domain ${domain.name}: QEMU has no block device "${disk.target}" and no device with ${disk.path} open (it has: ${seen}); name the device with id=${disk.target} (-device ...,id=${disk.target}) or fix the disk path`,
    );
  }
  return dev;
}

async function assertNoTag(mon: QemuMonitor, tag: string): Promise<void> {
  const snaps = await mon.execute<{ name: string }[]>('query-snapshots').catch(() => []);
  if (snaps.some((s) => s.name === tag)) {
    throw new VmsnapError('conflict', `QEMU already has an internal snapshot tagged "${tag}"; choose another name`);
  }
}

/** Frozen name + fresh overlay at the configured path, attached to QEMU (not yet in use). */
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
  const overlay = tempBeside(disk.path, 'overlay');
  await removeFileIfPresent(overlay);
  const mode = (await stat(disk.path)).mode & 0o7777;
  await link(disk.path, frozen);
  await fsyncPath(dirname(frozen));
  await req.journal(`freeze:${disk.target}`, { frozen, path: disk.path });
  const overlayNode = `vs-${randomBytes(6).toString('hex')}`;
  try {
    await img.createOverlayUnsafe(overlay, frozen, 'qcow2', device.virtualSize);
    const fh = await open(overlay, 'r');
    try {
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    // From here the path holds an empty overlay on the frozen image: the same data.
    await rename(overlay, disk.path);
    await fsyncPath(dirname(disk.path));
    await mon.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': overlayNode,
      file: { driver: 'file', filename: disk.path },
      backing: null,
    });
  } catch (err) {
    await removeFileIfPresent(overlay);
    if ((await stat(disk.path)).ino !== (await stat(frozen)).ino) await rename(frozen, disk.path);
    else await unlink(frozen);
    throw err;
  }
  return { disk, device, frozen, overlayNode };
}

/** Undo of a prepared overlay that QEMU never used: the frozen image gets its old name back. */
async function dropPreparedOverlay(mon: QemuMonitor, p: PreparedOverlay): Promise<void> {
  await mon.execute('blockdev-del', { 'node-name': p.overlayNode }).catch(() => undefined);
  await rename(p.frozen, p.disk.path);
  await fsyncPath(dirname(p.disk.path));
}

/** Undo of an overlay QEMU already writes to: commit it into the frozen image, then give that its name back. */
async function commitOverlayBack(mon: QemuMonitor, p: PreparedOverlay): Promise<void> {
  const top = (await mon.blockDevices()).find((d) => d.nodeName === p.overlayNode);
  if (top === undefined) return;
  const [, base] = await mon.chainNodes(p.overlayNode);
  await mon.runBlockJob('block-commit', { 'job-id': jobId('undo'), device: p.overlayNode, 'base-node': base }, 10 * 60_000);
  await rename(p.frozen, p.disk.path);
  await fsyncPath(dirname(p.disk.path));
}

async function precreate(file: string): Promise<void> {
  const fh = await open(file, 'wx', FILE_MODE);
  await fh.close();
}

async function describeMemory(file: string): Promise<ManifestMemory> {
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
