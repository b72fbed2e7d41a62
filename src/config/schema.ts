import { CronExpressionParser } from 'cron-parser';
import { z } from 'zod';
import { parseWithinDuration } from '../domain/retention-rules.js';

/**
 * The config file's shape, checked field by field. Every message is the
 * "<what is wrong>; <what would be valid>" half of a config error: the loader
 * adds the file and the field path. Relations between fields (references,
 * uniqueness, defaults) are checked after this, in load-config.ts.
 */

// Same pattern as NAME_RE in src/domain/names.ts (without its all-digit rule,
// which is for snapshot names); kept local until the two are unified.
const CONFIG_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const NAME_RULE = 'use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without ".."';
const TARGET_RE = /^[a-z][a-z0-9]{0,15}$/;
const GLOB_RE = /^[A-Za-z0-9._*?-]{1,128}$/;
const CONTROL_RE = /[\u0000-\u001f\u007f]/;

export const DRIVERS = ['qemu', 'libvirt', 'xen'] as const;
export const DISK_FORMATS = ['qcow2', 'raw'] as const;
export const DISK_BACKENDS = ['qcow2', 'file', 'btrfs'] as const;
export const DISK_MODES = ['no', 'internal', 'external'] as const;

/** True for names of hosts, domains and policies: safe as a path segment and a qcow2 tag. */
export function isValidConfigName(s: string): boolean {
  return CONFIG_NAME_RE.test(s) && !s.includes('..');
}

/** True when a policy's `domains` entry uses `*` or `?`. */
export function isGlob(s: string): boolean {
  return s.includes('*') || s.includes('?');
}

/** How a value from the file is shown in an error: short, one line, never a whole mapping. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') {
    return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v);
  }
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Uint8Array) return 'binary data';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

/** `"a"`, `"a" or "b"`, `"a", "b" or "c"`. */
export function quoteChoices(values: readonly string[]): string {
  const q = values.map((v) => JSON.stringify(v));
  if (q.length <= 1) return q.join('');
  return `${q.slice(0, -1).join(', ')} or ${q[q.length - 1] ?? ''}`;
}

interface IssueInput {
  code?: string;
  input?: unknown;
}

/** An error map for "wrong type or value": `missing; expected X` or `got Y; expected X`. */
function expected(what: string) {
  return (iss: IssueInput): string =>
    iss.input === undefined ? `missing; expected ${what}` : `got ${describeValue(iss.input)}; expected ${what}`;
}

/** As `expected`, for strings: YAML reads `1024` or `true` as a number or boolean, so say to quote it. */
function expectedString(what: string) {
  return (iss: IssueInput): string =>
    typeof iss.input === 'number' || typeof iss.input === 'boolean'
      ? `got ${describeValue(iss.input)}, which YAML reads as a ${typeof iss.input}; expected ${what}, so quote it: "${String(iss.input)}"`
      : expected(what)(iss);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

/** The allowed key a typo most likely meant: same letters in another case, else within 2 edits. */
export function suggestKey(key: string, allowed: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  const sameCase = allowed.find((k) => k.toLowerCase() === lower);
  if (sameCase !== undefined) return sameCase;
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of allowed) {
    const d = editDistance(lower, k.toLowerCase());
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

function unknownKeyMessage(keys: readonly string[], allowed: readonly string[], hint?: (key: string) => string | undefined): string {
  const key = keys[0] ?? '';
  const more = keys.length > 1 ? ` (and ${keys.slice(1).map((k) => JSON.stringify(k)).join(', ')})` : '';
  const suggestion = suggestKey(key, allowed);
  const extra = hint?.(key);
  if (extra !== undefined) return `unknown key ${JSON.stringify(key)}${more}; ${extra}`;
  if (suggestion !== undefined) return `unknown key ${JSON.stringify(key)}${more}; did you mean ${JSON.stringify(suggestion)}?`;
  return `unknown key ${JSON.stringify(key)}${more}; allowed keys: ${allowed.join(', ')}`;
}

/** A mapping that refuses keys it does not know, naming the closest allowed one. */
function strict<S extends z.core.$ZodLooseShape>(shape: S, what: string, hint?: (key: string) => string | undefined) {
  const allowed = Object.keys(shape);
  return z.strictObject(shape, {
    error: (iss) =>
      iss.code === 'unrecognized_keys'
        ? unknownKeyMessage(iss.keys, allowed, hint)
        : expected(`${what} (a mapping with keys ${allowed.join(', ')})`)(iss),
  });
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: expected(quoteChoices(values)) });
}

const bool = () => z.boolean({ error: expected('true or false') });

function int(min: number, max: number | undefined, what: string) {
  const error = expected(what);
  const n = z.number({ error }).int({ error }).min(min, { error });
  return max === undefined ? n : n.max(max, { error });
}

function nameSchema(kind: string) {
  return z
    .string({ error: expectedString(`a ${kind} name`) })
    .refine(isValidConfigName, { error: (iss) => `${describeValue(iss.input)} is not a valid ${kind} name; ${NAME_RULE}` });
}

/** An absolute path without `..` segments or control characters; load-config normalizes it. */
function absPath(what: string) {
  return z
    .string({ error: expectedString(`an absolute path to ${what}`) })
    .refine((s) => s.startsWith('/'), {
      error: (iss) => `got ${describeValue(iss.input)}; expected an absolute path to ${what} (starting with /)`,
    })
    .refine((s) => !s.split('/').includes('..'), {
      error: (iss) => `${describeValue(iss.input)} contains a ".." segment; write the path without ".."`,
    })
    .refine((s) => !CONTROL_RE.test(s), {
      error: (iss) => `${describeValue(iss.input)} contains a control character; expected a plain path`,
    });
}

/** A name handed to a hypervisor tool as an argument: printable and never read as a flag. */
function toolArg(what: string) {
  return z
    .string({ error: expectedString(what) })
    .refine((s) => s.length > 0 && !s.startsWith('-') && !CONTROL_RE.test(s), {
      error: (iss) => `got ${describeValue(iss.input)}; expected ${what} (not empty, not starting with "-", no control characters)`,
    });
}

function diskTarget() {
  return z.string({ error: expectedString('a disk target such as "vda"') }).refine((s) => TARGET_RE.test(s), {
    error: (iss) =>
      `got ${describeValue(iss.input)}; expected a disk target such as "vda", "sda", "xvda" or "hda" (a-z, then up to 15 of a-z 0-9)`,
  });
}

// Cron

const CRON_ALIASES = ['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@hourly', '@minutely', '@secondly', '@weekdays', '@weekends'];
const CRON_HELP = 'expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), e.g. "0 * * * *"';

/** Why `expr` is not a schedule, or undefined when cron-parser takes it in `tz`. */
export function checkCron(expr: string, tz = 'UTC'): string | undefined {
  const trimmed = expr.trim();
  if (trimmed.startsWith('@')) {
    if (!CRON_ALIASES.includes(trimmed)) {
      return `${describeValue(expr)} is not a cron alias; use one of ${CRON_ALIASES.join(', ')} or ${CRON_HELP}`;
    }
  } else {
    const fields = trimmed === '' ? [] : trimmed.split(/\s+/);
    if (fields.length !== 5 && fields.length !== 6) {
      return `${describeValue(expr)} has ${fields.length} field${fields.length === 1 ? '' : 's'}; ${CRON_HELP}`;
    }
    // cron-parser picks a random value for H on every parse: schedules would move on each reload.
    // Of the month and day names only THU has an h.
    if (/h/i.test(trimmed.replace(/thu/gi, ''))) {
      return `${describeValue(expr)} uses H (a random value); write the value out, e.g. "17 * * * *"`;
    }
  }
  try {
    CronExpressionParser.parse(trimmed, { tz });
  } catch (err) {
    const reason = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ');
    return `${describeValue(expr)} is not a valid cron expression (${reason}); expected e.g. "0 * * * *" (minute hour day-of-month month day-of-week)`;
  }
  return undefined;
}

/** True for zones Intl knows, which is what cron-parser's time zone support uses. */
export function isTimeZone(tz: string): boolean {
  if (tz.trim() === '') return false;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const scheduleSchema = z.string({ error: expected('a cron expression such as "0 * * * *"') }).superRefine((s, ctx) => {
  const problem = checkCron(s);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem, input: s });
});

const timezoneSchema = z.string({ error: expectedString('an IANA time zone such as "Europe/Berlin" or "UTC"') }).refine(isTimeZone, {
  error: (iss) => `${describeValue(iss.input)} is not an IANA time zone (e.g. "Europe/Berlin", "UTC")`,
});

// Redis

/** A redis URL with its password hidden, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^@/]*)@/i, (_m, scheme: string, auth: string) =>
    auth.includes(':') ? `${scheme}${auth.slice(0, auth.indexOf(':'))}:***@` : `${scheme}***@`,
  );
}

function isRedisUrl(s: string): boolean {
  if (!/^rediss?:\/\//.test(s)) return false;
  try {
    const u = new URL(s);
    return u.hostname !== '' && (u.pathname === '' || u.pathname === '/' || /^\/\d+$/.test(u.pathname));
  } catch {
    return false;
  }
}

const redisUrlSchema = z
  .string({ error: expectedString('a redis URL such as "redis://:password@host:6379/0"') })
  .refine(isRedisUrl, {
    error: (iss) =>
      `got ${typeof iss.input === 'string' ? describeValue(redactUrl(iss.input)) : describeValue(iss.input)}; expected redis://[:password@]host[:port][/db] or rediss://... for TLS`,
  });

const sentinelSchema = strict(
  {
    host: toolArg('a sentinel host name or address'),
    port: int(1, 65535, 'a port number from 1 to 65535'),
  },
  'a sentinel',
);

export const redisSchema = strict(
  {
    url: redisUrlSchema.optional(),
    sentinels: z.array(sentinelSchema, { error: expected('a list of {host, port}') }).min(1, {
      error: 'empty list; expected at least one sentinel {host, port}',
    }).optional(),
    name: toolArg('the sentinel master name, e.g. "mymaster"').optional(),
    password: z.string({ error: expectedString('a password string') }).optional(),
    tls: bool().optional(),
  },
  'redis settings',
);

// Hosts and domains

export const hostSchema = strict({ name: nameSchema('host') }, 'a host');

export const diskSchema = strict(
  {
    target: diskTarget(),
    path: absPath('the disk image'),
    format: oneOf(DISK_FORMATS),
    backend: oneOf(DISK_BACKENDS).optional(),
  },
  'a disk',
);

const domainBase = {
  name: nameSchema('domain'),
  host: nameSchema('host').optional(),
  snapshotRoot: absPath('the snapshot folder').optional(),
  disks: z.array(diskSchema, { error: expected('a list of disks') }).min(1, {
    error: 'empty list; expected at least one disk {target, path, format}',
  }),
};

const DRIVER_KEYS: Record<(typeof DRIVERS)[number], readonly string[]> = {
  qemu: ['qmpSocket', 'guestAgentSocket', 'launch'],
  libvirt: ['uri', 'libvirtName'],
  xen: ['xlName', 'xl'],
};

/** Points at the driver a misplaced key belongs to, e.g. `uri` on a qemu domain. */
function otherDriverHint(self: (typeof DRIVERS)[number]) {
  return (key: string): string | undefined => {
    const owner = DRIVERS.find((d) => d !== self && DRIVER_KEYS[d].includes(key));
    return owner === undefined ? undefined : `${JSON.stringify(key)} is a setting of driver "${owner}" and this domain uses driver "${self}"`;
  };
}

const launchSchema = z
  .array(z.string({ error: expectedString('a command-line argument') }).min(1, { error: 'empty string; expected a command-line argument' }), {
    error: expected('a command line as a list, e.g. [/usr/bin/qemu-system-x86_64, -name, web1]'),
  })
  .min(1, { error: 'empty list; expected the QEMU binary and its arguments, or no launch key at all' })
  .superRefine((argv, ctx) => {
    const first = argv[0];
    if (first !== undefined && !first.startsWith('/')) {
      ctx.addIssue({
        code: 'custom',
        path: [0],
        input: first,
        message: `got ${describeValue(first)}; expected an absolute path to the QEMU binary, e.g. "/usr/bin/qemu-system-x86_64"`,
      });
    }
  });

export const qemuDomainSchema = strict(
  {
    ...domainBase,
    driver: z.literal('qemu'),
    qmpSocket: absPath('the QMP socket'),
    guestAgentSocket: absPath('the guest agent socket').optional(),
    launch: launchSchema.optional(),
  },
  'a qemu domain',
  otherDriverHint('qemu'),
);

export const libvirtDomainSchema = strict(
  {
    ...domainBase,
    driver: z.literal('libvirt'),
    uri: z
      .string({ error: expectedString('a libvirt URI such as "qemu:///system"') })
      .refine((s) => /^[a-z][a-z0-9+.-]*:\/\/\S*$/i.test(s), {
        error: (iss) => `got ${describeValue(iss.input)}; expected a libvirt URI such as "qemu:///system" or "qemu+ssh://host/system"`,
      })
      .optional(),
    libvirtName: toolArg('the domain name in libvirt').optional(),
  },
  'a libvirt domain',
  otherDriverHint('libvirt'),
);

export const xenDomainSchema = strict(
  {
    ...domainBase,
    driver: z.literal('xen'),
    xlName: toolArg('the domain name in xl').optional(),
    xl: absPath('the xl binary').optional(),
  },
  'a xen domain',
  otherDriverHint('xen'),
);

export const domainSchema = z.discriminatedUnion('driver', [qemuDomainSchema, libvirtDomainSchema, xenDomainSchema], {
  error: (iss) => {
    if (iss.code !== 'invalid_union') return expected('a domain (a mapping with name, driver and disks)')(iss);
    const input: unknown = iss.input;
    const driver = typeof input === 'object' && input !== null ? (input as { driver?: unknown }).driver : undefined;
    return expected(quoteChoices(DRIVERS))({ input: driver });
  },
});

// Policies

const count = () => int(-1, undefined, 'a whole number (0 or more, or -1 for unlimited)');

export const retentionSchema = strict(
  {
    keepLast: count().optional(),
    keepHourly: count().optional(),
    keepDaily: count().optional(),
    keepWeekly: count().optional(),
    keepMonthly: count().optional(),
    keepYearly: count().optional(),
    keepWithin: z
      .string({ error: expectedString('a duration such as "14d", "36h" or "1y6m"') })
      .superRefine((s, ctx) => {
        try {
          parseWithinDuration(s);
        } catch (err) {
          const message = err instanceof Error ? err.message.replace(/^keepWithin: /, '') : String(err);
          ctx.addIssue({ code: 'custom', message, input: s });
        }
      })
      .optional(),
  },
  'retention rules',
);

export const retrySchema = strict(
  {
    attempts: int(1, 20, 'a whole number from 1 to 20').optional(),
    backoffMs: int(100, undefined, 'a whole number of milliseconds, at least 100').optional(),
  },
  'retry settings',
);

const policyDisksSchema = z
  .record(z.string(), oneOf(DISK_MODES), { error: expected('a mapping of disk target to "no", "internal" or "external"') })
  .superRefine((map, ctx) => {
    for (const key of Object.keys(map)) {
      if (!TARGET_RE.test(key)) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          input: key,
          message: `${describeValue(key)} is not a disk target; expected a target such as "vda", "sda", "xvda" or "hda"`,
        });
      }
    }
  });

const domainPatternSchema = z
  .string({ error: expectedString('a domain name or a glob such as "web*"') })
  .refine((s) => (isGlob(s) ? GLOB_RE.test(s) : isValidConfigName(s)), {
    error: (iss) =>
      `got ${describeValue(iss.input)}; expected a domain name or a glob using * and ? (other characters: A-Z a-z 0-9 . _ -)`,
  });

export const policySchema = strict(
  {
    name: nameSchema('policy'),
    schedule: scheduleSchema,
    timezone: timezoneSchema.optional(),
    kind: oneOf(['full', 'disk-only']).optional(),
    live: bool().optional(),
    memory: oneOf(['internal', 'external']).optional(),
    disks: policyDisksSchema.optional(),
    quiesce: bool().optional(),
    quiesceRequired: bool().optional(),
    catchUp: oneOf(['skip', 'once']).optional(),
    retry: retrySchema.optional(),
    retention: retentionSchema,
    domains: z
      .array(domainPatternSchema, { error: expected('a list of domain names or globs, e.g. ["web*", db1]') })
      .min(1, { error: 'empty list; expected at least one domain name or glob' }),
  },
  'a policy',
);

// The file

export const defaultsSchema = strict({ snapshotRoot: absPath('the snapshot folder').optional() }, 'defaults');

export const configSchema = strict(
  {
    stateDir: absPath('the state folder').optional(),
    redis: redisSchema.nullable().optional(),
    defaults: defaultsSchema.nullable().optional(),
    hosts: z.array(hostSchema, { error: expected('a list of hosts, e.g. [{name: hv1}]') }).min(1, {
      error: 'empty list; expected at least one host {name}',
    }),
    domains: z.array(domainSchema, { error: expected('a list of domains') }).nullable().optional(),
    policies: z.array(policySchema, { error: expected('a list of policies') }).nullable().optional(),
  },
  'a config',
);

/** The file as written, after field checks and before defaults and cross-checks. */
export type ConfigOptions = z.infer<typeof configSchema>;
export type RedisOptions = z.infer<typeof redisSchema>;
export type HostOptions = z.infer<typeof hostSchema>;
export type DiskOptions = z.infer<typeof diskSchema>;
export type DomainOptions = z.infer<typeof domainSchema>;
export type QemuDomainOptions = z.infer<typeof qemuDomainSchema>;
export type LibvirtDomainOptions = z.infer<typeof libvirtDomainSchema>;
export type XenDomainOptions = z.infer<typeof xenDomainSchema>;
export type PolicyOptions = z.infer<typeof policySchema>;
export type RetentionOptions = z.infer<typeof retentionSchema>;
export type RetryOptions = z.infer<typeof retrySchema>;
