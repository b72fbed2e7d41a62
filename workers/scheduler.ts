/**
 * Process entrypoint for the scheduler: reconcile the config's policies into
 * BullMQ job schedulers, then, with --every SECONDS, again whenever the
 * config file changed (the schedulers themselves fire inside Redis).
 *   node dist/workers/scheduler.js [-c FILE] [--every 60]
 */
import { stat } from 'node:fs/promises';
import { runCli } from '../src/cli/run-cli.js';

const args = process.argv.slice(2);
const everyAt = args.indexOf('--every');
const every = everyAt >= 0 ? Number.parseInt(args[everyAt + 1] ?? '', 10) : undefined;
const rest = everyAt >= 0 ? [...args.slice(0, everyAt), ...args.slice(everyAt + 2)] : args;
const io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin };
if (every !== undefined && (!Number.isInteger(every) || every < 1)) {
  process.stderr.write('vmsnap scheduler: --every takes a number of seconds >= 1\n');
  process.exit(2);
}
const configAt = Math.max(rest.indexOf('-c'), rest.indexOf('--config'));
const configFile = configAt >= 0 ? rest[configAt + 1] : (process.env['VMSNAP_CONFIG'] ?? 'config/vmsnap.yaml');

let lastMtime = -1;
let stopping = false;
process.once('SIGTERM', () => (stopping = true));
process.once('SIGINT', () => (stopping = true));
do {
  const mtime = await stat(configFile ?? '').then((s) => s.mtimeMs).catch(() => -1);
  if (mtime !== lastMtime) {
    const code = await runCli([...rest, 'scheduler'], io);
    if (code === 0) lastMtime = mtime;
    else if (every === undefined) process.exit(code);
  }
  if (every === undefined) break;
  for (let waited = 0; waited < every * 10 && !stopping; waited++) await new Promise((r) => setTimeout(r, 100));
} while (!stopping);
