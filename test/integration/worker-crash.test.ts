import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import pino from 'pino';
import { findDomain, loadConfig } from '../../src/config/load-config.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { createSnapshot } from '../../src/pipeline/create-snapshot.js';
import { QUEUE_PREFIX, queueName } from '../../src/queue/jobs.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../../src/queue/redis.js';
import { createBareVm, vmConfig, type BareVm } from '../helpers/bare-vm.js';
import { checkChain, createImage } from '../helpers/images.js';
import { BIN } from '../helpers/cli.js';

/**
 * The worker process is SIGKILLed at a step boundary of a job on the real
 * guest; a new worker starts (recovering the domain first) and BullMQ hands
 * it the stalled job. Every time: the guest counts on, the job ends in
 * exactly one snapshot (or a recorded failure), nothing is left half-made,
 * and every image in the chain checks clean.
 */
let base: string;
let redis: EmbeddedRedis;
let vm: BareVm;
let cfg: string;
let vda: string;
const root = () => join(base, 'snaps');

function worker(env: Record<string, string>): ResultPromise {
  return execa('node', [BIN, '-c', cfg, 'worker', '--host', 'hv1'], {
    reject: false,
    env: { VMSNAP_LOG_LEVEL: 'silent', VMSNAP_JOB_LOCK_MS: '2000', VMSNAP_LEASE_MS: '2000', ...env },
  });
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vw-'));
  await mkdir(root());
  vda = join(base, 'vda.qcow2');
  await createImage(vda, 'qcow2', '64M');
  vm = await createBareVm(join(base, 'vm'), [{ id: 'vda', path: vda, format: 'qcow2' }], 256, { fillMiB: 64, dirtyMiB: 16, tickMs: 100 });
  await vm.start();
  await vm.waitForCounterAbove(2, 90_000);
  redis = await startEmbeddedRedis(join(base, 'state'));
  cfg = join(base, 'vmsnap.yaml');
  await writeFile(
    cfg,
    vmConfig({
      domain: 'g1',
      vm,
      disks: [{ id: 'vda', path: vda, format: 'qcow2' }],
      snapshotRoot: root(),
      stateDir: join(base, 'state'),
      launch: true,
      extra: `policies:
  - name: keep1
    schedule: "0 0 1 1 *"
    catchUp: skip
    kind: disk-only
    disks: { vda: external }
    retention: { keepLast: 1 }
    domains: [g1]
`,
    }),
  );
});

afterAll(async () => {
  await vm.kill();
  await redis.stop();
  await rm(base, { recursive: true, force: true });
});

async function finish(queue: Queue, jobId: string): Promise<string> {
  const next = worker({});
  try {
    for (let i = 0; i < 300; i++) {
      const job = await queue.getJob(jobId);
      if (job === undefined) return 'removed'; // removeOnComplete jobs (prune) are gone once done
      const state = await job.getState();
      if (state === 'completed' || state === 'failed') return state;
      await new Promise((r) => setTimeout(r, 100));
    }
    return 'timeout';
  } finally {
    next.kill('SIGTERM');
    await next;
  }
}

describe('a worker killed mid-job, and the next one', () => {
  it.each(['paused', 'migrating', 'disks:external:done', 'commit:start'])('killed at %s: one snapshot or a recorded failure, the guest counts on', async (fault) => {
    const queue = new Queue(queueName('hv1'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
    try {
      const dying = worker({ VMSNAP_FAULT: fault });
      const job = await queue.add('snapshot', { kind: 'snapshot', domain: 'g1', disks: { vda: 'external' } }, { attempts: 3, backoff: { type: 'fixed', delay: 200 } });
      const dead = await dying;
      expect(dead.signal).toBe('SIGKILL');

      const state = await finish(queue, String(job.id));
      expect(['completed', 'failed']).toContain(state);
      const listing = await new Catalog(root()).list('g1');
      const mine = listing.snapshots.filter((s) => s.jobId === job.id);
      if (state === 'completed') expect(mine).toHaveLength(1);
      else expect(mine).toHaveLength(0);
      expect(listing.partial).toEqual([]);

      const now = (await vm.counters()).at(-1) ?? 0;
      await vm.waitForCounterAbove(now + 3);
      expect(await vm.status()).toBe('running');
      await checkChain(vda, { inUse: true });
      for (const s of listing.snapshots) for (const d of s.disks) if (d.file !== undefined) await checkChain(d.file);
    } finally {
      await queue.close();
    }
  });

  it('killed during a prune: the next worker finishes the delete and the prune', async () => {
    const queue = new Queue(queueName('hv1'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
    try {
      // Two policy snapshots (taken here, in-process), so keepLast 1 has one to prune.
      const domain = findDomain(await loadConfig(cfg), 'g1');
      const deps = createPipelineDeps(pino({ level: 'silent' }));
      for (const name of ['p1', 'p2']) {
        await createSnapshot(deps, domain, { name, origin: 'policy', policy: 'keep1', diskOnly: true, disks: { vda: { mode: 'external' } } });
      }
      await queue.add('prune', { kind: 'prune', domain: 'g1', policy: 'keep1' }, { jobId: 'prune~keep1~g1', removeOnComplete: true });
      const before = (await new Catalog(root()).list('g1')).snapshots.filter((s) => s.policy === 'keep1');
      expect(before).toHaveLength(2);
      // The prune job the last snapshot queued runs in a worker that dies after unlisting its victim.
      const dying = worker({ VMSNAP_FAULT: 'delete:marked' });
      const dead = await dying;
      expect(dead.signal).toBe('SIGKILL');
      const state = await finish(queue, 'prune~keep1~g1');
      expect(['completed', 'removed']).toContain(state);
      const after = await new Catalog(root()).list('g1');
      expect(after.snapshots.filter((s) => s.policy === 'keep1').map((s) => s.name)).toEqual(['p2']);
      expect(after.partial).toEqual([]);
      await checkChain(vda, { inUse: true });
      expect(await vm.status()).toBe('running');
    } finally {
      await queue.close();
    }
  });
});
