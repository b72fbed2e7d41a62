import { randomInt } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { VmsnapError } from '../../errors.js';

/**
 * The QEMU guest agent (qemu-ga) over its unix socket. The protocol is QMP's
 * JSON without a greeting; replies carry no id, so every conversation starts
 * with guest-sync (a random id echoed back) to skip replies a previous
 * client left unread. Every call has a timeout: an agent that stops
 * answering must never hang a snapshot.
 */
export class GuestAgent {
  private buffer = '';
  private waiting: ((line: string) => void) | undefined;
  private closed: Error | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.drain();
    });
    const fail = (err: Error) => {
      this.closed = err;
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new VmsnapError('unavailable', `guest agent socket ${path} closed`, { retryable: true })));
  }

  static async connect(path: string, timeoutMs: number): Promise<GuestAgent> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new VmsnapError('timeout', `guest agent socket ${path} did not accept within ${timeoutMs} ms`)), timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new VmsnapError('unavailable', `cannot connect to the guest agent at ${path}: ${err.message}; is qemu-guest-agent running in the guest?`, { cause: err }));
      });
    });
    const agent = new GuestAgent(socket, path);
    const id = randomInt(1, 2 ** 31);
    const deadline = Date.now() + timeoutMs;
    agent.send('guest-sync', { id });
    for (;;) {
      const reply = await agent.readReply(Math.max(1, deadline - Date.now()), 'guest-sync');
      if (reply['return'] === id) return agent;
    }
  }

  /** One command and its `return`; QGA errors keep their class and desc. */
  async execute<T = unknown>(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<T> {
    this.send(command, args);
    const reply = await this.readReply(timeoutMs, command);
    if ('error' in reply) {
      const e = reply['error'] as { class?: string; desc?: string };
      throw new VmsnapError('qmp', `the guest agent refused ${command}: ${e.desc ?? 'no description'} (${e.class ?? 'GenericError'})`, { retryable: false });
    }
    return reply['return'] as T;
  }

  close(): void {
    this.socket.destroy();
  }

  private send(command: string, args?: Record<string, unknown>): void {
    if (this.closed !== undefined) throw this.closed;
    this.socket.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
  }

  private readReply(timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new VmsnapError('timeout', `the guest agent did not answer ${what} within ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      this.waiting = (line) => {
        clearTimeout(timer);
        try {
          resolve(JSON.parse(line) as Record<string, unknown>);
        } catch {
          reject(new VmsnapError('qmp', `the guest agent sent something that is not JSON: ${line.slice(0, 80)}`));
        }
      };
      this.drain();
    });
  }

  private drain(): void {
    let nl: number;
    while (this.waiting !== undefined && (nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line === '') continue;
      const w = this.waiting;
      this.waiting = undefined;
      w(line);
    }
  }
}
