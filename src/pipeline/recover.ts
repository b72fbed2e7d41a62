import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REVERT_FILE, revertLocked } from './revert-snapshot.js';
import type { ResolvedDomain } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import { DELETING_FILE, type Journal } from '../catalog/catalog.js';
import { pathExists } from '../catalog/fs-safe.js';
import type { ManifestDisk } from '../domain/model.js';
import { catalogFor, type PipelineDeps } from './context.js';
import { deleteLocked } from './delete-snapshot.js';
import { buildManifest, type SnapshotMeta } from './build-manifest.js';

export interface RecoveryReport {
  domain: string;
  /** The guest ran again because recovery resumed it. */
  resumed: boolean;
  /** Interrupted snapshots committed as what they really are. */
  completed: string[];
  /** Interrupted snapshots removed without a trace. */
  removed: string[];
  /** Interrupted deletes finished. */
  deleted: string[];
  /** Folders without a journal: never touched, reported for the operator. */
  unknown: string[];
  /** An interrupted revert that was run again to its end. */
  reverted?: string;
}

/**
 * Recover every interrupted operation of a domain: run by `vmsnap recover`
 * and by workers before they take new work. Only files a journal lists are
 * ever removed; a folder without a journal is reported and left alone.
 */
export async function recoverDomain(deps: PipelineDeps, domain: ResolvedDomain): Promise<RecoveryReport> {
  const catalog = catalogFor(domain);
  const report: RecoveryReport = { domain: domain.name, resumed: false, completed: [], removed: [], deleted: [], unknown: [] };
  if (!(await pathExists(catalog.domainDir(domain.name)))) return report;
  const release = await acquireLocalLock(catalog.domainDir(domain.name), 'recover');
  try {
    // An interrupted revert runs again: every step of it can be repeated.
    const revertMarker = join(catalog.domainDir(domain.name), REVERT_FILE);
    if (await pathExists(revertMarker)) {
      const r = JSON.parse(await readFile(revertMarker, 'utf8')) as { snapshot: string; running?: boolean; paused?: boolean };
      await revertLocked(deps, domain, r.snapshot, { force: true, ...(r.running === true ? { running: true } : {}), ...(r.paused === true ? { paused: true } : {}) });
      report.reverted = r.snapshot;
    }
    const { partial } = await catalog.list(domain.name);
    for (const p of partial) {
      if (await pathExists(join(p.dir, DELETING_FILE))) {
        await deleteLocked(deps, catalog, domain, p.name);
        report.deleted.push(p.name);
        continue;
      }
      const journal = (await catalog.readJournal(p.dir)) as Journal | undefined;
      if (journal === undefined || journal.op !== 'create') {
        report.unknown.push(p.name);
        continue;
      }
      if (journal.steps.some((s) => s.step === 'online')) {
        const meta = journal.steps.find((s) => s.step === 'meta')?.data as SnapshotMeta | undefined;
        const r = await deps.driverFor(domain).recoverCreate(journal, deps.backends);
        report.resumed ||= r.resumed;
        if (r.outcome.kind === 'completed') {
          const res = r.outcome.result;
          const manifest = buildManifest(
            { name: journal.snapshot, domain: domain.name, createdAt: journal.startedAt, finishedAt: deps.now().toISOString(), parent: await catalog.getCurrent(domain.name) },
            meta ?? { origin: 'adhoc', policy: null },
            {
              kind: res.kind,
              state: 'running',
              consistency: res.consistency,
              method: res.method,
              memory: res.memory,
              disks: res.disks,
              durationsMs: res.durationsMs,
              downtimeMs: null,
              notes: res.note !== undefined ? [res.note] : [],
            },
          );
          await catalog.commit(manifest);
          await catalog.setCurrent(domain.name, manifest.name);
          report.completed.push(journal.snapshot);
        } else {
          await catalog.removeSnapshotDir(domain.name, journal.snapshot, [...journal.files, ...r.outcome.files]);
          report.removed.push(journal.snapshot);
        }
        continue;
      }
      // Offline create: undo each disk the journal says was taken, newest first.
      const taken = journal.steps.filter((s) => s.step.startsWith('disk:') && s.data?.['phase'] === 'done').map((s) => s.data?.['entry'] as ManifestDisk);
      // A disk whose step started but never finished: the backend looks where it would have put things.
      for (const s of journal.steps.filter((x) => x.step.startsWith('disk:') && x.data?.['phase'] === 'start')) {
        const target = s.step.slice(5);
        if (taken.some((e) => e.target === target)) continue;
        const disk = domain.disks.find((d) => d.target === target);
        const mode = s.data?.['mode'];
        if (disk === undefined || (mode !== 'internal' && mode !== 'external')) continue;
        const file = typeof s.data?.['file'] === 'string' ? (s.data['file'] as string) : undefined;
        await deps.backends[disk.backend].undoInterrupted(disk, { domain: domain.name, name: journal.snapshot, dir: p.dir, mode, ...(file !== undefined ? { file } : {}) });
      }
      for (const entry of taken.reverse()) {
        const disk = domain.disks.find((d) => d.target === entry.target);
        if (disk !== undefined) await deps.backends[disk.backend].undoCreate(disk, entry);
      }
      await catalog.removeSnapshotDir(domain.name, journal.snapshot, [...journal.files, ...taken.flatMap((e) => (e.file ? [e.file] : []))]);
      report.removed.push(journal.snapshot);
    }
    return report;
  } finally {
    await release();
  }
}
