import { stat } from 'node:fs/promises';
import { VmsnapError, atStep } from '../errors.js';
import type { ResolvedDomain } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import type { ManifestDisk, SnapshotManifest } from '../domain/model.js';
import { validateName } from '../domain/names.js';
import { catalogFor, findDisk, type PipelineDeps } from './context.js';

export interface RevertSnapshotOptions {
  force?: boolean;
}

export interface RevertSnapshotReport {
  domain: string;
  name: string;
  disks: { target: string; reverted: boolean }[];
  warnings: string[];
}

/** Reasons a revert would lose or mix state that no snapshot holds; --force accepts them. */
async function revertHazards(manifest: SnapshotManifest): Promise<string[]> {
  const hazards: string[] = [];
  if (manifest.memory.mode !== 'no') {
    hazards.push(
      `"${manifest.name}" is a full-system snapshot and this domain is shut off: only its disks are restored, so the guest boots from crash-consistent disks`,
    );
  }
  for (const disk of manifest.disks) {
    if (disk.file === undefined || disk.fileBytes === undefined) continue;
    const now = await stat(disk.file).catch(() => undefined);
    if (now === undefined) continue; // the backend reports a missing file itself
    if (now.size !== disk.fileBytes || Math.trunc(now.mtimeMs) !== disk.fileMtimeMs) {
      hazards.push(`disk ${disk.target}: ${disk.file} changed since the snapshot was taken`);
    }
  }
  const skipped = manifest.disks.filter((d) => d.mode === 'no').map((d) => d.target);
  if (skipped.length > 0) hazards.push(`disks ${skipped.join(', ')} are not in the snapshot and keep their current content`);
  return hazards;
}

/** Bring a shut-off domain's disks back to a snapshot; later snapshots stay valid. */
export async function revertSnapshot(
  deps: PipelineDeps,
  domain: ResolvedDomain,
  name: string,
  options: RevertSnapshotOptions = {},
): Promise<RevertSnapshotReport> {
  validateName(name, 'snapshot name');
  const catalog = catalogFor(domain);
  await catalog.read(domain.name, name); // a missing snapshot fails before anything is created
  const release = await acquireLocalLock(await catalog.ensureDomainDir(domain.name), 'snapshot revert');
  try {
    const manifest = await catalog.read(domain.name, name);
    const disks = manifest.disks.filter((d) => d.mode !== 'no').map((d) => ({ entry: d, disk: findDisk(domain, d.target) }));
    const state = await deps.driverFor(domain).getState();
    if (state !== 'shutoff') {
      throw new VmsnapError('unavailable', `domain ${domain.name} is ${state}; this version of vmsnap reverts shut-off domains only; shut it down first`, {
        retryable: false,
      });
    }
    const hazards = await revertHazards(manifest);
    if (hazards.length > 0 && options.force !== true) {
      throw new VmsnapError('conflict', `refusing to revert without --force: ${hazards.join('; ')}`);
    }
    const log = deps.logger.child({ domain: domain.name, snapshot: name });
    const report: RevertSnapshotReport = { domain: domain.name, name, disks: [], warnings: hazards };
    for (const { entry, disk } of disks) {
      const step = `revert:${entry.target}`;
      deps.onProgress?.({ step, detail: `${disk.path} ← ${describe(entry)}` });
      try {
        await deps.backends[disk.backend].revert(disk, entry);
      } catch (err) {
        throw atStep(step, err);
      }
      log.info({ step }, 'disk reverted');
      report.disks.push({ target: entry.target, reverted: true });
    }
    for (const d of manifest.disks.filter((x) => x.mode === 'no')) report.disks.push({ target: d.target, reverted: false });
    await catalog.setCurrent(domain.name, name);
    return report;
  } finally {
    await release();
  }
}

function describe(entry: ManifestDisk): string {
  return entry.mode === 'internal' ? `tag ${entry.tag ?? '?'}` : (entry.file ?? '?');
}
