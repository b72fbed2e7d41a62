import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { findDomain, loadConfig, parseConfig, type ResolvedConfig } from '../../../src/config/load-config.js';
import { VmsnapError } from '../../../src/errors.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const fixtures = join(root, 'test/fixtures/config');
const yamlFiles = (dir: string): string[] => readdirSync(join(fixtures, dir)).filter((f) => f.endsWith('.yaml')).sort();

function configError(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(VmsnapError);
    return err as VmsnapError;
  }
  throw new Error('expected a config error, got a config');
}

async function loadError(file: string): Promise<VmsnapError> {
  const err = await loadConfig(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(VmsnapError);
  return err as VmsnapError;
}

const load = (name: string): Promise<ResolvedConfig> => loadConfig(join(fixtures, 'valid', name));

const MINIMAL = `
hosts: [{ name: hv1 }]
defaults: { snapshotRoot: /snap }
domains:
  - name: web1
    driver: qemu
    qmpSocket: /run/web1.qmp
    disks: [{ target: vda, path: /vm/web1.qcow2, format: qcow2 }, { target: vdb, path: /vm/web1.img, format: raw }]
`;

describe('valid samples', () => {
  const files = yamlFiles('valid');
  it('has enough samples', () => expect(files.length).toBeGreaterThanOrEqual(6));

  it.each(files)('%s loads', async (name) => {
    const cfg = await load(name);
    expect(cfg.file).toBe(join(fixtures, 'valid', name));
    expect(cfg.hosts.length).toBeGreaterThan(0);
    // Plain data: survives a JSON round trip unchanged.
    expect(JSON.parse(JSON.stringify(cfg))).toEqual(cfg);
  });

  it('config/example.yaml loads and uses every driver and policy key', async () => {
    const cfg = await loadConfig(join(root, 'config/example.yaml'));
    expect(cfg.domains.map((d) => d.driver).sort()).toEqual(['libvirt', 'qemu', 'qemu', 'xen']);
    expect(cfg.redis.kind).toBe('url');
    const keys = new Set(cfg.policies.flatMap((p) => Object.keys(p)));
    for (const k of ['memory', 'disks', 'quiesceRequired', 'catchUp', 'retry', 'retention', 'timezone', 'live']) expect(keys).toContain(k);
    expect(findDomain(cfg, 'db1')).toMatchObject({ driver: 'libvirt', libvirtName: 'db1-prod', snapshotRoot: '/srv/snapshots' });
    expect(cfg.policies.find((p) => p.name === 'nightly')?.domains).toEqual(['web1', 'web2', 'db1', 'mail1']);
  });

  it('minimal.yaml gets every default', async () => {
    const cfg = await load('minimal.yaml');
    expect(cfg).toEqual({
      file: join(fixtures, 'valid', 'minimal.yaml'),
      stateDir: '/var/lib/vmsnap',
      redis: { kind: 'embedded' },
      hosts: [{ name: 'hv1' }],
      domains: [
        {
          name: 'web1',
          host: 'hv1',
          snapshotRoot: '/var/lib/vmsnap/snapshots',
          driver: 'qemu',
          qmpSocket: '/run/vmsnap/web1.qmp',
          disks: [{ target: 'vda', path: '/var/lib/vms/web1.qcow2', format: 'qcow2', backend: 'qcow2' }],
        },
      ],
      policies: [],
    });
  });

  it('qemu-full.yaml keeps explicit values and normalizes paths', async () => {
    const cfg = await load('qemu-full.yaml');
    expect(cfg.stateDir).toBe('/srv/vmsnap/state');
    const web1 = findDomain(cfg, 'web1');
    expect(web1).toMatchObject({
      driver: 'qemu',
      snapshotRoot: '/srv/snaps',
      qmpSocket: '/run/vmsnap/web1.qmp',
      guestAgentSocket: '/run/vmsnap/web1.qga',
      launch: ['/usr/bin/qemu-system-x86_64', '-name', 'web1', '-m', '1024', '-nodefaults'],
    });
    expect(web1.disks).toEqual([
      { target: 'vda', path: '/var/lib/vms/web1.qcow2', format: 'qcow2', backend: 'qcow2' },
      { target: 'vdb', path: '/var/lib/vms/web1-data.raw', format: 'raw', backend: 'btrfs' },
      { target: 'vdc', path: '/var/lib/vms/web1-scratch.qcow2', format: 'qcow2', backend: 'file' },
    ]);
    expect(cfg.policies).toEqual([
      {
        name: 'every-policy-key',
        schedule: '15 3 * * 1-5',
        timezone: 'America/New_York',
        kind: 'full',
        live: true,
        memory: 'external',
        disks: { vda: 'internal', vdb: 'external', vdc: 'no' },
        quiesce: true,
        quiesceRequired: true,
        catchUp: 'skip',
        retry: { attempts: 20, backoffMs: 100 },
        retention: { keepLast: 24, keepHourly: 0, keepDaily: 7, keepWeekly: 4, keepMonthly: 6, keepYearly: -1, keepWithin: '1y6m' },
        domains: ['web1'],
      },
    ]);
  });

  it('libvirt-url-redis.yaml fills in uri and libvirtName', async () => {
    const cfg = await load('libvirt-url-redis.yaml');
    expect(cfg.redis).toEqual({ kind: 'url', url: 'rediss://:s3cret@redis.example.internal:6380/2' });
    expect(findDomain(cfg, 'app1')).toMatchObject({ driver: 'libvirt', uri: 'qemu:///system', libvirtName: 'app1', host: 'kvm-a' });
    expect(findDomain(cfg, 'app2')).toMatchObject({ uri: 'qemu+ssh://root@kvm-a/system', libvirtName: 'app2.example.com' });
    expect(findDomain(cfg, 'app2').disks[0]?.backend).toBe('file');
    expect(cfg.policies[0]?.schedule).toBe('@daily');
  });

  it('xen-sentinel.yaml fills in xlName and xl; sentinel settings come through', async () => {
    const cfg = await load('xen-sentinel.yaml');
    expect(cfg.redis).toEqual({
      kind: 'sentinel',
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'sentinel-b.example.internal', port: 26380 },
      ],
      name: 'mymaster',
      password: 'hunter2',
      tls: true,
    });
    expect(findDomain(cfg, 'mail1')).toMatchObject({ driver: 'xen', xlName: 'mail1', xl: '/usr/sbin/xl' });
    expect(findDomain(cfg, 'mail2')).toMatchObject({ xlName: 'mail2-vm', xl: '/usr/local/sbin/xl' });
    expect(cfg.policies[0]).toMatchObject({ kind: 'disk-only', retention: { keepWithin: '14d' }, domains: ['mail1', 'mail2'] });
  });

  it('multi-host-globs.yaml expands and deduplicates globs in domain order', async () => {
    const cfg = await load('multi-host-globs.yaml');
    expect(cfg.domains.map((d) => [d.name, d.host])).toEqual([
      ['db1', 'hv2'],
      ['web1', 'hv1'],
      ['web2', 'hv3'],
      ['web10.example', 'hv3'],
    ]);
    expect(cfg.policies.map((p) => [p.name, p.domains])).toEqual([
      ['web', ['db1', 'web1', 'web2', 'web10.example']],
      ['all', ['db1', 'web1', 'web2', 'web10.example']],
    ]);
    expect(cfg.policies[1]?.timezone).toBe('Asia/Kolkata');
  });

  it('anchors-merge.yaml resolves aliases and merge keys', async () => {
    const cfg = await load('anchors-merge.yaml');
    expect(findDomain(cfg, 'web2')).toMatchObject({ driver: 'qemu', qmpSocket: '/run/web2.qmp', snapshotRoot: '/snapshots' });
    expect(cfg.policies[1]).toMatchObject({
      name: 'hourly-web2-at-30',
      schedule: '30 * * * *',
      memory: 'internal',
      quiesce: true,
      retry: { attempts: 5, backoffMs: 30000 },
      retention: { keepLast: 24, keepDaily: 7 },
      domains: ['web2'],
    });
    // Time zones are spelt the way the tz database does when only the case differs.
    expect(cfg.policies[0]?.timezone).toBe('Europe/Berlin');
  });

  it('no-domains-yet.yaml: empty sections mean "not set"', async () => {
    const cfg = await load('no-domains-yet.yaml');
    expect(cfg).toMatchObject({ redis: { kind: 'embedded' }, domains: [], policies: [] });
  });

  it('six-field-cron.yaml keeps a seconds-first schedule and -1 counts', async () => {
    const cfg = await load('six-field-cron.yaml');
    expect(cfg.policies[0]).toMatchObject({
      schedule: '30 0 */6 * * *',
      kind: 'disk-only',
      disks: { vdb: 'no' },
      catchUp: 'skip',
      retention: { keepWithin: '36h', keepLast: -1 },
    });
    expect(cfg.hosts).toEqual([{ name: 'h.1' }]);
  });
});

describe('invalid samples', () => {
  const files = yamlFiles('invalid');
  it('has enough samples', () => expect(files.length).toBeGreaterThanOrEqual(20));

  it.each(files)('%s fails with its reason', async (name) => {
    const file = join(fixtures, 'invalid', name);
    const firstLine = readFileSync(file, 'utf8').split('\n')[0] ?? '';
    const expectMatch = /^# expect: (.+)$/.exec(firstLine);
    expect(expectMatch, `${name} must start with "# expect: ..."`).not.toBeNull();
    const expected = expectMatch?.[1] ?? '';
    const err = await loadError(file);
    expect(err.code).toBe('config');
    expect(err.exitCode).toBe(65);
    expect(err.retryable).toBe(false);
    expect(err.message).toContain(expected);
    expect(err.message.startsWith(`${file}:`)).toBe(true);
    expect(err.message).not.toMatch(/[\r\n]/);
  });

  it('never shows a redis password', async () => {
    const err = await loadError(join(fixtures, 'invalid', 'redis-bad-scheme.yaml'));
    expect(err.message).not.toContain('topsecret');
  });
});

describe('parseConfig', () => {
  it('applies policy defaults', () => {
    const cfg = parseConfig(`${MINIMAL}policies:\n  - { name: p, schedule: "0 * * * *", retention: { keepLast: 1 }, domains: [web1] }\n`, 'x.yaml');
    expect(cfg.policies).toEqual([
      {
        name: 'p',
        schedule: '0 * * * *',
        timezone: 'UTC',
        kind: 'full',
        live: false,
        disks: {},
        quiesce: false,
        quiesceRequired: false,
        catchUp: 'once',
        retry: { attempts: 3, backoffMs: 30000 },
        retention: { keepLast: 1 },
        domains: ['web1'],
      },
    ]);
    expect(cfg.policies[0]).not.toHaveProperty('memory');
  });

  it('applies top-level and disk defaults', () => {
    const cfg = parseConfig(MINIMAL, 'x.yaml');
    expect(cfg.stateDir).toBe('/var/lib/vmsnap');
    expect(cfg.redis).toEqual({ kind: 'embedded' });
    expect(cfg.file).toBe('x.yaml');
    const web1 = findDomain(cfg, 'web1');
    expect(web1.host).toBe('hv1');
    expect(web1.disks.map((d) => d.backend)).toEqual(['qcow2', 'file']);
    expect(web1).not.toHaveProperty('launch');
    expect(web1).not.toHaveProperty('guestAgentSocket');
  });

  it('a domain snapshotRoot wins over defaults.snapshotRoot', () => {
    const cfg = parseConfig(MINIMAL.replace('driver: qemu', 'driver: qemu\n    snapshotRoot: /own'), 'x.yaml');
    expect(findDomain(cfg, 'web1').snapshotRoot).toBe('/own');
  });

  it('names the file and the field in a one-line message', () => {
    const err = configError(() => parseConfig(MINIMAL.replace('format: raw', 'format: vmdk'), 'config/vmsnap.yaml'));
    expect(err.message).toBe('config/vmsnap.yaml: domains[0].disks[1].format: got "vmdk"; expected "qcow2" or "raw"');
  });

  it('reports the time zone as the brief shows it', () => {
    const text = `${MINIMAL}policies:\n${['a', 'b', 'c']
      .map((n) => `  - { name: ${n}, schedule: "0 * * * *", timezone: ${n === 'c' ? 'Europe/Berln' : 'UTC'}, retention: { keepLast: 1 }, domains: [web1] }\n`)
      .join('')}`;
    const err = configError(() => parseConfig(text, 'config/vmsnap.yaml'));
    expect(err.message).toBe('config/vmsnap.yaml: policies[2].timezone: "Europe/Berln" is not an IANA time zone (e.g. "Europe/Berlin", "UTC")');
  });

  it('reports YAML syntax errors with line and column', () => {
    const err = configError(() => parseConfig('hosts:\n  - name: hv1\n  - name: [\n', 'c.yaml'));
    expect(err.code).toBe('config');
    expect(err.message).toMatch(/^c\.yaml:\d+:\d+: YAML syntax error: /);
    expect(err.message).not.toMatch(/\n/);
  });

  it('is deterministic: the same text gives the same first error', () => {
    const text = MINIMAL.replace('format: raw', 'format: vmdk').replace('/vm/web1.qcow2', 'vm/web1.qcow2');
    const a = configError(() => parseConfig(text, 'x.yaml')).message;
    const b = configError(() => parseConfig(text, 'x.yaml')).message;
    expect(a).toBe(b);
    expect(a).toContain('domains[0].disks[0].path');
  });

  it('an unknown key is named before the missing key it was meant to be', () => {
    const err = configError(() => parseConfig(MINIMAL.replace('qmpSocket:', 'qmp_socket:'), 'x.yaml'));
    expect(err.message).toBe('x.yaml: domains[0]: unknown key "qmp_socket"; did you mean "qmpSocket"?');
  });

  it('a policy disk map is checked against every domain it applies to', () => {
    const text = `${MINIMAL.replace('web1', 'web1').trimEnd()}
  - name: web2
    driver: qemu
    qmpSocket: /run/web2.qmp
    disks: [{ target: sda, path: /vm/web2.qcow2, format: qcow2 }]
policies:
  - { name: p, schedule: "0 * * * *", disks: { vda: external }, retention: { keepLast: 1 }, domains: ["web*"] }
`;
    const err = configError(() => parseConfig(text, 'x.yaml'));
    expect(err.message).toBe(
      'x.yaml: policies[0].disks.vda: domain "web2" has no disk "vda" (its disks: sda); remove vda or leave web2 out of policies[0].domains',
    );
  });
});

describe('loadConfig', () => {
  it('a missing file says which flag to use', async () => {
    const err = await loadError('/nonexistent/vmsnap.yaml');
    expect(err.code).toBe('config');
    expect(err.message).toBe('/nonexistent/vmsnap.yaml: cannot read config: ENOENT (no such file or directory); pass --config FILE');
  });

  it('a folder instead of a file is a config error too', async () => {
    const err = await loadError(fixtures);
    expect(err.code).toBe('config');
    expect(err.message).toMatch(/cannot read config: EISDIR.*--config FILE$/);
  });
});

describe('findDomain', () => {
  const cfg = parseConfig(MINIMAL, 'x.yaml');
  it('finds a configured domain', () => expect(findDomain(cfg, 'web1').name).toBe('web1'));
  it('lists the configured domains when the name is unknown', () => {
    const err = configError(() => findDomain(cfg, 'nope'));
    expect(err.code).toBe('unknown-domain');
    expect(err.message).toBe('unknown domain "nope"; configured domains: web1');
  });
  it('says when no domains are configured', () => {
    const empty = parseConfig('hosts: [{ name: hv1 }]\n', 'x.yaml');
    expect(configError(() => findDomain(empty, 'a')).message).toBe('unknown domain "a"; no domains are configured in x.yaml');
  });
});
