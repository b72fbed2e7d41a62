import { stat } from 'node:fs/promises';
import { VmsnapError, atStep } from '../errors.js';
import type { BackendName, DiskRef, ManifestMemory, SnapshotManifest } from '../domain/model.js';
import type { StorageBackend } from '../storage/backend.js';
import type { OnlineSnapshotRequest, ProgressEvent } from './driver.js';

/**
 * Pieces every hypervisor driver's online operations share, so the drivers
 * differ only in how they talk to their hypervisor.
 */

/**
 * A step of an online snapshot: progress, journal start and done, its
 * duration, and a failure that names it.
 */
export function stepRunner(req: Pick<OnlineSnapshotRequest, 'journal' | 'onProgress'>, durationsMs: Record<string, number>) {
  return async <T>(step: string, fn: () => Promise<T>): Promise<T> => {
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
}

/** The snapshot's memory image, still the size it was committed with; checked before a revert stops anything. */
export async function assertMemoryImage(manifest: SnapshotManifest): Promise<Extract<ManifestMemory, { mode: 'external' }>> {
  const memory = manifest.memory;
  if (memory.mode !== 'external') throw new VmsnapError('internal', `snapshot ${manifest.name} has no memory file to restore`);
  const st = await stat(memory.file).catch(() => undefined);
  if (st === undefined || st.size !== memory.bytes) {
    throw new VmsnapError('not-found', `snapshot ${manifest.name}: memory image ${memory.file} is ${st === undefined ? 'missing' : `${st.size} bytes, not ${memory.bytes}`}`);
  }
  return memory;
}

/** Every disk of the snapshot back through its storage backend, the domain stopped. */
export async function revertDisks(
  domain: { name: string; disks: readonly DiskRef[] },
  manifest: SnapshotManifest,
  backends: Record<BackendName, StorageBackend>,
  onProgress?: (e: ProgressEvent) => void,
): Promise<void> {
  for (const entry of manifest.disks) {
    if (entry.mode === 'no') continue;
    const disk = domain.disks.find((d) => d.target === entry.target);
    if (disk === undefined) throw new VmsnapError('conflict', `domain ${domain.name} no longer has disk ${entry.target}`);
    onProgress?.({ step: `revert:${entry.target}` });
    await backends[disk.backend].revert(disk, entry);
  }
}
