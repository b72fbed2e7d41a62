import type { SnapshotManifest } from '../domain/model.js';

/** Who a snapshot is for, journaled at the start so a recovered snapshot is recorded as what it was asked to be. */
export interface SnapshotMeta {
  origin: 'adhoc' | 'policy';
  policy: string | null;
  slot?: string;
  jobId?: string;
  description?: string;
}

type Content = Pick<SnapshotManifest, 'kind' | 'state' | 'consistency' | 'method' | 'memory' | 'disks' | 'durationsMs' | 'downtimeMs'> & {
  notes?: string[];
  quiesced?: boolean;
};

/** One manifest shape for every path that commits one: offline, online and recovery. */
export function buildManifest(
  identity: { name: string; domain: string; createdAt: string; finishedAt: string; parent: string | null },
  meta: SnapshotMeta,
  content: Content,
): SnapshotManifest {
  return {
    version: 1,
    name: identity.name,
    domain: identity.domain,
    createdAt: identity.createdAt,
    finishedAt: identity.finishedAt,
    origin: meta.origin,
    policy: meta.origin === 'policy' ? meta.policy : null,
    kind: content.kind,
    state: content.state,
    consistency: content.consistency,
    method: content.method,
    memory: content.memory,
    disks: content.disks,
    parent: identity.parent,
    durationsMs: content.durationsMs,
    downtimeMs: content.downtimeMs,
    ...(meta.description !== undefined ? { description: meta.description } : {}),
    ...(content.notes !== undefined && content.notes.length > 0 ? { notes: content.notes } : {}),
    ...(meta.slot !== undefined ? { slot: meta.slot } : {}),
    ...(meta.jobId !== undefined ? { jobId: meta.jobId } : {}),
    ...(content.quiesced !== undefined ? { quiesced: content.quiesced } : {}),
  };
}
