import { mkdir, rm } from 'node:fs/promises';
import { execa } from 'execa';
import { createBtrfsBackend } from '../../src/storage/btrfs/btrfs-backend.js';
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

/**
 * btrfs for real: a filesystem made on a loop device for each test (root,
 * as in CI), the disks in a subvolume.
 */
function btrfsFixture(format: Format) {
  return async (): Promise<StorageFixture> => {
    const dir = await makeTempDir('conf-btrfs');
    const image = join(dir, 'fs.img');
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await execa('truncate', ['-s', '256M', image]);
    await execa('mkfs.btrfs', ['-q', '-f', image]);
    const { stdout: loop } = await execa('losetup', ['-f', '--show', image]);
    await execa('mount', [loop.trim(), mnt]);
    await execa('btrfs', ['subvolume', 'create', join(mnt, 'vms')]);
    let n = 0;
    return {
      backend: createBtrfsBackend(),
      root: join(mnt, 'catalog'),
      async makeDisk(): Promise<DiskRef> {
        const path = join(mnt, 'vms', `disk${n++}.${format === 'raw' ? 'img' : 'qcow2'}`);
        await createImage(path, format);
        return { target: 'vda', path, format, backend: 'btrfs' };
      },
      async cleanup() {
        await execa('umount', [mnt]);
        await execa('losetup', ['-d', loop.trim()]);
        await rm(dir, { recursive: true, force: true });
      },
    };
  };
}

describeStorageBackend('btrfs (raw)', ['external'], btrfsFixture('raw'));
describeStorageBackend('btrfs (qcow2 image)', ['external'], btrfsFixture('qcow2'));
