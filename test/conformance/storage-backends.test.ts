import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createFileBackend } from '../../src/storage/file/file-backend.js';
import { createQcow2Backend } from '../../src/storage/qcow2/qcow2-backend.js';
import type { BackendName, DiskRef } from '../../src/domain/model.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import { createImage, makeTempDir, type Format } from '../helpers/images.js';
import { describeStorageBackend, type StorageFixture } from './storage-backend.js';

function fixture(backend: StorageBackend, format: Format, name: BackendName) {
  return async (): Promise<StorageFixture> => {
    const dir = await makeTempDir(`conf-${name}`);
    let n = 0;
    return {
      backend,
      root: join(dir, 'snapshots'),
      async makeDisk(): Promise<DiskRef> {
        const path = join(dir, `disk${n++}.${format === 'raw' ? 'img' : 'qcow2'}`);
        await createImage(path, format);
        return { target: 'vda', path, format, backend: name };
      },
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  };
}

describeStorageBackend('qcow2', ['internal', 'external'], fixture(createQcow2Backend(), 'qcow2', 'qcow2'));
describeStorageBackend('file (raw)', ['external'], fixture(createFileBackend(), 'raw', 'file'));
describeStorageBackend('file (qcow2 image)', ['external'], fixture(createFileBackend(), 'qcow2', 'file'));
