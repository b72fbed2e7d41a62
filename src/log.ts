import { pino, type Logger } from 'pino';

export type { Logger };

/** pino JSON logs on stderr (stdout stays clean for --json output). */
export function createLogger(level: string = process.env['VMSNAP_LOG_LEVEL'] ?? 'info', bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ fd: 2, sync: true }));
}
