import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/catalog/catalog.js';
import { checkChain, createImage, guestHash, writePattern } from '../helpers/images.js';
import { vmsnap } from '../helpers/cli.js';

/**
 * The Xen driver against the fake `xl` of test/fake-xl (Xen cannot run on
 * these machines; the README says so). The fake keeps each domain's state
 * and "memory" in a folder, checks its arguments like xl, and logs calls.
 */
const XL = new URL('../fake-xl/xl', import.meta.url).pathname;
let base: string;
let cfg: string;
let disk: string;
let state: string;

const domainState = async () => JSON.parse(await readFile(join(state, 'xg.json'), 'utf8')) as { state: string; memory: string };
const setMemory = async (memory: string) => writeFile(join(state, 'xg.json'), JSON.stringify({ ...(await domainState()), memory }));
const calls = async () => (await readFile(join(state, 'calls.log'), 'utf8')).trim().split('\n');

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), 'vx-'));
  state = join(base, 'xl');
  await mkdir(state);
  process.env['FAKE_XL_DIR'] = state;
  delete process.env['FAKE_XL_FAIL'];
  disk = join(base, 'xg.qcow2');
  await createImage(disk, 'qcow2');
  await writeFile(join(state, 'xg.json'), JSON.stringify({ state: 'running', memory: 'm1' }));
  cfg = join(base, 'vmsnap.yaml');
  await writeFile(
    cfg,
    `hosts: [{ name: hv1 }]
domains:
  - name: xg
    driver: xen
    xl: ${XL}
    snapshotRoot: ${join(base, 'snaps')}
    disks: [{ target: xvda, path: ${disk}, format: qcow2 }]
`,
  );
});

afterEach(async () => {
  delete process.env['FAKE_XL_DIR'];
  delete process.env['FAKE_XL_FAIL'];
  await rm(base, { recursive: true, force: true });
});

describe('Xen driver (fake xl)', () => {
  it('snapshots a running domain: pause, save -p, disks while paused, unpause', async () => {
    await writePattern(disk, 'qcow2', 0, 0x11);
    const r = await vmsnap(['-c', cfg, 'snapshot', 'create', 'xg', '--name', 's1', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await calls()).toEqual(['list xg', 'list xg', 'list xg', `pause xg`, `save -p xg ${join(base, 'snaps', 'xg', 's1', 'memory.xl')}`, 'unpause xg']);
    const [m] = (await new Catalog(join(base, 'snaps')).list('xg')).snapshots;
    expect(m).toMatchObject({ kind: 'full', method: 'xl-save', state: 'running', consistency: 'full-system', memory: { mode: 'external' } });
    expect((await domainState()).state).toBe('running');
  });

  it('revert destroys, restores the disks and restores the saved memory', async () => {
    await writePattern(disk, 'qcow2', 0, 0x21);
    const before = await guestHash(disk, 'qcow2');
    expect((await vmsnap(['-c', cfg, 'snapshot', 'create', 'xg', '--name', 's1'])).code).toBe(0);
    await writePattern(disk, 'qcow2', 0, 0x22);
    await setMemory('m2');
    const r = await vmsnap(['-c', cfg, 'snapshot', 'revert', 'xg', 's1']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await domainState()).toEqual({ state: 'running', memory: 'm1' });
    expect(await guestHash(disk, 'qcow2')).toBe(before);
    await checkChain(disk);
    expect((await calls()).filter((c) => /^(destroy|restore)/.test(c))).toEqual(['destroy xg', `restore ${join(base, 'snaps', 'xg', 's1', 'memory.xl')}`]);
    expect((await vmsnap(['-c', cfg, 'snapshot', 'revert', 'xg', 's1', '--paused'])).code).toBe(0);
    expect((await domainState()).state).toBe('paused');
  });

  it('a failing xl save unpauses the domain and leaves nothing', async () => {
    process.env['FAKE_XL_FAIL'] = 'save';
    const r = await vmsnap(['-c', cfg, 'snapshot', 'create', 'xg', '--name', 's1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/step memory failed: .*save failed \(injected\)/);
    expect((await domainState()).state).toBe('running');
    expect(await new Catalog(join(base, 'snaps')).list('xg')).toEqual({ snapshots: [], partial: [] });
  });

  it('a shut-off domain gets an offline disk snapshot; delete removes it', async () => {
    await rm(join(state, 'xg.json'));
    expect((await vmsnap(['-c', cfg, 'snapshot', 'create', 'xg', '--name', 's1'])).code).toBe(0);
    const [m] = (await new Catalog(join(base, 'snaps')).list('xg')).snapshots;
    expect(m).toMatchObject({ kind: 'disk-only', state: 'shutoff', method: 'offline' });
    expect((await vmsnap(['-c', cfg, 'snapshot', 'delete', 'xg', 's1'])).code).toBe(0);
    expect((await new Catalog(join(base, 'snaps')).list('xg')).snapshots).toEqual([]);
  });
});
