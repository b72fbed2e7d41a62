import { join } from 'node:path';
import { Queue, QueueEvents, type Job } from 'bullmq';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { VmsnapError } from '../errors.js';
import { findDomain, type ResolvedConfig } from '../config/load-config.js';
import type { ProgressEvent } from '../pipeline/context.js';
import { QUEUE_PREFIX, parseJobData, queueName, type JobResult } from '../queue/jobs.js';
import { assertRedisReachable, createRedis, startEmbeddedRedis, type EmbeddedRedis, type RedisTarget } from '../queue/redis.js';
import { gatherStatus } from '../queue/status.js';
import { startWorker } from '../queue/worker.js';
import { previewRuns, reconcileSchedulers } from '../scheduler/reconcile.js';
import { createPipelineDeps } from './deps.js';
import { recoverDomain, type RecoveryReport } from '../pipeline/recover.js';
import { formatTable } from './format-table.js';
import { parseCountFlag } from './parse-flags.js';

export interface ServiceContext {
  config(): Promise<ResolvedConfig>;
  out(text: string): void;
  json(value: unknown): void;
  err(text: string): void;
  logger: Logger;
  progress(e: ProgressEvent): void;
  /** Resolves when the process is asked to stop (SIGINT/SIGTERM); tests pass their own. */
  stopSignal(): Promise<string>;
}

/** Where the queue lives: the configured Redis, or the embedded one's socket in the state folder. */
export function redisTarget(config: ResolvedConfig): RedisTarget {
  switch (config.redis.kind) {
    case 'url':
      return { kind: 'url', url: config.redis.url };
    case 'sentinel':
      return config.redis;
    case 'embedded':
      return { kind: 'socket', path: join(config.stateDir, 'redis', 'redis.sock') };
  }
}

function pickHost(config: ResolvedConfig, host: string | undefined): string {
  if (host !== undefined) {
    if (!config.hosts.some((h) => h.name === host)) {
      throw new VmsnapError('usage', `--host ${host}: not a host of ${config.file}; hosts: ${config.hosts.map((h) => h.name).join(', ')}`);
    }
    return host;
  }
  if (config.hosts.length === 1) return (config.hosts[0] as { name: string }).name;
  throw new VmsnapError('usage', `--host is required: ${config.file} lists ${config.hosts.length} hosts (${config.hosts.map((h) => h.name).join(', ')})`);
}

function describeOutcome(job: Job, result: JobResult | undefined, error: Error | undefined): string {
  const at = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const data = job.data as { kind?: string; domain?: string; policy?: string };
  const who = `${data.kind ?? '?'} ${data.domain ?? '?'}${data.policy !== undefined ? ` (${data.policy})` : ''}`;
  if (error !== undefined) return `${at} ${who}: failed (attempt ${job.attemptsMade}): ${error.message}`;
  if (result?.skipped !== undefined) return `${at} ${who}: skipped, ${result.skipped}`;
  if (result?.kind === 'prune') return `${at} ${who}: ${result.pruned?.length ? `pruned ${result.pruned.join(', ')}` : 'nothing to prune'}`;
  return `${at} ${who}: ${result?.snapshot ?? ''} done${result?.method !== undefined ? ` (${result.method}` + (result.downtimeMs != null ? `, paused ${result.downtimeMs} ms)` : ')') : ''}`;
}

/** Recover every domain of a host before its worker takes new work. */
async function recoverHost(ctx: ServiceContext, config: ResolvedConfig, host: string | undefined): Promise<RecoveryReport[]> {
  const deps = createPipelineDeps(ctx.logger);
  const reports: RecoveryReport[] = [];
  for (const domain of config.domains.filter((d) => host === undefined || d.host === host)) {
    try {
      reports.push(await recoverDomain(deps, domain));
    } catch (err) {
      ctx.err(`vmsnap: recovery of ${domain.name} failed: ${(err as Error).message}`);
    }
  }
  return reports;
}

function describeRecovery(r: RecoveryReport): string[] {
  const lines: string[] = [];
  if (r.resumed) lines.push(`recover ${r.domain}: resumed the guest an interrupted snapshot had paused`);
  for (const n of r.completed) lines.push(`recover ${r.domain}: completed interrupted snapshot ${n}`);
  for (const n of r.removed) lines.push(`recover ${r.domain}: removed interrupted snapshot ${n}`);
  for (const n of r.deleted) lines.push(`recover ${r.domain}: finished the delete of ${n}`);
  for (const n of r.unknown) lines.push(`recover ${r.domain}: left ${n} alone (no journal; see list --all)`);
  return lines;
}

export function addServiceCommands(program: Command, snapshotCreate: Command, ctx: ServiceContext): void {
  // ---- run ----
  program
    .command('run')
    .description('scheduler and worker in one process, for a single host; starts its own Redis when none is configured')
    .option('--host <host>', 'the host this process serves (default: the only host in the config)')
    .option('--concurrency <n>', 'jobs run at once (different domains only)', '1')
    .addHelpText(
      'after',
      `
Without a redis section in the config, vmsnap run starts its own redis-server
(unix socket and append-only file under <stateDir>/redis) and stops it on
exit. It reconciles the policies into job schedulers (see vmsnap scheduler),
takes the catch-up snapshots policies ask for, then runs the host's jobs and
prints one line per job. SIGINT/SIGTERM: running jobs finish (a domain is
never left paused), then it exits.`,
    )
    .action(async (opts: { host?: string; concurrency: string }) => {
      const config = await ctx.config();
      const host = pickHost(config, opts.host);
      const concurrency = parseCountFlag('--concurrency', opts.concurrency) ?? 1;
      let embedded: EmbeddedRedis | undefined;
      if (config.redis.kind === 'embedded') embedded = await startEmbeddedRedis(config.stateDir);
      try {
        const target = redisTarget(config);
        for (const r of await recoverHost(ctx, config, host)) for (const line of describeRecovery(r)) ctx.out(line);
        const rec = await reconcileSchedulers(config, target, { logger: ctx.logger });
        ctx.out(`vmsnap run: host ${host}, ${rec.upserted.length} schedule(s), ${embedded !== undefined ? `embedded redis at ${embedded.socket}` : 'configured redis'}; Ctrl-C stops`);
        for (const u of rec.upserted) ctx.out(`  ${u.id}: next run ${u.next ?? 'unknown'}`);
        for (const c of rec.catchUp) ctx.out(`  catch-up: ${c.policy}/${c.domain} for the missed slot ${c.slot}`);
        const w = startWorker({
          config,
          host,
          connection: target,
          concurrency: Math.max(1, concurrency),
          logger: ctx.logger,
          depsFor: (onProgress) => createPipelineDeps(ctx.logger, onProgress),
          onOutcome: ({ job, result, error }) => ctx.out(describeOutcome(job, result, error)),
        });
        const signal = await ctx.stopSignal();
        ctx.out(`vmsnap run: ${signal}: finishing running jobs`);
        await w.close();
      } finally {
        await embedded?.stop();
      }
    });

  // ---- worker ----
  program
    .command('worker')
    .description("run the jobs of one host's queue")
    .requiredOption('--host <host>', 'the host whose queue this worker consumes')
    .option('--concurrency <n>', 'jobs run at once (different domains only)', '1')
    .addHelpText('after', '\nNeeds a Redis: the config\'s redis section, or a running `vmsnap run`\'s embedded one. SIGTERM finishes running jobs, then exits.')
    .action(async (opts: { host: string; concurrency: string }) => {
      const config = await ctx.config();
      const host = pickHost(config, opts.host);
      await assertRedisReachable(redisTarget(config));
      for (const r of await recoverHost(ctx, config, host)) for (const line of describeRecovery(r)) ctx.out(line);
      const w = startWorker({
        config,
        host,
        connection: redisTarget(config),
        concurrency: Math.max(1, parseCountFlag('--concurrency', opts.concurrency) ?? 1),
        logger: ctx.logger,
        depsFor: (onProgress) => createPipelineDeps(ctx.logger, onProgress),
        onOutcome: ({ job, result, error }) => ctx.out(describeOutcome(job, result, error)),
      });
      ctx.out(`vmsnap worker: host ${host}; SIGTERM stops`);
      await ctx.stopSignal();
      await w.close();
    });

  // ---- recover ----
  program
    .command('recover')
    .description('finish or undo interrupted operations, and resume guests they left paused')
    .argument('[domain...]', 'domains to recover (default: all in the config)')
    .option('--host <host>', 'only the domains of this host')
    .option('--json', 'print the reports as JSON')
    .addHelpText(
      'after',
      `
Workers run this for their host's domains before taking work. For every
snapshot folder with a journal and no manifest: a memory save still running
is cancelled and a guest vmsnap paused is resumed; then a snapshot whose disks
already moved on to new overlays is committed as what it really is
(crash-consistent disk-only when its memory image is incomplete), and any
other is removed, file by file from its journal. Interrupted deletes are
finished. Folders without a journal are reported and never touched.`,
    )
    .action(async (domains: string[], opts: { host?: string; json?: boolean }) => {
      const config = await ctx.config();
      const deps = createPipelineDeps(ctx.logger);
      const chosen = domains.length > 0 ? domains.map((d) => findDomain(config, d)) : config.domains.filter((d) => opts.host === undefined || d.host === opts.host);
      const reports: RecoveryReport[] = [];
      for (const d of chosen) reports.push(await recoverDomain(deps, d));
      if (opts.json) ctx.json(reports);
      else {
        const lines = reports.flatMap(describeRecovery);
        ctx.out(lines.length > 0 ? lines.join('\n') : `nothing to recover (${chosen.length} domain(s) checked)`);
      }
    });

  // ---- scheduler ----
  program
    .command('scheduler')
    .description("turn the config's policies into BullMQ job schedulers, one per (policy, domain), and exit")
    .option('--no-catch-up', 'do not take the catch-up snapshots of missed runs')
    .option('--json', 'print what changed as JSON')
    .addHelpText(
      'after',
      `
Schedulers live in Redis and fire on their own; run this after every config
change. Changed schedules are updated in place, schedulers whose policy or
domain is gone are removed, and running it twice or on two machines creates
no duplicates. A policy with catchUp: once (the default) gets one snapshot
now when its last run is older than one period.`,
    )
    .action(async (opts: { catchUp: boolean; json?: boolean }) => {
      const config = await ctx.config();
      await assertRedisReachable(redisTarget(config));
      const rec = await reconcileSchedulers(config, redisTarget(config), { logger: ctx.logger, catchUp: opts.catchUp });
      if (opts.json) ctx.json(rec);
      else {
        for (const u of rec.upserted) ctx.out(`scheduled ${u.id} on ${u.host}: next ${u.next ?? 'unknown'}`);
        for (const r of rec.removed) ctx.out(`removed ${r.id} from ${r.host}`);
        for (const c of rec.catchUp) ctx.out(`catch-up snapshot queued: ${c.policy}/${c.domain} (slot ${c.slot})`);
      }
    });

  // ---- schedule preview ----
  program
    .command('schedule')
    .description('inspect schedules')
    .command('preview')
    .argument('[policy]', 'one policy (default: all)')
    .option('--count <n>', 'runs to show per policy', '5')
    .option('--now <rfc3339>', 'start from this time instead of now')
    .option('--json', 'print as JSON')
    .description("print each policy's next runs, in its time zone and in UTC")
    .action(async (policyName: string | undefined, opts: { count: string; now?: string; json?: boolean }) => {
      const config = await ctx.config();
      const count = parseCountFlag('--count', opts.count) ?? 5;
      const now = opts.now !== undefined ? new Date(opts.now) : new Date();
      if (Number.isNaN(now.getTime())) throw new VmsnapError('usage', `--now ${opts.now}: not an RFC 3339 time`);
      const policies = policyName === undefined ? config.policies : config.policies.filter((p) => p.name === policyName);
      if (policyName !== undefined && policies.length === 0) {
        throw new VmsnapError('bad-input', `unknown policy ${JSON.stringify(policyName)}; configured: ${config.policies.map((p) => p.name).join(', ') || 'none'}`);
      }
      const rows = policies.map((p) => ({ policy: p.name, schedule: p.schedule, timezone: p.timezone, domains: p.domains, runs: previewRuns(p.schedule, p.timezone, now, Math.max(1, count)) }));
      if (opts.json) ctx.json(rows);
      else {
        for (const r of rows) {
          ctx.out(`${r.policy}: "${r.schedule}" in ${r.timezone} for ${r.domains.join(', ') || '(no domains)'}`);
          ctx.out(formatTable([['LOCAL', 'UTC'], ...r.runs.map((x) => [x.local, x.utc])]));
        }
      }
    });

  // ---- status ----
  program
    .command('status')
    .description('queue counts per host, and per (policy, domain) the next run, last snapshot, last success and last error')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      const config = await ctx.config();
      await assertRedisReachable(redisTarget(config));
      const report = await gatherStatus(config, redisTarget(config));
      if (opts.json) {
        ctx.json(report);
        return;
      }
      ctx.out(formatTable([['HOST', 'WAITING', 'ACTIVE', 'DELAYED', 'FAILED', 'COMPLETED'], ...report.queues.map((q) => [q.host, q.waiting, q.active, q.delayed, q.failed, q.completed].map(String))]));
      ctx.out('');
      ctx.out(
        formatTable([
          ['POLICY', 'DOMAIN', 'NEXT RUN (UTC)', 'LAST SNAPSHOT', 'LAST SUCCESS', 'LAST ERROR'],
          ...report.schedules.map((s) => [s.policy, s.domain, s.nextRun ?? '-', s.lastSnapshot ?? '-', s.lastSuccessAt ?? '-', s.lastError !== null ? `${s.lastErrorAt ?? ''} ${s.lastError}` : '-']),
        ]),
      );
    });

  // ---- snapshot create --queue ----
  snapshotCreate
    .option('--queue', "enqueue an ad-hoc job on the domain's host queue instead of running here")
    .option('--wait', 'with --queue: follow the job (progress bar) and exit with its result');
}

/** Enqueue an ad-hoc snapshot; with `wait`, follow it to its end. */
export async function enqueueSnapshot(
  ctx: ServiceContext,
  config: ResolvedConfig,
  data: Record<string, unknown>,
  options: { wait: boolean; json: boolean; timeoutMs?: number },
): Promise<void> {
  const payload = parseJobData(data); // the worker validates again on arrival
  const domain = findDomain(config, payload.domain);
  const target = redisTarget(config);
  await assertRedisReachable(target);
  const queueConnection = createRedis(target);
  const eventsConnection = createRedis(target);
  const queue = new Queue(queueName(domain.host), { connection: queueConnection, prefix: QUEUE_PREFIX });
  const events = options.wait ? new QueueEvents(queueName(domain.host), { connection: eventsConnection, prefix: QUEUE_PREFIX }) : undefined;
  try {
    await events?.waitUntilReady();
    const job = await queue.add('snapshot', payload, { attempts: 3, backoff: { type: 'exponential', delay: 10_000 }, removeOnComplete: { count: 500 }, removeOnFail: { count: 500 } });
    if (events === undefined) {
      if (options.json) ctx.json({ queued: true, jobId: job.id, queue: queueName(domain.host) });
      else ctx.out(`queued job ${job.id ?? '?'} on ${queueName(domain.host)}`);
      return;
    }
    events.on('progress', ({ jobId, data: p }) => {
      if (jobId === job.id && typeof p === 'object' && p !== null) ctx.progress(p as ProgressEvent);
    });
    let result: JobResult;
    try {
      result = (await job.waitUntilFinished(events, options.timeoutMs)) as JobResult;
    } catch (err) {
      throw new VmsnapError('command-failed', `job ${job.id ?? '?'} failed: ${(err as Error).message}`);
    }
    if (options.json) ctx.json({ jobId: job.id, ...result });
    else ctx.out(`snapshot ${result.snapshot ?? '?'} of ${result.domain} created by job ${job.id ?? '?'}${result.method !== undefined ? ` (${result.method})` : ''}`);
  } finally {
    await events?.close();
    await queue.close();
    queueConnection.disconnect();
    eventsConnection.disconnect();
  }
}
