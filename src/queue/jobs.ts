import { z } from 'zod';
import { VmsnapError } from '../errors.js';
import { isValidName } from '../domain/names.js';

/**
 * Job payloads. Jobs come from Redis, which anyone with its password can
 * write: every payload is validated on arrival, names domains, policies and
 * snapshots only (never a path or a command), and what fails validation is
 * failed once, unrecoverably, with the reason.
 */

/** All keys of vmsnap's queues share one hash tag, so they live in one Redis Cluster slot. */
export const QUEUE_PREFIX = '{vmsnap}';

export function queueName(host: string): string {
  return `host-${host}`;
}

const name = (what: string) =>
  z
    .string({ error: `${what} must be a string` })
    .max(128, { error: `${what} is longer than 128 characters` })
    .refine(isValidName, { error: `${what} must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}, not be all digits and contain no ".."` });

const diskMode = z.enum(['no', 'internal', 'external'], { error: 'disk mode must be no, internal or external' });

export const snapshotJobSchema = z.strictObject({
  kind: z.literal('snapshot'),
  domain: name('domain'),
  policy: name('policy').optional(),
  name: name('name').optional(),
  memory: z.enum(['no', 'internal', 'external'], { error: 'memory must be no, internal or external' }).optional(),
  diskOnly: z.boolean().optional(),
  live: z.boolean().optional(),
  halt: z.boolean().optional(),
  quiesce: z.boolean().optional(),
  /** Per-disk modes by target; never a file: jobs do not choose paths. */
  disks: z.record(z.string().regex(/^[a-z][a-z0-9]{0,15}$/, { error: 'disk targets are a-z then up to 15 of a-z 0-9' }), diskMode).optional(),
  description: z.string().max(1024, { error: 'description is longer than 1024 characters' }).optional(),
});

export const pruneJobSchema = z.strictObject({
  kind: z.literal('prune'),
  domain: name('domain'),
  policy: name('policy'),
});

export const revertJobSchema = z.strictObject({
  kind: z.literal('revert'),
  domain: name('domain'),
  snapshot: name('snapshot'),
  force: z.boolean().optional(),
  running: z.boolean().optional(),
  paused: z.boolean().optional(),
});

export const deleteJobSchema = z.strictObject({
  kind: z.literal('delete'),
  domain: name('domain'),
  snapshot: name('snapshot'),
});

export const jobSchema = z.discriminatedUnion('kind', [snapshotJobSchema, pruneJobSchema, revertJobSchema, deleteJobSchema], {
  error: 'job data needs kind: snapshot, prune, revert or delete',
});

export type JobData = z.infer<typeof jobSchema>;
export type SnapshotJob = z.infer<typeof snapshotJobSchema>;

/** Validate a payload from Redis; the error names the field. */
export function parseJobData(data: unknown): JobData {
  if (JSON.stringify(data ?? null).length > 16_384) {
    throw new VmsnapError('bad-input', 'job data is larger than 16 KiB; jobs only name domains and snapshots');
  }
  const r = jobSchema.safeParse(data);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const at = issue === undefined || issue.path.length === 0 ? 'job data' : `job data.${issue.path.join('.')}`;
  // zod reports a bad record key without the key schema's message.
  const message = issue?.code === 'invalid_key' ? 'disk targets are a-z then up to 15 of a-z 0-9, e.g. vda' : (issue?.message ?? 'invalid');
  throw new VmsnapError('bad-input', `${at}: ${message}`);
}

/** What a finished job returns (BullMQ keeps it as the job's return value). */
export interface JobResult {
  kind: JobData['kind'];
  domain: string;
  snapshot?: string;
  method?: string;
  downtimeMs?: number | null;
  durationsMs?: Record<string, number>;
  pruned?: string[];
  skipped?: string;
}
