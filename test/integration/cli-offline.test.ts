import { readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { checkChain, createImage, guestHash, makeTempDir, writePattern } from '../helpers/images.js';
import { vmsnap, vmsnapBinary } from '../helpers/cli.js';

/** A temp world: one shut-off qemu domain with a qcow2 and a raw disk. */
let dir: string;
let cfg: string;
let vda: string;
let vdb: string;
let root: string;

async function listTree(path: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(p: string): Promise<void> {
    for (const e of await readdir(p, { withFileTypes: true })) {
      const full = join(p, e.name);
      out.push(full);
      if (e.isDirectory()) await walk(full);
    }
  }
  await walk(path).catch(() => undefined);
  return out.sort();
}

beforeAll(async () => {
  dir = await makeTempDir('cli');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

beforeEach(async (ctx) => {
  const base = join(dir, ctx.task.id);
  await mkdir(base, { recursive: true });
  vda = join(base, 'web1-vda.qcow2');
  vdb = join(base, 'web1-vdb.img');
  root = join(base, 'snapshots');
  cfg = join(base, 'vmsnap.yaml');
  await createImage(vda, 'qcow2');
  await createImage(vdb, 'raw');
  await writeFile(
    cfg,
    `hosts:
  - name: hv1
defaults:
  snapshotRoot: ${root}
domains:
  - name: web1
    driver: qemu
    qmpSocket: ${join(base, 'web1.qmp')}
    disks:
      - { target: vda, path: ${vda}, format: qcow2 }
      - { target: vdb, path: ${vdb}, format: raw }
`,
  );
});

const run = (...args: string[]) => vmsnap(['--config', cfg, ...args]);

describe('snapshot create/list/revert/delete on a shut-off domain', () => {
  it('creates a default snapshot named by UTC time: qcow2 internal, raw copied', async () => {
    const before = Date.now();
    const r = await run('snapshot', 'create', 'web1', '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.name).toMatch(/^\d{8}T\d{6}Z$/);
    const created = Date.parse(report.manifest.createdAt);
    expect(created).toBeGreaterThanOrEqual(before - 1000);
    expect(report.manifest).toMatchObject({ domain: 'web1', kind: 'disk-only', state: 'shutoff', consistency: 'offline', origin: 'adhoc' });
    expect(report.manifest.disks.map((d: { target: string; mode: string; method: string }) => [d.target, d.mode, d.method])).toEqual([
      ['vda', 'internal', 'qcow2-internal'],
      ['vdb', 'external', 'file-copy'],
    ]);
    const { stdout } = await execa('qemu-img', ['snapshot', '-l', vda]);
    expect(stdout).toContain(report.name);

    const list = JSON.parse((await run('snapshot', 'list', 'web1', '--json')).stdout);
    expect(list.snapshots.map((s: { name: string }) => s.name)).toEqual([report.name]);
    expect(list.current).toBe(report.name);
  });

  it('writes manifests, copies and folders owner-only (0600 / 0700)', async () => {
    const r = await run('snapshot', 'create', 'web1', '--name', 'perm', '--json');
    expect(r.code).toBe(0);
    const snapDir = join(root, 'web1', 'perm');
    expect((await stat(join(root, 'web1'))).mode & 0o777).toBe(0o700);
    expect((await stat(snapDir)).mode & 0o777).toBe(0o700);
    for (const f of await readdir(snapDir)) {
      expect({ f, mode: (await stat(join(snapDir, f))).mode & 0o777 }).toEqual({ f, mode: 0o600 });
    }
    expect(await readdir(snapDir)).toEqual(['snapshot.json', 'vdb.img']);
  });

  it('revert brings back the exact bytes of both disks', async () => {
    await writePattern(vda, 'qcow2', 0, 0x11);
    await writePattern(vdb, 'raw', 0, 0x22);
    const a0 = await guestHash(vda, 'qcow2');
    const b0 = await guestHash(vdb, 'raw');
    expect((await run('snapshot', 'create', 'web1', '--name', 'base')).code).toBe(0);
    await writePattern(vda, 'qcow2', 65536, 0x33);
    await writePattern(vdb, 'raw', 65536, 0x44);
    expect(await guestHash(vda, 'qcow2')).not.toBe(a0);
    const r = await run('snapshot', 'revert', 'web1', 'base');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/reverted to base/);
    expect(await guestHash(vda, 'qcow2')).toBe(a0);
    expect(await guestHash(vdb, 'raw')).toBe(b0);
  });

  it('external qcow2 chain: the configured path stays the active image; deleting the middle keeps data and chain valid', async () => {
    const hashes: Record<string, string> = {};
    for (const [i, name] of ['e1', 'e2', 'e3'].entries()) {
      await writePattern(vda, 'qcow2', i * 65536, 0x70 + i);
      hashes[name] = await guestHash(vda, 'qcow2');
      const r = await run('snapshot', 'create', 'web1', '--name', name, '--disk', 'vda=external', '--disk', 'vdb=no');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
    await writePattern(vda, 'qcow2', 3 * 65536, 0x7f);
    const active = await guestHash(vda, 'qcow2');
    const chain = await checkChain(vda);
    expect(chain[0]).toBe(vda);
    expect(chain).toHaveLength(4);

    const tree = await run('snapshot', 'list', 'web1', '--tree');
    expect(tree.stdout).toMatch(/e1[\s\S]*└─ e2[\s\S]*└─ e3 \*/);

    const del = await run('snapshot', 'delete', 'web1', 'e2');
    expect(del.stderr).toBe('');
    expect(del.code).toBe(0);
    expect(await guestHash(vda, 'qcow2')).toBe(active);
    expect(await checkChain(vda)).toHaveLength(3);
    const list = JSON.parse((await run('snapshot', 'list', 'web1', '--json')).stdout);
    expect(list.snapshots.map((s: { name: string; parent: string | null }) => [s.name, s.parent])).toEqual([
      ['e1', null],
      ['e3', 'e1'],
    ]);
    // vdb is not in these snapshots, so revert needs --force and says so; our own rebase is not reported as a change.
    const refused = await run('snapshot', 'revert', 'web1', 'e3');
    expect(refused.code).toBe(65);
    expect(refused.stderr).toMatch(/disks vdb are not in the snapshot/);
    expect(refused.stderr).not.toMatch(/changed since/);
    for (const name of ['e3', 'e1']) {
      const r = await run('snapshot', 'revert', 'web1', name, '--force');
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/warning: disks vdb are not in the snapshot/);
      expect(await guestHash(vda, 'qcow2')).toBe(hashes[name]);
    }
    await checkChain(vda);
  });

  it('--dry-run prints the plan and changes nothing', async () => {
    const before = await listTree(join(dir));
    const r = await run('snapshot', 'create', 'web1', '--dry-run', '--disk', 'vda=external');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/dry run/);
    expect(r.stdout).toMatch(/vda\s+external/);
    expect(r.stdout).toMatch(/vdb\s+external/);
    const json = JSON.parse((await run('snapshot', 'create', 'web1', '--dry-run', '--json')).stdout);
    expect(json).toMatchObject({ dryRun: true, plan: { kind: 'disk-only', memory: 'no' } });
    const after = await listTree(join(dir));
    // Only the domain folder may appear (it holds the lock while planning); no snapshot is made.
    expect(after.filter((p) => !before.includes(p)).every((p) => p === join(root) || p === join(root, 'web1'))).toBe(true);
    const { stdout } = await execa('qemu-img', ['snapshot', '-l', vda]);
    expect(stdout).toBe('');
  });

  it('delete removes internal tags and copies, and list no longer shows the snapshot', async () => {
    expect((await run('snapshot', 'create', 'web1', '--name', 'gone')).code).toBe(0);
    const r = await run('snapshot', 'delete', 'web1', 'gone', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ domain: 'web1', name: 'gone' });
    expect((await execa('qemu-img', ['snapshot', '-l', vda])).stdout).toBe('');
    expect(await readdir(join(root, 'web1'))).not.toContain('gone');
    const list = JSON.parse((await run('snapshot', 'list', 'web1', '--json')).stdout);
    expect(list.snapshots).toEqual([]);
    expect(list.current).toBeNull();
  });

  it('a folder without a committed manifest is partial: hidden from list, shown by --all', async () => {
    expect((await run('snapshot', 'create', 'web1', '--name', 'good')).code).toBe(0);
    const half = join(root, 'web1', 'half');
    await mkdir(half, { mode: 0o700 });
    await writeFile(join(half, 'journal.json'), '{"op":"create"}', { mode: 0o600 });
    const plain = JSON.parse((await run('snapshot', 'list', 'web1', '--json')).stdout);
    expect(plain.snapshots.map((s: { name: string }) => s.name)).toEqual(['good']);
    expect(plain.partial).toBeUndefined();
    const all = JSON.parse((await run('list', 'web1', '--all', '--json')).stdout);
    expect(all.partial).toEqual([expect.objectContaining({ name: 'half', reason: expect.stringMatching(/interrupted/) })]);
    const text = (await run('list', 'web1', '--all')).stdout;
    expect(text).toMatch(/Partial[\s\S]*half/);
  });

  it('refuses a running domain (image lock held) with exit 69 and changes nothing', async () => {
    // qemu-io keeps the image open with QEMU's locks, as a running guest would.
    const holder: ResultPromise = execa('qemu-io', ['-f', 'qcow2', vda], { stdin: 'pipe', reject: false });
    try {
      await new Promise((r) => setTimeout(r, 300));
      const r = await run('snapshot', 'create', 'web1');
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(/locked by a running QEMU/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(await readdir(join(root, 'web1')).catch(() => [])).toEqual([]);
    } finally {
      holder.kill();
      await holder;
    }
  });
});

describe('bad input: one clear line, the right exit code, nothing changed on disk', () => {
  async function expectNoChange(args: string[], code: number, pattern: RegExp): Promise<void> {
    const before = await listTree(dir);
    const hashBefore = await guestHash(vda, 'qcow2');
    const r = await run(...args);
    expect(r.code).toBe(code);
    expect(r.stdout).toBe('');
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toMatch(pattern);
    expect(lines[0]).toMatch(/^vmsnap: /);
    expect(await listTree(dir)).toEqual(before);
    expect(await guestHash(vda, 'qcow2')).toBe(hashBefore);
  }

  it('an invalid snapshot name', () => expectNoChange(['snapshot', 'create', 'web1', '--name', '../etc'], 65, /snapshot name: "\.\.\/etc" is not a valid name/));
  it('a name with a shell metacharacter', () => expectNoChange(['snapshot', 'create', 'web1', '--name', 'a;rm -rf'], 65, /not a valid name/));
  it('an unknown domain', () => expectNoChange(['snapshot', 'create', 'nope'], 65, /unknown domain "nope"/));
  it('an unknown flag', () => expectNoChange(['snapshot', 'create', 'web1', '--frobnicate'], 2, /unknown option '--frobnicate'/));
  it('a bad --disk value', () => expectNoChange(['snapshot', 'create', 'web1', '--disk', 'vda=sideways'], 2, /--disk vda=sideways: mode "sideways"/));
  it('memory on a shut-off domain', () => expectNoChange(['snapshot', 'create', 'web1', '--memory', 'external'], 65, /shut off, so there is no memory to save/));
  it('internal snapshot of a raw disk', () => expectNoChange(['snapshot', 'create', 'web1', '--disk', 'vdb=internal'], 65, /internal snapshots need a qcow2 image/));
  it('a missing snapshot on revert', () => expectNoChange(['snapshot', 'revert', 'web1', 'nosuch'], 65, /has no snapshot named "nosuch"/));
  it('a missing argument', () => expectNoChange(['snapshot', 'revert', 'web1'], 2, /missing required argument 'name'/));

  it('a bad config file', async () => {
    await writeFile(cfg, 'hosts: [ {name: hv1} ]\ndomains:\n  - name: web1\n    driver: qemu\n    disks: []\n');
    await expectNoChange(['snapshot', 'create', 'web1'], 65, /vmsnap\.yaml: domains\[0\]/);
  });

  it('a missing config file names the flag to use', async () => {
    const r = await vmsnap(['--config', join(dir, 'nope.yaml'), 'snapshot', 'list', 'web1']);
    expect(r.code).toBe(65);
    expect(r.stderr).toMatch(/nope\.yaml.*--config/);
  });

  it('the built binary maps errors to exit codes too', async () => {
    const bad = await vmsnapBinary(['--config', cfg, 'snapshot', 'create', 'web1', '--name', 'a/b']);
    expect(bad.code).toBe(65);
    expect(bad.stderr.trim()).toMatch(/^vmsnap: snapshot name: "a\/b" is not a valid name/);
    const usage = await vmsnapBinary(['snapshot', 'explode']);
    expect(usage.code).toBe(2);
    const help = await vmsnapBinary(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Exit status:[\s\S]*65/);
    const ok = await vmsnapBinary(['--config', cfg, 'snapshot', 'create', 'web1', '--name', 'bin', '--json']);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout).name).toBe('bin');
  });
});
