import { stat } from 'node:fs/promises';
import type { BackendName, DiskRef, ManifestDisk } from '../domain/model.js';

/** Where and under which name a backend stores one disk's part of a snapshot. */
export interface DiskSnapshotTarget {
  domain: string;
  /** Snapshot name: also the qcow2 tag for internal snapshots. */
  name: string;
  /** The snapshot's folder (0700), already created. */
  dir: string;
  mode: 'internal' | 'external';
  /** Explicit location for the snapshot's own file (external), from the CLI. */
  file?: string;
}

/** A snapshot as the storage sees it, whether or not a manifest knows it. */
export interface StoredSnapshot {
  kind: 'internal' | 'external';
  /** qcow2 tag, or the frozen/copied file. */
  id: string;
  file: string;
}

/**
 * Offline disk snapshots: the disk is not written by anyone while these run
 * (the domain is shut off, or the hypervisor driver has it paused).
 * Every backend passes test/conformance/storage-backend.ts.
 */
export interface StorageBackend {
  readonly name: BackendName;
  /** Capture the disk; returns the manifest entry that describes what was made. */
  create(disk: DiskRef, target: DiskSnapshotTarget): Promise<ManifestDisk>;
  /** Take back a create that was never committed. */
  undoCreate(disk: DiskRef, entry: ManifestDisk): Promise<void>;
  /**
   * Take back a create that was interrupted before it returned (a crash):
   * whatever part of it exists, found where `create` puts it.
   */
  undoInterrupted(disk: DiskRef, target: DiskSnapshotTarget): Promise<void>;
  /** Throw if `revert` would fail or lose data; read-only, safe while the domain runs. */
  checkRevert(disk: DiskRef, entry: ManifestDisk): Promise<void>;
  /** Make the disk's content the snapshot's again; later snapshots stay valid. */
  revert(disk: DiskRef, entry: ManifestDisk): Promise<void>;
  /** Remove the snapshot's data without losing anything another snapshot or the active disk needs. */
  delete(disk: DiskRef, entry: ManifestDisk, others: readonly ManifestDisk[]): Promise<void>;
  /** What the storage holds for this disk. */
  list(disk: DiskRef, known: readonly ManifestDisk[]): Promise<StoredSnapshot[]>;
}

/** The manifest entry for an external snapshot file, with the size and mtime a later revert checks. */
export async function describeExternalFile(
  disk: DiskRef,
  method: ManifestDisk['method'],
  file: string,
  extra: Partial<ManifestDisk> = {},
): Promise<ManifestDisk> {
  const st = await stat(file);
  return {
    target: disk.target,
    path: disk.path,
    format: disk.format,
    mode: 'external',
    ...(method !== undefined ? { method } : {}),
    file,
    ...extra,
    fileBytes: st.size,
    fileMtimeMs: Math.trunc(st.mtimeMs),
  };
}
