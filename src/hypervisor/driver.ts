import type { Consistency, DomainState, SnapshotKind, ManifestDisk, ManifestMemory, SnapshotManifest } from '../domain/model.js';
import type { HypervisorRules, ResolvedSnapshotPlan } from '../domain/resolve-spec.js';
import type { BackendName } from '../domain/model.js';
import type { StorageBackend } from '../storage/backend.js';
import type { Journal } from '../catalog/catalog.js';
import type { RecoveredCreate } from './qemu/qemu-recover.js';

/** A step of a long operation, for progress bars and job progress. */
export interface ProgressEvent {
  step: string;
  /** 0..1 when known. */
  fraction?: number;
  detail?: string;
}

/** A snapshot of a domain that runs (or is paused): the driver owns the guest, the pipeline the catalog. */
export interface OnlineSnapshotRequest {
  name: string;
  /** The snapshot's folder (0700), already created with its journal. */
  dir: string;
  plan: ResolvedSnapshotPlan;
  /** Shut the domain down once the snapshot is taken. */
  halt: boolean;
  /** Freeze the guest's filesystems around the disk snapshot through the guest agent. */
  quiesce?: { required: boolean; timeoutMs: number };
  backends: Record<BackendName, StorageBackend>;
  /** Record a step in the snapshot's journal before and after it runs. */
  journal(step: string, data?: Record<string, unknown>): Promise<void>;
  onProgress?(event: ProgressEvent): void;
}

export interface OnlineSnapshotResult {
  /** "pause-save", "internal", "background", "live-migrate", "disk-only". */
  method: string;
  kind: SnapshotKind;
  consistency: Consistency;
  memory: ManifestMemory;
  disks: ManifestDisk[];
  durationsMs: Record<string, number>;
  downtimeMs: number | null;
  /** Files made, so the pipeline's cleanup may remove them. */
  files: string[];
  /** Something the operator should know about this snapshot (kept in the manifest). */
  note?: string;
  notes?: string[];
  /** The guest's filesystems were frozen for the disk snapshot. */
  quiesced?: boolean;
}

export interface RevertRequest {
  /** The state the domain is left in; defaults to the snapshot's recorded state. */
  targetState: 'running' | 'paused';
  backends: Record<BackendName, StorageBackend>;
  onProgress?(event: ProgressEvent): void;
}

/**
 * A driver whose hypervisor keeps the disk chains itself (libvirt): the
 * pipeline hands it every create (also of a shut-off domain), revert and
 * delete, and never runs the storage backends on its disks.
 */
export interface DriverStorage {
  /** Defaults the hypervisor imposes on snapshot plans. */
  readonly rules: HypervisorRules;
  /** Throw if `revert` would fail; read-only. */
  checkRevert(manifest: SnapshotManifest): Promise<void>;
  /** Disks back to the snapshot without its memory; the domain is left in `targetState`. */
  revert(manifest: SnapshotManifest, targetState: DomainState): Promise<void>;
  /** Throw if `delete` would refuse (a conflict), before the snapshot is set aside; read-only. */
  checkDelete(manifest: SnapshotManifest, others: readonly SnapshotManifest[]): Promise<void>;
  /** Remove the snapshot's disk data, keeping every other snapshot and the active disk whole. */
  delete(manifest: SnapshotManifest, others: readonly SnapshotManifest[]): Promise<void>;
}

/**
 * What vmsnap needs from a hypervisor. `getState` is all the offline path
 * uses; the online operations run on a running or paused domain (or, for
 * revert, bring the domain back up with the snapshot's memory).
 */
export interface HypervisorDriver {
  readonly name: 'qemu' | 'libvirt' | 'xen';
  /** Set when the hypervisor owns the disk chains (see DriverStorage). */
  readonly storage?: DriverStorage;
  getState(): Promise<DomainState>;
  createOnline(request: OnlineSnapshotRequest): Promise<OnlineSnapshotResult>;
  /** Restore memory and disks; the domain may be running, paused or shut off. */
  revertFullSystem(manifest: SnapshotManifest, request: RevertRequest): Promise<void>;
  /** Whether a shut-off domain can be started (a revert to memory needs it). */
  canStart(): boolean;
  /** Start a shut-off domain from its disks (a fresh boot). */
  start(options: { paused: boolean }): Promise<void>;
  /** Stop the domain now (like pulling the plug); waits until its images are free. */
  destroy(): Promise<void>;
  /**
   * Delete a snapshot's disk data that the running hypervisor holds open; returns
   * the entries it handled (the storage backend does the rest). The manifest is the pipeline's.
   */
  deleteOnline(manifest: SnapshotManifest): Promise<ManifestDisk[]>;
  /** Finish or undo an online snapshot whose process died, from its journal (see qemu-recover.ts). */
  recoverCreate(journal: Journal, backends: Record<BackendName, StorageBackend>): Promise<RecoveredCreate>;
}
