import { constants } from 'node:fs';
import { lstat, mkdir, open, realpath, rename, rm, unlink } from 'node:fs/promises';
import { dirname, join, relative, isAbsolute, sep } from 'node:path';
import { VmsnapError } from '../errors.js';

/** Folders vmsnap creates hold guest RAM and disk data: owner-only. */
export const DIR_MODE = 0o700;
export const FILE_MODE = 0o600;

/** fsync a file or folder by path, so a rename or write is durable before we rely on it. */
export async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Write a file so that readers see either the old content or the new one,
 * never a torn mix: temp file in the same folder, fsync, rename, fsync folder.
 */
export async function writeFileAtomic(path: string, data: string, mode = FILE_MODE): Promise<void> {
  const tmp = `${path}.tmp`;
  await rm(tmp, { force: true });
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await fsyncPath(dirname(path));
}

/** True when `child` is `parent` or lies below it (both already resolved). */
export function isInside(parent: string, child: string): boolean {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/**
 * Create (if needed) and return a folder below `root`, refusing symlinks and
 * anything whose real path leaves `root`. Created folders are 0700.
 */
export async function ensureDirInside(root: string, ...segments: string[]): Promise<string> {
  await mkdir(root, { recursive: true, mode: DIR_MODE });
  const realRoot = await realpath(root);
  let current = realRoot;
  for (const segment of segments) {
    if (segment === '' || segment === '.' || segment === '..' || segment.includes('/') || segment.includes('\0')) {
      throw new VmsnapError('bad-input', `refusing path segment ${JSON.stringify(segment)}`);
    }
    current = join(current, segment);
    try {
      await mkdir(current, { mode: DIR_MODE });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = await lstat(current);
    if (st.isSymbolicLink() || !st.isDirectory()) {
      throw new VmsnapError('bad-input', `${current} is a symlink or not a folder; vmsnap only writes into real folders below ${root}`, {
        retryable: false,
      });
    }
  }
  return current;
}

/** Remove a file, but only if it is a regular file (never follows a symlink into somewhere else). */
export async function removeFileIfPresent(path: string): Promise<boolean> {
  try {
    const st = await lstat(path);
    if (st.isDirectory()) throw new VmsnapError('internal', `refusing to remove folder ${path} as a file`);
    await unlink(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
