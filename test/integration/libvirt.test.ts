import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import type { SnapshotManifest } from '../../src/domain/model.js';
import { defineLibvirtGuest, LIBVIRT_URI, type LibvirtGuest } from '../helpers/libvirt.js';
import { checkChain, createImage } from '../helpers/images.js';
import { Sink, vmsnap, vmsnapBinary } from '../helpers/cli.js';

/**
 * The real test guest as a libvirt domain on a real libvirtd: a scheduled
 * live full-system snapshot through the queue (`vmsnap run`, embedded Redis),
 * a retention prune in the middle of the external chain, reverts with the
 * guest's counter checked, internal and offline snapshots, a branch, a crash
 * mid-create and a disk vmsnap was not told about.
 */
let base: string;
let guest: LibvirtGuest;
let cfg: string;
let root: string;
let vda: string;
let stopSampler = false;
/** (time, last counter on the serial log) every 50 ms: what the guest had counted when. */
const samples: { t: number; c: number }[] = [];

const DOMAIN = 'lg';
const catalog = () => new Catalog(root);
const listed = async (): Promise<SnapshotManifest[]> => (await catalog().list(DOMAIN)).snapshots;
const virsh = async (...args: string[]) => (await execa('virsh', ['-q', '-c', LIBVIRT_URI, ...args])).stdout;
const cli = (...args: string[]) => vmsnap(['-c', cfg, ...args]);

async function ok(...args: string[]): Promise<string> {
  const r = await cli(...args);
  expect(r.stderr, `vmsnap ${args.join(' ')}`).not.toMatch(/^vmsnap: (?!warning)/m);
  expect(r.code, `vmsnap ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

async function sampler(): Promise<void> {
  while (!stopSampler) {
    const c = (await guest.counters()).at(-1);
    if (c !== undefined) samples.push({ t: Date.now(), c });
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The counter the guest had printed by `t` (a lower bound of what it had counted). */
const counterAt = (t: number): number => samples.filter((s) => s.t <= t).at(-1)?.c ?? 0;
/** The first counter printed after `t` (an upper bound of what it had counted at `t`, less one). */
const counterAfter = (t: number): number => samples.find((s) => s.t >= t)?.c ?? Number.POSITIVE_INFINITY;

/** The first counter after `from` log lines that drops below the one before: where the reverted guest resumed. */
async function resumedFrom(from: number): Promise<number> {
  for (let i = 0; i < 600; i++) {
    const all = await guest.counters();
    for (let j = Math.max(from, 1); j < all.length; j++) {
      if ((all[j] as number) < (all[j - 1] as number)) return all[j] as number;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the guest never counted from a lower value after the revert');
}

/** Revert with the CLI; the guest resumes inside the snapshot's window [startedAt, finishedAt] and counts on. */
async function revertAndCheck(m: SnapshotManifest): Promise<void> {
  const lower = counterAt(Date.parse(m.createdAt));
  const upper = counterAfter(Date.parse(m.finishedAt as string)) + 1;
  const from = (await guest.counters()).length;
  await ok('snapshot', 'revert', DOMAIN, m.name, '--force');
  const resumed = await resumedFrom(from);
  expect(resumed).toBeGreaterThanOrEqual(lower);
  expect(resumed).toBeLessThanOrEqual(upper);
  await guest.waitForCounterAbove(resumed + 3);
  expect(await guest.state()).toBe('running');
}

/** The image an external snapshot froze: its overlay's backing file, read now. */
async function frozenOf(overlay: string): Promise<string> {
  const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', overlay])).stdout) as { 'full-backing-filename': string };
  return info['full-backing-filename'];
}

/** Every image libvirt's domain reads, checked clean; and nothing in the catalog folder outside a chain or snapshot. */
async function chainOf(target = 'vda'): Promise<string[]> {
  const top = await guest.source(target);
  return checkChain(top, { inUse: (await guest.state()) === 'running' });
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'vlv-'));
  root = join(base, 'snaps');
  vda = join(base, 'vda.qcow2');
  cfg = join(base, 'vmsnap.yaml');
  await createImage(vda, 'qcow2', '64M');
  guest = await defineLibvirtGuest(join(base, 'vm'), [{ target: 'vda', path: vda }], { guest: true, memMiB: 128, tickMs: 100 });
  await writeFile(
    cfg,
    `stateDir: ${join(base, 'state')}
hosts: [{ name: hv1 }]
defaults: { snapshotRoot: ${root} }
domains:
  - name: ${DOMAIN}
    host: hv1
    driver: libvirt
    uri: ${LIBVIRT_URI}
    libvirtName: ${guest.name}
    disks: [{ target: vda, path: ${vda}, format: qcow2 }]
policies:
  - name: often
    schedule: "*/4 * * * * *"
    kind: full
    live: true
    memory: external
    catchUp: skip
    retention: { keepLast: 2 }
    domains: [${DOMAIN}]
`,
  );
  await guest.start();
  void sampler();
  await guest.waitForCounterAbove(2, 90_000);
}, 120_000);

afterAll(async () => {
  stopSampler = true;
  await guest?.remove();
  await rm(base, { recursive: true, force: true });
});

describe('libvirt: the real guest through the queue', () => {
  it('a scheduled live full-system snapshot, a prune in the middle of the chain, and a revert with the counter back', async () => {
    // An ad-hoc snapshot first, so the policy's snapshots sit above it in the chain.
    await ok('snapshot', 'create', DOMAIN, '--name', 'pre', '--live');
    const pre = (await listed()).find((s) => s.name === 'pre') as SnapshotManifest;
    expect(pre).toMatchObject({ kind: 'full', state: 'running', memory: { mode: 'external' } });
    expect(pre.disks[0]).toMatchObject({ target: 'vda', method: 'libvirt-external', backing: vda });

    let stop: (sig: string) => void = () => undefined;
    const stopped = new Promise<string>((r) => (stop = r));
    const live = new Sink();
    const running = vmsnap(['-c', cfg, 'run'], { stopSignal: () => stopped, stdout: live });
    const made: SnapshotManifest[] = [];
    const deadline = Date.now() + 150_000;
    // Three policy snapshots and a prune: keepLast 2 removes the oldest, whose overlay is mid-chain.
    while (!/prune lg \(often\): pruned \d{8}T/.test(live.text) && Date.now() < deadline) {
      for (const s of await listed()) if (s.origin === 'policy' && !made.some((m) => m.name === s.name)) made.push(s);
      await new Promise((r) => setTimeout(r, 200));
    }
    stop('SIGTERM');
    const { code } = await running;
    expect(live.text, live.text).toMatch(/prune lg \(often\): pruned \d{8}T/);
    expect(code).toBe(0);

    const now = await listed();
    const policy = now.filter((s) => s.origin === 'policy');
    const pruned = made.filter((m) => !now.some((s) => s.name === m.name));
    expect(pruned.length).toBeGreaterThanOrEqual(1);
    expect(policy.length).toBe(2);
    expect(now.some((s) => s.name === 'pre')).toBe(true);
    for (const s of policy) {
      expect(s.name).toMatch(/^\d{8}T\d{6}Z(-\d{2})?$/);
      expect(s).toMatchObject({ kind: 'full', state: 'running', memory: { mode: 'external' }, method: 'libvirt-live' });
      expect(typeof s.downtimeMs).toBe('number');
      expect(s.disks[0]).toMatchObject({ method: 'libvirt-external' });
    }
    // The pruned snapshot's overlay left the chain and the disk; the chain reads clean,
    // from the base image through pre's overlay and the kept snapshots' overlays.
    const chain = await chainOf();
    for (const p of pruned) {
      for (const d of p.disks) {
        expect(chain).not.toContain(d.file);
        expect(await execa('test', ['-e', d.file as string], { reject: false }).then((r) => r.exitCode)).not.toBe(0);
      }
    }
    expect(chain.at(-1)).toBe(vda);
    expect(chain).toContain(pre.disks[0]?.file);
    for (const s of policy) expect(chain).toContain(s.disks[0]?.file);
    // libvirt forgot the pruned snapshots too.
    const libvirtSnaps = (await virsh('snapshot-list', '--domain', guest.name, '--name')).split('\n').map((l) => l.trim()).filter(Boolean);
    for (const p of pruned) expect(libvirtSnaps).not.toContain(p.name);
    for (const s of [pre, ...policy]) expect(libvirtSnaps).toContain(s.name);

    // Revert to the older kept policy snapshot: the counter goes back to its value then.
    await revertAndCheck(policy[0] as SnapshotManifest);
    const after = await chainOf();
    expect(after[0]).toMatch(/\/\.active\//);
    // ...on a new overlay over the image that snapshot froze, which is unchanged.
    expect(after[1]).toBe(await frozenOf(policy[0]?.disks[0]?.file as string));
  }, 240_000);
});
