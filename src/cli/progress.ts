import type { ProgressEvent } from '../pipeline/context.js';

/**
 * Progress on a terminal: one line per step, and a bar that redraws in place
 * for steps that report a fraction (memory saves). Nothing when not a TTY,
 * so pipes and --json output stay clean.
 */
export function createProgressPrinter(stream: NodeJS.WritableStream & { isTTY?: boolean }, width = 30): (e: ProgressEvent) => void {
  let barStep: string | undefined;
  let lastStep: string | undefined;
  return (e: ProgressEvent) => {
    if (stream.isTTY !== true) return;
    if (e.fraction === undefined) {
      if (barStep !== undefined) stream.write('\n');
      barStep = undefined;
      if (e.step !== lastStep) stream.write(`  ${e.step}${e.detail !== undefined ? `: ${e.detail}` : ''}\n`);
      lastStep = e.step;
      return;
    }
    barStep = e.step;
    lastStep = e.step;
    stream.write(`\r  ${formatBar(e, width)}`);
    if (e.fraction >= 1) {
      stream.write('\n');
      barStep = undefined;
    }
  };
}

/** "memory [##########..........]  50% 128/256 MiB" */
export function formatBar(e: ProgressEvent, width = 30): string {
  const f = Math.max(0, Math.min(1, e.fraction ?? 0));
  const filled = Math.round(f * width);
  const pct = String(Math.floor(f * 100)).padStart(3);
  return `${e.step} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}%${e.detail !== undefined ? ` ${e.detail}` : ''}`;
}
