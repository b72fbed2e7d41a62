import { stat } from 'node:fs/promises';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ResolvedDomain } from '../../src/config/load-config.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { createPipelineDeps } from '../../src/cli/deps.js';
import type { DomainState } from '../../src/domain/model.js';
import type { PipelineDeps } from '../../src/pipeline/context.js';
import { createSnapshot } from '../../src/pipeline/create-snapshot.js';
import { deleteSnapshot } from '../../src/pipeline/delete-snapshot.js';
import { revertSnapshot } from '../../src/pipeline/revert-snapshot.js';

export interface HypervisorFixture {
  domain: ResolvedDomain;
  /** Folder the domain's catalog lives in (its snapshotRoot). */
  snapshotRoot: string;
  /** Put the domain in the running state (boot, create, ...). */
  start(): Promise<void>;
  /** Write "guest data": `pattern` (a byte) over a known region of the first disk. */
  write(pattern: number): Promise<void>;
  /** True when that region holds `pattern` as the guest would read it now. */
  holds(pattern: number): Promise<boolean>;
  cleanup(): Promise<void>;
  /** Extra pipeline wiring (driver options), when the fixture needs it. */
  deps?(deps: PipelineDeps): PipelineDeps;
}

/**
 * One suite every hypervisor driver passes, through the same pipeline the
 * CLI and the workers use: state, a full-system snapshot of a running
 * domain, a revert that brings the data back and leaves the domain in the
 * state asked for, and a delete that keeps the data.
 */
export function describeHypervisorDriver(label: string, setup: () => Promise<HypervisorFixture>): void {
  describe(`hypervisor driver ${label}`, () => {
    let fx: HypervisorFixture;
    let deps: PipelineDeps;
    const state = (): Promise<DomainState> => deps.driverFor(fx.domain).getState();
    const listed = async () => (await new Catalog(fx.snapshotRoot).list(fx.domain.name)).snapshots;

    beforeEach(async () => {
      fx = await setup();
      const base = createPipelineDeps(pino({ level: 'silent' }));
      deps = fx.deps?.(base) ?? base;
      await fx.start();
    });
    afterEach(async () => {
      await fx.cleanup();
    });

    it('reports a started domain as running', async () => {
      expect(await state()).toBe('running');
    });

    it('takes a full-system snapshot of a running domain and leaves it running', async () => {
      await fx.write(0x31);
      const r = await createSnapshot(deps, fx.domain, { name: 's1' });
      expect(r.manifest).toMatchObject({ name: 's1', kind: 'full', state: 'running', consistency: 'full-system', memory: { mode: expect.stringMatching(/internal|external/) } });
      if (r.manifest?.memory.mode === 'external') expect((await stat(r.manifest.memory.file)).mode & 0o777).toBe(0o600);
      expect(await state()).toBe('running');
      expect((await listed()).map((s) => s.name)).toEqual(['s1']);
      expect(await fx.holds(0x31)).toBe(true);
    });

    it('reverts to it: the data comes back and the domain runs, or stays paused when asked', async () => {
      await fx.write(0x41);
      await createSnapshot(deps, fx.domain, { name: 's1' });
      await fx.write(0x42);
      expect(await fx.holds(0x42)).toBe(true);
      const report = await revertSnapshot(deps, fx.domain, 's1', { force: true });
      expect(report).toMatchObject({ memoryRestored: true, state: 'running' });
      expect(await state()).toBe('running');
      expect(await fx.holds(0x41)).toBe(true);
      await fx.write(0x43);
      await revertSnapshot(deps, fx.domain, 's1', { force: true, paused: true });
      expect(await state()).toBe('paused');
      expect(await fx.holds(0x41)).toBe(true);
    });

    it('deletes it and keeps the data', async () => {
      await fx.write(0x51);
      await createSnapshot(deps, fx.domain, { name: 's1' });
      await fx.write(0x52);
      await deleteSnapshot(deps, fx.domain, 's1');
      expect(await listed()).toEqual([]);
      expect(await fx.holds(0x52)).toBe(true);
      expect(await state()).toBe('running');
    });
  });
}
