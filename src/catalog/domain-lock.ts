import { constants } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';

const LOCK_FILE = '.lock';

/**
 * One operation per domain on this host, for in-process CLI work: an O_EXCL
 * lock file naming the holder's pid. A lock whose process is gone is stale
 * and taken over. The queue's Redis lock (with a lease) sits on top of this.
 */
export async function acquireLocalLock(domainDir: string, what: string): Promise<() => Promise<void>> {
  const path = join(domainDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      await fh.writeFile(JSON.stringify({ pid: process.pid, what, since: new Date().toISOString() }));
      await fh.close();
      return async () => {
        await unlink(path).catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = await readHolder(path);
      if (holder !== undefined && isAlive(holder.pid)) {
        throw new VmsnapError('busy', `domain is busy: ${holder.what} (pid ${holder.pid}) since ${holder.since}; try again when it finishes`, {
          retryable: true,
        });
      }
      await unlink(path).catch(() => undefined); // stale: its process is gone
    }
  }
  throw new VmsnapError('busy', `could not take the domain lock ${path}`, { retryable: true });
}

async function readHolder(path: string): Promise<{ pid: number; what: string; since: string } | undefined> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8')) as { pid: number; what: string; since: string };
    return typeof v.pid === 'number' ? v : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
