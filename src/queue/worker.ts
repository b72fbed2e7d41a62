import { hostname } from 'node:os';
import { DelayedError, Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { findDomain, type ResolvedConfig, type ResolvedDomain, type ResolvedPolicy } from '../config/load-config.js';
import { VmsnapError, isRetryable } from '../errors.js';
import type { PipelineDeps, ProgressEvent } from '../pipeline/context.js';
import { catalogFor } from '../pipeline/context.js';
import { createSnapshot } from '../pipeline/create-snapshot.js';
import { deleteSnapshot } from '../pipeline/delete-snapshot.js';
import { pruneSnapshots } from '../pipeline/prune-snapshots.js';
import { revertSnapshot } from '../pipeline/revert-snapshot.js';
import { recoverDomain, type RecoveryReport } from '../pipeline/recover.js';
import { DomainLease } from './domain-lease.js';
import { QUEUE_PREFIX, parseJobData, queueName, type JobData, type JobResult } from './jobs.js';
import { createRedis, type RedisTarget } from './redis.js';
import { recordOutcome } from './status.js';

export interface WorkerOptions {
  config: ResolvedConfig;
  host: string;
  connection: RedisTarget;
  concurrency?: number;
  /** Builds the pipeline's dependencies for one job, with its progress callback. */
  depsFor(onProgress: (e: ProgressEvent) => void): PipelineDeps;
  logger: Logger;
  /** Lease on a domain; renewed every third of it while the job runs. */
  leaseMs?: number;
  /** How long a job that found its domain busy waits before it is tried again. */
  busyDelayMs?: number;
  /** How often the worker looks for domains left paused by a worker whose lease ran out. */
  sweepMs?: number;
  /** Called after each job, for `vmsnap run`'s activity lines. */
  onOutcome?(outcome: { job: Job; result?: JobResult; error?: Error }): void;
  /** Called when a sweep recovered a domain. */
  onRecovery?(report: RecoveryReport): void;
}

export interface RunningWorker {
  worker: Worker;
  /** Finish running jobs (a domain is never left paused), then stop. */
  close(): Promise<void>;
}

/**
 * A worker for one host's queue. Jobs are validated, run through the same
 * pipeline as the CLI under a Redis lease on their domain, and end as:
 * success (the job's return value says what was made), a retry with backoff
 * (lock busy elsewhere, QMP lost, timeouts), or an unrecoverable failure
 * (bad payload, unknown domain, impossible request) that runs once.
 */
export function startWorker(options: WorkerOptions): RunningWorker {
  const { config, host, logger } = options;
  const leaseMs = options.leaseMs ?? Number(process.env['VMSNAP_LEASE_MS'] ?? 60_000);
  const sweepMs = options.sweepMs ?? Math.max(1_000, Math.floor(leaseMs / 2));
  const busyDelayMs = options.busyDelayMs ?? 5_000;
  const holder = `${hostname()}:${process.pid}`;
  // BullMQ does not close connections it was given: each one is closed here on close().
  const redis: Redis = createRedis(options.connection);
  const queueConnection = createRedis(options.connection);
  const workerConnection = createRedis(options.connection);
  const queue = new Queue(queueName(host), { connection: queueConnection, prefix: QUEUE_PREFIX });

  const processor = async (job: Job, token?: string): Promise<JobResult> => {
    let data: JobData;
    let domain: ResolvedDomain;
    try {
      data = parseJobData(job.data);
      domain = findDomain(config, data.domain);
      if (domain.host !== host) {
        throw new VmsnapError('bad-input', `domain ${domain.name} belongs to host ${domain.host}, not ${host}; enqueue it on that host's queue`);
      }
    } catch (err) {
      throw new UnrecoverableError((err as Error).message);
    }

    const lease = await DomainLease.acquire(redis, domain.name, `${holder}:${job.id ?? '?'}`, leaseMs);
    if (lease === undefined) {
      // Busy is not a failure: come back later without spending an attempt.
      const by = await DomainLease.holder(redis, domain.name);
      logger.info({ job: job.id, domain: domain.name, by }, 'domain busy; job delayed');
      await job.moveToDelayed(Date.now() + busyDelayMs, token);
      throw new DelayedError();
    }
    const log = logger.child({ job: job.id, kind: data.kind, domain: domain.name });
    let lastReport = 0;
    const fenced = () => {
      if (lease.isLost) {
        throw new VmsnapError('busy', `lost the lease on domain ${domain.name} (fencing token ${lease.token} is stale); another worker took it`, { retryable: true });
      }
    };
    const deps = options.depsFor((e) => {
      const now = Date.now();
      if (e.fraction !== undefined && e.fraction < 1 && now - lastReport < 250) return;
      lastReport = now;
      void job.updateProgress({ step: e.step, ...(e.fraction !== undefined ? { fraction: e.fraction } : {}), ...(e.detail !== undefined ? { detail: e.detail } : {}) }).catch(() => undefined);
    });
    deps.checkFence = fenced;
    try {
      // A job handed back after its worker died finds that worker's leftovers first.
      const recovered = await recoverDomain(deps, domain);
      if (recovered.resumed || recovered.completed.length + recovered.removed.length + recovered.deleted.length > 0) {
        log.warn({ recovered }, 'recovered an interrupted operation before the job');
      }
      const result = await run(job, data, domain, deps);
      await recordOutcome(redis, data, result, undefined, new Date()).catch(() => undefined);
      return result;
    } catch (err) {
      await recordOutcome(redis, data, undefined, err as Error, new Date()).catch(() => undefined);
      log.warn({ err }, 'job failed');
      if (!isRetryable(err)) throw new UnrecoverableError((err as Error).message);
      throw err;
    } finally {
      await lease.release();
    }
  };

  async function run(job: Job, data: JobData, domain: ResolvedDomain, deps: PipelineDeps): Promise<JobResult> {
    switch (data.kind) {
      case 'snapshot': {
        const policy = data.policy === undefined ? undefined : findPolicy(config, data.policy);
        const slot = policy === undefined ? undefined : slotOf(job);
        // A job run again after its worker died: its snapshot may already be there (completed by recovery).
        const mine = (await catalogFor(domain).list(domain.name)).snapshots.find((s) => job.id !== undefined && s.jobId === job.id);
        if (mine !== undefined) {
          return { kind: 'snapshot', domain: domain.name, snapshot: mine.name, method: mine.method, downtimeMs: mine.downtimeMs, durationsMs: mine.durationsMs };
        }
        if (policy !== undefined && slot !== undefined) {
          const done = (await catalogFor(domain).list(domain.name)).snapshots.find((s) => s.policy === policy.name && s.slot === slot);
          if (done !== undefined) return { kind: 'snapshot', domain: domain.name, snapshot: done.name, skipped: `slot ${slot} already has snapshot ${done.name}` };
        }
        const report = await createSnapshot(deps, domain, {
          ...(data.name !== undefined ? { name: data.name } : {}),
          ...(data.memory !== undefined ? { memory: data.memory } : policy?.memory !== undefined ? { memory: policy.memory } : {}),
          ...(data.diskOnly === true || policy?.kind === 'disk-only' ? { diskOnly: true } : {}),
          ...(data.live === true || policy?.live === true ? { live: true } : {}),
          ...(data.halt === true ? { halt: true } : {}),
          ...(data.quiesce === true ? { quiesce: true, quiesceRequired: true } : policy?.quiesce === true ? { quiesce: true, quiesceRequired: policy.quiesceRequired } : {}),
          disks: Object.fromEntries(Object.entries({ ...(policy?.disks ?? {}), ...(data.disks ?? {}) }).map(([t, mode]) => [t, { mode }])),
          ...(data.description !== undefined ? { description: data.description } : {}),
          origin: policy === undefined ? 'adhoc' : 'policy',
          ...(policy !== undefined ? { policy: policy.name } : {}),
          ...(slot !== undefined ? { slot } : {}),
          ...(job.id !== undefined ? { jobId: job.id } : {}),
        });
        const m = report.manifest;
        if (policy !== undefined) {
          // One prune per (domain, policy) waiting at a time.
          await queue.add(
            'prune',
            { kind: 'prune', domain: domain.name, policy: policy.name },
            { jobId: `prune~${policy.name}~${domain.name}`, removeOnComplete: true, removeOnFail: { count: 100 }, attempts: policy.retry.attempts, backoff: { type: 'exponential', delay: policy.retry.backoffMs } },
          );
        }
        return { kind: 'snapshot', domain: domain.name, snapshot: report.name, method: m?.method ?? 'offline', downtimeMs: m?.downtimeMs ?? null, durationsMs: m?.durationsMs ?? {} };
      }
      case 'prune': {
        const r = await pruneSnapshots(deps, domain, findPolicy(config, data.policy));
        return { kind: 'prune', domain: domain.name, pruned: r.pruned };
      }
      case 'revert': {
        await revertSnapshot(deps, domain, data.snapshot, {
          ...(data.force !== undefined ? { force: data.force } : {}),
          ...(data.running !== undefined ? { running: data.running } : {}),
          ...(data.paused !== undefined ? { paused: data.paused } : {}),
        });
        return { kind: 'revert', domain: domain.name, snapshot: data.snapshot };
      }
      case 'delete': {
        await deleteSnapshot(deps, domain, data.snapshot);
        return { kind: 'delete', domain: domain.name, snapshot: data.snapshot };
      }
    }
  }

  /**
   * A domain paused by a worker that never came back: its lease runs out,
   * and the next sweep of any worker of the host takes the lease and
   * recovers the domain (resumes the guest, finishes or removes the snapshot).
   */
  const sweep = async (): Promise<void> => {
    for (const domain of config.domains.filter((d) => d.host === host)) {
      const listing = await catalogFor(domain).list(domain.name).catch(() => undefined);
      if (listing === undefined || listing.partial.length === 0) continue;
      const lease = await DomainLease.acquire(redis, domain.name, `${holder}:sweep`, leaseMs).catch(() => undefined);
      if (lease === undefined) continue; // someone is working on it
      try {
        const r = await recoverDomain(options.depsFor(() => undefined), domain);
        if (r.resumed || r.completed.length + r.removed.length > 0) logger.warn({ recovered: r }, 'recovered a domain whose worker lost its lease');
        options.onRecovery?.(r);
      } catch (err) {
        logger.error({ err, domain: domain.name }, 'recovery sweep failed');
      } finally {
        await lease.release();
      }
    }
  };
  let sweeping = false;
  const sweeper = setInterval(() => {
    if (sweeping) return;
    sweeping = true;
    void sweep().finally(() => (sweeping = false));
  }, sweepMs);
  sweeper.unref();

  const worker = new Worker(queueName(host), processor, {
    connection: workerConnection,
    prefix: QUEUE_PREFIX,
    concurrency: options.concurrency ?? 1,
    // Long memory saves keep BullMQ's job lock renewed; a worker that dies loses it and the job is picked up again.
    lockDuration: Number(process.env['VMSNAP_JOB_LOCK_MS'] ?? 60_000),
    stalledInterval: Math.max(500, Math.floor(Number(process.env['VMSNAP_JOB_LOCK_MS'] ?? 60_000) / 2)),
    maxStalledCount: 2,
  });
  worker.on('completed', (job, result: JobResult) => options.onOutcome?.({ job, result }));
  worker.on('failed', (job, error) => {
    if (job !== undefined) options.onOutcome?.({ job, error });
  });
  worker.on('error', (err) => logger.error({ err }, 'worker error'));

  return {
    worker,
    async close() {
      clearInterval(sweeper);
      while (sweeping) await new Promise((r) => setTimeout(r, 20));
      await worker.close();
      await queue.close();
      for (const c of [redis, queueConnection, workerConnection]) c.disconnect();
    },
  };
}

export function findPolicy(config: ResolvedConfig, name: string): ResolvedPolicy {
  const p = config.policies.find((x) => x.name === name);
  if (p === undefined) {
    throw new VmsnapError('bad-input', `unknown policy ${JSON.stringify(name)}; configured policies: ${config.policies.map((x) => x.name).join(', ') || 'none'}`);
  }
  return p;
}

/** The schedule slot of a scheduler's job ("repeat:<scheduler>:<millis>") or a catch-up job ("catchup~...~<millis>"). */
export function slotOf(job: Pick<Job, 'id'>): string | undefined {
  const m = /(?:^repeat:.*:|^catchup~.*~)(\d{10,})$/.exec(job.id ?? '');
  return m === null ? undefined : new Date(Number(m[1])).toISOString();
}
