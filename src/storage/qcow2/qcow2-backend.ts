import { link, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VmsnapError } from '../../errors.js';
import type { DiskRef, ManifestDisk } from '../../domain/model.js';
import { fsyncPath, pathExists, removeFileIfPresent } from '../../catalog/fs-safe.js';
import { describeExternalFile, type DiskSnapshotTarget, type StorageBackend, type StoredSnapshot } from '../backend.js';
import { replaceFile, tempBeside } from '../replace-file.js';
import { QemuImg, type QemuImgInfo } from './qemu-img.js';

/**
 * Where an external snapshot's frozen image goes: in the snapshot folder
 * (a hard link needs the same filesystem), else beside the disk, named as
 * libvirt names its overlays. Shared by the offline backend and the QEMU driver.
 */
export async function frozenPath(disk: DiskRef, target: Pick<DiskSnapshotTarget, 'dir' | 'name' | 'file'>): Promise<string> {
  if (target.file !== undefined) return target.file;
  const [diskDev, dirDev] = await Promise.all([stat(disk.path), stat(target.dir)]);
  return diskDev.dev === dirDev.dev ? join(target.dir, `${disk.target}.qcow2`) : `${disk.path}.${target.name}`;
}

/**
 * qcow2 images through qemu-img.
 *
 * Internal snapshots are qcow2 tags. External snapshots keep the configured
 * path as the active image: the current image is frozen under a new name
 * (a hard link, then an atomic rename of a fresh overlay over the old path),
 * so the domain's config and launch command never point at a stale file.
 */
export function createQcow2Backend(options: { qemuImg?: QemuImg } = {}): StorageBackend {
  const img = options.qemuImg ?? new QemuImg();

  /** The image in the active chain whose snapshot table holds `tag`. */
  async function findTag(disk: DiskRef, tag: string, shared = false): Promise<QemuImgInfo | undefined> {
    const chain = await img.chain(disk.path, { shared });
    return chain.find((i) => i.snapshots?.some((s) => s.name === tag));
  }

  async function childrenOf(file: string, candidates: readonly string[]): Promise<string[]> {
    const children: string[] = [];
    for (const c of candidates) {
      if (c === file || !(await pathExists(c))) continue;
      const info = await img.info(c, { shared: true });
      if (info['full-backing-filename'] === file || info['backing-filename'] === file) children.push(c);
    }
    return children;
  }

  /** Everything a revert needs is there and nothing unsnapshotted would be lost; `shared` reads images QEMU holds. */
  async function checkRevertable(disk: DiskRef, entry: ManifestDisk, shared: boolean): Promise<void> {
    if (entry.mode === 'internal' && entry.tag !== undefined) {
      const holder = await findTag(disk, entry.tag, shared);
      if (holder === undefined) {
        throw new VmsnapError('not-found', `disk ${disk.target}: no qcow2 snapshot tagged "${entry.tag}" in the chain of ${disk.path}`);
      }
      if (holder.filename !== disk.path) {
        throw new VmsnapError(
          'conflict',
          `disk ${disk.target}: internal snapshot "${entry.tag}" lives in ${holder.filename}, which a later external snapshot froze; revert to that external snapshot instead`,
        );
      }
      return;
    }
    if (entry.file === undefined || !(await pathExists(entry.file))) {
      throw new VmsnapError('not-found', `disk ${disk.target}: the snapshot's image ${entry.file ?? '(none)'} is missing`);
    }
    const active = await img.info(disk.path, { shared });
    const tags = active.snapshots?.map((s) => s.name) ?? [];
    if (tags.length > 0) {
      throw new VmsnapError(
        'conflict',
        `disk ${disk.target}: ${disk.path} holds internal snapshots (${tags.join(', ')}) that this revert would discard; delete them first`,
      );
    }
  }

  return {
    name: 'qcow2',

    async create(disk, target) {
      if (disk.format !== 'qcow2') {
        throw new VmsnapError('invalid-spec', `disk ${disk.target}: the qcow2 backend needs a qcow2 image, ${disk.path} is ${disk.format}`);
      }
      const top = await img.info(disk.path);
      if (target.mode === 'internal') {
        const holder = await findTag(disk, target.name);
        if (holder !== undefined) {
          throw new VmsnapError('conflict', `disk ${disk.target}: ${holder.filename} already has a qcow2 snapshot tagged "${target.name}"; choose another name`);
        }
        await img.snapshotCreate(disk.path, target.name);
        return { target: disk.target, path: disk.path, format: disk.format, mode: 'internal', method: 'qcow2-internal', tag: target.name };
      }
      const frozen = await frozenPath(disk, target);
      if (await pathExists(frozen)) {
        throw new VmsnapError('conflict', `disk ${disk.target}: ${frozen} already exists; vmsnap never overwrites a file`);
      }
      const overlay = tempBeside(disk.path, 'overlay');
      await removeFileIfPresent(overlay);
      // Freeze: the current image gets a second name; then a fresh overlay replaces the first.
      await link(disk.path, frozen);
      try {
        await fsyncPath(dirname(frozen));
        await img.createOverlay(overlay, frozen, 'qcow2');
        await replaceFile(overlay, disk.path);
      } catch (err) {
        await removeFileIfPresent(overlay);
        await unlink(frozen).catch(() => undefined);
        throw err;
      }
      return describeExternalFile(disk, 'qcow2-external', frozen, { backing: top['full-backing-filename'] ?? null });
    },

    async undoInterrupted(disk, target) {
      if (target.mode === 'internal') {
        await this.undoCreate(disk, { target: disk.target, path: disk.path, format: disk.format, mode: 'internal', tag: target.name });
        return;
      }
      await removeFileIfPresent(tempBeside(disk.path, 'overlay'));
      const frozen = await frozenPath(disk, target);
      if (!(await pathExists(frozen))) return;
      const [f, p] = await Promise.all([stat(frozen), stat(disk.path)]);
      if (f.ino === p.ino) await unlink(frozen); // linked, overlay not yet in place: only a second name
      else await this.undoCreate(disk, { target: disk.target, path: disk.path, format: disk.format, mode: 'external', file: frozen });
    },

    async undoCreate(disk, entry) {
      if (entry.mode === 'internal' && entry.tag !== undefined) {
        if ((await findTag(disk, entry.tag)) !== undefined) await img.snapshotDelete(disk.path, entry.tag);
        return;
      }
      if (entry.file === undefined || !(await pathExists(entry.file))) return;
      const active = await img.info(disk.path);
      if (active['full-backing-filename'] === entry.file) {
        // Nothing ran on the overlay since we made it: put the frozen image back in place.
        await replaceFile(entry.file, disk.path);
      } else {
        await unlink(entry.file);
      }
    },

    async checkRevert(disk, entry) {
      await checkRevertable(disk, entry, true);
    },

    async revert(disk, entry) {
      await checkRevertable(disk, entry, false);
      if (entry.mode === 'internal' && entry.tag !== undefined) {
        await img.snapshotApply(disk.path, entry.tag);
        return;
      }
      const overlay = tempBeside(disk.path, 'overlay');
      await removeFileIfPresent(overlay);
      try {
        await img.createOverlay(overlay, entry.file as string, 'qcow2');
        await replaceFile(overlay, disk.path);
      } catch (err) {
        await removeFileIfPresent(overlay);
        throw err;
      }
    },

    async delete(disk, entry, others) {
      if (entry.mode === 'internal' && entry.tag !== undefined) {
        const holder = await findTag(disk, entry.tag);
        if (holder !== undefined) await img.snapshotDelete(holder.filename, entry.tag);
        return;
      }
      const file = entry.file;
      if (file === undefined || !(await pathExists(file))) return;
      const info = await img.info(file);
      const otherTags = (info.snapshots ?? []).map((s) => s.name);
      if (otherTags.length > 0) {
        throw new VmsnapError(
          'conflict',
          `disk ${disk.target}: ${file} also holds internal snapshots (${otherTags.join(', ')}); delete those first`,
        );
      }
      const backing = info['full-backing-filename'] ?? null;
      const backingFormat = info['backing-filename-format'] ?? (backing === null ? null : 'qcow2');
      const candidates = [disk.path, ...others.filter((o) => o.file !== undefined).map((o) => o.file as string)];
      // Every image that sees this one as its backing takes over its data, then it can go.
      for (const child of await childrenOf(file, candidates)) {
        await img.rebase(child, backing, backingFormat);
      }
      await unlink(file);
    },

    async list(disk, known) {
      const out: StoredSnapshot[] = [];
      const chain = await img.chain(disk.path, { shared: true });
      for (const layer of chain) {
        for (const s of layer.snapshots ?? []) out.push({ kind: 'internal', id: s.name, file: layer.filename });
      }
      const chainFiles = new Set(chain.map((l) => l.filename));
      for (const k of known) {
        if (k.mode === 'external' && k.file !== undefined && (chainFiles.has(k.file) || (await pathExists(k.file)))) {
          out.push({ kind: 'external', id: k.file, file: k.file });
        }
      }
      return out;
    },
  };
}
