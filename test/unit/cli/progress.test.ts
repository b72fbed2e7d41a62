import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createProgressPrinter, formatBar } from '../../../src/cli/progress.js';

class Tty extends Writable {
  text = '';
  isTTY: boolean;
  constructor(isTTY: boolean) {
    super();
    this.isTTY = isTTY;
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

describe('progress on a terminal', () => {
  it('draws a bar with percent and detail', () => {
    expect(formatBar({ step: 'memory', fraction: 0.5, detail: '128/256 MiB' }, 10)).toBe('memory [#####.....]  50% 128/256 MiB');
    expect(formatBar({ step: 'memory', fraction: 1.7 }, 4)).toBe('memory [####] 100%');
    expect(formatBar({ step: 'memory', fraction: -1 }, 4)).toBe('memory [....]   0%');
  });

  it('redraws the bar in place, then moves on to the next step on its own line', () => {
    const tty = new Tty(true);
    const print = createProgressPrinter(tty, 4);
    print({ step: 'prepare' });
    print({ step: 'prepare' });
    print({ step: 'memory', fraction: 0.25 });
    print({ step: 'memory', fraction: 0.5 });
    print({ step: 'resume' });
    expect(tty.text).toBe('  prepare\n\r  memory [#...]  25%\r  memory [##..]  50%\n  resume\n');
  });

  it('prints nothing when stderr is not a terminal (pipes and --json stay clean)', () => {
    const pipe = new Tty(false);
    createProgressPrinter(pipe)({ step: 'memory', fraction: 0.5 });
    expect(pipe.text).toBe('');
  });
});
