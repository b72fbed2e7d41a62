import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export type Format = 'qcow2' | 'raw';

export async function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `vmsnap-${prefix}-`));
}

export async function createImage(path: string, format: Format, size = '4M'): Promise<void> {
  await execa('qemu-img', ['create', '-q', '-f', format, path, size]);
}

/** Write `len` bytes of `byte` at `offset` as the guest would see them. */
export async function writePattern(path: string, format: Format, offset: number, byte: number, len = 65536): Promise<void> {
  await execa('qemu-io', ['-f', format, '-c', `write -P 0x${byte.toString(16)} ${offset} ${len}`, path]);
}

/** sha256 of the guest-visible bytes of an image (the whole virtual disk). */
export async function guestHash(path: string, format: Format): Promise<string> {
  const dir = await makeTempDir('hash');
  try {
    const out = join(dir, 'out.raw');
    await execa('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', path, out]);
    return createHash('sha256').update(await readFile(out)).digest('hex');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * `qemu-img check` on every qcow2 in the chain; resolves when all are clean.
 * `inUse`: the top image is open in a running QEMU, whose metadata caches can
 * make a shared read report leaked clusters (exit 3); corruption still fails.
 */
export async function checkChain(path: string, options: { inUse?: boolean } = {}): Promise<string[]> {
  const { stdout } = await execa('qemu-img', ['info', '--output=json', '--backing-chain', '-U', path]);
  const parsed = JSON.parse(stdout) as { filename: string; format: string }[] | { filename: string; format: string };
  const chain = Array.isArray(parsed) ? parsed : [parsed];
  for (const [i, layer] of chain.entries()) {
    if (layer.format !== 'qcow2') continue;
    const r = await execa('qemu-img', ['check', '-q', '-U', layer.filename], { reject: false });
    if (r.exitCode === 0 || (options.inUse === true && i === 0 && r.exitCode === 3)) continue;
    throw new Error(`qemu-img check ${layer.filename} exited ${r.exitCode}: ${r.stdout}${r.stderr}`);
  }
  return chain.map((l) => l.filename);
}
