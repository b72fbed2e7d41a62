import type { Logger } from 'pino';
import type { ResolvedDomain } from '../config/load-config.js';
import type { HypervisorDriver } from '../hypervisor/driver.js';
import { createQemuDriver } from '../hypervisor/qemu/qemu-driver.js';
import { createLibvirtDriver } from '../hypervisor/libvirt/libvirt-driver.js';
import { createXenDriver } from '../hypervisor/xen/xen-driver.js';
import type { PipelineDeps, ProgressEvent } from '../pipeline/context.js';
import { createBackends } from '../storage/create-backend.js';

/** Wire the real drivers and backends for one process. */
export function createPipelineDeps(logger: Logger, onProgress?: (e: ProgressEvent) => void): PipelineDeps {
  const backends = createBackends();
  return {
    backends,
    logger,
    now: () => new Date(),
    ...(onProgress !== undefined ? { onProgress } : {}),
    driverFor(domain: ResolvedDomain): HypervisorDriver {
      switch (domain.driver) {
        case 'qemu':
          return createQemuDriver(domain, { logger });
        case 'xen':
          return createXenDriver(domain, { logger });
        case 'libvirt':
          return createLibvirtDriver(domain, { logger });
      }
    },
  };
}
