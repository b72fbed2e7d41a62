import { atStep } from '../errors.js';
import type { ResolvedDomain } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import { pathExists } from '../catalog/fs-safe.js';
import type { Catalog } from '../catalog/catalog.js';
import { validateName } from '../domain/names.js';
import type { SnapshotManifest } from '../domain/model.js';
import { catalogFor, findDisk, type PipelineDeps } from './context.js';
import { faultPoint } from '../fault.js';

export interface DeleteSnapshotReport {
  domain: string;
  name: string;
  /** Snapshots whose parent moved up to the deleted one's parent. */
  reparented: string[];
}

/**
 * Delete one snapshot without losing data any other snapshot or the active
 * disk needs. The manifest is set aside first (the snapshot is no longer
 * listed) and removed last; an interrupted delete is finished by running it again.
 */
export async function deleteSnapshot(deps: PipelineDeps, domain: ResolvedDomain, name: string): Promise<DeleteSnapshotReport> {
  validateName(name, 'snapshot name');
  const catalog = catalogFor(domain);
  // A snapshot that is not there fails before anything (even the domain's folder) is created.
  if (!(await pathExists(catalog.snapshotDir(domain.name, name)))) await catalog.read(domain.name, name);
  const release = await acquireLocalLock(await catalog.ensureDomainDir(domain.name), 'snapshot delete');
  try {
    return await deleteLocked(deps, catalog, domain, name);
  } finally {
    await release();
  }
}

/** The delete itself, for callers that already hold the domain lock (prune). */
export async function deleteLocked(
  deps: PipelineDeps,
  catalog: Catalog,
  domain: ResolvedDomain,
  name: string,
): Promise<DeleteSnapshotReport> {
  const { manifest, marked } = await catalog.readForDelete(domain.name, name);
  const disks = manifest.disks.filter((d) => d.mode !== 'no').map((d) => ({ entry: d, disk: findDisk(domain, d.target) }));
  const others = (await catalog.list(domain.name)).snapshots.filter((s) => s.name !== name);
  const driver = deps.driverFor(domain);
  // A refusal (a conflict) comes before the snapshot is set aside, so it stays listed.
  if (!marked && driver.storage !== undefined) await driver.storage.checkDelete(manifest, others);
  if (!marked) await catalog.markDeleting(domain.name, name);
  faultPoint('delete:marked', undefined);
  const log = deps.logger.child({ domain: domain.name, snapshot: name });

  // A running hypervisor holds the images open: it removes what it holds (internal tags,
  // frozen images in its active chain); the backends do the rest.
  let handled: readonly { target: string }[] = [];
  if (driver.storage !== undefined) {
    deps.onProgress?.({ step: 'delete:disks' });
    try {
      await driver.storage.delete(manifest, others);
    } catch (err) {
      throw atStep('delete:disks', err);
    }
    handled = manifest.disks;
  } else if ((await driver.getState()) !== 'shutoff') {
    deps.onProgress?.({ step: 'delete:online' });
    try {
      handled = await driver.deleteOnline(manifest);
    } catch (err) {
      throw atStep('delete:online', err);
    }
  }
  for (const { entry, disk } of disks) {
    if (handled.some((h) => h.target === entry.target)) continue;
    const step = `delete:${entry.target}`;
    deps.onProgress?.({ step });
    const siblings = others.flatMap((o) => o.disks.filter((d) => d.target === entry.target));
    try {
      await deps.backends[disk.backend].delete(disk, entry, siblings);
    } catch (err) {
      throw atStep(step, err);
    }
    log.info({ step }, 'disk snapshot deleted');
  }

  const files = manifest.disks.flatMap((d) => (d.file !== undefined ? [d.file] : []));
  if (manifest.memory.mode === 'external') files.push(manifest.memory.file);
  await catalog.removeSnapshotDir(domain.name, name, files);

  const reparented = await fixUpRelatives(catalog, manifest, others);
  if ((await catalog.getCurrent(domain.name)) === name) await catalog.setCurrent(domain.name, manifest.parent);
  return { domain: domain.name, name, reparented };
}

/**
 * Children move up to the deleted snapshot's parent, and external files that
 * a rebase rewrote get their recorded size and time refreshed, so the next
 * revert does not mistake our own rebase for someone else's change.
 */
async function fixUpRelatives(catalog: Catalog, deleted: SnapshotManifest, others: readonly SnapshotManifest[]): Promise<string[]> {
  const reparented: string[] = [];
  for (const other of others) {
    let changed = false;
    const next: SnapshotManifest = { ...other, disks: other.disks.map((d) => ({ ...d })) };
    if (other.parent === deleted.name) {
      next.parent = deleted.parent;
      reparented.push(other.name);
      changed = true;
    }
    for (const d of next.disks) {
      if (d.file === undefined || d.fileBytes === undefined) continue;
      const st = await catalog.fileStat(d.file).catch(() => undefined);
      if (st !== undefined && (st.bytes !== d.fileBytes || st.mtimeMs !== d.fileMtimeMs)) {
        const deletedFile = deleted.disks.find((x) => x.target === d.target)?.file;
        if (deletedFile !== undefined && d.backing === deletedFile) {
          d.backing = deleted.disks.find((x) => x.target === d.target)?.backing ?? null;
        }
        d.fileBytes = st.bytes;
        d.fileMtimeMs = st.mtimeMs;
        changed = true;
      }
    }
    if (changed) await catalog.update(next);
  }
  return reparented;
}
