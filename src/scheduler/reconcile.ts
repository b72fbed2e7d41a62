import { CronExpressionParser } from 'cron-parser';
import type { Logger } from 'pino';
import type { ResolvedConfig } from '../config/load-config.js';
import { QueuePool } from '../queue/queue-pool.js';
import { createRedis, type RedisTarget } from '../queue/redis.js';
import { lastSuccess } from '../queue/status.js';

/**
 * The config's policies as BullMQ job schedulers: one per (policy, domain) on
 * the domain's host queue, upserted in place (cron pattern + time zone), and
 * those whose policy or domain disappeared removed. Idempotent: running it
 * twice, or on two machines, leaves one scheduler per (policy, domain).
 */
export function schedulerId(policy: string, domain: string): string {
  return `policy~${policy}~${domain}`;
}

export interface ReconcileReport {
  upserted: { id: string; host: string; next: string | null }[];
  removed: { id: string; host: string }[];
  catchUp: { policy: string; domain: string; slot: string }[];
}

export async function reconcileSchedulers(
  config: ResolvedConfig,
  connection: RedisTarget,
  options: { logger?: Logger; now?: Date; catchUp?: boolean } = {},
): Promise<ReconcileReport> {
  const now = options.now ?? new Date();
  const report: ReconcileReport = { upserted: [], removed: [], catchUp: [] };
  const pool = new QueuePool(connection);
  const queueFor = (host: string) => pool.for(host);
  const redis = createRedis(connection);
  try {
    const desired = new Map<string, Set<string>>(config.hosts.map((h) => [h.name, new Set<string>()]));
    for (const policy of config.policies) {
      for (const domainName of policy.domains) {
        const domain = config.domains.find((d) => d.name === domainName);
        if (domain === undefined) continue;
        const id = schedulerId(policy.name, domain.name);
        desired.get(domain.host)?.add(id);
        const queue = queueFor(domain.host);
        const job = await queue.upsertJobScheduler(
          id,
          { pattern: policy.schedule, tz: policy.timezone },
          {
            name: 'snapshot',
            data: { kind: 'snapshot', domain: domain.name, policy: policy.name },
            opts: {
              attempts: policy.retry.attempts,
              backoff: { type: 'exponential', delay: policy.retry.backoffMs },
              removeOnComplete: { count: 500 },
              removeOnFail: { count: 500 },
            },
          },
        );
        const next = job === undefined ? null : (previewRuns(policy.schedule, policy.timezone, now, 1)[0]?.utc ?? null);
        report.upserted.push({ id, host: domain.host, next });

        if (options.catchUp !== false && policy.catchUp === 'once') {
          // The last slot before now: if it has no snapshot, take one now (once: the job id is the slot).
          const prev = CronExpressionParser.parse(policy.schedule, { tz: policy.timezone, currentDate: now }).prev().toDate();
          const last = await lastSuccess(redis, policy.name, domain.name);
          if (last === undefined || last.getTime() < prev.getTime()) {
            await queue.add(
              'snapshot',
              { kind: 'snapshot', domain: domain.name, policy: policy.name },
              {
                jobId: `catchup~${policy.name}~${domain.name}~${prev.getTime()}`,
                attempts: policy.retry.attempts,
                backoff: { type: 'exponential', delay: policy.retry.backoffMs },
                removeOnComplete: { count: 500 },
                removeOnFail: { count: 500 },
              },
            );
            report.catchUp.push({ policy: policy.name, domain: domain.name, slot: prev.toISOString() });
          }
        }
      }
    }
    for (const [host, ids] of desired) {
      const queue = queueFor(host);
      for (const s of await queue.getJobSchedulers(0, -1)) {
        const id = s.key;
        if (id.startsWith('policy~') && !ids.has(id)) {
          await queue.removeJobScheduler(id);
          report.removed.push({ id, host });
        }
      }
    }
    options.logger?.info({ upserted: report.upserted.length, removed: report.removed.length, catchUp: report.catchUp.length }, 'schedulers reconciled');
    return report;
  } finally {
    await pool.close();
    redis.disconnect();
  }
}

/** The next `count` run times of a policy, in its zone and in UTC. */
export function previewRuns(schedule: string, timezone: string, now: Date, count: number): { utc: string; local: string }[] {
  const it = CronExpressionParser.parse(schedule, { tz: timezone, currentDate: now });
  const fmt = new Intl.DateTimeFormat('sv-SE', {
    timeZone: timezone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    timeZoneName: 'short',
  });
  const out: { utc: string; local: string }[] = [];
  for (let i = 0; i < count; i++) {
    const d = it.next().toDate();
    out.push({ utc: d.toISOString().replace('.000Z', 'Z'), local: fmt.format(d) });
  }
  return out;
}
