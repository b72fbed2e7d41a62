import { describe, expect, it } from 'vitest';
import type { DiskRef, DomainState } from '../../../src/domain/model.js';
import { resolveSnapshotSpec, type SnapshotOptions } from '../../../src/domain/resolve-spec.js';
import { VmsnapError } from '../../../src/errors.js';

const qcow: DiskRef = { target: 'vda', path: '/vm/a.qcow2', format: 'qcow2', backend: 'qcow2' };
const raw: DiskRef = { target: 'vdb', path: '/vm/b.img', format: 'raw', backend: 'file' };
const qcowOnFile: DiskRef = { target: 'vdc', path: '/vm/c.qcow2', format: 'qcow2', backend: 'file' };

describe('resolveSnapshotSpec: defaults', () => {
  it.each<[DomainState, string, string, boolean]>([
    ['running', 'full', 'external', true],
    ['paused', 'full', 'external', false],
    ['shutoff', 'disk-only', 'no', false],
  ])('%s domain -> %s, memory %s, pause %s', (state, kind, memory, pause) => {
    const plan = resolveSnapshotSpec(state, [qcow, raw], {});
    expect(plan.kind).toBe(kind);
    expect(plan.memory).toBe(memory);
    expect(plan.pause).toBe(pause);
    expect(plan.disks.map((d) => [d.target, d.mode])).toEqual([
      ['vda', 'internal'],
      ['vdb', 'external'],
    ]);
    expect(plan.notes.length).toBeGreaterThan(0);
  });

  it('a qcow2 disk on the file backend defaults to external', () => {
    expect(resolveSnapshotSpec('shutoff', [qcowOnFile], {}).disks[0]?.mode).toBe('external');
  });

  it('keeps explicit disk modes and files', () => {
    const plan = resolveSnapshotSpec('shutoff', [qcow, raw], {
      disks: { vda: { mode: 'external', file: '/srv/a.frozen' }, vdb: { mode: 'no' } },
    });
    expect(plan.disks).toEqual([
      { ...qcow, mode: 'external', file: '/srv/a.frozen' },
      { ...raw, mode: 'no' },
    ]);
  });

  it('live on a running domain with external memory stays live and does not pause', () => {
    const plan = resolveSnapshotSpec('running', [qcow], { live: true });
    expect(plan).toMatchObject({ kind: 'full', memory: 'external', live: true, pause: false });
  });

  it('live on a paused domain is taken paused, with a note', () => {
    const plan = resolveSnapshotSpec('paused', [qcow], { live: true });
    expect(plan.live).toBe(false);
    expect(plan.notes.join(' ')).toMatch(/paused/);
  });

  it('disk-only on a running domain is crash-consistent and never pauses', () => {
    const plan = resolveSnapshotSpec('running', [qcow, raw], { diskOnly: true, live: true });
    expect(plan).toMatchObject({ kind: 'disk-only', memory: 'no', live: false, pause: false });
  });

  it('internal memory makes every qcow2 disk internal by default', () => {
    const plan = resolveSnapshotSpec('running', [qcow, { ...qcow, target: 'vdb', path: '/vm/b.qcow2' }], { memory: 'internal' });
    expect(plan.memory).toBe('internal');
    expect(plan.pause).toBe(true);
    expect(plan.disks.every((d) => d.mode === 'internal')).toBe(true);
  });

  it('internal memory may leave a disk out (--disk vdb=no), as snapshot-save lists only some devices', () => {
    const plan = resolveSnapshotSpec('running', [qcow, raw], { memory: 'internal', disks: { vdb: { mode: 'no' } } });
    expect(plan.disks.map((d) => d.mode)).toEqual(['internal', 'no']);
  });
});

describe('resolveSnapshotSpec: impossible requests say why', () => {
  const cases: [string, DomainState, DiskRef[], SnapshotOptions, RegExp][] = [
    ['shut-off domain with external memory', 'shutoff', [qcow], { memory: 'external' }, /shut off.*no memory to save/],
    ['shut-off domain with internal memory', 'shutoff', [qcow], { memory: 'internal' }, /shut off.*no memory to save/],
    ['disk-only with memory', 'running', [qcow], { diskOnly: true, memory: 'external' }, /disk-only snapshot has no memory/],
    ['nothing to snapshot', 'shutoff', [qcow, raw], { disks: { vda: { mode: 'no' }, vdb: { mode: 'no' } } }, /nothing to snapshot/],
    ['nothing to snapshot, running', 'running', [qcow], { memory: 'no', disks: { vda: { mode: 'no' } } }, /nothing to snapshot/],
    ['internal memory with a raw disk', 'running', [qcow, raw], { memory: 'internal' }, /vdb is external/],
    ['internal memory with an external disk', 'running', [qcow], { memory: 'internal', disks: { vda: { mode: 'external' } } }, /every snapshotted disk to be internal/],
    ['internal memory with every disk skipped', 'running', [qcow], { memory: 'internal', disks: { vda: { mode: 'no' } } }, /at least one disk snapshotted internally/],
    ['internal snapshot of a raw disk', 'shutoff', [raw], { disks: { vdb: { mode: 'internal' } } }, /internal snapshots need a qcow2 image/],
    ['internal snapshot on the file backend', 'shutoff', [qcowOnFile], { disks: { vdc: { mode: 'internal' } } }, /made by the qcow2 backend/],
    ['unknown disk', 'shutoff', [qcow], { disks: { vdz: { mode: 'internal' } } }, /"vdz" is not a disk of this domain/],
    ['file= with internal', 'shutoff', [qcow], { disks: { vda: { mode: 'internal', file: '/x' } } }, /file= only applies to external/],
    ['relative file=', 'shutoff', [qcow], { disks: { vda: { mode: 'external', file: 'x.qcow2' } } }, /absolute path/],
    ['live on a shut-off domain', 'shutoff', [qcow], { live: true }, /--live needs a running domain/],
    ['live with internal memory', 'running', [qcow], { live: true, memory: 'internal' }, /--live cannot save memory inside a qcow2 disk/],
  ];
  it.each(cases)('%s', (_label, state, disks, options, reason) => {
    try {
      resolveSnapshotSpec(state, disks, options);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(VmsnapError);
      expect((err as VmsnapError).code).toBe('invalid-spec');
      expect((err as VmsnapError).retryable).toBe(false);
      expect((err as VmsnapError).message).toMatch(reason);
    }
  });
});
