import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpCommandError } from '../../src/hypervisor/qemu/qmp-client.js';
import { QemuMonitor } from '../../src/hypervisor/qemu/qemu-monitor.js';
import { VmsnapError } from '../../src/errors.js';

/**
 * The QMP client against a real QEMU with no guest (-machine none starts in
 * milliseconds), and against sockets that misbehave the way a hung or
 * foreign peer does.
 */
let dir: string;
let qemu: ResultPromise;
let socket: string;

async function waitForSocket(path: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await QmpClient.connect(path, { connectTimeoutMs: 500 })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new Error(`QEMU's QMP socket ${path} never answered`);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vq-'));
  socket = join(dir, 'qmp');
  qemu = execa('qemu-system-x86_64', ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${socket},server=on,wait=off`], {
    reject: false,
  });
  await waitForSocket(socket);
});

afterAll(async () => {
  qemu.kill('SIGKILL');
  await qemu;
  await rm(dir, { recursive: true, force: true });
});

describe('QmpClient against a real QEMU', () => {
  it('reads the greeting, negotiates capabilities and runs commands by id', async () => {
    const c = await QmpClient.connect(socket);
    try {
      expect(c.version.major).toBeGreaterThanOrEqual(7);
      const status = await c.execute<{ status: string; running: boolean }>('query-status');
      expect(typeof status.running).toBe('boolean');
      // Several commands in flight at once come back to the right callers.
      const [a, b] = await Promise.all([c.execute<{ qemu: { major: number } }>('query-version'), c.execute<{ name?: string }>('query-name')]);
      expect(a.qemu.major).toBe(c.version.major);
      expect(b).toEqual({});
    } finally {
      c.close();
    }
  });

  it("keeps QEMU's error class and description", async () => {
    const c = await QmpClient.connect(socket);
    try {
      const err = await c.execute('no-such-command').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QmpCommandError);
      expect((err as QmpCommandError).qmpClass).toBe('CommandNotFound');
      expect((err as QmpCommandError).message).toContain('no-such-command');
      expect((err as QmpCommandError).retryable).toBe(false);
    } finally {
      c.close();
    }
  });

  it('records STOP and RESUME events with QEMU timestamps, and waits for events', async () => {
    const c = await QmpClient.connect(socket);
    try {
      const since = c.events.length;
      const before = Date.now();
      await c.execute('stop');
      const resumed = c.waitForEvent((e) => e.event === 'RESUME', 5_000, since);
      await c.execute('cont');
      const resume = await resumed;
      const stop = await c.waitForEvent((e) => e.event === 'STOP', 5_000, since);
      expect(stop.timestampMs).toBeGreaterThanOrEqual(before - 1000);
      expect(resume.timestampMs).toBeGreaterThanOrEqual(stop.timestampMs);
      expect(c.lastEvent('RESUME')).toEqual(resume);
    } finally {
      c.close();
    }
  });

  it('fails pending commands with a retryable error when the connection drops', async () => {
    const c = await QmpClient.connect(socket);
    const waiting = c.waitForEvent(() => false, 10_000);
    c.close();
    const err = await waiting.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsnapError);
    expect((err as VmsnapError).retryable).toBe(true);
    await expect(c.execute('query-status')).rejects.toThrow(/closed|lost/);
  });

  it('the monitor reconnects after a dropped connection', async () => {
    const mon = new QemuMonitor(socket);
    try {
      expect((await mon.status()).status).toBeTypeOf('string');
      (await mon.connection()).close();
      expect((await mon.status()).status).toBeTypeOf('string');
    } finally {
      mon.close();
    }
  });
});

describe('QmpClient against peers that misbehave', () => {
  let server: Server | undefined;
  afterAll(() => server?.close());

  async function serve(path: string, onConnection: (sock: import('node:net').Socket) => void): Promise<void> {
    server?.close();
    server = createServer(onConnection);
    await new Promise<void>((r) => server?.listen(path, r));
  }

  it('times out when the socket never sends a greeting (not QMP, or another client holds it)', async () => {
    const path = join(dir, 'silent');
    await serve(path, () => undefined);
    const err = await QmpClient.connect(path, { connectTimeoutMs: 300 }).catch((e: unknown) => e);
    expect((err as VmsnapError).code).toBe('timeout');
    expect((err as Error).message).toMatch(/no greeting/);
  });

  it('times out a command that gets no answer, and says which', async () => {
    const path = join(dir, 'mute');
    await serve(path, (sock) => {
      sock.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n');
      sock.on('data', (d) => {
        if (d.toString().includes('qmp_capabilities')) sock.write('{"return": {}, "id": "vmsnap-1"}\r\n');
      });
    });
    const c = await QmpClient.connect(path);
    try {
      const err = await c.execute('query-status', undefined, { timeoutMs: 200 }).catch((e: unknown) => e);
      expect((err as VmsnapError).code).toBe('timeout');
      expect((err as Error).message).toContain('query-status');
    } finally {
      c.close();
    }
  });

  it('refuses a peer that sends something other than JSON', async () => {
    const path = join(dir, 'garbage');
    await serve(path, (sock) => sock.write('SSH-2.0-OpenSSH\r\n'));
    const err = await QmpClient.connect(path, { connectTimeoutMs: 1000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsnapError);
  });

  it('says when nothing listens on the socket', async () => {
    const err = await QmpClient.connect(join(dir, 'nobody')).catch((e: unknown) => e);
    expect((err as VmsnapError).code).toBe('unavailable');
    expect((err as Error).message).toContain(join(dir, 'nobody'));
  });
});
