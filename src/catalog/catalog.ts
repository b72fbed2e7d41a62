import { readdir, readFile, rename, rmdir, lstat, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';
import { isValidName, validateName } from '../domain/names.js';
import type { PartialSnapshot, SnapshotManifest } from '../domain/model.js';
import { ensureDirInside, fsyncPath, isInside, removeFileIfPresent, writeFileAtomic } from './fs-safe.js';

export const MANIFEST_FILE = 'snapshot.json';
export const DELETING_FILE = 'snapshot.json.deleting';
export const JOURNAL_FILE = 'journal.json';
const CURRENT_FILE = '.current.json';

/**
 * What an operation in progress has done so far. It lives in the snapshot
 * folder until the manifest is committed, so a crash leaves a record of every
 * file to finish or remove.
 */
export interface Journal {
  op: 'create' | 'delete' | 'revert';
  domain: string;
  snapshot: string;
  startedAt: string;
  pid: number;
  steps: { step: string; at: string; data?: Record<string, unknown> }[];
  /** Files this operation created; the only files a cleanup may remove. */
  files: string[];
}

export interface CatalogListing {
  snapshots: SnapshotManifest[];
  partial: PartialSnapshot[];
}

/**
 * Manifests on disk, next to the data: `<root>/<domain>/<name>/snapshot.json`.
 * A snapshot exists once its manifest is committed, and only then.
 */
export class Catalog {
  constructor(readonly root: string) {}

  domainDir(domain: string): string {
    return join(this.root, validateName(domain, 'domain'));
  }

  snapshotDir(domain: string, name: string): string {
    return join(this.domainDir(domain), validateName(name, 'snapshot name'));
  }

  /**
   * A snapshot folder (and the domain folder above it) must be a real folder:
   * a symlink planted there could lead a read, a write or a delete elsewhere.
   */
  private async assertRealDir(domain: string, name: string): Promise<void> {
    for (const p of [this.domainDir(domain), this.snapshotDir(domain, name)]) {
      const st = await lstat(p).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (st !== undefined && (st.isSymbolicLink() || !st.isDirectory())) {
        throw new VmsnapError('bad-input', `${p} is a symlink or not a folder; vmsnap only reads and deletes real folders below ${this.root}`, { retryable: false });
      }
    }
  }

  async ensureDomainDir(domain: string): Promise<string> {
    return ensureDirInside(this.root, validateName(domain, 'domain'));
  }

  /** Committed snapshots, oldest first, plus folders that are not (yet, or any more) snapshots. */
  async list(domain: string): Promise<CatalogListing> {
    const dir = this.domainDir(domain);
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { snapshots: [], partial: [] };
      throw err;
    }
    const snapshots: SnapshotManifest[] = [];
    const partial: PartialSnapshot[] = [];
    for (const entry of entries.sort()) {
      if (!isValidName(entry)) continue;
      const sdir = join(dir, entry);
      const st = await lstat(sdir);
      if (!st.isDirectory()) continue;
      const files = (await readdir(sdir)).sort();
      if (files.includes(MANIFEST_FILE)) {
        try {
          snapshots.push(parseManifest(await readFile(join(sdir, MANIFEST_FILE), 'utf8'), entry, domain));
          continue;
        } catch (err) {
          partial.push({ name: entry, dir: sdir, reason: `unreadable manifest: ${(err as Error).message}`, files });
          continue;
        }
      }
      const reason = files.includes(DELETING_FILE)
        ? 'deletion in progress or interrupted'
        : files.includes(JOURNAL_FILE)
          ? 'creation in progress or interrupted (no committed manifest)'
          : 'no manifest';
      partial.push({ name: entry, dir: sdir, reason, files });
    }
    snapshots.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
    return { snapshots, partial };
  }

  async read(domain: string, name: string): Promise<SnapshotManifest> {
    await this.assertRealDir(domain, name);
    const file = join(this.snapshotDir(domain, name), MANIFEST_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new VmsnapError('not-found', `domain ${domain} has no snapshot named "${name}"; see vmsnap snapshot list ${domain}`);
      }
      throw err;
    }
    return parseManifest(text, name, domain);
  }

  /**
   * The manifest of a snapshot being deleted: committed, or already marked
   * for deletion by an interrupted delete, which a second delete finishes.
   */
  async readForDelete(domain: string, name: string): Promise<{ manifest: SnapshotManifest; marked: boolean }> {
    try {
      return { manifest: await this.read(domain, name), marked: false };
    } catch (err) {
      if (!(err instanceof VmsnapError && err.code === 'not-found')) throw err;
      try {
        await this.assertRealDir(domain, name);
        const text = await readFile(join(this.snapshotDir(domain, name), DELETING_FILE), 'utf8');
        return { manifest: parseManifest(text, name, domain), marked: true };
      } catch (inner) {
        if ((inner as NodeJS.ErrnoException).code === 'ENOENT') throw err;
        throw inner;
      }
    }
  }

  /** Rewrite a committed manifest in place (atomically), e.g. after a reparent. */
  async update(manifest: SnapshotManifest): Promise<void> {
    const dir = this.snapshotDir(manifest.domain, manifest.name);
    await writeFileAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  }

  /**
   * Start a snapshot: create its folder (0700, must not exist) and its journal.
   * Returns the folder. A taken name is a conflict, never an overwrite.
   */
  async begin(domain: string, name: string, op: Journal['op'] = 'create'): Promise<string> {
    const domainDir = await this.ensureDomainDir(domain);
    validateName(name, 'snapshot name');
    const dir = join(domainDir, name);
    try {
      await lstat(dir);
      throw new VmsnapError('conflict', `domain ${domain} already has a snapshot (or leftover folder) named "${name}"; choose another --name`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await ensureDirInside(this.root, domain, name);
    await fsyncPath(domainDir);
    const journal: Journal = { op, domain, snapshot: name, startedAt: new Date().toISOString(), pid: process.pid, steps: [], files: [] };
    await this.writeJournal(dir, journal);
    return dir;
  }

  async writeJournal(dir: string, journal: Journal): Promise<void> {
    await writeFileAtomic(join(dir, JOURNAL_FILE), `${JSON.stringify(journal, null, 2)}\n`);
  }

  async readJournal(dir: string): Promise<Journal | undefined> {
    try {
      return JSON.parse(await readFile(join(dir, JOURNAL_FILE), 'utf8')) as Journal;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Commit: the manifest appears atomically, then the journal goes. From here on the snapshot is listed. */
  async commit(manifest: SnapshotManifest): Promise<void> {
    const dir = this.snapshotDir(manifest.domain, manifest.name);
    await writeFileAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await removeFileIfPresent(join(dir, JOURNAL_FILE));
    await fsyncPath(dir);
  }

  /**
   * First step of a delete: the manifest is renamed so the snapshot is no
   * longer listed, but what it names is kept until the data is gone.
   */
  async markDeleting(domain: string, name: string): Promise<void> {
    const dir = this.snapshotDir(domain, name);
    await rename(join(dir, MANIFEST_FILE), join(dir, DELETING_FILE));
    await fsyncPath(dir);
  }

  /** Last step of a delete or an abandoned create: remove the listed files, then the folder. */
  async removeSnapshotDir(domain: string, name: string, files: readonly string[]): Promise<void> {
    await this.assertRealDir(domain, name);
    const dir = this.snapshotDir(domain, name);
    for (const file of files) {
      if (!isInside(dir, file)) continue; // files outside the folder belong to backends
      await removeFileIfPresent(file);
    }
    for (const own of [JOURNAL_FILE, `${JOURNAL_FILE}.tmp`, `${MANIFEST_FILE}.tmp`, MANIFEST_FILE, DELETING_FILE]) {
      await removeFileIfPresent(join(dir, own));
    }
    try {
      await rmdir(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code === 'ENOTEMPTY') {
        const left = await readdir(dir);
        throw new VmsnapError('io', `snapshot folder ${dir} still holds files vmsnap did not create (${left.join(', ')}); left in place`);
      }
      throw err;
    }
    await fsyncPath(this.domainDir(domain));
  }

  async getCurrent(domain: string): Promise<string | null> {
    try {
      const v = JSON.parse(await readFile(join(this.domainDir(domain), CURRENT_FILE), 'utf8')) as { name?: unknown };
      return typeof v.name === 'string' && isValidName(v.name) ? v.name : null;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** The snapshot the domain now descends from: the parent of the next snapshot. */
  async setCurrent(domain: string, name: string | null): Promise<void> {
    const dir = await this.ensureDomainDir(domain);
    await writeFileAtomic(join(dir, CURRENT_FILE), `${JSON.stringify({ name })}\n`);
  }

  async fileStat(path: string): Promise<{ bytes: number; mtimeMs: number }> {
    const st = await stat(path);
    return { bytes: st.size, mtimeMs: Math.trunc(st.mtimeMs) };
  }
}

function parseManifest(text: string, name: string, domain: string): SnapshotManifest {
  const m = JSON.parse(text) as SnapshotManifest;
  if (m.version !== 1 || m.name !== name || m.domain !== domain || typeof m.createdAt !== 'string' || !Array.isArray(m.disks)) {
    throw new VmsnapError('bad-input', `manifest of ${domain}/${name} does not match its folder or format`);
  }
  return m;
}
