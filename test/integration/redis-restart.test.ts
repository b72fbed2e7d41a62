import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { QUEUE_PREFIX, queueName, type JobResult } from '../../src/queue/jobs.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../../src/queue/redis.js';
import { startWorker } from '../../src/queue/worker.js';
import { createBareVm, vmConfig, type BareVm } from '../helpers/bare-vm.js';
import { createImage } from '../helpers/images.js';

/**
 * Redis killed (SIGKILL) in the middle of a job and started again on its
 * append-only file: the worker reconnects, the job ends once, with exactly
 * one snapshot, and the guest runs.
 */
let base: string;
let redis: EmbeddedRedis;
let vm: BareVm;
let cfg: string;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vr-'));
  await mkdir(join(base, 'snaps'));
  const vda = join(base, 'vda.qcow2');
  await createImage(vda, 'qcow2', '64M');
  // Random RAM: the memory save takes a while, long enough to kill Redis under it.
  vm = await createBareVm(join(base, 'vm'), [{ id: 'vda', path: vda, format: 'qcow2' }], 512, undefined, { randomRam: true });
  await vm.start();
  redis = await startEmbeddedRedis(join(base, 'state'));
  cfg = join(base, 'vmsnap.yaml');
  await writeFile(cfg, vmConfig({ domain: 'vm1', vm, disks: [{ id: 'vda', path: vda, format: 'qcow2' }], snapshotRoot: join(base, 'snaps') }));
});

afterAll(async () => {
  await vm.kill();
  await redis.stop();
  await rm(base, { recursive: true, force: true });
});

describe('Redis restarted mid-job', () => {
  it('the worker reconnects and the job ends once, with one snapshot', async () => {
    const logger = pino({ level: 'silent' });
    const outcomes: { result?: JobResult; error?: Error }[] = [];
    const worker = startWorker({
      config: await loadConfig(cfg),
      host: 'hv1',
      connection: { kind: 'socket', path: redis.socket },
      logger,
      depsFor: (p) => createPipelineDeps(logger, p),
      onOutcome: (o) => outcomes.push(o),
    });
    const queue = new Queue(queueName('hv1'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
    queue.on('error', () => undefined);
    try {
      const job = await queue.add('snapshot', { kind: 'snapshot', domain: 'vm1', name: 's1' }, { attempts: 3, backoff: { type: 'fixed', delay: 500 } });
      // Wait until the snapshot is under way (its folder exists), then crash Redis.
      const dir = join(base, 'snaps', 'vm1');
      for (let i = 0; i < 300 && !(await readdir(dir).catch(() => [])).includes('s1'); i++) await new Promise((r) => setTimeout(r, 10));
      process.kill(redis.pid as number, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 1_500));
      redis = await startEmbeddedRedis(join(base, 'state'));

      for (let i = 0; i < 300 && outcomes.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 1_000)); // a second run would show up by now
      expect(outcomes.map((o) => o.error?.message ?? o.result?.snapshot)).toEqual(['s1']);
      expect(await (await queue.getJob(String(job.id)))?.getState()).toBe('completed');
      const listing = await new Catalog(join(base, 'snaps')).list('vm1');
      expect(listing.snapshots.map((s) => s.name)).toEqual(['s1']);
      expect(listing.partial).toEqual([]);
      expect(await vm.status()).toBe('running');
    } finally {
      await worker.close();
      await queue.close();
    }
  });
});
