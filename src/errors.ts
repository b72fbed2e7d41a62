/**
 * One error type for the whole tool. `code` says what went wrong in a word a
 * script can match, `retryable` tells the queue whether another attempt can
 * help, and `exitCode` is what the CLI returns (sysexits.h: 65 data error,
 * 69 unavailable). Messages are one line that names the field and the fix.
 */
export type ErrorCode =
  | 'usage' // bad CLI flags: exit 2
  | 'config' // config file invalid
  | 'bad-input' // bad names, job data, input files
  | 'invalid-spec' // a snapshot request that cannot be satisfied
  | 'unknown-domain'
  | 'not-found' // snapshot or file that does not exist
  | 'conflict' // name taken, --force needed, state does not allow it
  | 'unavailable' // a tool, socket or service that is not there, or a domain in use
  | 'busy' // domain lock held by another operation
  | 'command-failed' // a spawned command exited non-zero
  | 'timeout'
  | 'qmp' // QEMU answered with an error
  | 'io'
  | 'internal';

const EXIT_CODES: Record<ErrorCode, number> = {
  usage: 2,
  config: 65,
  'bad-input': 65,
  'invalid-spec': 65,
  'unknown-domain': 65,
  'not-found': 65,
  conflict: 65,
  unavailable: 69,
  busy: 69,
  'command-failed': 1,
  timeout: 1,
  qmp: 1,
  io: 1,
  internal: 1,
};

/** Codes no retry can fix: the queue turns these into BullMQ UnrecoverableError. */
const NOT_RETRYABLE = new Set<ErrorCode>([
  'usage',
  'config',
  'bad-input',
  'invalid-spec',
  'unknown-domain',
  'not-found',
  'conflict',
]);

export interface VmsnapErrorOptions {
  retryable?: boolean;
  cause?: unknown;
  /** Pipeline step that failed, when there is one. */
  step?: string;
  details?: Record<string, unknown>;
}

export class VmsnapError extends Error {
  override readonly name = 'VmsnapError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly step: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: VmsnapErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? !NOT_RETRYABLE.has(code);
    this.step = options.step;
    this.details = options.details;
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }
}

/** True for errors a later attempt may get past; unknown errors count as retryable. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof VmsnapError) return err.retryable;
  if (err instanceof Error && err.name === 'VmsnapError') {
    return (err as { retryable?: boolean }).retryable !== false;
  }
  return true;
}

export function exitCodeOf(err: unknown): number {
  return err instanceof VmsnapError ? err.exitCode : 1;
}

/** Wrap a failure with the step it happened in, keeping the original as `cause`. */
export function atStep(step: string, err: unknown): VmsnapError {
  if (err instanceof VmsnapError && err.step !== undefined) return err;
  const base = err instanceof VmsnapError ? err : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return new VmsnapError(base?.code ?? 'internal', `step ${step} failed: ${message}`, {
    retryable: base?.retryable ?? true,
    cause: err,
    step,
    details: base?.details,
  });
}
