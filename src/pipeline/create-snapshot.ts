import { VmsnapError, atStep } from '../errors.js';
import type { ResolvedDomain } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import type { Journal } from '../catalog/catalog.js';
import type { ManifestDisk, SnapshotManifest } from '../domain/model.js';
import { chooseSnapshotName, validateName } from '../domain/names.js';
import { resolveSnapshotSpec, type ResolvedSnapshotPlan, type SnapshotOptions } from '../domain/resolve-spec.js';
import { catalogFor, diskRefs, type PipelineDeps } from './context.js';
import { faultPoint } from '../fault.js';
import { buildManifest, type SnapshotMeta } from './build-manifest.js';

export type { SnapshotMeta } from './build-manifest.js';

export interface CreateSnapshotOptions extends SnapshotOptions {
  name?: string;
  origin?: 'adhoc' | 'policy';
  policy?: string;
  description?: string;
  dryRun?: boolean;
  /** Shut the domain down once the snapshot is taken (running domains). */
  halt?: boolean;
  /** Policy runs: the schedule slot; a slot that already has its snapshot is not taken twice. */
  slot?: string;
  /** Freeze the guest's filesystems (guest agent) around the disk snapshot of a running domain. */
  quiesce?: boolean;
  /** Fail rather than go on unquiesced when the freeze does not work. */
  quiesceRequired?: boolean;
  /** Longest a freeze or thaw call may take (default 10 s). */
  quiesceTimeoutMs?: number;
  /** The queue job this snapshot is for: a job run again after a crash finds its snapshot instead of taking another. */
  jobId?: string;
}

export function metaOf(options: CreateSnapshotOptions): SnapshotMeta {
  return {
    origin: options.origin ?? 'adhoc',
    policy: options.origin === 'policy' ? (options.policy ?? null) : null,
    ...(options.slot !== undefined ? { slot: options.slot } : {}),
    ...(options.jobId !== undefined ? { jobId: options.jobId } : {}),
    ...(options.description !== undefined ? { description: options.description } : {}),
  };
}

export interface CreateSnapshotReport {
  domain: string;
  name: string;
  dryRun: boolean;
  plan: ResolvedSnapshotPlan;
  manifest?: SnapshotManifest;
}

/**
 * Take one snapshot. Everything it made is undone if any step fails, and
 * the snapshot exists (is listed) only once its manifest is committed.
 */
export async function createSnapshot(
  deps: PipelineDeps,
  domain: ResolvedDomain,
  options: CreateSnapshotOptions,
): Promise<CreateSnapshotReport> {
  if (options.name !== undefined) validateName(options.name, 'snapshot name');
  const catalog = catalogFor(domain);
  const log = deps.logger.child({ domain: domain.name });
  // Refuse impossible requests before anything is created on disk; re-checked under the lock.
  const driver = deps.driverFor(domain);
  resolveSnapshotSpec(await driver.getState(), diskRefs(domain), options, driver.storage?.rules);
  const domainDir = await catalog.ensureDomainDir(domain.name);
  const release = await acquireLocalLock(domainDir, 'snapshot create');
  try {
    const state = await driver.getState();
    const plan = resolveSnapshotSpec(state, diskRefs(domain), options, driver.storage?.rules);
    const listing = await catalog.list(domain.name);
    const taken = new Set([...listing.snapshots.map((s) => s.name), ...listing.partial.map((p) => p.name)]);
    const startedAt = deps.now();
    const name = options.name ?? chooseSnapshotName(startedAt, taken);
    if (options.name !== undefined && taken.has(name)) {
      throw new VmsnapError('conflict', `domain ${domain.name} already has a snapshot named "${name}"; choose another --name`);
    }
    if (options.dryRun === true) return { domain: domain.name, name, dryRun: true, plan };
    // A hypervisor that keeps its own disk chains (libvirt) takes shut-off domains' snapshots too.
    if (state !== 'shutoff' || driver.storage !== undefined) {
      if (state === 'shutoff' && options.halt === true) {
        throw new VmsnapError('invalid-spec', `domain ${domain.name} is already shut off; drop --halt`);
      }
      return { domain: domain.name, name, dryRun: false, plan, manifest: await createOnline(deps, domain, plan, name, startedAt, options) };
    }
    if (options.halt === true) {
      throw new VmsnapError('invalid-spec', `domain ${domain.name} is already shut off; drop --halt`);
    }

    const dir = await catalog.begin(domain.name, name);
    const journal: Journal = (await catalog.readJournal(dir)) as Journal;
    journal.steps.push({ step: 'meta', at: deps.now().toISOString(), data: { ...metaOf(options) } });
    await catalog.writeJournal(dir, journal);
    const made: ManifestDisk[] = [];
    const durationsMs: Record<string, number> = {};
    const slog = log.child({ snapshot: name });
    try {
      for (const disk of plan.disks) {
        if (disk.mode === 'no') {
          made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'no' });
          continue;
        }
        const step = `disk:${disk.target}`;
        deps.onProgress?.({ step, detail: `${disk.mode} snapshot of ${disk.path}` });
        const t0 = performance.now();
        journal.steps.push({ step, at: deps.now().toISOString(), data: { phase: 'start', mode: disk.mode, ...(disk.file !== undefined ? { file: disk.file } : {}) } });
        await catalog.writeJournal(dir, journal);
        faultPoint(step, { phase: 'start' });
        let entry: ManifestDisk;
        try {
          entry = await deps.backends[disk.backend].create(disk, {
            domain: domain.name,
            name,
            dir,
            mode: disk.mode,
            ...(disk.file !== undefined ? { file: disk.file } : {}),
          });
        } catch (err) {
          throw atStep(step, err);
        }
        faultPoint(step, { phase: 'created' });
        made.push(entry);
        if (entry.file !== undefined) journal.files.push(entry.file);
        journal.steps.push({ step, at: deps.now().toISOString(), data: { phase: 'done', entry } });
        await catalog.writeJournal(dir, journal);
        durationsMs[step] = Math.round(performance.now() - t0);
        slog.info({ step, ms: durationsMs[step] }, 'disk snapshot taken');
      }

      const manifest = buildManifest(
        { name, domain: domain.name, createdAt: startedAt.toISOString(), finishedAt: deps.now().toISOString(), parent: await catalog.getCurrent(domain.name) },
        metaOf(options),
        { kind: plan.kind, state, consistency: 'offline', method: 'offline', memory: { mode: 'no' }, disks: made, durationsMs, downtimeMs: null },
      );
      await catalog.commit(manifest);
      await catalog.setCurrent(domain.name, name);
      slog.info({ kind: manifest.kind }, 'snapshot committed');
      return { domain: domain.name, name, dryRun: false, plan, manifest };
    } catch (err) {
      slog.warn({ err }, 'snapshot failed; undoing');
      if (await undoDisks(deps, domain, made)) {
        await catalog.removeSnapshotDir(domain.name, name, journal.files).catch((cleanupErr: unknown) => {
          slog.error({ err: cleanupErr, dir }, 'could not remove the partial snapshot folder');
        });
      } else {
        slog.error({ dir }, 'partial snapshot kept with its journal for recovery');
      }
      throw err;
    }
  } finally {
    await release();
  }
}

/** Undo in reverse order; false when something could not be undone (the journal is then kept). */
async function undoDisks(deps: PipelineDeps, domain: ResolvedDomain, made: readonly ManifestDisk[]): Promise<boolean> {
  let ok = true;
  for (const entry of [...made].reverse()) {
    if (entry.mode === 'no') continue;
    const disk = diskRefs(domain).find((d) => d.target === entry.target);
    if (disk === undefined) continue;
    try {
      await deps.backends[disk.backend].undoCreate(disk, entry);
    } catch (err) {
      ok = false;
      deps.logger.error({ err, domain: domain.name, disk: entry.target }, 'undo of a disk snapshot failed');
    }
  }
  return ok;
}

/**
 * A running or paused domain: the hypervisor driver runs the guest side
 * (pause, memory, disks, resume) and this side keeps the journal and commits
 * the manifest, or removes the folder when the driver undid its work.
 */
async function createOnline(
  deps: PipelineDeps,
  domain: ResolvedDomain,
  plan: ResolvedSnapshotPlan,
  name: string,
  startedAt: Date,
  options: CreateSnapshotOptions,
): Promise<SnapshotManifest> {
  const catalog = catalogFor(domain);
  const slog = deps.logger.child({ domain: domain.name, snapshot: name });
  const dir = await catalog.begin(domain.name, name);
  const journal: Journal = (await catalog.readJournal(dir)) as Journal;
  journal.steps.push({ step: 'meta', at: deps.now().toISOString(), data: { ...metaOf(options) } });
  await catalog.writeJournal(dir, journal);
  try {
    const result = await deps.driverFor(domain).createOnline({
      name,
      dir,
      plan,
      halt: options.halt === true,
      ...(options.quiesce === true ? { quiesce: { required: options.quiesceRequired === true, timeoutMs: options.quiesceTimeoutMs ?? 10_000 } } : {}),
      backends: deps.backends,
      async journal(step, data) {
        deps.checkFence?.();
        journal.steps.push({ step, at: deps.now().toISOString(), ...(data !== undefined ? { data } : {}) });
        await catalog.writeJournal(dir, journal);
        faultPoint(step, data);
      },
      ...(deps.onProgress !== undefined ? { onProgress: deps.onProgress } : {}),
    });
    journal.files.push(...result.files);
    await catalog.writeJournal(dir, journal);
    faultPoint('commit', { phase: 'start' });
    deps.checkFence?.();
    const manifest = buildManifest(
      { name, domain: domain.name, createdAt: startedAt.toISOString(), finishedAt: deps.now().toISOString(), parent: await catalog.getCurrent(domain.name) },
      metaOf(options),
      {
        kind: result.kind,
        state: plan.state,
        consistency: result.consistency,
        method: result.method,
        memory: result.memory,
        disks: result.disks,
        durationsMs: result.durationsMs,
        downtimeMs: result.downtimeMs,
        notes: [...(result.note !== undefined ? [result.note] : []), ...(result.notes ?? [])],
        ...(options.quiesce === true ? { quiesced: result.quiesced === true } : {}),
      },
    );
    await catalog.commit(manifest);
    await catalog.setCurrent(domain.name, name);
    slog.info({ kind: manifest.kind, method: manifest.method, downtimeMs: manifest.downtimeMs }, 'snapshot committed');
    return manifest;
  } catch (err) {
    // The driver undid its part (resumed the guest, removed its files); the folder goes too.
    await catalog.removeSnapshotDir(domain.name, name, journal.files).catch((cleanupErr: unknown) => {
      slog.error({ err: cleanupErr, dir }, 'could not remove the partial snapshot folder; it is reported as partial');
    });
    throw err;
  }
}
