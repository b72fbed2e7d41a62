import { rename, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import type { Journal } from '../../catalog/catalog.js';
import { fsyncPath, pathExists, removeFileIfPresent } from '../../catalog/fs-safe.js';
import type { QemuDomain } from '../../config/load-config.js';
import type { BackendName, DiskFormat, DiskMode, ManifestDisk, ManifestMemory } from '../../domain/model.js';
import { describeExternalFile, type StorageBackend } from '../../storage/backend.js';
import type { QemuImg } from '../../storage/qcow2/qemu-img.js';
import type { OnlineSnapshotResult } from '../driver.js';
import type { QemuMonitor } from './qemu-monitor.js';
import { describeMemory, findDevice } from './qemu-snapshot.js';
import { GuestAgent } from './guest-agent.js';

/**
 * Finish or undo an online snapshot whose process died, from its journal.
 * The guest first: a migration still writing the memory image is cancelled
 * and a guest vmsnap paused runs again. Then the snapshot: once the guest
 * writes to a new overlay, the disks moved on and the snapshot is completed
 * as what it really is (full-system only when the memory image is whole,
 * crash-consistent disk-only otherwise); before that, everything the run
 * made is removed.
 */
export interface RecoveredCreate {
  resumed: boolean;
  outcome: { kind: 'removed'; files: string[] } | { kind: 'completed'; result: OnlineSnapshotResult };
}

interface OnlineFacts {
  wasRunning: boolean;
  method: string;
  memory: string;
  memoryFile: string;
  disks: { target: string; path: string; format: DiskFormat; backend: BackendName; mode: DiskMode }[];
}

interface Freeze {
  target: string;
  frozen: string;
  path: string;
  overlay: string;
  overlayNode: string;
}

export async function recoverQemuCreate(
  domain: QemuDomain,
  mon: QemuMonitor | undefined,
  journal: Journal,
  backends: Record<BackendName, StorageBackend>,
  img: QemuImg,
  logger: Logger,
): Promise<RecoveredCreate> {
  const log = logger.child({ domain: domain.name, snapshot: journal.snapshot, recovery: true });
  const steps = journal.steps;
  const facts = steps.find((s) => s.step === 'online')?.data as OnlineFacts | undefined;
  if (facts === undefined) throw new Error('not an online snapshot journal');
  const done = (name: string) => steps.some((s) => s.step === name && s.data?.['phase'] === 'done');
  const freezes = steps.filter((s) => s.step.startsWith('freeze:')).map((s) => ({ target: s.step.slice(7), ...(s.data as Omit<Freeze, 'target'>) }));
  const copies = steps.filter((s) => s.step.startsWith('copied:')).map((s) => (s.data as { entry: ManifestDisk }).entry);
  const tag = journal.snapshot;
  const internalTargets = facts.disks.filter((d) => d.mode === 'internal' && d.backend === 'qcow2');

  // 1. The guest.
  let resumed = false;
  if (mon !== undefined) {
    await mon.cancelMigration().catch(() => undefined);
    await mon.setCapabilities({ 'background-snapshot': false }).catch(() => undefined);
    await waitForJobs(mon);
    const s = await mon.status();
    const paused = steps.some((x) => x.step === 'pause' || x.step === 'save');
    if (facts.wasRunning && paused && !s.running) {
      await mon.execute('cont');
      resumed = true;
      log.warn('resumed a guest that an interrupted snapshot had paused');
    }
  }

  // A freeze vmsnap started and never thawed: thaw it (a frozen guest hangs on its next write).
  if (steps.some((x) => x.step === 'freeze') && !steps.some((x) => x.step === 'thawed') && domain.guestAgentSocket !== undefined) {
    try {
      const agent = await GuestAgent.connect(domain.guestAgentSocket, 5_000);
      try {
        await agent.execute('guest-fsfreeze-thaw', undefined, 5_000);
      } finally {
        agent.close();
      }
      log.warn('thawed guest filesystems an interrupted snapshot had frozen');
    } catch (err) {
      log.error({ err }, 'could not thaw the guest filesystems an interrupted snapshot froze; run guest-fsfreeze-thaw through the agent');
    }
  }

  // 2. Did the disks move on to the new overlays?
  const installed = async (f: Freeze): Promise<boolean> => {
    if (!(await pathExists(f.frozen))) return false;
    const [a, b] = await Promise.all([stat(f.frozen), stat(f.path)]);
    return a.ino !== b.ino; // the path is no longer the frozen image: the overlay took it
  };
  const inUse = async (f: Freeze): Promise<boolean> => {
    if (await installed(f)) return true;
    if (!(await pathExists(f.overlay))) return false;
    if (mon !== undefined) return (await mon.blockDevices()).some((d) => d.nodeName === f.overlayNode);
    // QEMU is gone: an overlay that holds data is where the guest wrote after the transaction.
    return img.hasOwnData(f.overlay, { shared: true });
  };
  const moved: Freeze[] = [];
  for (const f of freezes) if (await inUse(f)) moved.push(f);
  // The run's internal tags are on every internal disk (read once; recovery changes no tag before using this).
  let tagged = internalTargets.length > 0;
  for (const d of internalTargets) {
    const chain = await img.chain(d.path, { shared: true }).catch(() => []);
    if (!chain.some((i) => i.snapshots?.some((t) => t.name === tag))) {
      tagged = false;
      break;
    }
  }
  const internalDone = facts.method === 'internal' && tagged;

  if (moved.length > 0 || internalDone) {
    for (const f of moved) {
      if (await pathExists(f.overlay)) {
        await rename(f.overlay, f.path);
        await fsyncPath(dirname(f.path));
      }
    }
    const disks: ManifestDisk[] = [];
    for (const d of facts.disks) {
      const f = moved.find((x) => x.target === d.target);
      const copy = copies.find((c) => c.target === d.target);
      if (f !== undefined) {
        const info = await img.info(f.frozen, { shared: true });
        disks.push(await describeExternalFile(d, 'qcow2-external', f.frozen, { backing: info['full-backing-filename'] ?? null }));
      } else if (d.mode === 'internal' && tagged) {
        disks.push({ target: d.target, path: d.path, format: d.format, mode: 'internal', method: 'qcow2-internal', tag });
      } else if (copy !== undefined) {
        disks.push(copy);
      } else {
        disks.push({ target: d.target, path: d.path, format: d.format, mode: 'no' });
      }
    }
    let memory: ManifestMemory = { mode: 'no' };
    if (facts.method === 'internal') memory = { mode: 'internal', disk: internalTargets[0]?.target ?? '' };
    else if (done('memory') && (await pathExists(facts.memoryFile))) memory = await describeMemory(facts.memoryFile);
    else await removeFileIfPresent(facts.memoryFile);
    const kind = memory.mode === 'no' ? 'disk-only' : 'full';
    log.warn({ kind }, 'completed an interrupted snapshot whose disks had moved on');
    return {
      resumed,
      outcome: {
        kind: 'completed',
        result: {
          method: facts.method,
          kind,
          consistency: kind === 'full' ? 'full-system' : 'crash',
          memory,
          disks,
          durationsMs: {},
          downtimeMs: null,
          files: [],
          note: `completed by recovery after the ${facts.method} run was interrupted${kind === 'disk-only' && facts.memory !== 'no' ? '; its memory image was incomplete, so this is a crash-consistent disk-only snapshot' : ''}`,
        },
      },
    };
  }

  // 3. Nothing the guest depends on: remove every trace.
  for (const f of freezes) {
    if (mon !== undefined) {
      await mon.execute('blockdev-del', { 'node-name': f.overlayNode }).catch(() => undefined);
      await mon.execute('blockdev-del', { 'node-name': `${f.overlayNode}-f` }).catch(() => undefined);
    }
    await removeFileIfPresent(f.overlay);
    if (await pathExists(f.frozen)) {
      const [a, b] = await Promise.all([stat(f.frozen), stat(f.path)]);
      if (a.ino === b.ino) await unlink(f.frozen); // only a second name of the active image
    }
  }
  for (const d of internalTargets) {
    const chain = await img.chain(d.path, { shared: true }).catch(() => []);
    if (!chain.some((i) => i.snapshots?.some((t) => t.name === tag))) continue;
    if (mon !== undefined) {
      const dev = findDevice(domain, await mon.blockDevices(), d);
      await mon.execute('blockdev-snapshot-delete-internal-sync', { device: dev.nodeName, name: tag });
    } else {
      await img.snapshotDelete(d.path, tag);
    }
  }
  for (const entry of copies) {
    const disk = domain.disks.find((x) => x.target === entry.target);
    if (disk !== undefined) await backends[disk.backend].undoCreate(disk, entry);
  }
  await removeFileIfPresent(facts.memoryFile);
  log.warn('removed an interrupted snapshot');
  return { resumed, outcome: { kind: 'removed', files: [facts.memoryFile, ...freezes.map((f) => f.frozen), ...copies.flatMap((c) => (c.file ? [c.file] : []))] } };
}

/** A snapshot-save/-load job still running finishes (QEMU resumes the guest itself); then it is dismissed. */
async function waitForJobs(mon: QemuMonitor): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const jobs = await mon.execute<{ id: string; status: string }[]>('query-jobs').catch(() => []);
    const mine = jobs.filter((j) => j.id.startsWith('vmsnap-'));
    for (const j of mine.filter((x) => x.status === 'concluded')) await mon.execute('job-dismiss', { id: j.id }).catch(() => undefined);
    if (mine.every((j) => j.status === 'concluded')) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}
