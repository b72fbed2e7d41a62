import { VmsnapError } from '../errors.js';

/** Names of domains, hosts, policies and snapshots: safe as a path segment and a qcow2 tag. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Default snapshot names look like 20261122T101500Z, with -01..-99 on a same-second collision. */
const DEFAULT_NAME_RE = /^\d{8}T\d{6}Z(?:-\d{2})?$/;

export function isValidName(name: string): boolean {
  // `..` is refused even though the pattern allows it, so no name can ever read as a parent folder.
  // All-digit names are refused because qemu-img matches snapshot IDs before names.
  return NAME_RE.test(name) && !name.includes('..') && !/^\d+$/.test(name);
}

/** Throws a bad-input error that names `field` and the rule when `name` is not a valid name. */
export function validateName(name: unknown, field: string): string {
  if (typeof name !== 'string') {
    throw new VmsnapError('bad-input', `${field}: expected a name (string), got ${typeof name}`);
  }
  if (!isValidName(name)) {
    const shown = JSON.stringify(name.length > 60 ? `${name.slice(0, 60)}…` : name);
    throw new VmsnapError(
      'bad-input',
      `${field}: ${shown} is not a valid name; use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without "..", not all digits`,
    );
  }
  return name;
}

/** The UTC creation-time name: sortable, a valid file name and qcow2 tag. */
export function formatSnapshotName(now: Date): string {
  if (Number.isNaN(now.getTime())) throw new VmsnapError('internal', 'formatSnapshotName: invalid date');
  const iso = now.toISOString(); // 2026-11-22T10:15:00.000Z
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
}

/**
 * The default name for a snapshot taken at `now` that is not in `taken`.
 * Suffixes are two digits so names keep sorting by time.
 */
export function chooseSnapshotName(now: Date, taken: ReadonlySet<string>): string {
  const base = formatSnapshotName(now);
  if (!taken.has(base)) return base;
  for (let i = 1; i <= 99; i++) {
    const candidate = `${base}-${String(i).padStart(2, '0')}`;
    if (!taken.has(candidate)) return candidate;
  }
  throw new VmsnapError('conflict', `more than 99 snapshots named ${base}: wait a second and try again`, {
    retryable: true,
  });
}

/** True for names vmsnap chose itself (as opposed to user-given ones). */
export function isDefaultSnapshotName(name: string): boolean {
  return DEFAULT_NAME_RE.test(name);
}
