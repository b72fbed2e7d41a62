import { chmod, chown, rename, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsyncPath } from '../catalog/fs-safe.js';

/** A temp name beside `path` that vmsnap recognises as its own leftover. */
export function tempBeside(path: string, purpose: string): string {
  return join(dirname(path), `.${basename(path)}.vmsnap-${purpose}`);
}

/**
 * Put `fresh` in place of `dest` in one rename, with dest's mode and owner,
 * so the domain's configured disk path is never missing or half-written.
 */
export async function replaceFile(fresh: string, dest: string): Promise<void> {
  const st = await stat(dest);
  await chmod(fresh, st.mode & 0o7777);
  await chown(fresh, st.uid, st.gid);
  await fsyncPath(fresh);
  await rename(fresh, dest);
  await fsyncPath(dirname(dest));
}
