import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { VmsnapError } from '../../errors.js';
import type { XenDomain } from '../../config/load-config.js';
import type { DomainState, ManifestDisk, SnapshotManifest } from '../../domain/model.js';
import { FILE_MODE, removeFileIfPresent } from '../../catalog/fs-safe.js';
import { runCommand, CommandError } from '../../exec/run-command.js';
import { faultPoint } from '../../fault.js';
import type { HypervisorDriver, OnlineSnapshotRequest, OnlineSnapshotResult, RevertRequest } from '../driver.js';
import type { RecoveredCreate } from '../qemu/qemu-recover.js';
import { describeMemory } from '../qemu/qemu-snapshot.js';
import { assertMemoryImage, revertDisks, stepRunner } from '../driver-steps.js';

/**
 * Xen through `xl`, following the xl snapshot design: pause, `xl save -p`
 * (memory to a file, the domain stays paused), the disks through the storage
 * backends while it is paused, unpause. Revert: `xl destroy`, the disks
 * back, `xl restore` of the memory file (`-p` to stay paused).
 *
 * Xen cannot run on these machines: this driver is verified only against the
 * fake `xl` in test/fake-xl (see the README).
 */
const MEMORY_FILE = 'memory.xl';

export function createXenDriver(domain: XenDomain, options: { logger: Logger; timeoutMs?: number }): HypervisorDriver {
  const xl = (args: string[]) => runCommand([domain.xl, ...args], { timeoutMs: options.timeoutMs ?? 30 * 60_000 });
  const log = options.logger.child({ domain: domain.name, driver: 'xen' });

  async function getState(): Promise<DomainState> {
    try {
      const { stdout } = await xl(['list', domain.xlName]);
      const line = stdout.split('\n').find((l) => l.startsWith(`${domain.xlName} `) || l.split(/\s+/)[0] === domain.xlName);
      const state = line?.split(/\s+/)[4] ?? '';
      return state.includes('p') ? 'paused' : 'running';
    } catch (err) {
      if (err instanceof CommandError && /invalid domain identifier/.test(err.stderrTail)) return 'shutoff';
      throw err;
    }
  }

  async function createOnline(req: OnlineSnapshotRequest): Promise<OnlineSnapshotResult> {
    const { plan } = req;
    if (plan.memory === 'internal') {
      throw new VmsnapError('invalid-spec', `domain ${domain.name}: Xen saves memory to a file; use --memory external`);
    }
    if (plan.live) {
      throw new VmsnapError('invalid-spec', `domain ${domain.name}: xl has no live save to a file; drop --live (xl save pauses the domain)`);
    }
    const durationsMs: Record<string, number> = {};
    const made: ManifestDisk[] = [];
    const files: string[] = [];
    const memFile = join(req.dir, MEMORY_FILE);
    const wasRunning = (await getState()) === 'running';
    let pausedByUs = false;
    const step = stepRunner(req, durationsMs);
    await req.journal('online', { wasRunning, method: 'xl-save', memory: plan.memory, memoryFile: memFile, disks: plan.disks.map((d) => ({ target: d.target, path: d.path, format: d.format, backend: d.backend, mode: d.mode })) });
    const t0 = Date.now();
    try {
      if (wasRunning) {
        await req.journal('pause', { wasRunning: true });
        await step('pause', () => xl(['pause', domain.xlName]));
        pausedByUs = true;
        faultPoint('paused', undefined);
      }
      if (plan.memory === 'external') {
        await step('memory', () => xl(['save', '-p', domain.xlName, memFile]));
        files.push(memFile);
        await chmod(memFile, FILE_MODE);
      }
      for (const disk of plan.disks) {
        if (disk.mode === 'no') {
          made.push({ target: disk.target, path: disk.path, format: disk.format, mode: 'no' });
          continue;
        }
        const entry = await step(`disk:${disk.target}`, () =>
          req.backends[disk.backend].create(disk, { domain: domain.name, name: req.name, dir: req.dir, mode: disk.mode as 'internal' | 'external', ...(disk.file !== undefined ? { file: disk.file } : {}) }),
        );
        await req.journal(`copied:${disk.target}`, { entry });
        made.push(entry);
        if (entry.file !== undefined) files.push(entry.file);
      }
      if (pausedByUs && !req.halt) await step('resume', () => xl(['unpause', domain.xlName]));
      if (req.halt) await step('halt', () => xl(['destroy', domain.xlName]));
    } catch (err) {
      log.warn({ err }, 'xen snapshot failed; undoing');
      for (const entry of [...made].reverse()) {
        const disk = domain.disks.find((d) => d.target === entry.target);
        if (disk !== undefined && entry.mode !== 'no') await req.backends[disk.backend].undoCreate(disk, entry).catch(() => undefined);
      }
      await removeFileIfPresent(memFile).catch(() => undefined);
      if (pausedByUs) await xl(['unpause', domain.xlName]).catch((e: unknown) => log.error({ err: e }, 'could not unpause after a failed snapshot'));
      throw err;
    }
    return {
      method: 'xl-save',
      kind: plan.kind,
      consistency: plan.kind === 'full' ? 'full-system' : wasRunning ? 'crash' : 'full-system',
      memory: plan.memory === 'external' ? await describeMemory(memFile) : { mode: 'no' },
      disks: made,
      durationsMs,
      // xl has no pause/resume events: the guest was paused from our pause to our unpause.
      downtimeMs: pausedByUs ? Date.now() - t0 : null,
      files,
    };
  }

  async function revertFullSystem(manifest: SnapshotManifest, req: RevertRequest): Promise<void> {
    const memory = await assertMemoryImage(manifest);
    if ((await getState()) !== 'shutoff') {
      req.onProgress?.({ step: 'stop' });
      await xl(['destroy', domain.xlName]);
    }
    faultPoint('revert:stopped', undefined);
    await revertDisks(domain, manifest, req.backends, req.onProgress);
    req.onProgress?.({ step: 'restore' });
    await xl(['restore', ...(req.targetState === 'paused' ? ['-p'] : []), memory.file]);
  }

  return {
    name: 'xen',
    getState,
    createOnline,
    revertFullSystem,
    // Starting a Xen domain needs its xl config file, which vmsnap's config does not name (yet).
    canStart: () => false,
    async start() {
      throw new VmsnapError('config', `domain ${domain.name}: vmsnap cannot start Xen domains yet (no xl config file in the config); start it with xl create`);
    },
    async destroy() {
      if ((await getState()) !== 'shutoff') await xl(['destroy', domain.xlName]);
    },
    // Xen's disks are files the backends handle; nothing is held the way QMP nodes are.
    async deleteOnline() {
      return [];
    },
    async recoverCreate(journal, backends): Promise<RecoveredCreate> {
      let resumed = false;
      if (journal.steps.some((s) => s.step === 'pause') && (await getState()) === 'paused') {
        await xl(['unpause', domain.xlName]);
        resumed = true;
      }
      const copies = journal.steps.filter((s) => s.step.startsWith('copied:')).map((s) => (s.data as { entry: ManifestDisk }).entry);
      for (const entry of copies) {
        const disk = domain.disks.find((d) => d.target === entry.target);
        if (disk !== undefined) await backends[disk.backend].undoCreate(disk, entry);
      }
      const facts = journal.steps.find((s) => s.step === 'online')?.data as { memoryFile?: string } | undefined;
      if (facts?.memoryFile !== undefined) await removeFileIfPresent(facts.memoryFile);
      return { resumed, outcome: { kind: 'removed', files: [...(facts?.memoryFile !== undefined ? [facts.memoryFile] : []), ...copies.flatMap((c) => (c.file ? [c.file] : []))] } };
    },
  };
}
