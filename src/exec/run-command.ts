import { execa, type ExecaError } from 'execa';
import { VmsnapError } from '../errors.js';

/**
 * The one place vmsnap spawns programs. Argument arrays only (never a shell),
 * a timeout on everything, and failures that keep argv, exit code and the
 * tail of stderr so an operator can rerun the exact command.
 */
export interface RunOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  input?: string;
  cwd?: string;
  /** Exit codes that are not failures (e.g. `qemu-img compare` returns 1 for "differs"). */
  okExitCodes?: number[];
}

export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export class CommandError extends VmsnapError {
  readonly argv: readonly string[];
  readonly exitCode_: number | undefined;
  readonly stderrTail: string;

  constructor(argv: readonly string[], message: string, opts: { exitCode?: number; stderrTail: string; timedOut: boolean; cause: unknown }) {
    super(opts.timedOut ? 'timeout' : 'command-failed', message, {
      cause: opts.cause,
      retryable: true,
      details: { argv: [...argv], exitCode: opts.exitCode, stderr: opts.stderrTail },
    });
    this.argv = argv;
    this.exitCode_ = opts.exitCode;
    this.stderrTail = opts.stderrTail;
  }
}

export const DEFAULT_TIMEOUT_MS = 10 * 60_000;

function tail(text: string, max = 400): string {
  const t = text.trim();
  return t.length > max ? `…${t.slice(-max)}` : t;
}

export async function runCommand(argv: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
  const [file, ...args] = argv;
  if (file === undefined) throw new VmsnapError('internal', 'runCommand: empty argv');
  try {
    const result = await execa(file, args, {
      timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      cancelSignal: options.signal,
      input: options.input,
      cwd: options.cwd,
      stripFinalNewline: false,
      reject: false,
      forceKillAfterDelay: 2_000,
      env: { LC_ALL: 'C' },
    });
    const exitCode = result.exitCode ?? -1;
    const ok = !result.failed || (options.okExitCodes?.includes(exitCode) ?? false);
    if (ok && !result.timedOut && !result.isCanceled) {
      return { stdout: String(result.stdout), stderr: String(result.stderr), exitCode };
    }
    throw result;
  } catch (err) {
    const e = err as ExecaError;
    const stderrTail = tail(String(e.stderr ?? ''));
    const timedOut = e.timedOut === true;
    const why = timedOut
      ? `timed out after ${options.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
      : e.isCanceled === true
        ? 'was cancelled'
        : e.exitCode !== undefined
          ? `exited ${e.exitCode}`
          : `could not run (${e.code ?? e.shortMessage ?? 'unknown error'})`;
    if (e.code === 'ENOENT') {
      throw new VmsnapError('unavailable', `${file} not found: install it (e.g. apt-get install qemu-utils) or set its path`, {
        cause: err,
        retryable: false,
        details: { argv: [...argv] },
      });
    }
    const msg = `${[file, ...args].join(' ')} ${why}${stderrTail ? `: ${stderrTail.replace(/\s*\n\s*/g, ' | ')}` : ''}`;
    throw new CommandError(argv, msg, { exitCode: e.exitCode, stderrTail, timedOut, cause: err });
  }
}
