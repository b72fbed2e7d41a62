import { runCommand, CommandError } from '../../exec/run-command.js';
import { VmsnapError } from '../../errors.js';

export interface QemuImgInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: { id: string; name: string; 'vm-state-size': number; 'date-sec': number }[];
}

export interface QemuImgOptions {
  bin?: string;
  timeoutMs?: number;
}

/** Thin typed wrapper over the qemu-img commands vmsnap uses. */
export class QemuImg {
  readonly bin: string;
  readonly timeoutMs: number;

  constructor(options: QemuImgOptions = {}) {
    this.bin = options.bin ?? 'qemu-img';
    this.timeoutMs = options.timeoutMs ?? 30 * 60_000;
  }

  private run(args: string[], timeoutMs = this.timeoutMs) {
    return runCommand([this.bin, ...args], { timeoutMs }).catch((err: unknown) => {
      throw translateLockError(err);
    });
  }

  /** Info of one image; `shared` (-U) reads an image a running QEMU has open. */
  async info(path: string, opts: { shared?: boolean } = {}): Promise<QemuImgInfo> {
    const { stdout } = await this.run(['info', '--output=json', ...(opts.shared ? ['-U'] : []), path], 60_000);
    return JSON.parse(stdout) as QemuImgInfo;
  }

  /** The image and every backing file below it, top first. */
  async chain(path: string, opts: { shared?: boolean } = {}): Promise<QemuImgInfo[]> {
    const { stdout } = await this.run(
      ['info', '--output=json', '--backing-chain', ...(opts.shared ? ['-U'] : []), path],
      60_000,
    );
    const parsed = JSON.parse(stdout) as QemuImgInfo | QemuImgInfo[];
    return Array.isArray(parsed) ? parsed : [parsed];
  }

  snapshotCreate(path: string, tag: string) {
    return this.run(['snapshot', '-c', tag, path]);
  }
  snapshotApply(path: string, tag: string) {
    return this.run(['snapshot', '-a', tag, path]);
  }
  snapshotDelete(path: string, tag: string) {
    return this.run(['snapshot', '-d', tag, path]);
  }

  /** New qcow2 overlay on `backing`. */
  createOverlay(path: string, backing: string, backingFormat: string) {
    return this.run(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, path]);
  }

  /** True when the image itself (not its backing chain) holds data. */
  async hasOwnData(path: string, opts: { shared?: boolean } = {}): Promise<boolean> {
    const { stdout } = await this.run(['map', '--output=json', ...(opts.shared ? ['-U'] : []), path], 60_000);
    return (JSON.parse(stdout) as { depth: number; data: boolean }[]).some((e) => e.depth === 0 && e.data);
  }

  /**
   * Overlay on a backing image a running QEMU holds locked: -u skips opening
   * the backing file, so the virtual size must be given.
   */
  createOverlayUnsafe(path: string, backing: string, backingFormat: string, virtualSize: number) {
    return this.run(['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', backingFormat, path, String(virtualSize)]);
  }

  /**
   * Safe rebase: data that `path` saw through its old backing and would not
   * see through the new one is copied into `path` first.
   */
  rebase(path: string, backing: string | null, backingFormat: string | null) {
    const args = ['rebase', '-q', '-f', 'qcow2'];
    if (backing === null) args.push('-b', '');
    else args.push('-b', backing, '-F', backingFormat ?? 'qcow2');
    return this.run([...args, path]);
  }

  /** Write `path`'s own data into its backing image `base` (qemu-img commit -b); `path` is left empty. */
  commit(path: string, base: string) {
    return this.run(['commit', '-q', '-f', 'qcow2', '-b', base, path]);
  }

  /** Point `path` at another backing image without copying: only right when both read the same. */
  rebaseUnsafe(path: string, backing: string, backingFormat: string) {
    return this.run(['rebase', '-q', '-u', '-f', 'qcow2', '-b', backing, '-F', backingFormat, path]);
  }

  check(path: string) {
    return this.run(['check', '-q', path], 30 * 60_000);
  }
}

/** qemu-img's image lock failing means a QEMU process has the image open: the domain runs. */
export function translateLockError(err: unknown): unknown {
  if (err instanceof CommandError && /Failed to get ("write"|shared "write"|"consistent read") lock/.test(err.stderrTail)) {
    return new VmsnapError(
      'unavailable',
      `the image is in use by a running QEMU (image lock held); stop the domain or let vmsnap reach it over QMP: ${err.stderrTail.split('\n')[0]}`,
      { cause: err, retryable: true, details: err.details },
    );
  }
  return err;
}
