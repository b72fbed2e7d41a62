import { stat } from 'node:fs/promises';
import { VmsnapError, atStep } from '../errors.js';
import type { ResolvedDomain } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import { removeFileIfPresent, writeFileAtomic } from '../catalog/fs-safe.js';
import { join } from 'node:path';
import type { DomainState, ManifestDisk, SnapshotManifest } from '../domain/model.js';
import { validateName } from '../domain/names.js';
import { catalogFor, findDisk, type PipelineDeps } from './context.js';

/** In the domain's catalog folder while a revert runs; recovery runs the revert again. */
export const REVERT_FILE = '.revert.json';

export interface RevertSnapshotOptions {
  force?: boolean;
  /** Leave the domain running (or paused) after the revert, whatever the snapshot recorded. */
  running?: boolean;
  paused?: boolean;
}

export interface RevertSnapshotReport {
  domain: string;
  name: string;
  disks: { target: string; reverted: boolean }[];
  warnings: string[];
  /** How the revert was done: memory restored, or disks only. */
  memoryRestored: boolean;
  /** The domain's state afterwards. */
  state: 'running' | 'paused' | 'shutoff';
}

/** Reasons a revert would lose or mix state that no snapshot holds; --force accepts them. */
async function revertHazards(manifest: SnapshotManifest, restoresMemory: boolean, state: DomainState): Promise<string[]> {
  const hazards: string[] = [];
  if (manifest.memory.mode !== 'no' && !restoresMemory) {
    hazards.push(
      `"${manifest.name}" is a full-system snapshot but vmsnap cannot start this domain (no launch command): only its disks are restored, so the guest boots from crash-consistent disks`,
    );
  }
  if (!restoresMemory && state !== 'shutoff') {
    hazards.push(`domain is ${state}: its current memory is discarded and it restarts from the snapshot's disks, like after a power cut`);
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

/**
 * Bring a domain back to a snapshot; later snapshots stay valid. A full-system
 * snapshot restores memory too when the driver can (the domain runs, or can be
 * started); otherwise the disks are restored and the domain boots from them.
 */
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
    return await revertLocked(deps, domain, name, options);
  } finally {
    await release();
  }
}

/** The revert itself, for callers that hold the domain lock (recovery). */
export async function revertLocked(
  deps: PipelineDeps,
  domain: ResolvedDomain,
  name: string,
  options: RevertSnapshotOptions = {},
): Promise<RevertSnapshotReport> {
  const catalog = catalogFor(domain);
  const manifest = await catalog.read(domain.name, name);
  const disks = manifest.disks.filter((d) => d.mode !== 'no').map((d) => ({ entry: d, disk: findDisk(domain, d.target) }));
  const driver = deps.driverFor(domain);
  const state = await driver.getState();
  const restoresMemory = manifest.memory.mode !== 'no' && (state !== 'shutoff' || driver.canStart());
  const hazards = await revertHazards(manifest, restoresMemory, state);
  if (hazards.length > 0 && options.force !== true) {
    throw new VmsnapError('conflict', `refusing to revert without --force: ${hazards.join('; ')}`);
  }
  if (options.running === true && options.paused === true) {
    throw new VmsnapError('usage', '--running and --paused contradict each other; give one');
  }
  // Everything is checked before the domain is touched: a revert that cannot finish must not stop it.
  if (driver.storage !== undefined) {
    try {
      await driver.storage.checkRevert(manifest);
    } catch (err) {
      throw atStep('revert:check', err);
    }
  } else if (!(restoresMemory && manifest.memory.mode === 'internal')) {
    // (QEMU's snapshot-load checks its own internal snapshots.)
    for (const { entry, disk } of disks) {
      try {
        await deps.backends[disk.backend].checkRevert(disk, entry);
      } catch (err) {
        throw atStep(`revert:${entry.target}`, err);
      }
    }
  }
  const wanted = options.paused === true ? 'paused' : options.running === true ? 'running' : manifest.state;
  const log = deps.logger.child({ domain: domain.name, snapshot: name });
  const report: RevertSnapshotReport = { domain: domain.name, name, disks: [], warnings: hazards, memoryRestored: restoresMemory, state: 'shutoff' };

  // Journal: an interrupted revert (the domain stopped, disks half reverted) is run again by recovery.
  const marker = join(catalog.domainDir(domain.name), REVERT_FILE);
  await writeFileAtomic(marker, `${JSON.stringify({ snapshot: name, running: options.running === true, paused: options.paused === true, startedAt: deps.now().toISOString(), pid: process.pid })}\n`);

  if (restoresMemory) {
    const targetState = wanted === 'paused' ? 'paused' : 'running';
    try {
      await driver.revertFullSystem(manifest, {
        targetState,
        backends: deps.backends,
        ...(deps.onProgress !== undefined ? { onProgress: deps.onProgress } : {}),
      });
    } catch (err) {
      throw atStep('revert', err);
    }
    for (const d of manifest.disks) report.disks.push({ target: d.target, reverted: d.mode !== 'no' });
    report.state = targetState;
    log.info({ state: targetState }, 'reverted with memory');
  } else if (driver.storage !== undefined) {
    deps.onProgress?.({ step: 'revert:disks' });
    try {
      await driver.storage.revert(manifest, wanted);
    } catch (err) {
      throw atStep('revert:disks', err);
    }
    for (const d of manifest.disks) report.disks.push({ target: d.target, reverted: d.mode !== 'no' });
    report.state = wanted;
    log.info({ state: wanted }, 'reverted disks');
  } else {
    if (state !== 'shutoff') {
      deps.onProgress?.({ step: 'stop' });
      await driver.destroy();
    }
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
    if (wanted !== 'shutoff') {
      if (driver.canStart()) {
        deps.onProgress?.({ step: 'start' });
        await driver.start({ paused: wanted === 'paused' });
        report.state = wanted;
      } else {
        report.warnings.push(`the snapshot was taken ${wanted} but vmsnap cannot start this domain (no launch command); it stays shut off`);
      }
    }
  }
  await catalog.setCurrent(domain.name, name);
  await removeFileIfPresent(marker);
  return report;
}

function describe(entry: ManifestDisk): string {
  return entry.mode === 'internal' ? `tag ${entry.tag ?? '?'}` : (entry.file ?? '?');
}
