import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { mkdir, rm } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { DiskRef, ManifestDisk } from '../../src/domain/model.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import { checkChain, guestHash, writePattern, type Format } from '../helpers/images.js';

export interface StorageFixture {
  backend: StorageBackend;
  /** A fresh disk for one test, with a 4 MiB virtual size. */
  makeDisk(): Promise<DiskRef>;
  /** Folder under which snapshot folders are made. */
  root: string;
  cleanup(): Promise<void>;
}

/**
 * One suite every storage backend passes, against real files and real
 * qemu-img: create, list, revert restores the exact bytes, delete frees the
 * snapshot and leaves the others intact.
 */
export function describeStorageBackend(
  label: string,
  modes: readonly ('internal' | 'external')[],
  setup: () => Promise<StorageFixture>,
): void {
  describe.each(modes)(`storage backend ${label} (%s)`, (mode) => {
    let fx: StorageFixture;
    let disk: DiskRef;
    const made = new Map<string, ManifestDisk>();

    beforeEach(async () => {
      fx = await setup();
      disk = await fx.makeDisk();
      made.clear();
    });
    afterEach(async () => {
      await fx.cleanup();
    });

    async function snap(name: string): Promise<ManifestDisk> {
      const dir = join(fx.root, name);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const entry = await fx.backend.create(disk, { domain: 'd1', name, dir, mode });
      made.set(name, entry);
      return entry;
    }
    const others = (name: string) => [...made.entries()].filter(([n]) => n !== name).map(([, e]) => e);
    const content = () => guestHash(disk.path, disk.format as Format);
    async function remove(name: string): Promise<void> {
      const entry = made.get(name);
      if (entry === undefined) throw new Error(`no snapshot ${name}`);
      made.delete(name);
      await fx.backend.delete(disk, entry, [...made.values()]);
      await rm(join(fx.root, name), { recursive: true, force: true });
    }

    it('creates a snapshot that list reports, with the mode asked for', async () => {
      const entry = await snap('s1');
      expect(entry.mode).toBe(mode);
      expect(entry.target).toBe(disk.target);
      const listed = await fx.backend.list(disk, [entry]);
      const id = mode === 'internal' ? 's1' : entry.file;
      expect(listed.map((l) => l.id)).toContain(id);
    });

    it('revert restores the exact bytes written before the snapshot', async () => {
      await writePattern(disk.path, disk.format as Format, 0, 0xaa);
      const before = await content();
      const entry = await snap('s1');
      expect(await content()).toBe(before);
      await writePattern(disk.path, disk.format as Format, 0, 0xbb);
      await writePattern(disk.path, disk.format as Format, 1 << 20, 0xcc);
      expect(await content()).not.toBe(before);
      await fx.backend.revert(disk, entry);
      expect(await content()).toBe(before);
      await checkChain(disk.path);
    });

    it('keeps every snapshot revertible, in any order', async () => {
      const hashes: string[] = [];
      for (const [i, byte] of [0x11, 0x22, 0x33].entries()) {
        await writePattern(disk.path, disk.format as Format, i * 65536, byte);
        hashes.push(await content());
        await snap(`s${i + 1}`);
      }
      await writePattern(disk.path, disk.format as Format, 0, 0x44);
      for (const i of [0, 2, 1]) {
        await fx.backend.revert(disk, made.get(`s${i + 1}`) as ManifestDisk);
        expect(await content()).toBe(hashes[i]);
      }
    });

    it('delete frees the snapshot and leaves the others and the active disk intact', async () => {
      const hashes: string[] = [];
      for (const [i, byte] of [0x51, 0x52, 0x53].entries()) {
        await writePattern(disk.path, disk.format as Format, i * 65536, byte);
        hashes.push(await content());
        await snap(`s${i + 1}`);
      }
      await writePattern(disk.path, disk.format as Format, 3 * 65536, 0x54);
      const active = await content();
      const middle = made.get('s2') as ManifestDisk;
      await remove('s2');
      // Gone from storage:
      const listed = await fx.backend.list(disk, [...made.values(), middle]);
      expect(listed.map((l) => l.id)).not.toContain(mode === 'internal' ? 's2' : middle.file);
      if (middle.file !== undefined) await expect(stat(middle.file)).rejects.toThrow(/ENOENT/);
      // Nothing else lost:
      expect(await content()).toBe(active);
      await checkChain(disk.path);
      await fx.backend.revert(disk, made.get('s3') as ManifestDisk);
      expect(await content()).toBe(hashes[2]);
      await fx.backend.revert(disk, made.get('s1') as ManifestDisk);
      expect(await content()).toBe(hashes[0]);
      // Oldest and newest can go too, and the disk still reads.
      await remove('s1');
      await remove('s3');
      expect(await content()).toBe(hashes[0]);
      await checkChain(disk.path);
      expect(others('none')).toHaveLength(0);
    });

    it('undoCreate puts the disk back as it was before the snapshot', async () => {
      await writePattern(disk.path, disk.format as Format, 0, 0x61);
      const before = await content();
      const entry = await snap('s1');
      await fx.backend.undoCreate(disk, entry);
      expect(await content()).toBe(before);
      const listed = await fx.backend.list(disk, [entry]);
      expect(listed.filter((l) => l.id === (mode === 'internal' ? 's1' : entry.file))).toHaveLength(0);
      await checkChain(disk.path);
    });
  });
}
