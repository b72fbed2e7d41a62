import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { execa } from 'execa';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { QUEUE_PREFIX, queueName } from '../../src/queue/jobs.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../../src/queue/redis.js';
import { startWorker } from '../../src/queue/worker.js';
import type { RecoveryReport } from '../../src/pipeline/recover.js';
import { createBareVm, vmConfig, type BareVm } from '../helpers/bare-vm.js';
import { checkChain, createImage } from '../helpers/images.js';
import { BIN } from '../helpers/cli.js';

/**
 * A worker process dies (SIGKILL) right after pausing a guest, holding the
 * domain's lease. Nobody restarts it. Another worker of the host sees the
 * lease run out and resumes the guest within lease + sweep time.
 */
let base: string;
let redis: EmbeddedRedis;
let vm: BareVm;
let cfg: string;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vl-'));
  await mkdir(join(base, 'snaps'));
  const vda = join(base, 'vda.qcow2');
  await createImage(vda, 'qcow2', '64M');
  vm = await createBareVm(join(base, 'vm'), [{ id: 'vda', path: vda, format: 'qcow2' }]);
  await vm.start();
  redis = await startEmbeddedRedis(join(base, 'state'));
  cfg = join(base, 'vmsnap.yaml');
  await writeFile(cfg, vmConfig({ domain: 'vm1', vm, disks: [{ id: 'vda', path: vda, format: 'qcow2' }], snapshotRoot: join(base, 'snaps'), stateDir: join(base, 'state') }));
});

afterAll(async () => {
  await vm.kill();
  await redis.stop();
  await rm(base, { recursive: true, force: true });
});

describe('a domain paused by a worker that never comes back', () => {
  it('is resumed by another worker of the host once the lease runs out, and the half-made snapshot removed', async () => {
    const queue = new Queue(queueName('hv1'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
    const leaseMs = 2_000;
    try {
      // Worker A: a separate process that dies right after `stop`.
      const script = `
        import { startWorker } from '${join(BIN, '../../queue/worker.js')}';
        import { createPipelineDeps } from '${join(BIN, '../deps.js')}';
        import { loadConfig } from '${join(BIN, '../../config/load-config.js')}';
        import pino from 'pino';
        const logger = pino({ level: 'silent' });
        const config = await loadConfig(${JSON.stringify(cfg)});
        startWorker({ config, host: 'hv1', connection: { kind: 'socket', path: ${JSON.stringify(redis.socket)} }, logger, leaseMs: ${leaseMs},
          depsFor: (p) => createPipelineDeps(logger, p) });
      `;
      const a = execa('node', ['--input-type=module', '-e', script], { reject: false, cwd: join(BIN, '../../../..'), env: { VMSNAP_FAULT: 'paused' } });
      await queue.add('snapshot', { kind: 'snapshot', domain: 'vm1', name: 's1' });
      const dead = await a;
      expect(dead.signal).toBe('SIGKILL');
      expect(await vm.status()).not.toBe('running'); // left paused, lease still held

      // Worker B, of the same host, started afterwards with a short sweep.
      const recovered: RecoveryReport[] = [];
      const logger = pino({ level: 'silent' });
      const t0 = Date.now();
      const b = startWorker({
        config: await loadConfig(cfg),
        host: 'hv1',
        connection: { kind: 'socket', path: redis.socket },
        logger,
        leaseMs,
        sweepMs: 300,
        depsFor: (p) => createPipelineDeps(logger, p),
        onRecovery: (r) => recovered.push(r),
      });
      try {
        while (recovered.length === 0 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 100));
        expect(recovered[0]).toMatchObject({ domain: 'vm1', resumed: true, removed: ['s1'] });
        expect(Date.now() - t0).toBeLessThan(leaseMs + 3_000);
        expect(await vm.status()).toBe('running');
        expect((await new Catalog(join(base, 'snaps')).list('vm1')).partial).toEqual([]);
        await checkChain(join(base, 'vda.qcow2'), { inUse: true });
      } finally {
        await b.close();
      }
    } finally {
      await queue.close();
    }
  });
});
