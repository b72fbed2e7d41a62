import { execa, type ResultPromise } from 'execa';
import { VmsnapError } from '../../errors.js';
import type { DomainState } from '../../domain/model.js';
import { CommandError, runCommand } from '../../exec/run-command.js';

/**
 * virsh, the only way vmsnap talks to libvirt: argument arrays, `-c URI`
 * from the config, `-q` so output is data without banners.
 */
export class Virsh {
  constructor(
    readonly uri: string,
    readonly domain: string,
    readonly options: { bin?: string; timeoutMs?: number } = {},
  ) {}

  get bin(): string {
    return this.options.bin ?? 'virsh';
  }

  async run(args: string[], timeoutMs = this.options.timeoutMs ?? 60_000): Promise<string> {
    try {
      return (await runCommand([this.bin, '-q', '-c', this.uri, ...args], { timeoutMs })).stdout;
    } catch (err) {
      throw this.translate(err);
    }
  }

  /** libvirt's two failures an operator fixes outside vmsnap, said plainly. */
  translate(err: unknown): unknown {
    if (!(err instanceof CommandError)) return err;
    if (/failed to get domain|Domain not found/.test(err.stderrTail)) {
      return new VmsnapError('not-found', `libvirt at ${this.uri} has no domain "${this.domain}": define it there, or set libvirtName in the config`, { cause: err, retryable: false });
    }
    if (/failed to connect to the hypervisor/.test(err.stderrTail)) {
      return new VmsnapError('unavailable', `cannot reach libvirtd at ${this.uri}: start libvirtd or fix the domain's uri (${err.stderrTail.split('\n').at(-1) ?? ''})`, { cause: err, retryable: true });
    }
    return err;
  }

  async state(): Promise<DomainState> {
    const s = (await this.run(['domstate', '--domain', this.domain])).trim();
    switch (s) {
      case 'running':
      case 'idle':
      case 'blocked':
      case 'in shutdown':
        return 'running';
      case 'paused':
      case 'pmsuspended':
        return 'paused';
      case 'shut off':
      case 'crashed':
        return 'shutoff';
      default:
        throw new VmsnapError('unavailable', `libvirt domain ${this.domain} is in state "${s}", which vmsnap does not know; wait for it to settle`);
    }
  }

  /** Every disk (device "disk") and the file it reads from now, or from its persistent definition with `inactive`. */
  async disks(inactive: boolean): Promise<Map<string, string>> {
    const out = await this.run(['domblklist', '--domain', this.domain, '--details', ...(inactive ? ['--inactive'] : [])]);
    const disks = new Map<string, string>();
    for (const line of out.split('\n')) {
      const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s*$/.exec(line);
      if (m === null || m[2] !== 'disk') continue;
      disks.set(m[3] as string, m[4] === '-' ? '' : (m[4] as string));
    }
    return disks;
  }

  /** Whether libvirt keeps snapshot metadata under this name. */
  async hasSnapshot(name: string): Promise<boolean> {
    try {
      await this.run(['snapshot-info', '--domain', this.domain, '--snapshotname', name]);
      return true;
    } catch (err) {
      if (err instanceof CommandError && /not found|no domain snapshot/i.test(err.stderrTail)) return false;
      throw err;
    }
  }

  /** Wait until libvirt runs no job on the domain (a snapshot a dead vmsnap started keeps going in libvirtd). */
  async waitIdle(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.run(['domjobinfo', '--domain', this.domain]).catch(() => 'Job type: None');
      if (/Job type:\s+None/.test(info)) return;
      if (Date.now() > deadline) throw new VmsnapError('timeout', `libvirt still runs a job on domain ${this.domain} after ${timeoutMs} ms; see virsh domjobinfo`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /**
   * QEMU's STOP and RESUME events with QEMU's own timestamps, from
   * `virsh qemu-monitor-event --timestamp`: the guest's real downtime.
   */
  async watchEvents(): Promise<EventWatch> {
    const child: ResultPromise = execa(this.bin, ['-q', '-c', this.uri, 'qemu-monitor-event', '--domain', this.domain, '--timestamp', '--loop'], {
      reject: false,
      buffer: false,
      stdin: 'ignore',
      stderr: 'ignore',
      env: { LC_ALL: 'C' },
    });
    let text = '';
    child.stdout?.on('data', (d: Buffer) => {
      text += d.toString();
    });
    // virsh prints nothing until the first event: give it time to register before the snapshot starts.
    await new Promise((r) => setTimeout(r, 300));
    return {
      async stop() {
        await new Promise((r) => setTimeout(r, 100));
        child.kill('SIGTERM');
        await child;
        return parseEvents(text);
      },
    };
  }
}

export interface EventWatch {
  stop(): Promise<{ event: string; atMs: number }[]>;
}

/** `2026-11-23 08:47:09.550+0000: event STOP for domain 'x': <null>` lines. */
export function parseEvents(text: string): { event: string; atMs: number }[] {
  const out: { event: string; atMs: number }[] = [];
  for (const m of text.matchAll(/^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+)\+0000: event (\w+) for domain/gm)) {
    out.push({ event: m[3] as string, atMs: Date.parse(`${m[1]}T${m[2]}Z`) });
  }
  return out;
}

/** Guest downtime: the first STOP to the RESUME after it; null when either is missing. */
export function downtimeOf(events: readonly { event: string; atMs: number }[]): number | null {
  const stop = events.find((e) => e.event === 'STOP');
  if (stop === undefined) return null;
  const resume = events.find((e) => e.event === 'RESUME' && e.atMs >= stop.atMs);
  return resume === undefined ? null : resume.atMs - stop.atMs;
}

/** A path inside a memspec/diskspec value: libvirt splits on commas, and ",," is a literal comma. */
export function specPath(path: string): string {
  return path.replace(/,/g, ',,');
}
