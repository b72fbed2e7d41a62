/**
 * Process entrypoint for a worker: `node dist/workers/worker.js --host H`.
 * The same as `vmsnap worker`; kept as its own file so a service manager
 * (systemd, docker-compose) names the process by what it does.
 */
import { runCli } from '../src/cli/run-cli.js';

process.exitCode = await runCli(['worker', ...process.argv.slice(2)], { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin });
