import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import { pathExists } from '../../src/catalog/fs-safe.js';
import type { SnapshotManifest } from '../../src/domain/model.js';
import { defineLibvirtGuest, LIBVIRT_URI, type LibvirtGuest } from '../helpers/libvirt.js';
import { checkChain, createImage, guestHash } from '../helpers/images.js';
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

/** Revert with the CLI; the guest resumes inside the snapshot's window [createdAt, finishedAt] and counts on. */
async function revertAndCheck(m: SnapshotManifest): Promise<void> {
  const lower = counterAt(Date.parse(m.createdAt));
  const upper = counterAfter(Date.parse(m.finishedAt as string)) + 1;
  const from = (await guest.counters()).length;
  const wasOff = (await guest.state()) === 'shut off';
  await ok('snapshot', 'revert', DOMAIN, m.name, '--force');
  const resumed = await guest.resumedAfter(from, wasOff);
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

/** Every image disk `target` of the domain reads, top first, each checked clean with qemu-img. */
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

  it('a branch: deleting a snapshot on a shared image keeps the overlay a later snapshot needs, and both branches stay whole', async () => {
    // After the revert the domain reads a new overlay on the frozen image of the
    // older policy snapshot; that snapshot's own overlay is one branch (holding
    // the newer snapshot's data), the active disk another.
    const [older, newer] = (await listed()).filter((s) => s.origin === 'policy') as [SnapshotManifest, SnapshotManifest];
    const frozen = await frozenOf(older.disks[0]?.file as string);
    const activeBefore = await guest.source('vda');
    expect(await frozenOf(activeBefore)).toBe(frozen);
    expect(await frozenOf(newer.disks[0]?.file as string)).toBe(older.disks[0]?.file);
    const newerData = await guestHash(older.disks[0]?.file as string, 'qcow2');

    await ok('snapshot', 'delete', DOMAIN, older.name);
    expect((await listed()).map((s) => s.name)).not.toContain(older.name);
    expect(await pathExists(older.disks[0]?.file as string)).toBe(false);
    // The newer snapshot's data moved out of the deleted folder unchanged, into .active.
    const kept = await frozenOf(newer.disks[0]?.file as string);
    expect(dirname(kept)).toMatch(/\/\.active$/);
    expect(await guestHash(kept, 'qcow2')).toBe(newerData);
    await checkChain(newer.disks[0]?.file as string);
    expect(await guest.source('vda')).toBe(activeBefore);
    await chainOf();

    // ...and it still reverts to what it was.
    await revertAndCheck((await listed()).find((s) => s.name === newer.name) as SnapshotManifest);
    // The overlay the first revert made is garbage now that nothing reads it.
    expect(await pathExists(activeBefore)).toBe(false);
    expect(await pathExists(kept)).toBe(true);
  }, 120_000);

  it('internal full-system snapshots: taken inside the active image, reverted by libvirt, guarding the external snapshot that holds them', async () => {
    await ok('snapshot', 'create', DOMAIN, '--name', 'ext', '--live');
    const ext = (await listed()).find((s) => s.name === 'ext') as SnapshotManifest;
    expect(await guest.source('vda')).toBe(ext.disks[0]?.file);

    await ok('snapshot', 'create', DOMAIN, '--name', 'int', '--memory', 'internal');
    const int = (await listed()).find((s) => s.name === 'int') as SnapshotManifest;
    expect(int).toMatchObject({ kind: 'full', method: 'libvirt-internal', memory: { mode: 'internal' } });
    expect(int.disks[0]).toMatchObject({ mode: 'internal', method: 'libvirt-internal', tag: 'int' });
    expect(JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', ext.disks[0]?.file as string])).stdout).snapshots.map((t: { name: string }) => t.name)).toEqual(['int']);
    await guest.waitForCounterAbove(counterAt(Date.now()) + 3);
    await revertAndCheck(int);

    // Deleting ext would commit its overlay, and int with it, away: refused, and ext stays listed.
    const refused = await cli('snapshot', 'delete', DOMAIN, 'ext');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/holds internal snapshots "int" taken after this one; delete them first/);
    expect((await listed()).map((s) => s.name)).toContain('ext');

    await ok('snapshot', 'delete', DOMAIN, 'int');
    expect(JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', ext.disks[0]?.file as string])).stdout).snapshots ?? []).toEqual([]);
    // Now ext's overlay, the active image, is block-committed into the image it froze and the domain pivots to it.
    const frozen = await frozenOf(ext.disks[0]?.file as string);
    await ok('snapshot', 'delete', DOMAIN, 'ext');
    expect(await guest.source('vda')).toBe(frozen);
    await chainOf();
    expect(await guest.state()).toBe('running');
    await guest.waitForCounterAbove(counterAt(Date.now()) + 3);
  }, 120_000);
});

describe('libvirt: quiesce and halt', () => {
  it('a disk-only snapshot with --quiesce freezes the guest through libvirt and its agent', async () => {
    await ok('snapshot', 'create', DOMAIN, '--name', 'quiet', '--disk-only', '--quiesce');
    const quiet = (await listed()).find((s) => s.name === 'quiet') as SnapshotManifest;
    expect(quiet).toMatchObject({ kind: 'disk-only', method: 'libvirt-disk-only', consistency: 'application', quiesced: true, downtimeMs: null });
    expect(await guest.source('vda')).toBe(quiet.disks[0]?.file);
    // The guest was thawed: it goes on writing its counter to the disk.
    await guest.waitForCounterAbove(counterAt(Date.now()) + 3);
    await ok('snapshot', 'delete', DOMAIN, 'quiet');
    await chainOf();
  }, 120_000);

  it('--halt leaves the domain shut off with its state in the snapshot; a revert brings it back running', async () => {
    await ok('snapshot', 'create', DOMAIN, '--name', 'halted', '--halt');
    const halted = (await listed()).find((s) => s.name === 'halted') as SnapshotManifest;
    expect(halted).toMatchObject({ kind: 'full', state: 'running', memory: { mode: 'external' } });
    expect(await guest.state()).toBe('shut off');
    await revertAndCheck(halted);
    await ok('snapshot', 'delete', DOMAIN, 'halted');
    await chainOf();
  }, 120_000);
});

describe('libvirt: a shut-off domain', () => {
  it('disk-only external and internal snapshots, revert and delete with qemu-img, the domain XML following', async () => {
    await virsh('destroy', '--domain', guest.name);
    const start = await guest.source('vda');
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 8M 1M', start]);
    await ok('snapshot', 'create', DOMAIN, '--name', 'offx', '--disk', 'vda=external');
    const offx = (await listed()).find((s) => s.name === 'offx') as SnapshotManifest;
    expect(offx).toMatchObject({ kind: 'disk-only', state: 'shutoff', consistency: 'offline', method: 'libvirt-offline' });
    expect(offx.disks[0]).toMatchObject({ method: 'libvirt-external', backing: start });
    // libvirt defined the domain on the new overlay.
    expect(await guest.source('vda')).toBe(offx.disks[0]?.file);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 8M 1M', offx.disks[0]?.file as string]);

    await ok('snapshot', 'create', DOMAIN, '--name', 'offi');
    const offi = (await listed()).find((s) => s.name === 'offi') as SnapshotManifest;
    expect(offi.disks[0]).toMatchObject({ mode: 'internal', method: 'libvirt-internal' });
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 8M 1M', offx.disks[0]?.file as string]);

    const reads = async (pattern: number) => {
      const r = await execa('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${pattern} 8M 1M`, await guest.source('vda')]);
      return !r.stdout.includes('Pattern verification failed');
    };
    await ok('snapshot', 'revert', DOMAIN, 'offi');
    expect(await reads(0x22)).toBe(true);
    await ok('snapshot', 'revert', DOMAIN, 'offx');
    expect(await guest.state()).toBe('shut off');
    const active = await guest.source('vda');
    expect(dirname(active)).toMatch(/\/\.active$/);
    expect(await frozenOf(active)).toBe(start);
    expect(await reads(0x11)).toBe(true);

    // offi's tag is in offx's overlay, which the domain no longer reads: deleted there with qemu-img.
    await ok('snapshot', 'delete', DOMAIN, 'offi');
    expect(JSON.parse((await execa('qemu-img', ['info', '--output=json', offx.disks[0]?.file as string])).stdout).snapshots ?? []).toEqual([]);
    await ok('snapshot', 'delete', DOMAIN, 'offx');
    expect(await execa('test', ['-e', offx.disks[0]?.file as string], { reject: false }).then((r) => r.exitCode)).not.toBe(0);
    expect(await guest.source('vda')).toBe(active);
    await chainOf();
    expect(await reads(0x11)).toBe(true);
    const libvirtSnaps = await virsh('snapshot-list', '--domain', guest.name, '--name');
    expect(libvirtSnaps).not.toMatch(/\boff[xi]\b/);
    expect(basename(active)).toMatch(/^vda-/);
  }, 120_000);
});

describe('libvirt: crashes and disks vmsnap was not told about', () => {
  it('killed right after libvirt made the snapshot: recover undoes it, the domain runs on its old chain', async () => {
    await guest.start();
    await guest.waitForCounterAbove(2, 90_000);
    const before = await guest.source('vda');
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'create', DOMAIN, '--name', 'boom', '--live'], { env: { VMSNAP_FAULT: 'libvirt:created' } });
    expect(killed.signal).toBe('SIGKILL');
    // libvirt did its part; vmsnap never listed it.
    expect(await virsh('snapshot-list', '--domain', guest.name, '--name')).toMatch(/\bboom\b/);
    expect((await listed()).map((s) => s.name)).not.toContain('boom');

    const r = await cli('recover', '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [report] = JSON.parse(r.stdout) as { removed: string[] }[];
    expect(report?.removed).toEqual(['boom']);
    expect(await guest.state()).toBe('running');
    expect(await guest.source('vda')).toBe(before);
    expect(await virsh('snapshot-list', '--domain', guest.name, '--name')).not.toMatch(/\bboom\b/);
    const listing = await catalog().list(DOMAIN);
    expect(listing.partial).toEqual([]);
    expect(await pathExists(join(root, DOMAIN, 'boom'))).toBe(false);
    await chainOf();
    await guest.waitForCounterAbove(counterAt(Date.now()) + 3);
  }, 180_000);

  it('killed during a revert after the domain was stopped: recover runs the revert again', async () => {
    await ok('snapshot', 'create', DOMAIN, '--name', 'again', '--live');
    const again = (await listed()).find((s) => s.name === 'again') as SnapshotManifest;
    await guest.waitForCounterAbove(counterAt(Date.now()) + 5);
    const killed = await vmsnapBinary(['-c', cfg, 'snapshot', 'revert', DOMAIN, 'again', '--force'], { env: { VMSNAP_FAULT: 'revert:stopped' } });
    expect(killed.signal).toBe('SIGKILL');
    expect(await guest.state()).toBe('shut off');
    const from = (await guest.counters()).length;
    const r = await cli('recover');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const resumed = await guest.resumedAfter(from);
    expect(resumed).toBeGreaterThanOrEqual(counterAt(Date.parse(again.createdAt)));
    expect(resumed).toBeLessThanOrEqual(counterAfter(Date.parse(again.finishedAt as string)) + 1);
    expect(await guest.state()).toBe('running');
    await chainOf();
  }, 180_000);

  it('refuses a domain whose disk reads from an image outside the config, naming the path and the fix', async () => {
    const other = join(base, 'other.yaml');
    await writeFile(
      other,
      `stateDir: ${join(base, 'state2')}
hosts: [{ name: hv1 }]
defaults: { snapshotRoot: ${join(base, 'snaps2')} }
domains:
  - { name: stray, host: hv1, driver: libvirt, uri: "${LIBVIRT_URI}", libvirtName: ${guest.name}, disks: [{ target: vda, path: ${join(base, 'elsewhere.qcow2')}, format: qcow2 }] }
`,
    );
    const source = await guest.source('vda');
    const libvirtBefore = await virsh('snapshot-list', '--domain', guest.name, '--name');
    const state = await guest.state();
    const r = await vmsnap(['-c', other, 'snapshot', 'create', 'stray']);
    expect(r.code).toBe(65); // bad input: the config does not match the domain
    expect(r.stderr).toContain(`disk vda of libvirt domain ${guest.name} reads from ${source}, which is neither its configured path ${join(base, 'elsewhere.qcow2')}`);
    expect(r.stderr).toMatch(/fix the disk's path in the config/);
    expect(await virsh('snapshot-list', '--domain', guest.name, '--name')).toBe(libvirtBefore);
    expect(await guest.source('vda')).toBe(source);
    expect(await guest.state()).toBe(state);
    const left = await new Catalog(join(base, 'snaps2')).list('stray');
    expect(left.snapshots).toEqual([]);
    expect(left.partial).toEqual([]);
  });
});

