import { readFile } from 'node:fs/promises';
import { Command, CommanderError, Option } from 'commander';
import { VmsnapError, exitCodeOf } from '../errors.js';
import { findDomain, loadConfig, type ResolvedConfig } from '../config/load-config.js';
import { createLogger } from '../log.js';
import { createSnapshot } from '../pipeline/create-snapshot.js';
import { deleteSnapshot } from '../pipeline/delete-snapshot.js';
import { revertSnapshot } from '../pipeline/revert-snapshot.js';
import { catalogFor } from '../pipeline/context.js';
import type { ProgressEvent } from '../pipeline/context.js';
import type { RetentionRules } from '../domain/retention-rules.js';
import { parseRfc3339, parseTimesInput, simulateRetention, formatRetentionTable } from '../domain/simulate-retention.js';
import { createPipelineDeps } from './deps.js';
import { createProgressPrinter } from './progress.js';
import { addServiceCommands, enqueueSnapshot, type ServiceContext } from './service-commands.js';
import { formatCreated, formatPlan, formatSnapshotList } from './format-snapshots.js';
import { parseCountFlag, parseDiskFlags, parseMemoryFlag } from './parse-flags.js';

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  /** Long-running commands (run, worker) stop when this resolves; default SIGINT/SIGTERM. */
  stopSignal?: () => Promise<string>;
}

function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => () => resolve(sig);
    process.once('SIGINT', on('SIGINT'));
    process.once('SIGTERM', on('SIGTERM'));
  });
}

export const DEFAULT_CONFIG = 'config/vmsnap.yaml';

const EXIT_HELP = `
Exit status:
  0   success
  1   the operation failed (a command or QEMU reported an error)
  2   usage error: unknown command or flag, missing argument
  65  bad input: invalid config, name, spec or input file; unknown domain or snapshot
  69  unavailable: a tool, socket or service is missing, or the domain is busy or running

Environment:
  VMSNAP_CONFIG     config file when --config is not given (default ${DEFAULT_CONFIG})
  VMSNAP_LOG_LEVEL  pino log level for the JSON logs on stderr (default warn for the CLI)`;

/** Run the CLI with `argv` (without node and script); returns the exit code. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const out = (text: string) => io.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  const json = (value: unknown) => out(JSON.stringify(value, null, 2));
  const logger = createLogger(process.env['VMSNAP_LOG_LEVEL'] ?? 'warn');
  const progress: (e: ProgressEvent) => void = createProgressPrinter(io.stderr);

  const program = new Command('vmsnap')
    .description('Scheduled and ad-hoc snapshots of virtual machines (QEMU/KVM, libvirt, Xen), pruned by retention policy.')
    .version('0.1.0', '-V, --version')
    .addOption(new Option('-c, --config <file>', 'config file').env('VMSNAP_CONFIG').default(DEFAULT_CONFIG))
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) => write(`vmsnap: ${s.replace(/^error: /, '')}`),
    })
    .addHelpText('after', EXIT_HELP);

  const config = async (): Promise<ResolvedConfig> => loadConfig(program.opts<{ config: string }>().config);
  const serviceCtx: ServiceContext = {
    config,
    out,
    json,
    err: (text) => io.stderr.write(text.endsWith('\n') ? text : `${text}\n`),
    logger,
    progress,
    stopSignal: io.stopSignal ?? waitForSignal,
  };

  // ---- snapshot ----
  const snapshot = program
    .command('snapshot')
    .description('create, list, revert and delete snapshots of one domain')
    .exitOverride();

  const snapshotCreate = snapshot
    .command('create')
    .description('take a snapshot of DOMAIN now, in this process')
    .argument('<domain>', 'domain name from the config')
    .option('--name <name>', 'snapshot name (default: UTC creation time, e.g. 20261122T101500Z)')
    .option('--disk <target=mode[,file=path]>', 'per-disk mode: no | internal | external (repeatable)', collect, [])
    .option('--memory <mode>', 'memory: no | internal (inside the qcow2 disks) | external (a file in the snapshot folder)')
    .option('--disk-only', 'snapshot disks only, never memory')
    .option('--live', 'save memory while the guest keeps running (running domains): a QEMU background snapshot, else a live migration to the file')
    .option('--halt', 'shut the domain down once the snapshot is taken (its state is in the snapshot)')
    .option('--quiesce', "freeze the guest's filesystems through the guest agent (config: guestAgentSocket) around the disk snapshot; fails if it cannot")
    .option('--description <text>', 'free text stored in the manifest')
    .option('--dry-run', 'print the resolved plan and change nothing')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      `
Defaults: a shut-off domain gets a disk-only snapshot; qcow2 disks are
snapshotted internally (a qcow2 tag), raw disks externally (a copy in the
snapshot folder). An external qcow2 snapshot freezes the current image and
puts a new overlay at the configured path, so the config stays valid.

libvirt domains: vmsnap runs virsh snapshot-create-as and libvirt keeps the
chains. Running, their disks default to external (the overlay goes in the
snapshot folder and the domain reads from it from then on) unless --memory
internal; --live is libvirt's --live, --quiesce its --quiesce (disk-only);
a snapshot's disks are all internal or all external.

Examples:
  vmsnap snapshot create web1
  vmsnap snapshot create web1 --name before-upgrade --disk vda=external
  vmsnap snapshot create web1 --dry-run --json`,
    )
    .action(async (domainName: string, opts: CreateFlags) => {
      const cfg = await config();
      const domain = findDomain(cfg, domainName);
      if (opts.wait === true && opts.queue !== true) throw new VmsnapError('usage', '--wait follows a queued job; add --queue');
      if (opts.queue === true) {
        if (opts.dryRun === true) throw new VmsnapError('usage', '--dry-run runs here; drop --queue');
        const disks = parseDiskFlags(opts.disk);
        for (const [target, req] of Object.entries(disks)) {
          if (req.file !== undefined) throw new VmsnapError('usage', `--disk ${target}=...,file=: a queued job cannot choose paths; drop file= or drop --queue`);
        }
        await enqueueSnapshot(serviceCtx, cfg, {
          kind: 'snapshot',
          domain: domain.name,
          ...(opts.name !== undefined ? { name: opts.name } : {}),
          ...(opts.memory !== undefined ? { memory: parseMemoryFlag(opts.memory) } : {}),
          ...(opts.diskOnly ? { diskOnly: true } : {}),
          ...(opts.live ? { live: true } : {}),
          ...(opts.halt ? { halt: true } : {}),
          ...(opts.quiesce ? { quiesce: true } : {}),
          ...(Object.keys(disks).length > 0 ? { disks: Object.fromEntries(Object.entries(disks).map(([t, r]) => [t, r.mode])) } : {}),
          ...(opts.description !== undefined ? { description: opts.description } : {}),
        }, { wait: opts.wait === true, json: opts.json === true });
        return;
      }
      const report = await createSnapshot(createPipelineDeps(logger, opts.json ? undefined : progress), domain, {
        ...(opts.name !== undefined ? { name: opts.name } : {}),
        ...(opts.description !== undefined ? { description: opts.description } : {}),
        disks: parseDiskFlags(opts.disk),
        ...(opts.memory !== undefined ? { memory: parseMemoryFlag(opts.memory) } : {}),
        ...(opts.diskOnly ? { diskOnly: true } : {}),
        ...(opts.live ? { live: true } : {}),
        ...(opts.halt ? { halt: true } : {}),
        ...(opts.quiesce ? { quiesce: true, quiesceRequired: true } : {}),
        dryRun: opts.dryRun === true,
        origin: 'adhoc',
      });
      if (opts.json) json(report);
      else if (report.dryRun) out(formatPlan(report.name, report.plan));
      else if (report.manifest) {
        out(formatCreated(report.manifest));
        for (const n of report.manifest.notes ?? []) io.stderr.write(`vmsnap: warning: ${n}\n`);
      }
    });

  const listAction = async (domainName: string, opts: { tree?: boolean; all?: boolean; json?: boolean }) => {
    const cfg = await config();
    const domain = findDomain(cfg, domainName);
    const catalog = catalogFor(domain);
    const listing = await catalog.list(domain.name);
    const current = await catalog.getCurrent(domain.name);
    if (opts.json) {
      json({ domain: domain.name, current, snapshots: listing.snapshots, ...(opts.all ? { partial: listing.partial } : {}) });
    } else {
      out(formatSnapshotList(listing.snapshots, current, opts.all ? listing.partial : undefined, opts.tree === true));
    }
  };
  const addListOptions = (cmd: Command) =>
    cmd
      .argument('<domain>', 'domain name from the config')
      .option('--tree', 'show snapshots as a tree of parents and children')
      .option('--all', 'also show partial folders left by interrupted operations')
      .option('--json', 'print as JSON')
      .addHelpText('after', '\nOnly snapshots whose manifest is committed are listed. Works without Redis.')
      .action(listAction);
  addListOptions(snapshot.command('list').description('list the snapshots of DOMAIN, oldest first'));

  snapshot
    .command('revert')
    .description('bring DOMAIN back to snapshot NAME (later snapshots stay)')
    .argument('<domain>', 'domain name from the config')
    .argument('<name>', 'snapshot name')
    .option('--force', 'revert even where state that is in no snapshot is lost or mixed (see below)')
    .option('--running', 'leave the domain running afterwards, whatever the snapshot recorded')
    .option('--paused', 'leave the domain paused afterwards')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      `
The domain's current state is replaced by the snapshot's. A full-system
snapshot restores memory and disks: with snapshot-load when the memory is
inside the qcow2 disks; by restarting QEMU with -incoming from the memory
file otherwise (this needs the domain's launch command in the config).
Afterwards the domain is in the state the snapshot recorded (running or
paused) unless --running or --paused says otherwise.

--force is needed when the revert cannot restore everything: a running domain
reverted to a disk-only snapshot (its memory is lost and it restarts from the
disks), a full-system snapshot whose memory cannot be loaded (no launch
command), a snapshot file changed since it was taken, or disks that are not
in the snapshot.`,
    )
    .action(async (domainName: string, name: string, opts: { force?: boolean; running?: boolean; paused?: boolean; json?: boolean }) => {
      const cfg = await config();
      const report = await revertSnapshot(createPipelineDeps(logger, opts.json ? undefined : progress), findDomain(cfg, domainName), name, {
        force: opts.force === true,
        running: opts.running === true,
        paused: opts.paused === true,
      });
      if (opts.json) json(report);
      else {
        const what = report.memoryRestored ? 'memory and disks' : report.disks.map((d) => `${d.target} ${d.reverted ? 'reverted' : 'unchanged'}`).join(', ');
        out(`domain ${report.domain} reverted to ${report.name} (${what}); now ${report.state}`);
        for (const w of report.warnings) io.stderr.write(`vmsnap: warning: ${w}\n`);
      }
    });

  snapshot
    .command('delete')
    .description('delete snapshot NAME of DOMAIN, keeping every other snapshot and the active disk intact')
    .argument('<domain>', 'domain name from the config')
    .argument('<name>', 'snapshot name')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      `
Internal snapshots are removed from the qcow2 images (QEMU's snapshot-delete
job while the domain runs). External snapshots: while the domain runs, QEMU
commits the newer data down into the snapshot's image (block-commit), which
then takes the newer image's name, so the chain shrinks and nothing is lost;
while it is shut off, children are rebased (qemu-img rebase) before the
file goes. An interrupted delete is finished by
running the same command again.`,
    )
    .action(async (domainName: string, name: string, opts: { json?: boolean }) => {
      const cfg = await config();
      const report = await deleteSnapshot(createPipelineDeps(logger, opts.json ? undefined : progress), findDomain(cfg, domainName), name);
      if (opts.json) json(report);
      else out(`snapshot ${report.name} of ${report.domain} deleted`);
    });

  addListOptions(program.command('list').description('same as: snapshot list'));

  // ---- retention ----
  const retention = program.command('retention').description('retention planning').exitOverride();
  retention
    .command('simulate')
    .description('show which snapshots a retention policy keeps and prunes (no config, no Redis)')
    .option('--keep-last <n>', 'keep the N newest snapshots')
    .option('--keep-hourly <n>', 'keep the newest snapshot of each of the last N hours that have one')
    .option('--keep-daily <n>', 'keep the newest snapshot of each of the last N days that have one')
    .option('--keep-weekly <n>', 'likewise for ISO weeks')
    .option('--keep-monthly <n>', 'likewise for months')
    .option('--keep-yearly <n>', 'likewise for years')
    .option('--keep-within <duration>', 'keep all snapshots within this duration of the newest one, e.g. 1y6m, 14d, 36h')
    .option('--tz <zone>', 'IANA time zone for the hour/day/week/month/year buckets', 'UTC')
    .option('--now <rfc3339>', 'the current time (default: now)')
    .option('--input <file>', 'JSON array of RFC 3339 times; - for stdin', '-')
    .option('--json', 'print JSON even on a terminal')
    .option('--table', 'print a table even when piped')
    .addHelpText(
      'after',
      `
Counts are whole numbers, -1 for unlimited. Rules follow restic's "forget":
each rule keeps the newest snapshot of each of its buckets on its own, a
snapshot kept by one rule still counts for the others, and the newest
snapshot is never pruned.

Output (JSON, newest first, times echoed as given):
  {"keep":[{"time":"...","reasons":["daily","weekly"]}],"prune":[{"time":"..."}]}

Example:
  echo '["2026-11-20T10:00:00Z","2026-11-21T10:00:00Z","2026-11-21T11:00:00Z"]' |
    vmsnap retention simulate --keep-daily 7 --json`,
    )
    .action(async (opts: SimulateFlags) => {
      const rules: RetentionRules = {};
      const counts: [keyof RetentionRules, string, string | undefined][] = [
        ['keepLast', '--keep-last', opts.keepLast],
        ['keepHourly', '--keep-hourly', opts.keepHourly],
        ['keepDaily', '--keep-daily', opts.keepDaily],
        ['keepWeekly', '--keep-weekly', opts.keepWeekly],
        ['keepMonthly', '--keep-monthly', opts.keepMonthly],
        ['keepYearly', '--keep-yearly', opts.keepYearly],
      ];
      for (const [key, flag, value] of counts) {
        const n = parseCountFlag(flag, value);
        if (n !== undefined) (rules as Record<string, number>)[key] = n;
      }
      if (opts.keepWithin !== undefined) rules.keepWithin = opts.keepWithin;
      try {
        new Intl.DateTimeFormat('en-US', { timeZone: opts.tz });
      } catch {
        throw new VmsnapError('usage', `--tz ${opts.tz}: not an IANA time zone (e.g. UTC, Europe/Berlin)`);
      }
      const now = opts.now !== undefined ? parseRfc3339(opts.now, '--now') : new Date();
      let text: string;
      if (opts.input === '-') {
        if (io.stdin.isTTY === true) throw new VmsnapError('usage', 'no input: pipe a JSON array of times to stdin or pass --input FILE');
        text = await readStream(io.stdin);
      } else {
        text = await readFile(opts.input, 'utf8').catch((err: NodeJS.ErrnoException) => {
          throw new VmsnapError('bad-input', `--input ${opts.input}: cannot read (${err.code ?? err.message})`);
        });
      }
      const result = simulateRetention(parseTimesInput(text), { rules, now, timeZone: opts.tz });
      const table = opts.table === true || (opts.json !== true && io.stdout.isTTY === true);
      out(table ? formatRetentionTable(result) : JSON.stringify(result));
    });

  addServiceCommands(program, snapshotCreate, serviceCtx);

  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      if (err.code === 'commander.executeSubCommandAsync') return err.exitCode;
      return 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    io.stderr.write(`vmsnap: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
    if (!(err instanceof VmsnapError)) logger.error({ err }, 'unexpected error');
    return exitCodeOf(err);
  }
}

interface CreateFlags {
  name?: string;
  disk: string[];
  memory?: string;
  diskOnly?: boolean;
  live?: boolean;
  halt?: boolean;
  quiesce?: boolean;
  description?: string;
  dryRun?: boolean;
  json?: boolean;
  queue?: boolean;
  wait?: boolean;
}

interface SimulateFlags {
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  keepWithin?: string;
  tz: string;
  now?: string;
  input: string;
  json?: boolean;
  table?: boolean;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function readStream(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}
