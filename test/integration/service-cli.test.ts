import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import { createImage } from '../helpers/images.js';
import { Sink, vmsnap, vmsnapBinary } from '../helpers/cli.js';

/**
 * The service commands as an operator runs them: `vmsnap run` on the
 * embedded Redis (started and stopped by vmsnap itself), `status`,
 * `schedule preview`, and ad-hoc jobs with `snapshot create --queue --wait`.
 */
let base: string;
let cfg: string;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vs-'));
  cfg = join(base, 'vmsnap.yaml');
  await mkdir(join(base, 'snaps'));
  await createImage(join(base, 'demo.qcow2'), 'qcow2');
  await writeFile(
    cfg,
    `stateDir: ${join(base, 'state')}
hosts: [{ name: local }]
defaults: { snapshotRoot: ${join(base, 'snaps')} }
domains:
  - name: demo
    driver: qemu
    qmpSocket: ${join(base, 'demo.qmp')}
    disks: [{ target: vda, path: ${join(base, 'demo.qcow2')}, format: qcow2 }]
policies:
  - name: every2s
    schedule: "*/2 * * * * *"
    timezone: Europe/Berlin
    kind: disk-only
    retention: { keepLast: 3 }
    domains: [demo]
`,
  );
});

afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('vmsnap run, status and ad-hoc jobs on the embedded Redis', () => {
  it('runs the schedule, prunes to keepLast, takes queued ad-hoc jobs, reports status, and stops cleanly', async () => {
    let stop: (sig: string) => void = () => undefined;
    const stopped = new Promise<string>((r) => (stop = r));
    const live = new Sink();
    const running = vmsnap(['-c', cfg, 'run'], { stopSignal: () => stopped, stdout: live });
    const catalog = new Catalog(join(base, 'snaps'));
    const policySnapshots = async () => (await catalog.list('demo')).snapshots.filter((s) => s.origin === 'policy');
    const deadline = Date.now() + 60_000;
    while (!/pruned \d{8}T/.test(live.text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(live.text).toMatch(/vmsnap run: host local, 1 schedule\(s\), embedded redis at /);
    expect(live.text).toMatch(/snapshot demo \(every2s\): \d{8}T\d{6}Z(-\d\d)? done \(offline\)/);
    expect(live.text).toMatch(/prune demo \(every2s\): pruned \d{8}T/);

    const adhoc = await vmsnap(['-c', cfg, 'snapshot', 'create', 'demo', '--queue', '--wait', '--name', 'before-upgrade', '--json']);
    expect(adhoc.stderr).toBe('');
    expect(JSON.parse(adhoc.stdout)).toMatchObject({ kind: 'snapshot', domain: 'demo', snapshot: 'before-upgrade', method: 'offline' });

    // The built binary exits on its own once it printed (no Redis connection left open).
    const bin = await vmsnapBinary(['-c', cfg, 'status']);
    expect(bin.code).toBe(0);
    expect(bin.stdout).toMatch(/^HOST\s+WAITING\s+ACTIVE/m);
    expect(bin.stdout).toMatch(/every2s\s+demo\s+\d{4}-/);

    const status = await vmsnap(['-c', cfg, 'status', '--json']);
    expect(status.code).toBe(0);
    const report = JSON.parse(status.stdout) as { queues: { host: string }[]; schedules: { policy: string; nextRun: string | null; lastSuccessAt: string | null }[] };
    expect(report.queues[0]?.host).toBe('local');
    expect(report.schedules[0]).toMatchObject({ policy: 'every2s' });
    expect(report.schedules[0]?.nextRun).not.toBeNull();
    expect(report.schedules[0]?.lastSuccessAt).not.toBeNull();

    stop('SIGTERM');
    const r = await running;
    expect(r.code).toBe(0);
    expect(live.text).toMatch(/SIGTERM: finishing running jobs/);
    // Retention kept at most 3 of the policy's snapshots; the ad-hoc one is never pruned.
    const left = await policySnapshots();
    expect(left.length).toBeGreaterThan(0);
    expect(left.length).toBeLessThanOrEqual(4); // 3 + at most one taken after the last prune
    expect((await catalog.list('demo')).snapshots.some((s) => s.name === 'before-upgrade')).toBe(true);
    // The embedded Redis went with it.
    const after = await vmsnap(['-c', cfg, 'status']);
    expect(after.code).not.toBe(0);
  });

  it('schedule preview prints the next runs in the policy zone and in UTC', async () => {
    const r = await vmsnap(['-c', cfg, 'schedule', 'preview', '--count', '2', '--now', '2026-03-29T00:59:59Z', '--json']);
    expect(r.code).toBe(0);
    const [p] = JSON.parse(r.stdout) as { policy: string; runs: { utc: string; local: string }[] }[];
    expect(p?.policy).toBe('every2s');
    expect(p?.runs.map((x) => x.utc)).toEqual(['2026-03-29T01:00:00Z', '2026-03-29T01:00:02Z']);
    expect(p?.runs[0]?.local).toMatch(/2026-03-29 03:00:00 GMT\+2|CEST/);
    const bad = await vmsnap(['-c', cfg, 'schedule', 'preview', 'nosuch']);
    expect(bad.code).toBe(65);
    expect(bad.stderr).toMatch(/unknown policy "nosuch"; configured: every2s/);
  });

  it('refuses --queue with file= and --wait without --queue, naming the fix', async () => {
    const a = await vmsnap(['-c', cfg, 'snapshot', 'create', 'demo', '--queue', '--disk', 'vda=external,file=/tmp/x.qcow2']);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/cannot choose paths; drop file= or drop --queue/);
    const b = await vmsnap(['-c', cfg, 'snapshot', 'create', 'demo', '--wait']);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/add --queue/);
  });
});
