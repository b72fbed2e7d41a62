/**
 * The snapshot model: Xen's `xl snapshot-*` design and libvirt's domain
 * snapshots. A snapshot is full-system (memory + disks) or disk-only; each
 * disk is captured internally (qcow2 tag) or externally (a frozen image with
 * an overlay on top, or a copy); memory goes to a file or inside a qcow2 disk.
 */
export type DomainState = 'running' | 'paused' | 'shutoff';
export type MemoryMode = 'no' | 'internal' | 'external';
export type DiskMode = 'no' | 'internal' | 'external';
export type DiskFormat = 'qcow2' | 'raw';
export type BackendName = 'qcow2' | 'file' | 'btrfs';
export type SnapshotKind = 'full' | 'disk-only';

/** How a disk was captured; decided by the backend or driver that did it. */
export type DiskMethod = 'qcow2-internal' | 'qcow2-external' | 'file-copy' | 'btrfs-snapshot' | 'libvirt-internal' | 'libvirt-external';

/**
 * What the data in a snapshot can be trusted to be:
 * offline (domain was shut off), full-system (memory and disks at one instant),
 * application (disks taken with guest filesystems frozen), crash (disks only,
 * taken while the guest ran: like pulling the plug).
 */
export type Consistency = 'offline' | 'full-system' | 'application' | 'crash';

export interface DiskRef {
  target: string;
  path: string;
  format: DiskFormat;
  backend: BackendName;
}

/**
 * One disk in a manifest. `file` is the snapshot's own file for external modes.
 * libvirt-external is libvirt's layout: `file` is the overlay libvirt made in
 * the snapshot's folder (the writes after the snapshot) and `backing` the image
 * it froze, which holds the snapshot's data.
 */
export interface ManifestDisk {
  target: string;
  /** The configured (active) image path at snapshot time. */
  path: string;
  format: DiskFormat;
  mode: DiskMode;
  method?: DiskMethod;
  /** qcow2 internal snapshot tag. */
  tag?: string;
  /** Frozen image or copy that holds this snapshot's data. */
  file?: string;
  /** Backing file of `file` at snapshot time (qcow2 external), null when it had none. */
  backing?: string | null;
  /** Size and mtime of `file` when committed: a revert refuses without --force if they changed. */
  fileBytes?: number;
  fileMtimeMs?: number;
}

export type ManifestMemory =
  | { mode: 'no' }
  | { mode: 'internal'; disk: string }
  | { mode: 'external'; file: string; bytes: number; sha256: string };

export interface SnapshotManifest {
  version: 1;
  name: string;
  domain: string;
  /** UTC, RFC 3339 with milliseconds. */
  createdAt: string;
  origin: 'adhoc' | 'policy';
  /** Policy name when origin is "policy", else null. */
  policy: string | null;
  kind: SnapshotKind;
  /** Domain state when the snapshot was taken. */
  state: DomainState;
  consistency: Consistency;
  /** Pipeline method, e.g. "offline", "pause-save", "internal", "background", "live-migrate", "disk-only". */
  method: string;
  memory: ManifestMemory;
  disks: ManifestDisk[];
  /** The snapshot the domain was at (created from or reverted to) before this one. */
  parent: string | null;
  durationsMs: Record<string, number>;
  /** Guest downtime between QMP STOP and RESUME; null when the guest was not paused by us. */
  downtimeMs: number | null;
  description?: string;
  /** The guest's filesystems were frozen (guest agent) while the disks were taken. */
  quiesced?: boolean;
  /** UTC, when the data was all taken (just before the manifest was committed). */
  finishedAt?: string;
  /** The queue job that made it (a job run again after a crash finds it). */
  jobId?: string;
  /** Policy runs: the schedule slot (UTC) this snapshot is for; one snapshot per slot. */
  slot?: string;
  /** What happened that differs from what was asked, e.g. a memory save that failed after the disks were taken. */
  notes?: string[];
}

/** A folder in the catalog with no committed manifest: never a snapshot, only a leftover. */
export interface PartialSnapshot {
  name: string;
  dir: string;
  reason: string;
  files: string[];
}
