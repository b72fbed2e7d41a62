import { VmsnapError } from '../errors.js';
import type { BackendName } from '../domain/model.js';
import type { StorageBackend } from './backend.js';
import { createFileBackend } from './file/file-backend.js';
import { createQcow2Backend } from './qcow2/qcow2-backend.js';
import { QemuImg } from './qcow2/qemu-img.js';

export interface BackendTools {
  qemuImg?: string;
  cp?: string;
}

/** One backend instance per name, built from the tools the worker's config allows. */
export function createBackends(tools: BackendTools = {}): Record<BackendName, StorageBackend> {
  const qemuImg = new QemuImg(tools.qemuImg === undefined ? {} : { bin: tools.qemuImg });
  const unavailable = (name: BackendName): StorageBackend => {
    const fail = () => Promise.reject(new VmsnapError('unavailable', `the ${name} storage backend is not available in this version of vmsnap`, { retryable: false }));
    return { name, create: fail, undoCreate: fail, undoInterrupted: fail, checkRevert: fail, revert: fail, delete: fail, list: fail };
  };
  return {
    qcow2: createQcow2Backend({ qemuImg }),
    file: createFileBackend(tools.cp === undefined ? {} : { cp: tools.cp }),
    btrfs: unavailable('btrfs'),
  };
}
