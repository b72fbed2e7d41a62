import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, type Job } from 'bullmq';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { QUEUE_PREFIX, queueName } from '../../src/queue/jobs.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../../src/queue/redis.js';
import { startWorker, type RunningWorker } from '../../src/queue/worker.js';
import { createImage } from '../helpers/images.js';
import { vmsnap } from '../helpers/cli.js';

/**
 * Hostile input: job payloads from Redis and CLI invocations from
 * test/fixtures/hostile, each with the error it must produce. None of them
 * may change anything on disk: the whole test folder (names, sizes, modes,
 * content hashes) is compared before and after.
 */
interface JobCase {
  why: string;
  data: unknown;
  error: string;
}
interface CliCase {
  args: string[];
  code: number;
  error: string;
}

const fixtures = new URL('../fixtures/hostile/', import.meta.url).pathname;
let base: string;
let cfg: string;
let redis: EmbeddedRedis;

/** Every file and folder under `dir` with mode, size and content hash. */
async function fingerprint(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(p: string): Promise<void> {
    for (const e of (await readdir(p, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = join(p, e.name);
      if (e.isSocket() || full.startsWith(join(base, 'redis'))) continue;
      const st = await stat(full);
      if (e.isDirectory()) {
        out.push(`${full}/ ${(st.mode & 0o7777).toString(8)}`);
        await walk(full);
      } else {
        out.push(`${full} ${(st.mode & 0o7777).toString(8)} ${st.size} ${createHash('sha256').update(await readFile(full)).digest('hex')}`);
      }
    }
  }
  await walk(dir);
  return out;
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vh-'));
  await mkdir(join(base, 'snaps'));
  await createImage(join(base, 'd1.qcow2'), 'qcow2');
  await createImage(join(base, 'd2.qcow2'), 'qcow2');
  cfg = join(base, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `stateDir: ${join(base, 'state')}
hosts: [{ name: h1 }, { name: h2 }]
defaults: { snapshotRoot: ${join(base, 'snaps')} }
domains:
  - { name: d1, host: h1, driver: qemu, qmpSocket: ${join(base, 'd1.qmp')}, disks: [{ target: vda, path: ${join(base, 'd1.qcow2')}, format: qcow2 }] }
  - { name: d2, host: h2, driver: qemu, qmpSocket: ${join(base, 'd2.qmp')}, disks: [{ target: vda, path: ${join(base, 'd2.qcow2')}, format: qcow2 }] }
`,
  );
  redis = await startEmbeddedRedis(join(base, 'redis'));
});

afterAll(async () => {
  await redis.stop();
  await rm(base, { recursive: true, force: true });
});

describe('hostile job payloads', () => {
  it('each fails once, unrecoverably, with its reason, and nothing on disk changes', async () => {
    const cases = JSON.parse(await readFile(join(fixtures, 'jobs.json'), 'utf8')) as JobCase[];
    expect(cases.length).toBeGreaterThanOrEqual(20);
    const before = await fingerprint(base);
    const failures = new Map<string, { attempts: number; reason: string }>();
    const succeeded: string[] = [];
    const logger = pino({ level: 'silent' });
    const worker: RunningWorker = startWorker({
      config: await loadConfig(cfg),
      host: 'h1',
      connection: { kind: 'socket', path: redis.socket },
      logger,
      depsFor: (onProgress) => createPipelineDeps(logger, onProgress),
      onOutcome: ({ job, error }: { job: Job; error?: Error }) => {
        if (error !== undefined) failures.set(String(job.id), { attempts: job.attemptsMade, reason: error.message });
        else succeeded.push(String(job.id));
      },
    });
    const queue = new Queue(queueName('h1'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
    try {
      const ids: string[] = [];
      for (const c of cases) ids.push(String((await queue.add('snapshot', c.data, { attempts: 5, backoff: { type: 'fixed', delay: 10 } })).id));
      for (let i = 0; i < 300 && failures.size + succeeded.length < cases.length; i++) await new Promise((r) => setTimeout(r, 100));
      expect(succeeded).toEqual([]);
      cases.forEach((c, i) => {
        const f = failures.get(ids[i] as string);
        expect(f, c.why).toBeDefined();
        expect(f?.attempts, c.why).toBe(1);
        expect(f?.reason, c.why).toContain(c.error);
      });
    } finally {
      await worker.close();
      await queue.close();
    }
    expect(await fingerprint(base)).toEqual(before);
  });
});

describe('hostile CLI invocations', () => {
  it('each exits with its code and names the problem, and nothing on disk changes', async () => {
    const cases = JSON.parse(await readFile(join(fixtures, 'cli.json'), 'utf8')) as CliCase[];
    const before = await fingerprint(base);
    for (const c of cases) {
      const r = await vmsnap(['-c', cfg, ...c.args]);
      expect(r.code, c.args.join(' ')).toBe(c.code);
      expect(r.stderr, c.args.join(' ')).toContain(c.error);
      expect(r.stderr.trim().split('\n')[0], c.args.join(' ')).toMatch(/^vmsnap: /);
    }
    expect(await fingerprint(base)).toEqual(before);
  });
});

describe('symlinks planted in the catalog', () => {
  it('a snapshot folder that is a symlink is never listed, read or deleted through', async () => {
    const outside = join(base, 'outside');
    await mkdir(outside);
    const victim = join(outside, 'victim.qcow2');
    await writeFile(victim, 'precious');
    await writeFile(
      join(outside, 'snapshot.json'),
      JSON.stringify({ version: 1, name: 'evil', domain: 'd1', createdAt: '2026-01-01T00:00:00.000Z', origin: 'adhoc', policy: null, kind: 'disk-only', state: 'shutoff', consistency: 'offline', method: 'offline', memory: { mode: 'no' }, disks: [{ target: 'vda', path: join(base, 'd1.qcow2'), format: 'qcow2', mode: 'external', method: 'file-copy', file: victim }], parent: null, durationsMs: {}, downtimeMs: null }),
    );
    await mkdir(join(base, 'snaps', 'd1'), { recursive: true, mode: 0o700 });
    await symlink(outside, join(base, 'snaps', 'd1', 'evil'));
    try {
      const list = await vmsnap(['-c', cfg, 'list', 'd1', '--json']);
      expect(JSON.parse(list.stdout).snapshots).toEqual([]);
      for (const args of [['snapshot', 'delete', 'd1', 'evil'], ['snapshot', 'revert', 'd1', 'evil', '--force']]) {
        const r = await vmsnap(['-c', cfg, ...args]);
        expect(r.code, args.join(' ')).toBe(65);
        expect(r.stderr, args.join(' ')).toMatch(/is a symlink or not a folder/);
      }
      expect(await readFile(victim, 'utf8')).toBe('precious');
      expect(await readdir(outside)).toEqual(['snapshot.json', 'victim.qcow2']);
    } finally {
      await rm(join(base, 'snaps', 'd1'), { recursive: true, force: true });
    }
  });
});
