import type { Logger } from 'pino';
import type { ResolvedDomain } from '../config/load-config.js';
import { Catalog } from '../catalog/catalog.js';
import { VmsnapError } from '../errors.js';
import type { BackendName, DiskRef } from '../domain/model.js';
import type { HypervisorDriver } from '../hypervisor/driver.js';
import type { StorageBackend } from '../storage/backend.js';

import type { ProgressEvent } from '../hypervisor/driver.js';

export type { ProgressEvent } from '../hypervisor/driver.js';

/** Everything a pipeline procedure needs, passed in: no globals, no clock of its own. */
export interface PipelineDeps {
  backends: Record<BackendName, StorageBackend>;
  driverFor(domain: ResolvedDomain): HypervisorDriver;
  logger: Logger;
  now(): Date;
  onProgress?(event: ProgressEvent): void;
  /**
   * Throws when this process no longer holds the domain (its Redis lease ran
   * out and another worker took it: the fencing token moved on). Checked
   * before each step and before the manifest is committed.
   */
  checkFence?(): void;
}

export function catalogFor(domain: ResolvedDomain): Catalog {
  return new Catalog(domain.snapshotRoot);
}

export function diskRefs(domain: ResolvedDomain): DiskRef[] {
  return domain.disks.map((d) => ({ target: d.target, path: d.path, format: d.format, backend: d.backend }));
}

export function findDisk(domain: ResolvedDomain, target: string): DiskRef {
  const disk = diskRefs(domain).find((d) => d.target === target);
  if (disk === undefined) {
    throw new VmsnapError('conflict', `domain ${domain.name} no longer has disk ${target} in its config, but the snapshot does; restore the disk entry to act on this snapshot`);
  }
  return disk;
}
