import type { ManifestDisk, PartialSnapshot, SnapshotManifest } from '../domain/model.js';
import type { ResolvedSnapshotPlan } from '../domain/resolve-spec.js';
import { formatTable } from './format-table.js';

function shortTime(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function diskSummary(disks: readonly ManifestDisk[]): string {
  return disks.map((d) => `${d.target}:${d.mode}`).join(' ');
}

function origin(m: SnapshotManifest): string {
  return m.origin === 'policy' ? `policy:${m.policy ?? '?'}` : 'adhoc';
}

export function formatSnapshotList(
  snapshots: readonly SnapshotManifest[],
  current: string | null,
  partial: readonly PartialSnapshot[] | undefined,
  tree: boolean,
): string {
  const header = ['NAME', 'CREATED (UTC)', 'KIND', 'STATE', 'CONSISTENCY', 'DISKS', 'ORIGIN'];
  const rows: string[][] = [header];
  const row = (m: SnapshotManifest, prefix: string): string[] => [
    `${prefix}${m.name}${m.name === current ? ' *' : ''}`,
    shortTime(m.createdAt),
    m.kind,
    m.state,
    m.consistency,
    diskSummary(m.disks),
    origin(m),
  ];
  if (tree) {
    const byParent = new Map<string | null, SnapshotManifest[]>();
    const names = new Set(snapshots.map((s) => s.name));
    for (const s of snapshots) {
      const parent = s.parent !== null && names.has(s.parent) ? s.parent : null;
      byParent.set(parent, [...(byParent.get(parent) ?? []), s]);
    }
    const walk = (parent: string | null, indent: string, depth: number): void => {
      const kids = byParent.get(parent) ?? [];
      kids.forEach((k, i) => {
        const last = i === kids.length - 1;
        const prefix = depth === 0 ? '' : `${indent}${last ? '└─ ' : '├─ '}`;
        rows.push(row(k, prefix));
        walk(k.name, depth === 0 ? '' : `${indent}${last ? '   ' : '│  '}`, depth + 1);
      });
    };
    walk(null, '', 0);
  } else {
    for (const s of snapshots) rows.push(row(s, ''));
  }
  const lines = [snapshots.length === 0 ? 'no snapshots' : formatTable(rows)];
  if (current !== null && snapshots.length > 0) lines.push(`* current: the domain descends from ${current}`);
  if (partial !== undefined && partial.length > 0) {
    lines.push('', 'Partial (not snapshots; left by an interrupted operation):');
    lines.push(formatTable([['FOLDER', 'REASON', 'FILES'], ...partial.map((p) => [p.name, p.reason, p.files.join(' ')])]));
  }
  return lines.join('\n');
}

export function formatPlan(name: string, plan: ResolvedSnapshotPlan): string {
  const lines = [
    `snapshot ${name} (dry run: nothing is changed)`,
    `  kind:    ${plan.kind}`,
    `  state:   ${plan.state}`,
    `  memory:  ${plan.memory}${plan.live ? ' (live)' : ''}`,
    `  pause:   ${plan.pause ? 'yes' : 'no'}`,
    '  disks:',
    ...plan.disks.map((d) => `    ${d.target}  ${d.mode.padEnd(8)}  ${d.format}  ${d.backend}  ${d.path}${d.file ? `  file=${d.file}` : ''}`),
  ];
  if (plan.notes.length > 0) lines.push('  notes:', ...plan.notes.map((n) => `    - ${n}`));
  return lines.join('\n');
}

export function formatCreated(m: SnapshotManifest): string {
  const disks = m.disks
    .map((d) => `${d.target} ${d.mode}${d.tag ? ` (tag ${d.tag})` : ''}${d.file ? ` (${d.file})` : ''}`)
    .join(', ');
  const memory = m.memory.mode === 'external' ? `; memory ${m.memory.file} (${Math.round(m.memory.bytes / 1048576)} MiB)` : m.memory.mode === 'internal' ? `; memory inside ${m.memory.disk}` : '';
  const timing = m.downtimeMs !== null ? `; method ${m.method}, guest paused ${m.downtimeMs} ms` : m.method !== 'offline' ? `; method ${m.method}` : '';
  return `snapshot ${m.name} of ${m.domain} created: ${m.kind}, ${m.consistency}; ${disks}${memory}${timing}`;
}
