/**
 * What the queue costs: N disk-only (internal qcow2) snapshots of shut-off
 * domains, taken (1) by `qemu-img snapshot -c` directly and (2) as ad-hoc
 * jobs through BullMQ and a worker, measured end to end (enqueue to
 * completion), and the throughput with 1, 2 and 4 workers on different
 * domains. Uses a real redis-server (vmsnap's embedded one) in a temp folder.
 *
 *   npm run bench:overhead [-- --n 40]
 *
 * Prints one JSON object:
 * {"directMsP50","directMsP95","queuedMsP50","queuedMsP95","overheadMsP50","jobsPerSecond":{"1","2","4"}}
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, QueueEvents } from 'bullmq';
import { execa } from 'execa';
import pino from 'pino';
import { loadConfig } from '../src/config/load-config.js';
import { createPipelineDeps } from '../src/cli/deps.js';
import { QUEUE_PREFIX, queueName } from '../src/queue/jobs.js';
import { startEmbeddedRedis, type RedisTarget } from '../src/queue/redis.js';
import { startWorker, type RunningWorker } from '../src/queue/worker.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '40' } } });
const n = Number.parseInt(values.n ?? '40', 10);
if (!Number.isInteger(n) || n < 4) throw new Error('--n takes a count >= 4');

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0) * 10) / 10;
};

const base = await mkdtemp(join(tmpdir(), 'vbo-'));
const redis = await startEmbeddedRedis(join(base, 'state'));
const target: RedisTarget = { kind: 'socket', path: redis.socket };
const logger = pino({ level: 'silent' });
try {
  const domains = ['b0', 'b1', 'b2', 'b3'];
  await mkdir(join(base, 'snaps'));
  for (const d of [...domains, 'direct']) await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(base, `${d}.qcow2`), '64M']);
  await writeFile(
    join(base, 'vmsnap.yaml'),
    `hosts: [{ name: bench }]\ndefaults: { snapshotRoot: ${join(base, 'snaps')} }\ndomains:\n${domains
      .map((d) => `  - name: ${d}\n    driver: qemu\n    qmpSocket: ${join(base, `${d}.qmp`)}\n    disks: [{ target: vda, path: ${join(base, `${d}.qcow2`)}, format: qcow2 }]\n`)
      .join('')}`,
  );
  const config = await loadConfig(join(base, 'vmsnap.yaml'));

  // 1. qemu-img directly.
  const direct: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await execa('qemu-img', ['snapshot', '-c', `s${i}`, join(base, 'direct.qcow2')]);
    direct.push(performance.now() - t0);
  }

  const queue = new Queue(queueName('bench'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
  const events = new QueueEvents(queueName('bench'), { connection: { path: redis.socket }, prefix: QUEUE_PREFIX });
  queue.setMaxListeners(n + 20); // one waitUntilFinished per job in flight
  events.setMaxListeners(n + 20);
  await events.waitUntilReady();
  const startWorkers = (count: number): RunningWorker[] =>
    Array.from({ length: count }, () =>
      startWorker({ config, host: 'bench', connection: target, concurrency: 1, logger, busyDelayMs: 20, depsFor: (onProgress) => createPipelineDeps(logger, onProgress) }),
    );

  // 2. One job at a time through the queue, end to end.
  let workers = startWorkers(1);
  const queued: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const job = await queue.add('snapshot', { kind: 'snapshot', domain: 'b0' });
    await job.waitUntilFinished(events, 60_000);
    queued.push(performance.now() - t0);
  }
  for (const w of workers) await w.close();

  // 3. Throughput: n jobs spread over the four domains, with 1, 2 and 4 workers.
  const jobsPerSecond: Record<string, number> = {};
  for (const count of [1, 2, 4]) {
    workers = startWorkers(count);
    const t0 = performance.now();
    const jobs = await queue.addBulk(Array.from({ length: n }, (_, i) => ({ name: 'snapshot', data: { kind: 'snapshot', domain: domains[i % domains.length] } })));
    await Promise.all(jobs.map((j) => j.waitUntilFinished(events, 120_000)));
    jobsPerSecond[String(count)] = Math.round((n / ((performance.now() - t0) / 1000)) * 10) / 10;
    for (const w of workers) await w.close();
  }
  await events.close();
  await queue.close();

  process.stdout.write(
    `${JSON.stringify({
      n,
      directMsP50: pct(direct, 50),
      directMsP95: pct(direct, 95),
      queuedMsP50: pct(queued, 50),
      queuedMsP95: pct(queued, 95),
      overheadMsP50: Math.round((pct(queued, 50) - pct(direct, 50)) * 10) / 10,
      jobsPerSecond,
    })}\n`,
  );
} finally {
  await redis.stop();
  await rm(base, { recursive: true, force: true });
}
