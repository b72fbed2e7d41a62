import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, type Job } from 'bullmq';
import { execa, type ResultPromise } from 'execa';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type ResolvedConfig } from '../../src/config/load-config.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { QUEUE_PREFIX, queueName, type JobResult } from '../../src/queue/jobs.js';
import { startEmbeddedRedis, type EmbeddedRedis, type RedisTarget } from '../../src/queue/redis.js';
import { startWorker, type RunningWorker } from '../../src/queue/worker.js';
import { reconcileSchedulers } from '../../src/scheduler/reconcile.js';
import { createImage } from '../helpers/images.js';

/**
 * The service against a real redis-server (the embedded one vmsnap run
 * starts, on a unix socket in a temp folder) and real shut-off qcow2
 * domains: schedules, retention, host routing, one job per domain at a time,
 * retries and unrecoverable failures.
 */
let base: string;
let redis: EmbeddedRedis;
let target: RedisTarget;
let config: ResolvedConfig;
const workers: RunningWorker[] = [];
const queues: Queue[] = [];
const logger = pino({ level: 'silent' });

const NAME_BY_TIME = /^\d{8}T\d{6}Z(-\d{2})?$/;

async function writeConfig(policies: string): Promise<ResolvedConfig> {
  const file = join(base, 'vmsnap.yaml');
  await writeFile(
    file,
    `stateDir: ${join(base, 'state')}
hosts:
  - name: h1
  - name: h2
defaults:
  snapshotRoot: ${join(base, 'snaps')}
domains:
  - name: d1
    host: h1
    driver: qemu
    qmpSocket: ${join(base, 'd1.qmp')}
    disks: [{ target: vda, path: ${join(base, 'd1.qcow2')}, format: qcow2 }]
  - name: d2
    host: h2
    driver: qemu
    qmpSocket: ${join(base, 'd2.qmp')}
    disks: [{ target: vda, path: ${join(base, 'd2.qcow2')}, format: qcow2 }]
${policies}`,
  );
  return loadConfig(file);
}

function worker(host: string, opts: { concurrency?: number; onOutcome?: (o: { job: Job; result?: JobResult; error?: Error }) => void } = {}): RunningWorker {
  const w = startWorker({
    config,
    host,
    connection: target,
    concurrency: opts.concurrency ?? 1,
    logger,
    busyDelayMs: 50,
    depsFor: (onProgress) => createPipelineDeps(logger, onProgress),
    ...(opts.onOutcome !== undefined ? { onOutcome: opts.onOutcome } : {}),
  });
  workers.push(w);
  return w;
}

function queue(host: string): Queue {
  const q = new Queue(queueName(host), { connection: { path: (target as { path: string }).path }, prefix: QUEUE_PREFIX });
  queues.push(q);
  return q;
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const snapshots = async (domain: string) => (await new Catalog(join(base, 'snaps')).list(domain)).snapshots;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vq-'));
  redis = await startEmbeddedRedis(join(base, 'redis-state'));
  target = { kind: 'socket', path: redis.socket };
});

afterAll(async () => {
  await redis.stop();
  await rm(base, { recursive: true, force: true });
});

beforeEach(async () => {
  await execa('redis-cli', ['-s', redis.socket, 'flushall']);
  await rm(join(base, 'snaps'), { recursive: true, force: true });
  await mkdir(join(base, 'snaps'));
  await createImage(join(base, 'd1.qcow2'), 'qcow2');
  await createImage(join(base, 'd2.qcow2'), 'qcow2');
  config = await writeConfig('');
});

afterEach(async () => {
  for (const w of workers.splice(0)) await w.close();
  for (const q of queues.splice(0)) await q.close();
});

describe('scheduler', () => {
  it('a policy every 2 seconds makes snapshots named by creation time, pruned to keepLast 2', async () => {
    config = await writeConfig(`policies:
  - name: fast
    schedule: "*/2 * * * * *"
    kind: disk-only
    catchUp: skip
    retention: { keepLast: 2 }
    domains: [d1]
`);
    await reconcileSchedulers(config, target);
    const made = new Set<string>();
    const pruned: string[] = [];
    worker('h1', {
      onOutcome: ({ result }) => {
        if (result?.kind === 'snapshot' && result.snapshot !== undefined && result.skipped === undefined) made.add(result.snapshot);
        if (result?.kind === 'prune') pruned.push(...(result.pruned ?? []));
      },
    });
    await until('four scheduled snapshots and their prunes', async () => made.size >= 4 && pruned.length >= 2, 40_000);
    for (const name of made) expect(name).toMatch(NAME_BY_TIME);
    const left = await until('retention to settle', async () => {
      const s = await snapshots('d1');
      return s.length <= 3 ? s : undefined;
    });
    expect(left.every((s) => s.origin === 'policy' && s.policy === 'fast' && s.slot !== undefined)).toBe(true);
    // Pruned ones are gone from the catalog and from the image.
    const { stdout } = await execa('qemu-img', ['snapshot', '-l', join(base, 'd1.qcow2')]);
    for (const p of pruned) expect(stdout).not.toContain(p);
  });

  it('running it twice leaves one scheduler per (policy, domain); a removed policy disappears', async () => {
    const two = `policies:
  - name: a
    schedule: "0 3 * * *"
    catchUp: skip
    retention: { keepLast: 1 }
    domains: [d1, d2]
  - name: b
    schedule: "0 4 * * *"
    timezone: Europe/Berlin
    catchUp: skip
    retention: { keepLast: 1 }
    domains: [d2]
`;
    config = await writeConfig(two);
    await reconcileSchedulers(config, target);
    await reconcileSchedulers(config, target);
    const ids = async (host: string) => (await queue(host).getJobSchedulers(0, -1)).map((s) => s.key).sort();
    expect(await ids('h1')).toEqual(['policy~a~d1']);
    expect(await ids('h2')).toEqual(['policy~a~d2', 'policy~b~d2']);

    config = await writeConfig(two.replace(/  - name: b[\s\S]*$/, ''));
    const report = await reconcileSchedulers(config, target);
    expect(report.removed).toEqual([{ id: 'policy~b~d2', host: 'h2' }]);
    expect(await ids('h2')).toEqual(['policy~a~d2']);
  });

  it('catchUp once queues one snapshot for the missed slot, once', async () => {
    config = await writeConfig(`policies:
  - name: daily
    schedule: "0 3 * * *"
    retention: { keepLast: 3 }
    domains: [d1]
`);
    const first = await reconcileSchedulers(config, target);
    const second = await reconcileSchedulers(config, target);
    expect(first.catchUp).toHaveLength(1);
    expect(second.catchUp).toHaveLength(1); // asked again...
    const waiting = await queue('h1').getJobs(['waiting', 'delayed', 'prioritized']);
    expect(waiting.filter((j) => String(j.id).startsWith('catchup~'))).toHaveLength(1); // ...queued once
  });
});

describe('workers', () => {
  it("two workers on two hosts each get only their own host's jobs", async () => {
    const seen: Record<string, string[]> = { h1: [], h2: [] };
    for (const host of ['h1', 'h2']) {
      worker(host, { onOutcome: ({ job }) => seen[host]?.push((job.data as { domain: string }).domain) });
    }
    for (let i = 0; i < 3; i++) {
      await queue('h1').add('snapshot', { kind: 'snapshot', domain: 'd1' });
      await queue('h2').add('snapshot', { kind: 'snapshot', domain: 'd2' });
    }
    await until('six jobs', async () => (seen['h1']?.length ?? 0) + (seen['h2']?.length ?? 0) >= 6);
    expect(seen['h1']).toEqual(['d1', 'd1', 'd1']);
    expect(seen['h2']).toEqual(['d2', 'd2', 'd2']);
  });

  it('fifty ad-hoc jobs for one domain run one at a time and all succeed', async () => {
    const done: JobResult[] = [];
    const failed: string[] = [];
    // Two workers with two slots each all want d1: the domain lease lets one through at a time.
    for (let i = 0; i < 2; i++) {
      worker('h1', { concurrency: 2, onOutcome: ({ result, error }) => (error ? failed.push(error.message) : result && done.push(result)) });
    }
    const q = queue('h1');
    await q.addBulk(Array.from({ length: 50 }, () => ({ name: 'snapshot', data: { kind: 'snapshot', domain: 'd1' } })));
    await until('fifty snapshots', async () => done.length >= 50, 120_000);
    expect(failed).toEqual([]);
    const all = await snapshots('d1');
    expect(all).toHaveLength(50);
    const spans = all.map((m) => [Date.parse(m.createdAt), Date.parse(m.finishedAt ?? m.createdAt)] as const).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]?.[0]).toBeGreaterThanOrEqual(spans[i - 1]?.[1] ?? Infinity);
  });

  it('a failing step is retried with backoff and then succeeds', async () => {
    // A process holds the image's write lock, as a QEMU whose QMP socket is wrong would: retryable.
    const holder: ResultPromise = execa('qemu-io', ['-f', 'qcow2', join(base, 'd1.qcow2')], { stdin: 'pipe', reject: false });
    await new Promise((r) => setTimeout(r, 300));
    const outcomes: string[] = [];
    worker('h1', {
      onOutcome: ({ job, error }) => {
        outcomes.push(error ? `fail ${job.attemptsMade}` : `ok ${job.attemptsMade}`);
        if (error) holder.kill('SIGKILL');
      },
    });
    await queue('h1').add('snapshot', { kind: 'snapshot', domain: 'd1' }, { attempts: 3, backoff: { type: 'fixed', delay: 200 } });
    await until('the retry to succeed', async () => outcomes.some((o) => o.startsWith('ok')));
    await holder;
    expect(outcomes[0]).toBe('fail 1');
    expect(outcomes.at(-1)).toMatch(/^ok/);
    expect(await snapshots('d1')).toHaveLength(1);
  });

  it('an unrecoverable job fails once, with its reason, and touches nothing', async () => {
    const failures: { attempts: number; reason: string }[] = [];
    worker('h1', { onOutcome: ({ job, error }) => error && failures.push({ attempts: job.attemptsMade, reason: error.message }) });
    const q = queue('h1');
    await q.add('snapshot', { kind: 'snapshot', domain: '../../etc' }, { attempts: 5 });
    await q.add('snapshot', { kind: 'snapshot', domain: 'nosuch' }, { attempts: 5 });
    await q.add('snapshot', { kind: 'snapshot', domain: 'd2' }, { attempts: 5 });
    await q.add('snapshot', { kind: 'snapshot', domain: 'd1', disks: { vda: 'internal' }, file: '/etc/passwd' }, { attempts: 5 });
    await until('four failures', async () => failures.length >= 4);
    await new Promise((r) => setTimeout(r, 500));
    expect(failures).toHaveLength(4);
    expect(failures.every((f) => f.attempts === 1)).toBe(true);
    expect(failures.map((f) => f.reason)).toEqual([
      expect.stringMatching(/job data\.domain: domain must match/),
      expect.stringMatching(/unknown domain "nosuch"/),
      expect.stringMatching(/belongs to host h2, not h1/),
      expect.stringMatching(/Unrecognized key.*file|file/),
    ]);
    expect(await snapshots('d1')).toEqual([]);
    expect(await snapshots('d2')).toEqual([]);
  });
});
