import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { VmsnapError } from '../../errors.js';
import type { LibvirtDomain } from '../../config/load-config.js';
import { Catalog, type Journal } from '../../catalog/catalog.js';
import { DIR_MODE, FILE_MODE, isInside, pathExists, removeFileIfPresent, writeFileAtomic } from '../../catalog/fs-safe.js';
import type { DomainState, ManifestDisk, ManifestMemory, SnapshotManifest } from '../../domain/model.js';
import { faultPoint } from '../../fault.js';
import { QemuImg } from '../../storage/qcow2/qemu-img.js';
import type { DriverStorage, HypervisorDriver, OnlineSnapshotRequest, OnlineSnapshotResult, RevertRequest } from '../driver.js';
import { assertMemoryImage, stepRunner } from '../driver-steps.js';
import type { RecoveredCreate } from '../qemu/qemu-recover.js';
import { describeMemory } from '../qemu/qemu-snapshot.js';
import { diskSources, setDiskSource } from './domain-xml.js';
import { Virsh, downtimeOf, specPath } from './virsh.js';

export interface LibvirtDriverOptions {
  logger?: Logger;
  qemuImg?: QemuImg;
  /** The virsh binary (default: virsh on PATH). */
  virsh?: string;
  /** Longest a snapshot, revert or block job may take. */
  jobTimeoutMs?: number;
}

/** What the journal keeps of an online create, for recovery. */
interface CreateFacts {
  wasRunning: boolean;
  method: string;
  memoryFile?: string;
  /** External disks: the image libvirt froze and the overlay it puts on top. */
  overlays: { target: string; frozen: string; overlay: string }[];
}

const MEMORY_FILE = 'memory.save';

/**
 * libvirt domains through virsh. libvirt keeps the disk chains: an external
 * snapshot freezes the image the domain reads and puts a new overlay (in the
 * snapshot's folder) on top, and the domain's XML follows it. So this driver
 * owns the storage side too (DriverStorage): create, revert and delete of its
 * disks all go through libvirt, or, where libvirt 9.0 cannot (revert to and
 * offline delete of external snapshots), through qemu-img and the domain XML.
 *
 * vmsnap still touches only paths it was told about: a disk must read from its
 * configured path or from an image vmsnap made under the domain's catalog folder.
 */
export function createLibvirtDriver(domain: LibvirtDomain, options: LibvirtDriverOptions = {}): HypervisorDriver {
  const log = (options.logger ?? pino({ level: 'silent' })).child({ domain: domain.name, driver: 'libvirt' });
  const img = options.qemuImg ?? new QemuImg();
  const jobTimeoutMs = options.jobTimeoutMs ?? 30 * 60_000;
  const virsh = new Virsh(domain.uri, domain.libvirtName, { ...(options.virsh !== undefined ? { bin: options.virsh } : {}) });
  const dom = domain.libvirtName;
  const catalog = new Catalog(domain.snapshotRoot);
  const domainDir = catalog.domainDir(domain.name);
  /**
   * Images that belong to no snapshot: the overlays a revert starts the domain
   * on, and overlays of deleted snapshots that later images still build on.
   * Each is removed once nothing reads it or builds on it.
   */
  const activeDir = join(domainDir, '.active');

  const getState = (): Promise<DomainState> => virsh.state();

  /** The file each configured disk reads from, checked to be one vmsnap may touch. */
  async function sources(live: boolean): Promise<Map<string, string>> {
    const listed = await virsh.disks(!live);
    for (const disk of domain.disks) {
      const src = listed.get(disk.target);
      if (src === undefined || src === '') {
        throw new VmsnapError('conflict', `libvirt domain ${dom} has no file disk ${disk.target} (its disks: ${[...listed.keys()].join(', ') || 'none'}); fix the disk's target in the config`);
      }
      if (src !== disk.path && !isInside(domainDir, src)) {
        throw new VmsnapError(
          'conflict',
          `disk ${disk.target} of libvirt domain ${dom} reads from ${src}, which is neither its configured path ${disk.path} nor an image vmsnap made under ${domainDir}; fix the disk's path in the config`,
          { retryable: false },
        );
      }
    }
    return listed;
  }

  /** The files the domain's disks read from now: its persistent definition, and the running domain's if it runs. */
  async function readFromNow(): Promise<Set<string>> {
    const files = new Set<string>([...(await virsh.disks(true)).values()]);
    if ((await getState()) !== 'shutoff') for (const src of (await virsh.disks(false)).values()) files.add(src);
    files.delete('');
    return files;
  }

  /** Every image vmsnap knows of for this domain, with the backing file each one names. */
  async function imageGraph(manifests: readonly SnapshotManifest[]): Promise<Map<string, string | null>> {
    const files = new Set<string>(domain.disks.map((d) => d.path));
    for (const m of manifests) {
      for (const d of m.disks) {
        if (d.method !== 'libvirt-external') continue;
        if (d.file !== undefined) files.add(d.file);
        if (typeof d.backing === 'string') files.add(d.backing);
      }
    }
    for (const src of await readFromNow()) files.add(src);
    for (const f of await readdir(activeDir).catch(() => [] as string[])) files.add(join(activeDir, f));
    const graph = new Map<string, string | null>();
    for (const f of files) {
      if (!(await pathExists(f))) continue;
      const info = await img.info(f, { shared: true });
      graph.set(f, info['full-backing-filename'] ?? null);
    }
    return graph;
  }

  const childrenIn = (graph: Map<string, string | null>, file: string): string[] => [...graph].filter(([, b]) => b === file).map(([f]) => f);

  async function backingOf(file: string): Promise<{ path: string; format: string }> {
    const info = await img.info(file, { shared: true });
    const path = info['full-backing-filename'];
    if (path === undefined) throw new VmsnapError('conflict', `${file} has no backing image; it is not an overlay libvirt made`);
    return { path, format: info['backing-filename-format'] ?? 'qcow2' };
  }

  async function allSnapshots(): Promise<SnapshotManifest[]> {
    return (await catalog.list(domain.name)).snapshots;
  }

  /** A new, unique path under .active for disk `target` (the folder made if needed). */
  async function activePath(target: string, label?: string): Promise<string> {
    await mkdir(activeDir, { recursive: true, mode: DIR_MODE });
    return join(activeDir, `${[target, label, Date.now().toString(36), randomBytes(3).toString('hex')].filter((p) => p !== undefined).join('-')}.qcow2`);
  }

  /** A fresh overlay on `frozen` for the domain to run on after a revert (the frozen image stays the snapshot's). */
  async function newActive(target: string, frozen: string): Promise<string> {
    const info = await img.info(frozen, { shared: true });
    const file = await activePath(target);
    await img.createOverlay(file, frozen, info.format);
    await chmod(file, FILE_MODE);
    return file;
  }

  /** The persistent definition (and the domain from then on) reads each listed disk from its new file. */
  async function defineWith(newSources: ReadonlyMap<string, string>): Promise<void> {
    let xml = await virsh.run(['dumpxml', '--domain', dom, '--inactive', '--security-info']);
    for (const [target, file] of newSources) xml = setDiskSource(xml, target, file);
    const path = join(domainDir, '.define.xml');
    await writeFileAtomic(path, xml);
    try {
      await virsh.run(['define', '--file', path]);
    } finally {
      await removeFileIfPresent(path);
    }
  }

  /** Revert overlays no disk reads from and no image builds on any more. */
  async function collectActiveGarbage(manifests?: readonly SnapshotManifest[]): Promise<void> {
    const graph = await imageGraph(manifests ?? (await allSnapshots()));
    const inUse = await readFromNow();
    for (const f of await readdir(activeDir).catch(() => [] as string[])) {
      const file = join(activeDir, f);
      if (inUse.has(file) || childrenIn(graph, file).length > 0) continue;
      await removeFileIfPresent(file);
      log.info({ file }, 'removed an overlay no disk reads from any more');
    }
  }

  // ---- create ----------------------------------------------------------

  async function createOnline(req: OnlineSnapshotRequest): Promise<OnlineSnapshotResult> {
    const { plan } = req;
    const state = await getState();
    const listed = await sources(state !== 'shutoff');
    const taken = plan.disks.filter((d) => d.mode !== 'no');
    const modes = new Set(taken.map((d) => d.mode));
    const firstTarget = taken[0]?.target ?? 'vda';
    if (modes.size > 1) {
      throw new VmsnapError('invalid-spec', `domain ${domain.name}: libvirt takes a snapshot's disks all internal or all external; use --disk ${firstTarget}=external for each disk, or internal for each`);
    }
    const external = modes.has('external');
    if (plan.memory === 'external' && !external) {
      throw new VmsnapError('invalid-spec', `domain ${domain.name}: libvirt saves memory to a file only with external disk snapshots; use --disk ${firstTarget}=external, or --memory internal`);
    }
    if (plan.memory === 'no' && !external && state !== 'shutoff') {
      throw new VmsnapError('invalid-spec', `domain ${domain.name}: libvirt takes internal snapshots of a running domain only with its memory; use --disk ${firstTarget}=external for a disk-only snapshot, or drop --disk-only`);
    }
    const custom = plan.disks.find((d) => d.file !== undefined);
    if (custom !== undefined) {
      throw new VmsnapError('invalid-spec', `disk ${custom.target}: libvirt's overlays are kept in the snapshot's folder; drop file=`);
    }
    const notes: string[] = [];
    let quiesce = false;
    if (req.quiesce !== undefined && state === 'running') {
      if (plan.memory === 'no') quiesce = true;
      else if (req.quiesce.required) {
        throw new VmsnapError('invalid-spec', `domain ${domain.name}: libvirt quiesces disk-only snapshots only; use --disk-only with --quiesce, or drop --quiesce-required (a full-system snapshot holds the memory)`);
      } else notes.push('not quiesced: libvirt quiesces disk-only snapshots only; this one holds the memory');
    }

    const method =
      plan.memory === 'external' ? (plan.live ? 'libvirt-live' : 'libvirt-external') : plan.memory === 'internal' ? 'libvirt-internal' : state === 'shutoff' ? 'libvirt-offline' : 'libvirt-disk-only';
    const memFile = join(req.dir, MEMORY_FILE);
    const facts: CreateFacts = {
      wasRunning: state === 'running',
      method,
      ...(plan.memory === 'external' ? { memoryFile: memFile } : {}),
      overlays: external ? taken.map((d) => ({ target: d.target, frozen: listed.get(d.target) as string, overlay: join(req.dir, `${d.target}.qcow2`) })) : [],
    };

    const args = ['snapshot-create-as', '--domain', dom, '--name', req.name, '--description', `vmsnap ${method}`, '--atomic'];
    if (plan.memory === 'no' && external) args.push('--disk-only');
    if (plan.memory === 'external') args.push('--memspec', `file=${specPath(memFile)},snapshot=external`);
    if (plan.live) args.push('--live');
    if (req.halt) args.push('--halt');
    if (quiesce) args.push('--quiesce');
    for (const target of listed.keys()) {
      const d = plan.disks.find((x) => x.target === target);
      const o = facts.overlays.find((x) => x.target === target);
      if (o !== undefined) args.push('--diskspec', `${target},snapshot=external,file=${specPath(o.overlay)}`);
      else if (d === undefined || d.mode === 'no') args.push('--diskspec', `${target},snapshot=no`);
      else args.push('--diskspec', `${target},snapshot=internal`);
    }

    const durationsMs: Record<string, number> = {};
    const step = stepRunner(req, durationsMs);
    await req.journal('online', { ...facts });
    const watch = state === 'running' ? await virsh.watchEvents().catch(() => undefined) : undefined;
    let events: { event: string; atMs: number }[] = [];
    try {
      await step('snapshot', async () => {
        req.onProgress?.({ step: 'snapshot', detail: `virsh snapshot-create-as (${method})` });
        await virsh.run(args, jobTimeoutMs);
      });
    } catch (err) {
      log.warn({ err }, 'libvirt snapshot failed; undoing');
      await undoCreate(req.name, facts).catch((e: unknown) => log.error({ err: e }, 'could not undo a failed libvirt snapshot'));
      throw err;
    } finally {
      events = (await watch?.stop().catch(() => undefined)) ?? [];
    }
    faultPoint('libvirt:created', undefined);

    const files: string[] = [];
    let memory: ManifestMemory = { mode: 'no' };
    if (plan.memory === 'external') {
      await chmod(memFile, FILE_MODE);
      memory = await describeMemory(memFile);
      files.push(memFile);
    } else if (plan.memory === 'internal') {
      memory = { mode: 'internal', disk: firstTarget };
    }
    const disks: ManifestDisk[] = [];
    for (const d of plan.disks) {
      const base = { target: d.target, path: d.path, format: d.format };
      const o = facts.overlays.find((x) => x.target === d.target);
      if (o !== undefined) {
        await chmod(o.overlay, FILE_MODE);
        files.push(o.overlay);
        disks.push({ ...base, mode: 'external', method: 'libvirt-external', file: o.overlay, backing: o.frozen });
      } else if (d.mode === 'internal') {
        disks.push({ ...base, mode: 'internal', method: 'libvirt-internal', tag: req.name });
      } else {
        disks.push({ ...base, mode: 'no' });
      }
    }
    const kind = plan.memory === 'no' ? 'disk-only' : 'full';
    return {
      method,
      kind,
      consistency: state === 'shutoff' ? 'offline' : kind === 'full' ? 'full-system' : quiesce ? 'application' : 'crash',
      quiesced: quiesce,
      memory,
      disks,
      durationsMs,
      downtimeMs: downtimeOf(events),
      files,
      ...(notes.length > 0 ? { notes } : {}),
    };
  }

  /**
   * Take back a snapshot libvirt may or may not have made: its disks back to
   * the frozen images (libvirt's --atomic already did that when it failed),
   * its metadata gone, the guest running again if it ran before.
   */
  async function undoCreate(name: string, facts: CreateFacts): Promise<boolean> {
    await virsh.waitIdle(jobTimeoutMs);
    if (await virsh.hasSnapshot(name)) {
      if (facts.overlays.length === 0) {
        await virsh.run(['snapshot-delete', '--domain', dom, '--snapshotname', name], jobTimeoutMs);
      } else {
        const all = await allSnapshots();
        for (const o of facts.overlays) await removeOverlay(o.target, o.overlay, all);
        await virsh.run(['snapshot-delete', '--domain', dom, '--snapshotname', name, '--metadata']);
      }
    }
    let resumed = false;
    if (facts.wasRunning && (await getState()) === 'paused') {
      await virsh.run(['resume', '--domain', dom]);
      resumed = true;
    }
    // Never remove a file a disk still reads from.
    const inUse = await readFromNow();
    for (const f of [...(facts.memoryFile !== undefined ? [facts.memoryFile] : []), ...facts.overlays.map((o) => o.overlay)]) {
      if (inUse.has(f)) throw new VmsnapError('conflict', `domain ${dom} still reads from ${f}; left in place`);
      await removeFileIfPresent(f);
    }
    return resumed;
  }

  // ---- delete ----------------------------------------------------------

  /** How an external snapshot's overlay leaves the chains; planned read-only, so conflicts surface before anything changes. */
  type Removal =
    | { kind: 'drop' }
    | { kind: 'commit'; live: boolean; active: boolean; frozen: string; frozenFormat: string; kids: string[]; liveChain: string[]; definedTop: boolean; liveTop: boolean }
    | { kind: 'pull'; frozen: string; frozenFormat: string; kids: { file: string; live: boolean }[] }
    /** Still needed, unchanged, by the images above it: kept under .active (hard link, children repointed). */
    | { kind: 'keep'; kids: string[] };

  /**
   * Take `overlay` (an external snapshot's overlay) out of every chain, keeping
   * what the images above it read: commit it into the image it froze when
   * nothing else builds on that image (libvirt's block commit while the domain
   * runs, qemu-img while it is off). When another branch shares that image, it
   * stays as it is: the overlay is dropped if nothing builds on it, pulled up
   * into the running domain's revert overlay, or (holding a later snapshot's
   * data) kept unchanged under .active.
   */
  async function planRemoval(target: string, overlay: string, manifests: readonly SnapshotManifest[]): Promise<Removal> {
    if (!(await pathExists(overlay))) return { kind: 'drop' };
    const graph = await imageGraph(manifests);
    const frozen = await backingOf(overlay);
    const kids = childrenIn(graph, overlay);
    const siblings = childrenIn(graph, frozen.path).filter((f) => f !== overlay);
    const running = (await getState()) !== 'shutoff';
    const liveTop = running ? (await virsh.disks(false)).get(target) : undefined;
    const definedTop = (await virsh.disks(true)).get(target);
    const liveChain = liveTop === undefined ? [] : (await img.chain(liveTop, { shared: true })).map((i) => i.filename);
    const isTop = overlay === liveTop || overlay === definedTop;

    if (kids.length === 0 && !isTop) return { kind: 'drop' }; // a branch tip nothing reads: the file just goes
    // Internal snapshots taken after this one live inside its overlay; a commit
    // or pull would leave them in a file that is then deleted.
    const tags = await tagsIn(overlay);
    if (tags.length > 0) {
      throw new VmsnapError('conflict', `disk ${target}: ${overlay} holds internal snapshots ${tags.map((t) => JSON.stringify(t)).join(', ')} taken after this one; delete them first`);
    }
    if (siblings.length === 0) {
      const live = running && liveChain.includes(overlay);
      return { kind: 'commit', live, active: overlay === liveTop, frozen: frozen.path, frozenFormat: frozen.format, kids, liveChain, definedTop: overlay === definedTop, liveTop: overlay === liveTop };
    }
    if (isTop) {
      throw new VmsnapError('internal', `disk ${target}: ${overlay} is the active image yet ${frozen.path} has other children (${siblings.join(', ')}); run vmsnap recover, then report this`);
    }
    // The image below is shared with another branch, so it must stay as it is.
    // A later snapshot whose data this overlay holds (its frozen image) needs the
    // overlay kept as well: it moves out of the snapshot's folder, unchanged.
    const owners = new Set(manifests.flatMap((m) => m.disks.flatMap((d) => (d.method === 'libvirt-external' && d.file !== undefined ? [d.file] : []))));
    const holdsSnapshotData = kids.some((kid) => owners.has(kid));
    if (running && liveChain.includes(overlay)) {
      if (holdsSnapshotData) {
        throw new VmsnapError('conflict', `disk ${target}: ${overlay} holds a later snapshot's data, the running domain reads through it and ${frozen.path} has other children; shut the domain down and delete again`);
      }
      // Only revert overlays build on it: pull its data up into them (libvirt for the running one).
      const pulls = kids.map((kid) => {
        if (kid !== liveTop && liveChain.includes(kid)) {
          throw new VmsnapError('conflict', `disk ${target}: ${kid} builds on this snapshot inside the running chain and the image below has other children; shut the domain down and delete again`);
        }
        return { file: kid, live: kid === liveTop };
      });
      return { kind: 'pull', frozen: frozen.path, frozenFormat: frozen.format, kids: pulls };
    }
    return { kind: 'keep', kids };
  }

  async function removeOverlay(target: string, overlay: string, manifests: readonly SnapshotManifest[]): Promise<void> {
    const plan = await planRemoval(target, overlay, manifests);
    if (plan.kind === 'commit') {
      if (plan.live) {
        const active = plan.active ? ['--active', '--pivot'] : [];
        await virsh.run(['blockcommit', '--domain', dom, '--path', target, ...active, '--top', overlay, '--base', plan.frozen, '--wait'], jobTimeoutMs);
        // libvirt moved the image above `overlay` in the running chain; other children
        // (later snapshots' overlays, off the live chain) now read the same through `frozen`.
        for (const kid of plan.kids) if (!plan.liveChain.includes(kid)) await img.rebaseUnsafe(kid, plan.frozen, plan.frozenFormat);
        if (plan.definedTop && !plan.liveTop) await defineWith(new Map([[target, plan.frozen]]));
      } else {
        await img.commit(overlay, plan.frozen);
        for (const kid of plan.kids) await img.rebaseUnsafe(kid, plan.frozen, plan.frozenFormat);
        if (plan.definedTop) await defineWith(new Map([[target, plan.frozen]]));
      }
    } else if (plan.kind === 'keep') {
      // A second name first, then the children: a crash in between leaves both names valid.
      const kept = await activePath(target, 'kept');
      await link(overlay, kept);
      for (const kid of plan.kids) await img.rebaseUnsafe(kid, kept, 'qcow2');
      log.info({ overlay, kept }, 'overlay kept for the images above it');
    } else if (plan.kind === 'pull') {
      for (const kid of plan.kids) {
        if (kid.live) await virsh.run(['blockpull', '--domain', dom, '--path', target, '--base', plan.frozen, '--wait'], jobTimeoutMs);
        else await img.rebase(kid.file, plan.frozen, plan.frozenFormat);
      }
    }
  }

  const storage: DriverStorage = {
    rules: { externalDisksWhenRunning: true },

    async checkRevert(manifest) {
      if (manifest.memory.mode === 'external') await assertMemoryImage(manifest);
      const state = await getState();
      const listed = await sources(state !== 'shutoff');
      for (const entry of manifest.disks) {
        if (entry.method === 'libvirt-internal') {
          const active = listed.get(entry.target) as string;
          if (!(await tagsIn(active)).includes(entry.tag ?? manifest.name)) {
            throw new VmsnapError('conflict', `disk ${entry.target}: internal snapshot "${manifest.name}" is not in the active image ${active} (a later external snapshot froze it); revert to that external snapshot instead`);
          }
        } else if (entry.method === 'libvirt-external') {
          if (entry.file === undefined || !(await pathExists(entry.file))) {
            throw new VmsnapError('not-found', `disk ${entry.target}: the snapshot's overlay ${entry.file ?? '(none)'} is missing`);
          }
          const frozen = await backingOf(entry.file);
          if (!(await pathExists(frozen.path))) throw new VmsnapError('not-found', `disk ${entry.target}: the frozen image ${frozen.path} is missing`);
        } else if (entry.mode !== 'no') {
          throw new VmsnapError('conflict', `disk ${entry.target}: snapshot "${manifest.name}" was not made by libvirt (method ${entry.method ?? 'unknown'}); the libvirt driver cannot revert it`);
        }
      }
    },

    async revert(manifest, targetState) {
      if (manifest.disks.some((d) => d.method === 'libvirt-internal')) {
        if ((await getState()) !== 'shutoff') await virsh.run(['destroy', '--domain', dom]);
        const flag = targetState === 'running' ? ['--running'] : targetState === 'paused' ? ['--paused'] : [];
        await virsh.run(['snapshot-revert', '--domain', dom, '--snapshotname', manifest.name, ...flag], jobTimeoutMs);
        return;
      }
      const fresh = await freshActives(manifest);
      if ((await getState()) !== 'shutoff') await virsh.run(['destroy', '--domain', dom]);
      faultPoint('revert:stopped', undefined);
      await defineWith(fresh);
      if (targetState !== 'shutoff') await virsh.run(['start', '--domain', dom, ...(targetState === 'paused' ? ['--paused'] : [])], jobTimeoutMs);
      await collectActiveGarbage();
    },

    async checkDelete(manifest, others) {
      const all = [manifest, ...others];
      await tagsOutsideActive(manifest, all);
      for (const entry of manifest.disks) {
        if (entry.method === 'libvirt-external' && entry.file !== undefined) await planRemoval(entry.target, entry.file, all);
      }
    },

    async delete(manifest, others) {
      const all = [manifest, ...others];
      for (const entry of manifest.disks) {
        if (entry.method === 'libvirt-external' && entry.file !== undefined) await removeOverlay(entry.target, entry.file, all);
      }
      const internal = manifest.disks.some((d) => d.method === 'libvirt-internal');
      // libvirt deletes internal snapshots from the active images only; a later
      // revert or external snapshot may have left the tag in another image.
      const held = await tagsOutsideActive(manifest, all);
      for (const { file, tag } of held) await img.snapshotDelete(file, tag);
      const libvirtDeletesTags = internal && held.length === 0;
      if (await virsh.hasSnapshot(manifest.name)) {
        await virsh.run(['snapshot-delete', '--domain', dom, '--snapshotname', manifest.name, ...(libvirtDeletesTags ? [] : ['--metadata'])], jobTimeoutMs);
      } else if (internal) {
        log.warn({ snapshot: manifest.name }, 'libvirt has no metadata for this internal snapshot any more; nothing to delete there');
      }
      await collectActiveGarbage(others);
    },
  };

  /**
   * This snapshot's internal tags that sit in images other than the active
   * ones (found by looking); throws when such an image is open in the running
   * domain, where only QEMU may change it.
   */
  async function tagsOutsideActive(manifest: SnapshotManifest, manifests: readonly SnapshotManifest[]): Promise<{ file: string; tag: string }[]> {
    const entries = manifest.disks.filter((d) => d.method === 'libvirt-internal');
    if (entries.length === 0) return [];
    const running = (await getState()) !== 'shutoff';
    const active = await sources(running);
    const liveChains = new Set<string>();
    if (running) for (const top of active.values()) for (const i of await img.chain(top, { shared: true })) liveChains.add(i.filename);
    const graph = await imageGraph(manifests);
    const out: { file: string; tag: string }[] = [];
    for (const entry of entries) {
      const tag = entry.tag ?? manifest.name;
      const top = active.get(entry.target);
      if (top !== undefined && (await tagsIn(top)).includes(tag)) continue;
      for (const file of graph.keys()) {
        if (file === top || !(await tagsIn(file)).includes(tag)) continue;
        if (liveChains.has(file)) {
          throw new VmsnapError('conflict', `disk ${entry.target}: internal snapshot "${tag}" is inside ${file}, which the running domain reads as a backing image; shut the domain down and delete again`);
        }
        out.push({ file, tag });
      }
    }
    return out;
  }

  const tagsIn = async (file: string): Promise<string[]> => (await img.info(file, { shared: true })).snapshots?.map((t) => t.name) ?? [];

  /** A new overlay on each external disk's frozen image; the targets and files to point the domain at. */
  async function freshActives(manifest: SnapshotManifest): Promise<Map<string, string>> {
    const fresh = new Map<string, string>();
    for (const entry of manifest.disks) {
      if (entry.method !== 'libvirt-external' || entry.file === undefined) continue;
      fresh.set(entry.target, await newActive(entry.target, (await backingOf(entry.file)).path));
    }
    return fresh;
  }

  // ---- revert with memory ------------------------------------------------

  async function revertFullSystem(manifest: SnapshotManifest, req: RevertRequest): Promise<void> {
    const flag = req.targetState === 'paused' ? '--paused' : '--running';
    if (manifest.memory.mode === 'internal') {
      req.onProgress?.({ step: 'revert', detail: 'virsh snapshot-revert' });
      await virsh.run(['snapshot-revert', '--domain', dom, '--snapshotname', manifest.name, flag], jobTimeoutMs);
      return;
    }
    // libvirt 9.0 refuses snapshot-revert to external snapshots: new overlays on the
    // frozen images, the saved domain XML pointed at them, and `virsh restore --xml`.
    const memory = await assertMemoryImage(manifest);
    const fresh = await freshActives(manifest);
    const current = await virsh.disks(true);
    for (const d of domain.disks) if (!fresh.has(d.target)) fresh.set(d.target, current.get(d.target) as string);
    let xml = await virsh.run(['save-image-dumpxml', '--file', memory.file, '--security-info']);
    for (const [target, file] of fresh) xml = setDiskSource(xml, target, file);
    if ((await getState()) !== 'shutoff') {
      req.onProgress?.({ step: 'stop' });
      await virsh.run(['destroy', '--domain', dom]);
    }
    faultPoint('revert:stopped', undefined);
    await defineWith(fresh);
    const restoreXml = join(domainDir, '.restore.xml');
    await writeFileAtomic(restoreXml, xml);
    try {
      req.onProgress?.({ step: 'restore', detail: `virsh restore ${memory.file}` });
      await virsh.run(['restore', '--file', memory.file, '--xml', restoreXml, flag], jobTimeoutMs);
    } finally {
      await removeFileIfPresent(restoreXml);
    }
    await collectActiveGarbage();
  }

  // ---- recovery --------------------------------------------------------

  async function recoverCreate(journal: Journal): Promise<RecoveredCreate> {
    const facts = journal.steps.find((s) => s.step === 'online')?.data as CreateFacts | undefined;
    if (facts === undefined) return { resumed: false, outcome: { kind: 'removed', files: [] } };
    const resumed = await undoCreate(journal.snapshot, facts);
    return { resumed, outcome: { kind: 'removed', files: [...(facts.memoryFile !== undefined ? [facts.memoryFile] : []), ...facts.overlays.map((o) => o.overlay)] } };
  }

  return {
    name: 'libvirt',
    storage,
    getState,
    createOnline,
    revertFullSystem,
    canStart: () => true,
    async start({ paused }) {
      await virsh.run(['start', '--domain', dom, ...(paused ? ['--paused'] : [])], jobTimeoutMs);
    },
    async destroy() {
      if ((await getState()) !== 'shutoff') await virsh.run(['destroy', '--domain', dom]);
    },
    // The storage side (above) handles every disk, running or not.
    async deleteOnline() {
      return [];
    },
    recoverCreate: (journal) => recoverCreate(journal),
  };
}
