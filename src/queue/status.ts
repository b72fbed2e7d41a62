import type { ResolvedConfig } from '../config/load-config.js';
import { catalogFor } from '../pipeline/context.js';
import type { Redis } from 'ioredis';
import { QUEUE_PREFIX, queueName, type JobData, type JobResult } from './jobs.js';
import { QueuePool } from './queue-pool.js';
import { createRedis, type RedisTarget } from './redis.js';
import { schedulerId } from '../scheduler/reconcile.js';

/** Last success and last error per (policy or "adhoc", domain), kept in Redis by the workers. */
function outcomeKey(policy: string | undefined, domain: string): string {
  return `${QUEUE_PREFIX}:outcome:${policy ?? '-adhoc'}:${domain}`;
}

export async function recordOutcome(redis: Redis, data: JobData, result: JobResult | undefined, error: Error | undefined, at: Date): Promise<void> {
  if (data.kind !== 'snapshot' || result?.skipped !== undefined) return;
  const key = outcomeKey(data.policy, data.domain);
  if (error === undefined) {
    await redis.hset(key, { lastSuccessAt: at.toISOString(), lastSnapshot: result?.snapshot ?? '' });
  } else {
    await redis.hset(key, { lastErrorAt: at.toISOString(), lastError: error.message.slice(0, 500) });
  }
}

export async function lastSuccess(redis: Redis, policy: string, domain: string): Promise<Date | undefined> {
  const v = await redis.hget(outcomeKey(policy, domain), 'lastSuccessAt');
  return v === null ? undefined : new Date(v);
}

export interface StatusReport {
  queues: { host: string; queue: string; waiting: number; active: number; delayed: number; failed: number; completed: number }[];
  schedules: {
    policy: string;
    domain: string;
    host: string;
    schedule: string;
    timezone: string;
    nextRun: string | null;
    lastSnapshot: string | null;
    lastSuccessAt: string | null;
    lastErrorAt: string | null;
    lastError: string | null;
  }[];
}

/** Everything `vmsnap status` shows, read from Redis and the local catalogs. */
export async function gatherStatus(config: ResolvedConfig, connection: RedisTarget): Promise<StatusReport> {
  const redis = createRedis(connection);
  const pool = new QueuePool(connection);
  const queueFor = (host: string) => pool.for(host);
  try {
    const report: StatusReport = { queues: [], schedules: [] };
    for (const { name: host } of config.hosts) {
      const c = await queueFor(host).getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed');
      report.queues.push({
        host,
        queue: queueName(host),
        waiting: c['waiting'] ?? 0,
        active: c['active'] ?? 0,
        delayed: c['delayed'] ?? 0,
        failed: c['failed'] ?? 0,
        completed: c['completed'] ?? 0,
      });
    }
    for (const policy of config.policies) {
      for (const domainName of policy.domains) {
        const domain = config.domains.find((d) => d.name === domainName);
        if (domain === undefined) continue;
        const scheduler = await queueFor(domain.host).getJobScheduler(schedulerId(policy.name, domain.name));
        const outcome = await redis.hgetall(outcomeKey(policy.name, domain.name));
        const mine = (await catalogFor(domain).list(domain.name).catch(() => ({ snapshots: [] }))).snapshots.filter(
          (s) => s.origin === 'policy' && s.policy === policy.name,
        );
        report.schedules.push({
          policy: policy.name,
          domain: domain.name,
          host: domain.host,
          schedule: policy.schedule,
          timezone: policy.timezone,
          nextRun: scheduler?.next !== undefined && scheduler.next !== null ? new Date(scheduler.next).toISOString() : null,
          lastSnapshot: mine.at(-1)?.name ?? outcome['lastSnapshot'] ?? null,
          lastSuccessAt: outcome['lastSuccessAt'] ?? null,
          lastErrorAt: outcome['lastErrorAt'] ?? null,
          lastError: outcome['lastError'] ?? null,
        });
      }
    }
    return report;
  } finally {
    await pool.close();
    redis.disconnect();
  }
}
