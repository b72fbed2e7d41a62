import { VmsnapError } from '../../errors.js';
import type { DomainState } from '../../domain/model.js';
import type { QemuDomain } from '../../config/load-config.js';
import { QemuImg } from '../../storage/qcow2/qemu-img.js';
import type { HypervisorDriver } from '../driver.js';
import { connect } from 'node:net';

export interface QemuDriverOptions {
  qemuImg?: QemuImg;
  qmpTimeoutMs?: number;
}

/**
 * QEMU/KVM domains through their QMP socket. A socket that does not answer
 * means the domain is shut off; qemu-img's image lock is the second guard,
 * so a QEMU whose QMP socket is misconfigured is never taken for shut off.
 */
export function createQemuDriver(domain: QemuDomain, options: QemuDriverOptions = {}): HypervisorDriver {
  const img = options.qemuImg ?? new QemuImg();
  const timeoutMs = options.qmpTimeoutMs ?? 5_000;

  return {
    name: 'qemu',
    async getState(): Promise<DomainState> {
      const answered = await probeSocket(domain.qmpSocket, timeoutMs);
      if (!answered) {
        await assertImagesUnlocked(domain, img);
        return 'shutoff';
      }
      // Something answers on the QMP socket: the domain runs (paused or not).
      return 'running';
    },
  };
}

/** Resolves true when something accepts a connection on the socket; false for ENOENT/ECONNREFUSED. */
function probeSocket(path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new VmsnapError('timeout', `QMP socket ${path} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(true);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      if (isNoListener(err)) resolve(false);
      else reject(new VmsnapError('unavailable', `QMP socket ${path}: ${err.message}`, { cause: err }));
    });
  });
}

/** ENOENT or ECONNREFUSED on the QMP socket: no QEMU is listening there. */
function isNoListener(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e !== undefined && e !== null; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

async function assertImagesUnlocked(domain: QemuDomain, img: QemuImg): Promise<void> {
  for (const disk of domain.disks) {
    try {
      await img.info(disk.path);
    } catch (err) {
      if (err instanceof VmsnapError && err.code === 'unavailable') {
        throw new VmsnapError(
          'unavailable',
          `domain ${domain.name}: QMP socket ${domain.qmpSocket} does not answer but ${disk.path} is locked by a running QEMU; fix qmpSocket in the config or stop the domain`,
          { cause: err, retryable: true },
        );
      }
      if ((err as { code?: string }).code === 'command-failed') {
        throw new VmsnapError('not-found', `domain ${domain.name}: disk ${disk.target} (${disk.path}) cannot be read: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
  }
}
