import { VmsnapError } from '../errors.js';
import type { DiskMode, MemoryMode } from '../domain/model.js';
import type { DiskRequest } from '../domain/resolve-spec.js';

function usage(message: string): VmsnapError {
  return new VmsnapError('usage', message);
}

const DISK_MODES: readonly DiskMode[] = ['no', 'internal', 'external'];
const TARGET_RE = /^[a-z][a-z0-9]{0,15}$/;

/** `--disk vda=external,file=/srv/x.qcow2` (repeatable) into a map by target. */
export function parseDiskFlags(values: readonly string[]): Record<string, DiskRequest> {
  const out: Record<string, DiskRequest> = {};
  for (const value of values) {
    const [head, ...opts] = value.split(',');
    const eq = head?.indexOf('=') ?? -1;
    if (head === undefined || eq <= 0) {
      throw usage(`--disk ${value}: expected TARGET=MODE[,file=PATH], e.g. --disk vda=internal or --disk vdb=external,file=/srv/vdb.snap`);
    }
    const target = head.slice(0, eq);
    const mode = head.slice(eq + 1);
    if (!TARGET_RE.test(target)) throw usage(`--disk ${value}: "${target}" is not a disk target such as vda, sda or xvda`);
    if (!(DISK_MODES as readonly string[]).includes(mode)) {
      throw usage(`--disk ${value}: mode "${mode}" is not one of ${DISK_MODES.join(', ')}`);
    }
    if (out[target] !== undefined) throw usage(`--disk ${target} is given twice`);
    const req: DiskRequest = { mode: mode as DiskMode };
    for (const opt of opts) {
      if (opt.startsWith('file=') && opt.length > 5) {
        const file = opt.slice(5);
        if (!file.startsWith('/') || file.includes('\0') || file.split('/').includes('..')) {
          throw usage(`--disk ${value}: file= needs an absolute path without ".." segments`);
        }
        req.file = file;
      } else {
        throw usage(`--disk ${value}: unknown option "${opt}"; the only option is file=PATH`);
      }
    }
    out[target] = req;
  }
  return out;
}

export function parseMemoryFlag(value: string | undefined): MemoryMode | undefined {
  if (value === undefined) return undefined;
  if (value === 'no' || value === 'internal' || value === 'external') return value;
  throw usage(`--memory ${value}: expected no, internal or external`);
}

/** A count flag: a whole number >= -1 (-1 = unlimited). */
export function parseCountFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value) || Number(value) < -1 || !Number.isSafeInteger(Number(value))) {
    throw usage(`${flag} ${value}: expected a whole number, or -1 for unlimited`);
  }
  return Number(value);
}
