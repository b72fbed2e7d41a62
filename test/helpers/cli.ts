import { existsSync } from 'node:fs';
import { Readable, Writable } from 'node:stream';
import { execa } from 'execa';
import { runCli } from '../../src/cli/run-cli.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/** Run the CLI in this process (fast; same code path as the binary's main). */
export async function vmsnap(args: string[], options: { stdin?: string; stopSignal?: () => Promise<string>; stdout?: Sink } = {}): Promise<CliResult> {
  const stdout = options.stdout ?? new Sink();
  const stderr = new Sink();
  const stdin = Readable.from(options.stdin === undefined ? [] : [options.stdin]);
  const code = await runCli(args, { stdout, stderr, stdin, ...(options.stopSignal !== undefined ? { stopSignal: options.stopSignal } : {}) });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

export const BIN = new URL('../../dist/src/cli/main.js', import.meta.url).pathname;

/** Run the built binary as a user would; needs `npm run build` first. */
export async function vmsnapBinary(args: string[], options: { stdin?: string; env?: Record<string, string> } = {}): Promise<CliResult & { signal?: string }> {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run npm run build first (npm test does)`);
  const r = await execa('node', [BIN, ...args], { reject: false, input: options.stdin ?? '', env: { VMSNAP_LOG_LEVEL: 'silent', ...options.env } });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), ...(r.signal !== undefined ? { signal: r.signal } : {}) };
}
