import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { Redis, type RedisOptions } from 'ioredis';
import { VmsnapError } from '../errors.js';
import type { ResolvedRedis } from '../config/load-config.js';

/**
 * Redis connections for BullMQ. `maxRetriesPerRequest: null` is what BullMQ
 * workers need to wait out a Redis restart instead of failing commands.
 */
export type RedisTarget = { kind: 'url'; url: string } | { kind: 'socket'; path: string } | Extract<ResolvedRedis, { kind: 'sentinel' }>;

export function redisOptions(target: RedisTarget): RedisOptions & { url?: string } {
  const common: RedisOptions = { maxRetriesPerRequest: null, enableReadyCheck: true, lazyConnect: false };
  switch (target.kind) {
    case 'socket':
      return { ...common, path: target.path };
    case 'sentinel':
      return {
        ...common,
        sentinels: target.sentinels,
        name: target.name,
        ...(target.password !== undefined ? { password: target.password } : {}),
        ...(target.tls ? { tls: {} } : {}),
      };
    case 'url':
      return { ...common, url: target.url };
  }
}

export function createRedis(target: RedisTarget): Redis {
  const { url, ...options } = redisOptions(target);
  const r = url !== undefined ? new Redis(url, options) : new Redis(options);
  // ioredis reconnects on its own; without a listener every failed attempt is printed.
  r.on('error', () => undefined);
  return r;
}

export function describeTarget(target: RedisTarget): string {
  switch (target.kind) {
    case 'socket':
      return `unix socket ${target.path}`;
    case 'url':
      return target.url.replace(/\/\/[^@/]*@/, '//***@');
    case 'sentinel':
      return `sentinel master ${target.name}`;
  }
}

/**
 * One-shot commands (status, scheduler, --queue) fail fast with the fix
 * instead of waiting for a Redis that is not there; workers wait it out.
 */
export async function assertRedisReachable(target: RedisTarget, timeoutMs = 3_000): Promise<void> {
  const { url, ...options } = redisOptions(target);
  const probeOptions = { ...options, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs };
  const probe = url !== undefined ? new Redis(url, probeOptions) : new Redis(probeOptions);
  probe.on('error', () => undefined);
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    throw new VmsnapError(
      'unavailable',
      `cannot reach Redis at ${describeTarget(target)}: ${(err as Error).message}; start \`vmsnap run\` (embedded Redis) or fix the redis section of the config`,
      { cause: err },
    );
  } finally {
    probe.disconnect();
  }
}

/**
 * vmsnap's own redis-server, for a single host without a configured Redis:
 * a unix socket and an append-only file in the state folder (fsynced on
 * every write: a queued job survives a crash), no TCP port.
 */
export interface EmbeddedRedis {
  socket: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

export async function startEmbeddedRedis(stateDir: string, options: { bin?: string; timeoutMs?: number } = {}): Promise<EmbeddedRedis> {
  const dir = join(stateDir, 'redis');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const socket = join(dir, 'redis.sock');
  await rm(socket, { force: true });
  let child: ResultPromise;
  try {
    child = execa(
      options.bin ?? 'redis-server',
      ['--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--daemonize', 'no', '--loglevel', 'warning'],
      { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cleanup: true },
    );
  } catch (err) {
    throw new VmsnapError('unavailable', `cannot start redis-server: ${(err as Error).message}; install redis-server or configure redis.url`, { cause: err });
  }
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  for (;;) {
    if (child.exitCode !== null) {
      const r = await child;
      const why = String(r.stderr ?? '').trim().split('\n').at(-1) ?? '';
      throw new VmsnapError('unavailable', `embedded redis-server exited with ${r.exitCode}${why !== '' ? `: ${why}` : ''}; install redis-server or configure redis.url`);
    }
    const probe = new Redis({ path: socket, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined); // not up yet: the loop tries again
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      break;
    } catch {
      probe.disconnect();
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new VmsnapError('timeout', `embedded redis-server did not answer on ${socket} within 10 s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    socket,
    pid: child.pid,
    async stop() {
      child.kill('SIGTERM');
      await child;
    },
  };
}
