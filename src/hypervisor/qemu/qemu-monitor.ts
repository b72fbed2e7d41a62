import { VmsnapError } from '../../errors.js';
import { QmpClient, type QmpClientOptions } from './qmp-client.js';

/**
 * The QMP operations vmsnap needs, over a connection that is re-opened when
 * it drops: the undo of a failed snapshot must reach QEMU even when the
 * failure was the connection itself.
 */

export interface BlockDevice {
  /** qdev id ("vda") or the legacy drive name, whichever QEMU reports. */
  id: string;
  qdev: string;
  /** Format node at the top of the device's chain: snapshot commands take this. */
  nodeName: string;
  /** QEMU's file name for the top node; can be stale after vmsnap renamed files. */
  filename: string;
  virtualSize: number;
}

export interface MigrationInfo {
  status: string;
  transferred: number;
  total: number;
  remaining: number;
  downtimeMs?: number;
  errorDesc?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** QEMU runs `exec:` URIs through /bin/sh: only paths we built and can quote safely go there. */
const SAFE_PATH = /^\/[A-Za-z0-9._/+@,=-]+$/;

export function shellQuotePath(path: string): string {
  if (!SAFE_PATH.test(path) || path.includes('..')) {
    throw new VmsnapError(
      'config',
      `path ${JSON.stringify(path)} cannot be handed to QEMU's exec: migration URI; use a snapshotRoot made of letters, digits and ._/+@,=- only`,
    );
  }
  return `'${path}'`;
}

export class QemuMonitor {
  private client: QmpClient | undefined;
  /** Events of connections that were replaced, so downtime can still be measured. */
  private readonly oldEvents: QmpClient['events'] = [];

  constructor(
    readonly socketPath: string,
    private readonly options: QmpClientOptions = {},
  ) {}

  /** The live connection, re-opened if it dropped. */
  async connection(): Promise<QmpClient> {
    if (this.client !== undefined && !this.client.isClosed) return this.client;
    if (this.client !== undefined) this.oldEvents.push(...this.client.events);
    this.client = await QmpClient.connect(this.socketPath, this.options);
    return this.client;
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    const c = await this.connection();
    try {
      return await c.execute<T>(command, args, timeoutMs === undefined ? {} : { timeoutMs });
    } catch (err) {
      // A connection that stopped answering is dropped, so the undo that
      // follows gets a fresh one instead of waiting on the dead one.
      if (err instanceof VmsnapError && err.code === 'timeout') c.close();
      throw err;
    }
  }

  /** Every event seen on this monitor, across reconnects. */
  allEvents(): QmpClient['events'] {
    return [...this.oldEvents, ...(this.client?.events ?? [])];
  }

  close(): void {
    this.client?.close();
  }

  async status(): Promise<{ status: string; running: boolean }> {
    return this.execute<{ status: string; running: boolean }>('query-status');
  }

  /** Resume the vCPUs if they are stopped; no-op when running. */
  async ensureRunning(): Promise<void> {
    const s = await this.status();
    if (!s.running) await this.execute('cont');
  }

  async blockDevices(): Promise<BlockDevice[]> {
    const devices = await this.execute<
      { device: string; qdev?: string; inserted?: { 'node-name': string; file: string; image: { 'virtual-size': number } } }[]
    >('query-block');
    return devices.flatMap((d) =>
      d.inserted === undefined
        ? []
        : [
            {
              id: d.device !== '' ? d.device : qdevId(d.qdev ?? ''),
              qdev: d.qdev ?? '',
              nodeName: d.inserted['node-name'],
              filename: d.inserted.file,
              virtualSize: d.inserted.image['virtual-size'],
            },
          ],
    );
  }

  /**
   * The format nodes of a device's chain, top first, each with its protocol
   * (file) node, read from QEMU's block graph: file names in QEMU can be
   * stale after renames, the graph is not.
   */
  async chain(topNode: string): Promise<{ node: string; file: string | undefined }[]> {
    const graph = await this.execute<{
      nodes: { id: number; type: string; name: string }[];
      edges: { parent: number; child: number; name: string }[];
    }>('x-debug-query-block-graph');
    const byName = new Map(graph.nodes.map((n) => [n.name, n.id]));
    const byId = new Map(graph.nodes.map((n) => [n.id, n.name]));
    const chain: { node: string; file: string | undefined }[] = [];
    let id = byName.get(topNode);
    while (id !== undefined && chain.length < 1000) {
      const at = id;
      const name = byId.get(at);
      const fileEdge = graph.edges.find((e) => e.parent === at && e.name === 'file');
      if (name !== undefined) chain.push({ node: name, file: fileEdge === undefined ? undefined : byId.get(fileEdge.child) });
      id = graph.edges.find((e) => e.parent === at && e.name === 'backing')?.child;
    }
    return chain;
  }

  /**
   * Release nodes a block job dropped from the chain. Nodes the monitor
   * created (-blockdev, blockdev-add) outlive the job and keep their image
   * locked until deleted; implicit ones are already gone (errors ignored).
   */
  async releaseNodes(nodes: readonly { node: string; file: string | undefined }[]): Promise<void> {
    for (const n of nodes) {
      await this.execute('blockdev-del', { 'node-name': n.node }).catch(() => undefined);
      if (n.file !== undefined) await this.execute('blockdev-del', { 'node-name': n.file }).catch(() => undefined);
    }
  }

  async migration(): Promise<MigrationInfo> {
    const m = await this.execute<{
      status?: string;
      ram?: { transferred: number; total: number; remaining: number };
      downtime?: number;
      'error-desc'?: string;
    }>('query-migrate');
    return {
      status: m.status ?? 'none',
      transferred: m.ram?.transferred ?? 0,
      total: m.ram?.total ?? 0,
      remaining: m.ram?.remaining ?? 0,
      ...(m.downtime !== undefined ? { downtimeMs: m.downtime } : {}),
      ...(m['error-desc'] !== undefined ? { errorDesc: m['error-desc'] } : {}),
    };
  }

  /** Poll query-migrate until it ends; reports progress; throws on failed/cancelled/timeout. */
  async waitMigration(options: { timeoutMs: number; onProgress?: (m: MigrationInfo) => void; what: string }): Promise<MigrationInfo> {
    const deadline = Date.now() + options.timeoutMs;
    for (;;) {
      const m = await this.migration();
      if (m.status === 'completed') {
        options.onProgress?.(m);
        return m;
      }
      if (m.status === 'failed' || m.status === 'cancelled') {
        throw new VmsnapError('qmp', `${options.what} ${m.status}${m.errorDesc !== undefined ? `: ${m.errorDesc}` : ''}`);
      }
      options.onProgress?.(m);
      if (Date.now() > deadline) {
        throw new VmsnapError('timeout', `${options.what} did not complete within ${options.timeoutMs} ms (status ${m.status})`);
      }
      await sleep(m.status === 'none' || m.status === 'setup' ? 20 : 100);
    }
  }

  /** Cancel a migration that may be running and wait until it is no longer active. */
  async cancelMigration(): Promise<void> {
    const m = await this.migration();
    if (['completed', 'failed', 'cancelled', 'none'].includes(m.status)) return;
    await this.execute('migrate_cancel');
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const s = (await this.migration()).status;
      if (['completed', 'failed', 'cancelled', 'none'].includes(s)) return;
      await sleep(50);
    }
  }

  async setCapabilities(caps: Record<string, boolean>): Promise<void> {
    await this.execute('migrate-set-capabilities', {
      capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
    });
  }

  /**
   * Run a QMP job command (snapshot-save/-load/-delete) and wait for it: the
   * command returns {} even when the job fails, so the job's own error is
   * read from query-jobs before it is dismissed.
   */
  async runJob(command: string, args: Record<string, unknown>, timeoutMs: number): Promise<void> {
    const jobId = args['job-id'] as string;
    await this.execute(command, args);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const jobs = await this.execute<{ id: string; status: string; error?: string }[]>('query-jobs');
      const job = jobs.find((j) => j.id === jobId);
      if (job === undefined) return; // auto-dismissed
      if (job.status === 'concluded' || job.status === 'null') {
        await this.execute('job-dismiss', { id: jobId }).catch(() => undefined);
        if (job.error !== undefined) throw new VmsnapError('qmp', `QEMU's ${command} job failed: ${job.error}`, { details: { command, error: job.error } });
        return;
      }
      if (Date.now() > deadline) {
        throw new VmsnapError('timeout', `QEMU's ${command} job ${jobId} did not finish within ${timeoutMs} ms (status ${job.status})`);
      }
      await sleep(50);
    }
  }

  /**
   * Run a block job (block-commit, block-stream) to its end. An active
   * commit reaches "ready" and is completed (pivot) by us.
   */
  async runBlockJob(command: string, args: Record<string, unknown>, timeoutMs: number): Promise<void> {
    const jobId = args['job-id'] as string;
    await this.execute(command, { ...args, 'auto-finalize': true, 'auto-dismiss': false });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const jobs = await this.execute<{ id: string; status: string; error?: string }[]>('query-jobs');
      const job = jobs.find((j) => j.id === jobId);
      if (job === undefined) throw new VmsnapError('qmp', `QEMU's ${command} job ${jobId} vanished`);
      if (job.status === 'ready') {
        await this.execute('job-complete', { id: jobId });
      } else if (job.status === 'concluded') {
        await this.execute('job-dismiss', { id: jobId }).catch(() => undefined);
        if (job.error !== undefined) throw new VmsnapError('qmp', `QEMU's ${command} job failed: ${job.error}`);
        return;
      }
      if (Date.now() > deadline) {
        await this.execute('job-cancel', { id: jobId }).catch(() => undefined);
        throw new VmsnapError('timeout', `QEMU's ${command} job did not finish within ${timeoutMs} ms (status ${job.status})`);
      }
      await sleep(50);
    }
  }
}

/** "/machine/peripheral/vda/virtio-backend" → "vda". */
function qdevId(qdev: string): string {
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(qdev);
  return m?.[1] ?? qdev;
}
