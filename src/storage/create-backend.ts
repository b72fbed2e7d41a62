import type { BackendName } from '../domain/model.js';
import type { StorageBackend } from './backend.js';
import { createBtrfsBackend } from './btrfs/btrfs-backend.js';
import { createFileBackend } from './file/file-backend.js';
import { createQcow2Backend } from './qcow2/qcow2-backend.js';
import { QemuImg } from './qcow2/qemu-img.js';

export interface BackendTools {
  qemuImg?: string;
  cp?: string;
  btrfs?: string;
}

/** One backend instance per name, built from the tools the worker's config allows. */
export function createBackends(tools: BackendTools = {}): Record<BackendName, StorageBackend> {
  const qemuImg = new QemuImg(tools.qemuImg === undefined ? {} : { bin: tools.qemuImg });
  return {
    qcow2: createQcow2Backend({ qemuImg }),
    file: createFileBackend(tools.cp === undefined ? {} : { cp: tools.cp }),
    btrfs: createBtrfsBackend({ ...(tools.btrfs !== undefined ? { btrfs: tools.btrfs } : {}), ...(tools.cp !== undefined ? { cp: tools.cp } : {}) }),
  };
}
