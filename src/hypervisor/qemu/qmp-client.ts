import { connect, type Socket } from 'node:net';
import { VmsnapError } from '../../errors.js';

/**
 * A small typed QMP client (no maintained npm package exists). One client
 * per connection; QEMU serves one client per monitor at a time, so vmsnap
 * connects for an operation and closes when done.
 *
 * - commands carry ids, replies are matched by id, each with a timeout;
 * - events are kept with QEMU's own timestamps (downtime is measured from
 *   the STOP and RESUME timestamps, not from our clock);
 * - QEMU's errors keep their `class` and `desc`;
 * - a lost connection fails every pending command with a retryable error.
 */

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU's timestamp in milliseconds since the epoch (microsecond precision). */
  timestampMs: number;
}

export interface QmpClientOptions {
  /** Connect + greeting + capabilities. */
  connectTimeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
}

export class QmpCommandError extends VmsnapError {
  readonly qmpClass: string;
  readonly desc: string;
  readonly command: string;

  constructor(command: string, qmpClass: string, desc: string) {
    super('qmp', `QEMU refused ${command}: ${desc} (${qmpClass})`, {
      retryable: false,
      details: { command, class: qmpClass, desc },
    });
    this.qmpClass = qmpClass;
    this.desc = desc;
    this.command = command;
  }
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface EventWaiter {
  match(e: QmpEvent): boolean;
  resolve(e: QmpEvent): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** How long events are kept for `waitForEvent` to look back into. */
const MAX_KEPT_EVENTS = 1000;

export class QmpClient {
  readonly socketPath: string;
  /** Every event received since connect, oldest first (bounded). */
  readonly events: QmpEvent[] = [];
  /** QEMU's version from the greeting, e.g. { major: 7, minor: 2, micro: 0 }. */
  version: { major: number; minor: number; micro: number } = { major: 0, minor: 0, micro: 0 };

  private readonly socket: Socket;
  private readonly commandTimeoutMs: number;
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Set<EventWaiter>();
  private nextId = 1;
  private buffer = '';
  private closedError: VmsnapError | undefined;
  private greeting: ((g: Record<string, unknown>) => void) | undefined;

  private constructor(socketPath: string, socket: Socket, options: QmpClientOptions) {
    this.socketPath = socketPath;
    this.socket = socket;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 30_000;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('close', () => this.failAll(new VmsnapError('qmp', `QMP connection to ${socketPath} was lost`, { retryable: true })));
    socket.on('error', (err) => this.failAll(new VmsnapError('qmp', `QMP connection to ${socketPath} failed: ${err.message}`, { retryable: true, cause: err })));
  }

  /** Connect, read the greeting, negotiate capabilities. */
  static async connect(socketPath: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.connectTimeoutMs ?? 5_000;
    const socket = connect(socketPath);
    const client = new QmpClient(socketPath, socket, options);
    const greeting = new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new VmsnapError('timeout', `QMP socket ${socketPath} sent no greeting within ${timeoutMs} ms; is it a QMP socket (-qmp unix:...,server=on,wait=off)?`)), timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new VmsnapError('unavailable', `cannot connect to QMP socket ${socketPath}: ${err.message}`, { cause: err, retryable: true }));
      });
      socket.once('close', () => {
        clearTimeout(timer);
        reject(new VmsnapError('unavailable', `QMP socket ${socketPath} closed before its greeting; another client may hold the monitor`, { retryable: true }));
      });
      client.greeting = (g) => {
        clearTimeout(timer);
        resolve(g);
      };
    });
    try {
      const g = await greeting;
      const v = ((g['QMP'] as Record<string, unknown> | undefined)?.['version'] as { qemu?: { major: number; minor: number; micro: number } } | undefined)?.qemu;
      if (v !== undefined) client.version = v;
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /** Run one command; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    const id = `vmsnap-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VmsnapError('timeout', `QMP command ${command} got no answer within ${timeoutMs} ms from ${this.socketPath}`, { retryable: true }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const message = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      this.socket.write(`${message}\r\n`);
    });
  }

  /**
   * Resolve with the first event (received after `since`, an index into
   * `events`) that matches. Pass `since = client.events.length` taken before
   * the command that causes the event, so no event is missed.
   */
  waitForEvent(match: (e: QmpEvent) => boolean, timeoutMs: number, since = 0): Promise<QmpEvent> {
    const seen = this.events.slice(since).find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    return new Promise<QmpEvent>((resolve, reject) => {
      const waiter: EventWaiter = {
        match,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new VmsnapError('timeout', `no matching QMP event within ${timeoutMs} ms from ${this.socketPath}`, { retryable: true }));
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /** The latest event with this name, if any. */
  lastEvent(name: string): QmpEvent | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) {
      const e = this.events[i];
      if (e?.event === name) return e;
    }
    return undefined;
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.socket.destroy();
    this.failAll(new VmsnapError('qmp', `QMP connection to ${this.socketPath} was closed`, { retryable: true }));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line !== '') this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.failAll(new VmsnapError('qmp', `QMP socket ${this.socketPath} sent something that is not JSON: ${line.slice(0, 80)}`));
      this.socket.destroy();
      return;
    }
    if ('QMP' in msg) {
      this.greeting?.(msg);
      this.greeting = undefined;
      return;
    }
    if (typeof msg['event'] === 'string') {
      this.onEvent(msg);
      return;
    }
    const id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (pending === undefined || id === undefined) return; // a reply to a command that timed out
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ('error' in msg) {
      const e = msg['error'] as { class?: string; desc?: string };
      pending.reject(new QmpCommandError(pending.command, e.class ?? 'GenericError', e.desc ?? 'no description'));
    } else {
      pending.resolve(msg['return']);
    }
  }

  private onEvent(msg: Record<string, unknown>): void {
    const ts = msg['timestamp'] as { seconds?: number; microseconds?: number } | undefined;
    const event: QmpEvent = {
      event: msg['event'] as string,
      data: (msg['data'] as Record<string, unknown> | undefined) ?? {},
      timestampMs: (ts?.seconds ?? 0) * 1000 + (ts?.microseconds ?? 0) / 1000,
    };
    this.events.push(event);
    if (this.events.length > MAX_KEPT_EVENTS) this.events.splice(0, this.events.length - MAX_KEPT_EVENTS);
    for (const w of [...this.waiters]) {
      if (w.match(event)) {
        this.waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve(event);
      }
    }
  }

  private failAll(err: VmsnapError): void {
    if (this.closedError !== undefined) return;
    this.closedError = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiters.clear();
  }
}
