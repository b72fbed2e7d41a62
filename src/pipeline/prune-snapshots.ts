import type { ResolvedDomain, ResolvedPolicy } from '../config/load-config.js';
import { acquireLocalLock } from '../catalog/domain-lock.js';
import { planRetention } from '../domain/plan-retention.js';
import { catalogFor, type PipelineDeps } from './context.js';
import { deleteLocked } from './delete-snapshot.js';

export interface PruneReport {
  domain: string;
  policy: string;
  kept: string[];
  pruned: string[];
}

/**
 * Apply a policy's retention to the snapshots that policy made of one domain.
 * Ad-hoc snapshots and other policies' snapshots are never candidates.
 * Deletes oldest first, each through the driver and backends, its manifest last.
 */
export async function pruneSnapshots(deps: PipelineDeps, domain: ResolvedDomain, policy: ResolvedPolicy): Promise<PruneReport> {
  const catalog = catalogFor(domain);
  const release = await acquireLocalLock(await catalog.ensureDomainDir(domain.name), `prune ${policy.name}`);
  try {
    const mine = (await catalog.list(domain.name)).snapshots.filter((s) => s.origin === 'policy' && s.policy === policy.name);
    const plan = planRetention(
      mine.map((s) => ({ id: s.name, time: new Date(s.createdAt) })),
      { rules: policy.retention, now: deps.now(), timeZone: policy.timezone },
    );
    const pruned: string[] = [];
    for (const victim of [...plan.prune].sort((a, b) => a.time.getTime() - b.time.getTime())) {
      deps.onProgress?.({ step: `prune:${victim.id}` });
      await deleteLocked(deps, catalog, domain, victim.id);
      pruned.push(victim.id);
      deps.logger.info({ domain: domain.name, policy: policy.name, snapshot: victim.id }, 'pruned');
    }
    return { domain: domain.name, policy: policy.name, kept: plan.keep.map((k) => k.id), pruned };
  } finally {
    await release();
  }
}
