import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { findDomain, loadConfig, type QemuDomain } from '../../src/config/load-config.js';
import { createQemuDriver } from '../../src/hypervisor/qemu/qemu-driver.js';
import { createSnapshot } from '../../src/pipeline/create-snapshot.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import { Catalog } from '../../src/catalog/catalog.js';
import type { SnapshotManifest } from '../../src/domain/model.js';
import { createBareVm, QmpProxy, vmConfig, type BareVm, type BareVmDisk } from '../helpers/bare-vm.js';
import { checkChain, createImage } from '../helpers/images.js';
import { vmsnap } from '../helpers/cli.js';

/**
 * Running domains over QMP, against a real QEMU whose "guest" writes are made
 * through QEMU's own block layer (see bare-vm.ts). Every test checks what an
 * operator cares about: the snapshot is listed as what it is, the domain runs
 * afterwards, the data is where it should be and the chain is valid.
 */
let base: string;
let vm: BareVm;
let cfgPath: string;
let root: string;
let vda: string;
let vdb: string;

async function writeConfig(qmpSocket: string, snapshotRoot: string): Promise<void> {
  const disks: BareVmDisk[] = [
    { id: 'vda', path: vda, format: 'qcow2' },
    { id: 'vdb', path: vdb, format: 'raw' },
  ];
  await writeFile(cfgPath, vmConfig({ domain: 'vm1', vm, disks, snapshotRoot, qmpSocket, launch: true }));
}

async function cli(...args: string[]) {
  return vmsnap(['-c', cfgPath, ...args]);
}

async function manifests(): Promise<SnapshotManifest[]> {
  return (await new Catalog(root).list('vm1')).snapshots;
}

async function snapshotFolders(): Promise<string[]> {
  return readdir(join(root, 'vm1')).then((e) => e.filter((n) => !n.startsWith('.') && n !== 'qemu-launch.log')).catch(() => []);
}

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), 'vo-'));
  vda = join(base, 'vda.qcow2');
  vdb = join(base, 'vdb.raw');
  root = join(base, 'snaps');
  cfgPath = join(base, 'vmsnap.yaml');
  await mkdir(root);
  await createImage(vda, 'qcow2', '64M');
  await createImage(vdb, 'raw', '8M');
  vm = await createBareVm(join(base, 'vm'), [
    { id: 'vda', path: vda, format: 'qcow2' },
    { id: 'vdb', path: vdb, format: 'raw' },
  ]);
  await vm.start();
  await writeConfig(vm.qmpSocket, root);
});

afterEach(async () => {
  await vm.kill();
  await rm(base, { recursive: true, force: true });
});

describe('snapshot create on a running QEMU domain', () => {
  it.each([
    { flags: [], method: 'pause-save', kind: 'full', memory: 'external', paused: true },
    { flags: ['--disk', 'vda=external'], method: 'pause-save', kind: 'full', memory: 'external', paused: true },
    { flags: ['--live'], method: 'background', kind: 'full', memory: 'external', paused: true },
    { flags: ['--live', '--disk', 'vda=external'], method: 'background', kind: 'full', memory: 'external', paused: true },
    { flags: ['--memory', 'internal', '--disk', 'vdb=no'], method: 'internal', kind: 'full', memory: 'internal', paused: true },
    { flags: ['--disk-only', '--disk', 'vdb=no'], method: 'disk-only', kind: 'disk-only', memory: 'no', paused: false },
  ])('$method with $flags: listed as $kind, domain running, files 0600', async ({ flags, method, kind, memory, paused }) => {
    await vm.write('vda', 0, 0x11);
    const r = await cli('snapshot', 'create', 'vm1', '--name', 's1', '--json', ...flags);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [m] = await manifests();
    expect(m).toMatchObject({ name: 's1', kind, method, state: 'running', memory: { mode: memory } });
    expect(m?.consistency).toBe(kind === 'full' ? 'full-system' : 'crash');
    if (paused) expect(m?.downtimeMs).toBeGreaterThanOrEqual(0);
    else expect(m?.downtimeMs).toBeNull();
    if (m?.memory.mode === 'external') {
      expect(m.memory.bytes).toBeGreaterThan(0);
      expect(m.memory.sha256).toMatch(/^[0-9a-f]{64}$/);
      const st = await import('node:fs/promises').then((f) => f.stat((m.memory as { file: string }).file));
      expect(st.mode & 0o777).toBe(0o600);
    }
    expect(Object.keys(m?.durationsMs ?? {})).not.toHaveLength(0);
    const { stat: statOf } = await import('node:fs/promises');
    expect((await statOf(join(root, 'vm1', 's1'))).mode & 0o777).toBe(0o700);
    expect((await statOf(join(root, 'vm1'))).mode & 0o777).toBe(0o700);
    expect((await statOf(join(root, 'vm1', 's1', 'snapshot.json'))).mode & 0o777).toBe(0o600);
    expect(await readdir(join(root, 'vm1', 's1'))).not.toContain('journal.json');
    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 0, 0x11)).toBe(true);
    expect(await vm.holds('vda', 0, 0x12)).toBe(false); // the check itself can fail
    for (const d of m?.disks ?? []) if (d.format === 'qcow2') await checkChain(d.path, { inUse: true });
  });

  it('keeps a domain that was paused paused', async () => {
    await vm.qmp('stop');
    const r = await cli('snapshot', 'create', 'vm1', '--name', 's1');
    expect(r.code).toBe(0);
    expect((await manifests())[0]).toMatchObject({ state: 'paused', method: 'pause-save' });
    // QEMU reports a finished memory save as "postmigrate": stopped, and `cont` resumes it.
    expect(['paused', 'postmigrate']).toContain(await vm.status());
    expect((await vm.qmp<{ running: boolean }>('query-status')).running).toBe(false);
    await vm.qmp('cont');
    expect(await vm.status()).toBe('running');
  });

  it('live migrate-to-file when background-snapshot is not used, as libvirt does', async () => {
    const cfg = await loadConfig(cfgPath);
    const domain = findDomain(cfg, 'vm1') as QemuDomain;
    const deps = createPipelineDeps(pino({ level: 'silent' }));
    deps.driverFor = (d) => createQemuDriver(d as QemuDomain, { backgroundSnapshot: false });
    const report = await createSnapshot(deps, domain, { name: 's1', live: true, disks: { vda: { mode: 'external' } } });
    expect(report.manifest).toMatchObject({ method: 'live-migrate', kind: 'full' });
    expect(await vm.status()).toBe('running');
  });

  it('--halt leaves the domain shut off with its state in the snapshot', async () => {
    const r = await cli('snapshot', 'create', 'vm1', '--name', 's1', '--halt');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await vm.isRunning()).toBe(false);
    const back = await cli('snapshot', 'revert', 'vm1', 's1');
    expect(back.stderr).toBe('');
    expect(back.code).toBe(0);
    expect(await vm.status()).toBe('running');
  });

  it('a QMP connection lost mid-save: domain runs, nothing listed, no files left, the error names the step', async () => {
    const proxy = new QmpProxy(join(base, 'p.sock'), vm.qmpSocket);
    await proxy.start();
    try {
      await writeConfig(proxy.path, root);
      // Cut while vmsnap follows the memory save (query-migrate), after the save has started.
      proxy.cutWhen = (line) => line.includes('"execute":"query-migrate"');
      const r = await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vda=external');
      expect(proxy.cuts).toBe(1);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/step memory failed: .*QMP connection/);
      expect(await vm.status()).toBe('running');
      expect(await manifests()).toEqual([]);
      expect(await snapshotFolders()).toEqual([]);
      expect(await readdir(base)).not.toContain(expect.stringMatching(/vmsnap-overlay/));
      expect(await checkChain(vda, { inUse: true })).toEqual([vda]);
    } finally {
      await proxy.stop();
    }
  });

  it('a QMP socket that stops answering mid-save: the step times out, the undo reaches QEMU anew, the guest runs', async () => {
    const proxy = new QmpProxy(join(base, 'h.sock'), vm.qmpSocket);
    await proxy.start();
    try {
      await writeConfig(proxy.path, root);
      proxy.hangWhen = (line) => line.includes('"execute":"query-migrate"');
      const domain = findDomain(await loadConfig(cfgPath), 'vm1') as QemuDomain;
      const deps = createPipelineDeps(pino({ level: 'silent' }));
      deps.driverFor = (d) => createQemuDriver(d as QemuDomain, { qmpCommandTimeoutMs: 1_000 });
      const err = await createSnapshot(deps, domain, { name: 's1', disks: { vda: { mode: 'external' } } }).catch((e: unknown) => e);
      expect(proxy.hangs).toBe(1);
      expect((err as Error).message).toMatch(/step memory failed: QMP command query-migrate got no answer within 1000 ms/);
      expect(await vm.status()).toBe('running');
      expect(await manifests()).toEqual([]);
      expect(await snapshotFolders()).toEqual([]);
      expect(await checkChain(vda, { inUse: true })).toEqual([vda]);
    } finally {
      await proxy.stop();
    }
  });

  describe('quiesce with a guest agent that misbehaves', () => {
    /** A guest agent on a unix socket that answers guest-sync and what `answers` allows. */
    async function fakeAgent(path: string, answers: { freeze: boolean; thaw: boolean }) {
      const calls: string[] = [];
      const server = createServer((sock) => {
        let buf = '';
        sock.on('data', (d) => {
          buf += d.toString();
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: { id?: number } };
            buf = buf.slice(nl + 1);
            calls.push(msg.execute);
            if (msg.execute === 'guest-sync') sock.write(`${JSON.stringify({ return: msg.arguments?.id })}\n`);
            if (msg.execute === 'guest-fsfreeze-freeze' && answers.freeze) sock.write('{"return": 1}\n');
            if (msg.execute === 'guest-fsfreeze-thaw' && answers.thaw) sock.write('{"return": 1}\n');
          }
        });
      });
      await new Promise<void>((r) => server.listen(path, r));
      return { calls, close: () => new Promise<void>((r) => server.close(() => r())) };
    }

    async function quiesced(agent: string, required: boolean) {
      await writeFile(cfgPath, (await readFile(cfgPath, 'utf8')).replace('    launch:', `    guestAgentSocket: ${agent}\n    launch:`));
      const domain = findDomain(await loadConfig(cfgPath), 'vm1') as QemuDomain;
      const deps = createPipelineDeps(pino({ level: 'silent' }));
      return createSnapshot(deps, domain, { name: 's1', diskOnly: true, disks: { vdb: { mode: 'no' } }, quiesce: true, quiesceRequired: required, quiesceTimeoutMs: 300 });
    }

    it('a thaw that never answers is retried, bounded, and reported in the manifest', async () => {
      const agent = await fakeAgent(join(base, 'qga.sock'), { freeze: true, thaw: false });
      try {
        const t0 = Date.now();
        const report = await quiesced(join(base, 'qga.sock'), true);
        expect(Date.now() - t0).toBeLessThan(10_000);
        expect(agent.calls.filter((c) => c === 'guest-fsfreeze-thaw')).toHaveLength(3);
        expect(report.manifest?.quiesced).toBe(true);
        expect(report.manifest?.notes?.join(' ')).toMatch(/THAW FAILED: .*did not thaw after 3 tries/);
        expect(await vm.status()).toBe('running');
      } finally {
        await agent.close();
      }
    });

    it('a freeze that times out is thawed; required: the snapshot fails and nothing is listed', async () => {
      const agent = await fakeAgent(join(base, 'qga.sock'), { freeze: false, thaw: true });
      try {
        const err = await quiesced(join(base, 'qga.sock'), true).catch((e: unknown) => e);
        expect((err as Error).message).toMatch(/step quiesce failed: the guest agent did not answer guest-fsfreeze-freeze/);
        expect(agent.calls).toContain('guest-fsfreeze-thaw');
        expect(await manifests()).toEqual([]);
        expect(await snapshotFolders()).toEqual([]);
        expect(await vm.status()).toBe('running');
      } finally {
        await agent.close();
      }
    });

    it('a freeze that times out, not required: the snapshot goes on unquiesced and says so', async () => {
      const agent = await fakeAgent(join(base, 'qga.sock'), { freeze: false, thaw: true });
      try {
        const report = await quiesced(join(base, 'qga.sock'), false);
        expect(report.manifest).toMatchObject({ quiesced: false, consistency: 'crash' });
        expect(report.manifest?.notes?.join(' ')).toMatch(/not quiesced: the guest agent did not answer guest-fsfreeze-freeze/);
        expect(agent.calls).toContain('guest-fsfreeze-thaw');
      } finally {
        await agent.close();
      }
    });
  });

  it('a snapshot folder without room for the memory image: refused before anything is written', async () => {
    const small = join(base, 'small');
    await mkdir(small);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=128k,mode=0700', 'tmpfs', small]);
    try {
      await writeConfig(vm.qmpSocket, small);
      const r = await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vdb=no');
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(/step prepare failed: snapshot folder .* has 0 MiB free and a full-system snapshot of vm1 needs about \d+ MiB .*--disk-only/);
      expect(await vm.status()).toBe('running');
      expect(await new Catalog(small).list('vm1')).toEqual({ snapshots: [], partial: [] });
      const { stdout } = await execa('qemu-img', ['snapshot', '-U', '-l', vda]);
      expect(stdout).not.toContain('s1');
    } finally {
      await execa('umount', [small]);
    }
  });

  it('ENOSPC during the memory save: domain runs, nothing listed, tags and files removed, the error names the step', async () => {
    await vm.kill();
    vm = await createBareVm(join(base, 'vm2'), [{ id: 'vda', path: vda, format: 'qcow2' }, { id: 'vdb', path: vdb, format: 'raw' }], 128, undefined, { randomRam: true });
    await vm.start();
    const small = join(base, 'small');
    await mkdir(small);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=240m,mode=0700', 'tmpfs', small]);
    try {
      await writeConfig(vm.qmpSocket, small);
      // Something else fills the disk as soon as the memory image starts: the check passed, the save cannot finish.
      let filled = false;
      const filler = (async () => {
        for (let i = 0; i < 2000 && !filled; i++) {
          const dirs = await readdir(join(small, 'vm1')).catch(() => []);
          for (const d of dirs) {
            if ((await readdir(join(small, 'vm1', d)).catch(() => [])).includes('memory.bin')) {
              // fallocate takes the space at once, long before 128 MiB are through the migration pipe.
              await execa('fallocate', ['-l', '200M', join(small, 'junk')], { reject: false });
              filled = true;
            }
          }
          await new Promise((r) => setTimeout(r, 1));
        }
      })();
      const r = await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vdb=no');
      await filler;
      expect(filled).toBe(true);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/step memory failed: memory save failed/);
      expect(await vm.status()).toBe('running');
      expect(await new Catalog(small).list('vm1')).toEqual({ snapshots: [], partial: [] });
      expect((await readdir(small)).sort()).toEqual(['junk', 'vm1']);
      const { stdout } = await execa('qemu-img', ['snapshot', '-U', '-l', vda]);
      expect(stdout).not.toContain('s1');
    } finally {
      await execa('umount', [small]);
    }
  });
});

describe('revert on a running QEMU domain', () => {
  it('external memory: QEMU restarts with -incoming, disks and state come back', async () => {
    await vm.write('vda', 0, 0x11);
    await vm.write('vdb', 0, 0x21);
    expect((await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vda=external')).code).toBe(0);
    await vm.write('vda', 0, 0x12);
    await vm.write('vdb', 0, 0x22);
    const r = await cli('snapshot', 'revert', 'vm1', 's1');
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/reverted to s1 \(memory and disks\); now running/);
    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 0, 0x11)).toBe(true);
    expect(await vm.holds('vdb', 0, 0x21)).toBe(true);
    await checkChain(vda, { inUse: true });
    // The snapshot stays valid for another revert.
    await vm.write('vda', 0, 0x13);
    expect((await cli('snapshot', 'revert', 'vm1', 's1', '--paused')).code).toBe(0);
    expect(await vm.status()).toBe('paused');
    expect(await vm.holds('vda', 0, 0x11)).toBe(true);
  });

  it('internal memory: snapshot-load in the running QEMU', async () => {
    await vm.write('vda', 1, 0x31);
    expect((await cli('snapshot', 'create', 'vm1', '--name', 's1', '--memory', 'internal', '--disk', 'vdb=no')).code).toBe(0);
    await vm.write('vda', 1, 0x32);
    const r = await cli('snapshot', 'revert', 'vm1', 's1', '--force');
    expect(r.code).toBe(0);
    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 1, 0x31)).toBe(true);
  });

  it('a disk-only snapshot of a running domain needs --force, then the domain boots from the disks', async () => {
    await vm.write('vda', 2, 0x41);
    expect((await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk-only', '--disk', 'vdb=no')).code).toBe(0);
    await vm.write('vda', 2, 0x42);
    const refused = await cli('snapshot', 'revert', 'vm1', 's1');
    expect(refused.code).toBe(65);
    expect(refused.stderr).toMatch(/--force.*memory is discarded/);
    expect(await vm.holds('vda', 2, 0x42)).toBe(true);
    const r = await cli('snapshot', 'revert', 'vm1', 's1', '--force');
    expect(r.code).toBe(0);
    expect(await vm.status()).toBe('running');
    expect(await vm.holds('vda', 2, 0x41)).toBe(true);
  });

  it('refuses before stopping the domain when the revert could not finish', async () => {
    expect((await cli('snapshot', 'create', 'vm1', '--name', 's1', '--disk', 'vda=external')).code).toBe(0);
    expect((await cli('snapshot', 'create', 'vm1', '--name', 's2', '--disk-only', '--disk', 'vdb=no')).code).toBe(0);
    const r = await cli('snapshot', 'revert', 'vm1', 's1');
    expect(r.code).toBe(65);
    expect(r.stderr).toMatch(/holds internal snapshots \(s2\)/);
    expect(await vm.status()).toBe('running');
  });
});

describe('delete on a running QEMU domain', () => {
  it('external snapshots: middle, oldest and newest go, data and chain stay', async () => {
    const names = ['a', 'b', 'c'];
    for (const [i, name] of names.entries()) {
      await vm.write('vda', i, 0x51 + i);
      const r = await cli('snapshot', 'create', 'vm1', '--name', name, '--disk', 'vda=external', ...(i === 2 ? ['--live'] : []));
      expect(r.code).toBe(0);
    }
    await vm.write('vda', 3, 0x54);
    expect(await checkChain(vda, { inUse: true })).toHaveLength(4);
    for (const name of ['b', 'a', 'c']) {
      const r = await cli('snapshot', 'delete', 'vm1', name);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      for (let i = 0; i < 4; i++) expect(await vm.holds('vda', i, 0x51 + i)).toBe(true);
      for (const m of await manifests()) for (const d of m.disks) if (d.file?.endsWith('.qcow2')) await checkChain(d.file);
      await checkChain(vda, { inUse: true });
    }
    expect(await checkChain(vda, { inUse: true })).toEqual([vda]);
    expect(await snapshotFolders()).toEqual([]);
    expect(await vm.status()).toBe('running');
  });

  it('a surviving snapshot stays revertible after the one below it was deleted', async () => {
    await vm.write('vda', 0, 0x61);
    await cli('snapshot', 'create', 'vm1', '--name', 'a', '--disk', 'vda=external');
    await vm.write('vda', 1, 0x62);
    await cli('snapshot', 'create', 'vm1', '--name', 'b', '--disk', 'vda=external');
    await vm.write('vda', 2, 0x63);
    expect((await cli('snapshot', 'delete', 'vm1', 'a')).code).toBe(0);
    const r = await cli('snapshot', 'revert', 'vm1', 'b');
    expect(r.stderr).toBe('');
    expect(await vm.holds('vda', 0, 0x61)).toBe(true);
    expect(await vm.holds('vda', 1, 0x62)).toBe(true);
    expect(await vm.holds('vda', 2, 0x63)).toBe(false);
  });

  it('internal snapshots go with the snapshot-delete job', async () => {
    await cli('snapshot', 'create', 'vm1', '--name', 'a');
    await cli('snapshot', 'create', 'vm1', '--name', 'b', '--memory', 'internal', '--disk', 'vdb=no');
    for (const name of ['a', 'b']) {
      const r = await cli('snapshot', 'delete', 'vm1', name);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
    const { stdout } = await execa('qemu-img', ['snapshot', '-U', '-l', vda]);
    expect(stdout).toBe('');
    expect(await snapshotFolders()).toEqual([]);
    expect(await vm.status()).toBe('running');
  });
});
