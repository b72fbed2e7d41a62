import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { CronExpressionParser } from 'cron-parser';
import { LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import type { BackendName, DiskFormat, DiskMode } from '../domain/model.js';
import { COUNT_RULES, isEmptyRetention, type RetentionRules } from '../domain/retention-rules.js';
import { VmsnapError } from '../errors.js';
import {
  configSchema,
  describeValue,
  isGlob,
  type ConfigOptions,
  type DiskOptions,
  type DomainOptions,
  type PolicyOptions,
  type RedisOptions,
  type RetentionOptions,
} from './schema.js';

export type { DiskFormat, DiskMode } from '../domain/model.js';

export interface ResolvedDisk {
  target: string;
  path: string;
  format: DiskFormat;
  backend: BackendName;
}

interface DomainBase {
  name: string;
  host: string;
  snapshotRoot: string;
  disks: ResolvedDisk[];
}

export interface QemuDomain extends DomainBase {
  driver: 'qemu';
  qmpSocket: string;
  guestAgentSocket?: string;
  launch?: string[];
}

export interface LibvirtDomain extends DomainBase {
  driver: 'libvirt';
  uri: string;
  libvirtName: string;
}

export interface XenDomain extends DomainBase {
  driver: 'xen';
  xlName: string;
  xl: string;
}

export type ResolvedDomain = QemuDomain | LibvirtDomain | XenDomain;

export interface ResolvedPolicy {
  name: string;
  schedule: string;
  timezone: string;
  kind: 'full' | 'disk-only';
  live: boolean;
  memory?: 'internal' | 'external';
  /** Per-disk modes the policy asks for; disks not named get the default for their format. */
  disks: Record<string, DiskMode>;
  quiesce: boolean;
  quiesceRequired: boolean;
  catchUp: 'skip' | 'once';
  retry: { attempts: number; backoffMs: number };
  retention: RetentionRules;
  /** Domain names (globs expanded), in config order. */
  domains: string[];
}

export type ResolvedRedis =
  | { kind: 'embedded' }
  | { kind: 'url'; url: string }
  | { kind: 'sentinel'; sentinels: { host: string; port: number }[]; name: string; password?: string; tls: boolean };

export interface ResolvedConfig {
  file: string;
  stateDir: string;
  redis: ResolvedRedis;
  hosts: { name: string }[];
  domains: ResolvedDomain[];
  policies: ResolvedPolicy[];
}

export const DEFAULT_STATE_DIR = '/var/lib/vmsnap';
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';
export const DEFAULT_XL = '/usr/sbin/xl';
export const DEFAULT_TIMEZONE = 'UTC';
export const DEFAULT_RETRY = { attempts: 3, backoffMs: 30_000 } as const;

/** Read and resolve a config file. Every failure is a one-line `config` error naming the file. */
export async function loadConfig(file: string): Promise<ResolvedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const reason = /^[A-Z]+: ([^,]+)/.exec(e.message ?? '')?.[1] ?? String(e.message);
    throw new VmsnapError('config', `${file}: cannot read config: ${e.code ?? 'error'} (${reason}); pass --config FILE`, { cause: err });
  }
  return parseConfig(text, file);
}

/**
 * Turn config text into a ResolvedConfig: YAML, then field checks (schema.ts),
 * then references, uniqueness and defaults. Pure; `file` only names the source.
 * The first problem found is thrown, in file order within each step.
 */
export function parseConfig(text: string, file: string): ResolvedConfig {
  const data = parseYaml(text, file);
  const options = checkFields(data, file);
  return resolveConfig(options, file);
}

/** Look a domain up by name; the error lists what is configured. */
export function findDomain(config: ResolvedConfig, name: string): ResolvedDomain {
  const domain = config.domains.find((d) => d.name === name);
  if (domain !== undefined) return domain;
  const known = config.domains.map((d) => d.name);
  throw new VmsnapError(
    'unknown-domain',
    known.length === 0
      ? `unknown domain ${JSON.stringify(name)}; no domains are configured in ${config.file}`
      : `unknown domain ${JSON.stringify(name)}; configured domains: ${known.join(', ')}`,
  );
}

// YAML

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

function parseYaml(text: string, file: string): unknown {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, lineCounter, merge: true, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    const { line, col } = lineCounter.linePos(first.pos[0]);
    let message = oneLine(first.message);
    if (first.code === 'DUPLICATE_KEY') {
      const key = /^\s*"?([^":]+)"?\s*:/.exec(text.split('\n')[line - 1]?.slice(col - 1) ?? '')?.[1];
      message = `${key === undefined ? 'a key' : `key ${JSON.stringify(key)}`} appears twice in the same mapping; keep one`;
    }
    if (first.code === 'MULTIPLE_DOCS') message = 'the file holds more than one YAML document (a second ---); keep one';
    if (/alias/i.test(message)) message += '; values starting with * must be quoted, e.g. schedule: "*/5 * * * *"';
    throw new VmsnapError('config', `${file}:${line}:${col}: YAML syntax error: ${message}`);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new VmsnapError('config', `${file}: YAML error: ${oneLine(err instanceof Error ? err.message : String(err))}`, { cause: err });
  }
  if (data === null || data === undefined) {
    throw new VmsnapError('config', `${file}: the config is empty; expected a mapping with at least hosts and domains (see config/example.yaml)`);
  }
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new VmsnapError(
      'config',
      `${file}: the top level is ${describeValue(data)}; expected a mapping with keys stateDir, redis, defaults, hosts, domains, policies`,
    );
  }
  return data;
}

// Field checks

/** `domains[0].disks[1].format`; keys that are not identifiers are quoted. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else {
      const s = String(seg);
      out += /^[A-Za-z_][A-Za-z0-9_-]*$/.test(s) ? (out === '' ? s : `.${s}`) : `[${JSON.stringify(s)}]`;
    }
  }
  return out;
}

function isPrefix(prefix: readonly PropertyKey[], path: readonly PropertyKey[]): boolean {
  return prefix.length <= path.length && prefix.every((seg, i) => seg === path[i]);
}

function checkFields(data: unknown, file: string): ConfigOptions {
  const result = configSchema.safeParse(data);
  if (result.success) return result.data;
  const issues: z.core.$ZodIssue[] = result.error.issues;
  let issue = issues[0];
  if (issue === undefined) throw new VmsnapError('config', `${file}: invalid config`);
  // A misspelt key usually also shows up as a missing one: name the misspelling.
  const first = issue;
  const unknownKey = issues.find((i) => i.code === 'unrecognized_keys' && isPrefix(i.path, first.path));
  if (unknownKey !== undefined) issue = unknownKey;
  const where = formatPath(issue.path);
  throw new VmsnapError('config', `${file}: ${where === '' ? '' : `${where}: `}${oneLine(issue.message)}`);
}

// Cross-checks and defaults

class ConfigError {
  constructor(private readonly file: string) {}
  at(path: string, message: string): VmsnapError {
    return new VmsnapError('config', `${this.file}: ${path}: ${message}`);
  }
}

function normalizePath(p: string): string {
  const n = posix.normalize(p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

function resolveConfig(options: ConfigOptions, file: string): ResolvedConfig {
  const err = new ConfigError(file);
  const hosts = resolveHosts(options, err);
  const domains = resolveDomains(options, hosts, err);
  const policies = (options.policies ?? []).map((p, i) => resolvePolicy(p, i, domains, options.policies ?? [], err));
  return {
    file,
    stateDir: normalizePath(options.stateDir ?? DEFAULT_STATE_DIR),
    redis: resolveRedis(options.redis ?? undefined, err),
    hosts,
    domains,
    policies,
  };
}

function resolveRedis(redis: RedisOptions | undefined, err: ConfigError): ResolvedRedis {
  if (redis === undefined) return { kind: 'embedded' };
  if (redis.url !== undefined) {
    for (const key of ['sentinels', 'name', 'password', 'tls'] as const) {
      if (redis[key] !== undefined) {
        throw err.at(
          `redis.${key}`,
          key === 'sentinels'
            ? 'set either url or sentinels, not both'
            : `${key} only applies with sentinels; put it in the URL instead (${key === 'tls' ? 'rediss:// for TLS' : 'redis://:password@host'})`,
        );
      }
    }
    return { kind: 'url', url: redis.url };
  }
  if (redis.sentinels === undefined) {
    throw err.at('redis', 'neither url nor sentinels is set; set url: redis://host:6379 or sentinels: [{host, port}] with name, or remove redis for the embedded one');
  }
  if (redis.name === undefined) {
    throw err.at('redis.name', 'missing; expected the master name the sentinels monitor, e.g. "mymaster"');
  }
  return {
    kind: 'sentinel',
    sentinels: redis.sentinels.map((s) => ({ host: s.host, port: s.port })),
    name: redis.name,
    ...(redis.password !== undefined ? { password: redis.password } : {}),
    tls: redis.tls ?? false,
  };
}

function resolveHosts(options: ConfigOptions, err: ConfigError): { name: string }[] {
  const seen = new Map<string, number>();
  return options.hosts.map((h, i) => {
    const before = seen.get(h.name);
    if (before !== undefined) {
      throw err.at(`hosts[${i}].name`, `${JSON.stringify(h.name)} is already used by hosts[${before}]; host names must be unique`);
    }
    seen.set(h.name, i);
    return { name: h.name };
  });
}

function resolveDomains(options: ConfigOptions, hosts: { name: string }[], err: ConfigError): ResolvedDomain[] {
  const names = new Map<string, number>();
  const paths = new Map<string, string>();
  const endpoints = new Map<string, string>();
  const defaultRoot = options.defaults?.snapshotRoot;
  const hostNames = hosts.map((h) => h.name);

  return (options.domains ?? []).map((d, i): ResolvedDomain => {
    const at = `domains[${i}]`;
    const before = names.get(d.name);
    if (before !== undefined) {
      throw err.at(`${at}.name`, `${JSON.stringify(d.name)} is already used by domains[${before}]; domain names must be unique`);
    }
    names.set(d.name, i);

    let host: string;
    if (d.host !== undefined) {
      if (!hostNames.includes(d.host)) {
        throw err.at(`${at}.host`, `${JSON.stringify(d.host)} is not a listed host; expected one of ${hostNames.join(', ')}`);
      }
      host = d.host;
    } else if (hostNames.length === 1 && hostNames[0] !== undefined) {
      host = hostNames[0];
    } else {
      throw err.at(`${at}.host`, `missing; expected one of ${hostNames.join(', ')} (required when more than one host is listed)`);
    }

    const root = d.snapshotRoot ?? defaultRoot;
    if (root === undefined) {
      throw err.at(`${at}.snapshotRoot`, 'missing, and defaults.snapshotRoot is not set; set one of them to an absolute path');
    }

    const disks = resolveDisks(d, at, paths, err);
    const base = { name: d.name, host, snapshotRoot: normalizePath(root), disks };

    // Two domain entries must never drive the same guest.
    const claim = (field: string, key: string, shown: string): void => {
      const owner = endpoints.get(key);
      if (owner !== undefined) {
        throw err.at(`${at}.${field}`, `${shown} is already used by ${owner} on host ${host}; each domain entry needs its own`);
      }
      endpoints.set(key, `${at} (${d.name})`);
    };

    switch (d.driver) {
      case 'qemu': {
        const qmpSocket = normalizePath(d.qmpSocket);
        claim('qmpSocket', `${host}\0qmp\0${qmpSocket}`, JSON.stringify(qmpSocket));
        return {
          ...base,
          driver: 'qemu',
          qmpSocket,
          ...(d.guestAgentSocket !== undefined ? { guestAgentSocket: normalizePath(d.guestAgentSocket) } : {}),
          ...(d.launch !== undefined ? { launch: [...d.launch] } : {}),
        };
      }
      case 'libvirt': {
        const uri = d.uri ?? DEFAULT_LIBVIRT_URI;
        const libvirtName = d.libvirtName ?? d.name;
        claim(d.libvirtName !== undefined ? 'libvirtName' : 'name', `${host}\0libvirt\0${uri}\0${libvirtName}`, `libvirt domain ${JSON.stringify(libvirtName)} at ${uri}`);
        return { ...base, driver: 'libvirt', uri, libvirtName };
      }
      case 'xen': {
        const xlName = d.xlName ?? d.name;
        claim(d.xlName !== undefined ? 'xlName' : 'name', `${host}\0xen\0${xlName}`, `xl domain ${JSON.stringify(xlName)}`);
        return { ...base, driver: 'xen', xlName, xl: normalizePath(d.xl ?? DEFAULT_XL) };
      }
    }
  });
}

function resolveDisks(d: DomainOptions, at: string, paths: Map<string, string>, err: ConfigError): ResolvedDisk[] {
  const targets = new Map<string, number>();
  return d.disks.map((disk: DiskOptions, j): ResolvedDisk => {
    const diskAt = `${at}.disks[${j}]`;
    const before = targets.get(disk.target);
    if (before !== undefined) {
      throw err.at(`${diskAt}.target`, `${JSON.stringify(disk.target)} is already used by ${at}.disks[${before}]; targets must be unique within a domain`);
    }
    targets.set(disk.target, j);

    const path = normalizePath(disk.path);
    const owner = paths.get(path);
    if (owner !== undefined) {
      throw err.at(`${diskAt}.path`, `${JSON.stringify(path)} is already used by ${owner}; each disk image belongs to one domain and one target`);
    }
    paths.set(path, `${diskAt} (domain ${d.name}, disk ${disk.target})`);

    if (d.driver === 'libvirt' && disk.backend !== undefined && disk.backend !== 'qcow2') {
      throw err.at(
        `${diskAt}.backend`,
        `${JSON.stringify(disk.backend)} is not used by libvirt domains: libvirt keeps their disk chains (qcow2 overlays, also on raw images); leave backend out`,
      );
    }
    const backend: BackendName = disk.backend ?? (disk.format === 'qcow2' ? 'qcow2' : 'file');
    if (backend === 'qcow2' && disk.format !== 'qcow2') {
      throw err.at(`${diskAt}.backend`, `"qcow2" needs format qcow2 and this disk is ${disk.format}; use backend "file" or "btrfs", or leave backend out`);
    }
    return { target: disk.target, path, format: disk.format, backend };
  });
}

/** Compile a `*`/`?` glob to an anchored RegExp; other characters match themselves. */
function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\-]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

function resolvePolicyDomains(p: PolicyOptions, at: string, domains: readonly ResolvedDomain[], err: ConfigError): string[] {
  const configured = domains.map((d) => d.name);
  const listing = configured.length === 0 ? 'no domains are configured' : `configured domains: ${configured.join(', ')}`;
  const chosen = new Set<string>();
  p.domains.forEach((entry, j) => {
    if (isGlob(entry)) {
      const re = globToRegExp(entry);
      const hits = configured.filter((n) => re.test(n));
      if (hits.length === 0) throw err.at(`${at}.domains[${j}]`, `${JSON.stringify(entry)} matches no domain; ${listing}`);
      for (const h of hits) chosen.add(h);
    } else {
      if (!configured.includes(entry)) throw err.at(`${at}.domains[${j}]`, `no domain named ${JSON.stringify(entry)}; ${listing}`);
      chosen.add(entry);
    }
  });
  return configured.filter((n) => chosen.has(n));
}

function resolveRetention(r: RetentionOptions, at: string, err: ConfigError): RetentionRules {
  const rules: RetentionRules = {};
  for (const key of COUNT_RULES) {
    const v = r[key];
    if (v !== undefined) rules[key] = v;
  }
  if (r.keepWithin !== undefined) rules.keepWithin = r.keepWithin;
  if (isEmptyRetention(rules)) {
    throw err.at(
      `${at}.retention`,
      `keeps nothing (every rule is missing or 0), so every snapshot would be pruned; set one of ${COUNT_RULES.join(', ')} to a non-zero count or keepWithin to a non-zero duration`,
    );
  }
  return rules;
}

/** Write IANA zones the way the tz database spells them when only the case differs. */
function canonicalZone(tz: string): string {
  const resolved = new Intl.DateTimeFormat('en-US', { timeZone: tz }).resolvedOptions().timeZone;
  return resolved.toLowerCase() === tz.toLowerCase() ? resolved : tz;
}

function resolvePolicy(
  p: PolicyOptions,
  i: number,
  domains: readonly ResolvedDomain[],
  all: readonly PolicyOptions[],
  err: ConfigError,
): ResolvedPolicy {
  const at = `policies[${i}]`;
  const before = all.findIndex((q) => q.name === p.name);
  if (before !== i) {
    throw err.at(`${at}.name`, `${JSON.stringify(p.name)} is already used by policies[${before}]; policy names must be unique`);
  }

  const timezone = canonicalZone(p.timezone ?? DEFAULT_TIMEZONE);
  try {
    CronExpressionParser.parse(p.schedule.trim(), { tz: timezone });
  } catch (e) {
    throw err.at(`${at}.schedule`, `${JSON.stringify(p.schedule)} cannot be used in time zone ${timezone} (${oneLine(e instanceof Error ? e.message : String(e))}); check the expression`);
  }

  const kind = p.kind ?? 'full';
  if (p.memory !== undefined && kind === 'disk-only') {
    throw err.at(`${at}.memory`, `${JSON.stringify(p.memory)} saves memory and this policy is disk-only; remove memory or set kind: full`);
  }
  const live = p.live ?? false;
  if (live && p.memory === 'internal') {
    throw err.at(`${at}.live`, 'a live snapshot cannot save memory inside a qcow2 disk (that pauses the guest); set memory: external or live: false');
  }
  const quiesce = p.quiesce ?? false;
  const quiesceRequired = p.quiesceRequired ?? false;
  if (quiesceRequired && !quiesce) {
    throw err.at(`${at}.quiesceRequired`, 'true needs quiesce: true; set quiesce: true or drop quiesceRequired');
  }

  const retention = resolveRetention(p.retention, at, err);
  const names = resolvePolicyDomains(p, at, domains, err);
  const disks: Record<string, DiskMode> = { ...(p.disks ?? {}) };
  for (const name of names) {
    const domain = domains.find((d) => d.name === name);
    if (domain !== undefined) checkPolicyOnDomain(p, at, kind, disks, domain, err);
  }

  return {
    name: p.name,
    schedule: p.schedule.trim(),
    timezone,
    kind,
    live,
    ...(p.memory !== undefined ? { memory: p.memory } : {}),
    disks,
    quiesce,
    quiesceRequired,
    catchUp: p.catchUp ?? 'once',
    retry: {
      attempts: p.retry?.attempts ?? DEFAULT_RETRY.attempts,
      backoffMs: p.retry?.backoffMs ?? DEFAULT_RETRY.backoffMs,
    },
    retention,
    domains: names,
  };
}

/** What can be known before any run: the disks exist and the modes suit them (resolve-spec decides the rest). */
function checkPolicyOnDomain(
  p: PolicyOptions,
  at: string,
  kind: 'full' | 'disk-only',
  modes: Record<string, DiskMode>,
  domain: ResolvedDomain,
  err: ConfigError,
): void {
  const targets = domain.disks.map((d) => d.target);
  for (const target of Object.keys(modes)) {
    if (!targets.includes(target)) {
      throw err.at(
        `${at}.disks.${target}`,
        `domain ${JSON.stringify(domain.name)} has no disk ${JSON.stringify(target)} (its disks: ${targets.join(', ')}); remove ${target} or leave ${domain.name} out of ${at}.domains`,
      );
    }
  }
  for (const disk of domain.disks) {
    const mode = modes[disk.target];
    const internalOk = disk.format === 'qcow2' && disk.backend === 'qcow2';
    if (mode === 'internal' && !internalOk) {
      throw err.at(
        `${at}.disks.${disk.target}`,
        `"internal" needs a qcow2 disk on the qcow2 backend and disk ${disk.target} of domain ${JSON.stringify(domain.name)} is ${disk.format} on the ${disk.backend} backend; use "external"`,
      );
    }
    if (p.memory === 'internal') {
      const effective = mode ?? (disk.format === 'qcow2' ? 'internal' : 'external');
      if (effective !== 'internal' || !internalOk) {
        throw err.at(
          `${at}.memory`,
          `"internal" stores memory inside a qcow2 disk and needs every disk snapshotted internally, but disk ${disk.target} of domain ${JSON.stringify(domain.name)} would be ${effective === 'internal' ? `${disk.format} on the ${disk.backend} backend` : effective}; use memory: external`,
        );
      }
    }
  }
  if (kind === 'disk-only' && domain.disks.every((d) => modes[d.target] === 'no')) {
    throw err.at(`${at}.disks`, `every disk of domain ${JSON.stringify(domain.name)} is "no" and the policy is disk-only, so nothing would be snapshotted; snapshot at least one disk`);
  }
}
