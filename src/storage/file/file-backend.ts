import { chmod, rename, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VmsnapError } from '../../errors.js';
import type { DiskRef, ManifestDisk } from '../../domain/model.js';
import { FILE_MODE, fsyncPath, pathExists, removeFileIfPresent } from '../../catalog/fs-safe.js';
import { runCommand } from '../../exec/run-command.js';
import { describeExternalFile, type DiskSnapshotTarget, type StorageBackend, type StoredSnapshot } from '../backend.js';
import { replaceFile, tempBeside } from '../replace-file.js';

/**
 * Whole-file snapshots for raw (or any) images: a reflink copy where the
 * filesystem can share blocks (btrfs, XFS), a sparse plain copy otherwise.
 * The active path never changes, so nothing else needs to know.
 */
export function createFileBackend(options: { cp?: string; timeoutMs?: number } = {}): StorageBackend {
  const cp = options.cp ?? 'cp';
  const timeoutMs = options.timeoutMs ?? 60 * 60_000;

  async function copy(from: string, to: string): Promise<void> {
    await runCommand([cp, '--reflink=auto', '--sparse=always', '--no-preserve=all', '--', from, to], { timeoutMs });
    await fsyncPath(to);
  }

  function copyPath(disk: DiskRef, target: DiskSnapshotTarget): string {
    return target.file ?? join(target.dir, `${disk.target}.${disk.format === 'raw' ? 'img' : disk.format}`);
  }

  return {
    name: 'file',

    async create(disk, target) {
      if (target.mode !== 'external') {
        throw new VmsnapError('invalid-spec', `disk ${disk.target}: the file backend makes external copies only; use --disk ${disk.target}=external`);
      }
      const dest = copyPath(disk, target);
      if (await pathExists(dest)) {
        throw new VmsnapError('conflict', `disk ${disk.target}: ${dest} already exists; vmsnap never overwrites a file`);
      }
      const tmp = tempBeside(dest, 'copy');
      await removeFileIfPresent(tmp);
      try {
        await copy(disk.path, tmp);
        await chmod(tmp, FILE_MODE);
        await rename(tmp, dest);
        await fsyncPath(dirname(dest));
      } catch (err) {
        await removeFileIfPresent(tmp);
        throw err;
      }
      return describeExternalFile(disk, 'file-copy', dest);
    },

    async undoInterrupted(disk, target) {
      const file = copyPath(disk, target);
      await removeFileIfPresent(tempBeside(file, 'copy'));
      await removeFileIfPresent(file);
    },

    async undoCreate(_disk, entry) {
      if (entry.file !== undefined) await removeFileIfPresent(entry.file);
    },

    async checkRevert(disk, entry) {
      if (entry.file === undefined || !(await pathExists(entry.file))) {
        throw new VmsnapError('not-found', `disk ${disk.target}: the snapshot's copy ${entry.file ?? '(none)'} is missing`);
      }
    },

    async revert(disk, entry) {
      await this.checkRevert(disk, entry);
      const tmp = tempBeside(disk.path, 'revert');
      await removeFileIfPresent(tmp);
      try {
        await copy(entry.file as string, tmp);
        await replaceFile(tmp, disk.path);
      } catch (err) {
        await removeFileIfPresent(tmp);
        throw err;
      }
    },

    async delete(_disk, entry) {
      if (entry.file === undefined) return;
      try {
        await unlink(entry.file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    },

    async list(_disk, known): Promise<StoredSnapshot[]> {
      const out: StoredSnapshot[] = [];
      for (const k of known) {
        if (k.method === 'file-copy' && k.file !== undefined && (await pathExists(k.file))) {
          out.push({ kind: 'external', id: k.file, file: k.file });
        }
      }
      return out;
    },
  };
}
