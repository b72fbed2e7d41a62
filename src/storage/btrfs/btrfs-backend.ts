import { chmod, rename, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { VmsnapError } from '../../errors.js';
import type { DiskRef, ManifestDisk } from '../../domain/model.js';
import { ensureDirInside, fsyncPath, pathExists, removeFileIfPresent } from '../../catalog/fs-safe.js';
import { runCommand } from '../../exec/run-command.js';
import { describeExternalFile, type DiskSnapshotTarget, type StorageBackend, type StoredSnapshot } from '../backend.js';
import { tempBeside } from '../replace-file.js';

/**
 * Disk images in a btrfs subvolume. A snapshot is a read-only subvolume
 * snapshot (`btrfs subvolume snapshot -r`), instant and sharing every extent
 * with the live image. It is kept beside the subvolume, in
 * `<parent>/.vmsnap-<subvolume>/<domain>/<name>-<target>` (a snapshot has to
 * be on the same filesystem; the catalog folder may not be).
 *
 * Revert restores only the snapshotted disk, not the whole subvolume: a
 * reflink copy of the snapshot's image (instant on btrfs) renamed over the
 * live one. Swapping the whole subvolume would also revert the other images
 * that share it, which a per-disk snapshot model must not do.
 */
const SUBVOLUME_ROOT_INODE = 256;

export function createBtrfsBackend(options: { btrfs?: string; cp?: string } = {}): StorageBackend {
  const btrfs = options.btrfs ?? 'btrfs';
  const cp = options.cp ?? 'cp';

  /** The subvolume holding the disk: its image's folder must be a subvolume root. */
  async function subvolumeOf(disk: DiskRef): Promise<string> {
    const dir = dirname(disk.path);
    const st = await stat(dir);
    if (st.ino !== SUBVOLUME_ROOT_INODE) {
      throw new VmsnapError(
        'config',
        `disk ${disk.target}: ${dir} is not a btrfs subvolume, so the btrfs backend cannot snapshot ${disk.path}; make the image's folder a subvolume (btrfs subvolume create) or use the qcow2 or file backend`,
      );
    }
    return dir;
  }

  async function snapshotPath(disk: DiskRef, target: Pick<DiskSnapshotTarget, 'domain' | 'name'>): Promise<string> {
    const sub = await subvolumeOf(disk);
    const holder = await ensureDirInside(dirname(sub), `.vmsnap-${basename(sub)}`, target.domain);
    return join(holder, `${target.name}-${disk.target}`);
  }

  async function deleteSubvolume(path: string): Promise<void> {
    if (!(await pathExists(path))) return;
    await runCommand([btrfs, 'subvolume', 'delete', '--', path], { timeoutMs: 120_000 });
  }

  const subvolumeOfEntry = (entry: ManifestDisk): string | undefined => (entry.file === undefined ? undefined : dirname(entry.file));

  return {
    name: 'btrfs',

    async create(disk, target) {
      if (target.mode !== 'external') {
        throw new VmsnapError('invalid-spec', `disk ${disk.target}: the btrfs backend makes read-only subvolume snapshots (external); use --disk ${disk.target}=external`);
      }
      if (target.file !== undefined) {
        throw new VmsnapError('invalid-spec', `disk ${disk.target}: a btrfs snapshot lives beside its subvolume; drop file=`);
      }
      const sub = await subvolumeOf(disk);
      const snap = await snapshotPath(disk, target);
      if (await pathExists(snap)) {
        throw new VmsnapError('conflict', `disk ${disk.target}: ${snap} already exists; vmsnap never overwrites a snapshot`);
      }
      await runCommand([btrfs, 'subvolume', 'snapshot', '-r', '--', sub, snap], { timeoutMs: 120_000 });
      return describeExternalFile(disk, 'btrfs-snapshot', join(snap, basename(disk.path)));
    },

    async undoCreate(_disk, entry) {
      const snap = subvolumeOfEntry(entry);
      if (snap !== undefined) await deleteSubvolume(snap);
    },

    async undoInterrupted(disk, target) {
      await deleteSubvolume(await snapshotPath(disk, target));
    },

    async checkRevert(disk, entry) {
      if (entry.file === undefined || !(await pathExists(entry.file))) {
        throw new VmsnapError('not-found', `disk ${disk.target}: the snapshot's image ${entry.file ?? '(none)'} is missing`);
      }
      await subvolumeOf(disk);
    },

    async revert(disk, entry) {
      await this.checkRevert(disk, entry);
      const tmp = tempBeside(disk.path, 'revert');
      await removeFileIfPresent(tmp);
      try {
        await runCommand([cp, '--reflink=always', '--', entry.file as string, tmp], { timeoutMs: 600_000 });
        const st = await stat(disk.path);
        await chmod(tmp, st.mode & 0o7777);
        await fsyncPath(tmp);
        await rename(tmp, disk.path);
        await fsyncPath(dirname(disk.path));
      } catch (err) {
        await removeFileIfPresent(tmp);
        throw err;
      }
    },

    async delete(_disk, entry) {
      const snap = subvolumeOfEntry(entry);
      if (snap !== undefined) await deleteSubvolume(snap);
    },

    async list(_disk, known) {
      const out: StoredSnapshot[] = [];
      for (const k of known) {
        if (k.method === 'btrfs-snapshot' && k.file !== undefined && (await pathExists(k.file))) out.push({ kind: 'external', id: k.file, file: k.file });
      }
      return out;
    },
  };
}
