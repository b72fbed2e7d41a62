import { VmsnapError } from '../errors.js';
import type { DiskMode, DiskRef, DomainState, MemoryMode, SnapshotKind } from './model.js';

/** A snapshot request as the CLI, a policy or a job states it; anything unsaid gets a default. */
export interface SnapshotOptions {
  memory?: MemoryMode;
  diskOnly?: boolean;
  live?: boolean;
  disks?: Record<string, DiskRequest>;
}

export interface DiskRequest {
  mode: DiskMode;
  /** Where the snapshot's own file goes (external only); CLI only, never from a job. */
  file?: string;
}

export interface ResolvedDiskPlan extends DiskRef {
  mode: DiskMode;
  file?: string;
}

/** What the domain's hypervisor can do, where it changes the defaults. */
export interface HypervisorRules {
  /**
   * Internal disk snapshots of a running domain only come with internal memory
   * (libvirt): its disks default to external unless memory goes inside qcow2.
   */
  externalDisksWhenRunning?: boolean;
}

export interface ResolvedSnapshotPlan {
  kind: SnapshotKind;
  state: DomainState;
  memory: MemoryMode;
  /** Memory is saved while the guest keeps running (only with external memory on a running domain). */
  live: boolean;
  /** The pipeline stops the guest's vCPUs for the disk snapshot (and maybe the memory save). */
  pause: boolean;
  disks: ResolvedDiskPlan[];
  /** Defaults applied and requests that were adjusted, for --dry-run and logs. */
  notes: string[];
}

function invalid(message: string): VmsnapError {
  return new VmsnapError('invalid-spec', message);
}

/**
 * Decide what a snapshot will capture, or say why it cannot be done.
 * Pure: the domain's state and disks come in, a plan or an error goes out.
 */
export function resolveSnapshotSpec(
  state: DomainState,
  disks: readonly DiskRef[],
  options: SnapshotOptions,
  rules: HypervisorRules = {},
): ResolvedSnapshotPlan {
  const notes: string[] = [];
  const requested = options.disks ?? {};
  const known = new Set(disks.map((d) => d.target));
  for (const target of Object.keys(requested)) {
    if (!known.has(target)) {
      throw invalid(`disk "${target}" is not a disk of this domain; its disks are: ${[...known].join(', ')}`);
    }
  }

  const memory = resolveMemory(state, options, notes);

  const planDisks = disks.map((disk): ResolvedDiskPlan => {
    const req = requested[disk.target];
    const hypervisorRule = rules.externalDisksWhenRunning === true && state !== 'shutoff' && memory !== 'internal';
    const mode = req?.mode ?? (hypervisorRule ? 'external' : defaultDiskMode(disk, memory));
    if (req === undefined) notes.push(`disk ${disk.target}: ${mode} (default for ${hypervisorRule ? 'this hypervisor with a running domain' : disk.format})`);
    if (mode === 'internal' && disk.format !== 'qcow2') {
      throw invalid(
        `disk ${disk.target}: internal snapshots need a qcow2 image and ${disk.path} is ${disk.format}; use --disk ${disk.target}=external`,
      );
    }
    if (mode === 'internal' && disk.backend !== 'qcow2') {
      throw invalid(
        `disk ${disk.target}: internal snapshots are made by the qcow2 backend and this disk uses the ${disk.backend} backend; use --disk ${disk.target}=external`,
      );
    }
    if (req?.file !== undefined) {
      if (mode !== 'external') {
        throw invalid(`disk ${disk.target}: file= only applies to external snapshots, not ${mode}`);
      }
      if (!req.file.startsWith('/')) {
        throw invalid(`disk ${disk.target}: file=${req.file} must be an absolute path`);
      }
    }
    return { ...disk, mode, ...(req?.file !== undefined ? { file: req.file } : {}) };
  });

  if (memory === 'internal') {
    const bad = planDisks.find((d) => d.mode === 'external');
    if (bad !== undefined) {
      throw invalid(
        `memory inside a qcow2 disk (--memory internal) needs every snapshotted disk to be internal, and disk ${bad.target} is external; use --memory external, or --disk ${bad.target}=internal (qcow2) or ${bad.target}=no`,
      );
    }
    if (!planDisks.some((d) => d.mode === 'internal')) {
      throw invalid('memory inside a qcow2 disk (--memory internal) needs at least one disk snapshotted internally');
    }
  }
  if (memory === 'no' && planDisks.every((d) => d.mode === 'no')) {
    throw invalid('nothing to snapshot: memory is "no" and every disk is "no"; snapshot at least one disk');
  }

  let live = options.live ?? false;
  if (live && state === 'shutoff') {
    throw invalid('--live needs a running domain and this one is shut off; drop --live');
  }
  if (live && memory === 'internal') {
    throw invalid('--live cannot save memory inside a qcow2 disk (that pauses the guest); use --memory external or drop --live');
  }
  if (live && state === 'paused') {
    notes.push('domain is paused: the snapshot is taken paused, not live');
    live = false;
  }
  if (live && memory === 'no') {
    notes.push('disk-only snapshot of a running domain: taken without pausing, crash-consistent');
    live = false;
  }

  return {
    kind: memory === 'no' ? 'disk-only' : 'full',
    state,
    memory,
    live,
    pause: state === 'running' && memory !== 'no' && !live,
    disks: planDisks,
    notes,
  };
}

function resolveMemory(state: DomainState, options: SnapshotOptions, notes: string[]): MemoryMode {
  if (options.diskOnly === true) {
    if (options.memory !== undefined && options.memory !== 'no') {
      throw invalid(`a disk-only snapshot has no memory; drop --memory ${options.memory} or --disk-only`);
    }
    return 'no';
  }
  if (state === 'shutoff') {
    if (options.memory !== undefined && options.memory !== 'no') {
      throw invalid(
        `the domain is shut off, so there is no memory to save; drop --memory ${options.memory} (a shut-off domain gets a disk-only snapshot)`,
      );
    }
    if (options.memory === undefined) notes.push('domain is shut off: disk-only snapshot');
    return 'no';
  }
  if (options.memory !== undefined) return options.memory;
  // A running domain gets a full-system snapshot with memory in a file.
  notes.push('memory: external (default for a running domain: saved to a file in the snapshot folder)');
  return 'external';
}

function defaultDiskMode(disk: DiskRef, memory: MemoryMode): DiskMode {
  if (memory === 'internal') return disk.format === 'qcow2' ? 'internal' : 'external';
  return disk.format === 'qcow2' && disk.backend === 'qcow2' ? 'internal' : 'external';
}
