import { VmsnapError } from '../errors.js';
import {
  COUNT_RULES,
  isEmptyRetention,
  parseWithinDuration,
  type CountRule,
  type RetentionRules,
  type WithinDuration,
} from './retention-rules.js';

/** A snapshot as the planner sees it: `id` is opaque and only echoed back. */
export interface RetentionCandidate {
  id: string;
  time: Date;
}

/**
 * Why a snapshot is kept. `newest` is not a rule: it marks the safety net that
 * never prunes the newest snapshot that is not in the future.
 */
export type KeepReason = 'last' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly' | 'within' | 'newest';

export interface RetentionDecision {
  id: string;
  time: Date;
  /** In the fixed order of {@link KEEP_REASON_ORDER}; empty for pruned snapshots. */
  reasons: KeepReason[];
}

/** Both lists newest first (ties in input order). */
export interface RetentionPlan {
  keep: RetentionDecision[];
  prune: RetentionDecision[];
}

export interface PlanRetentionOptions {
  rules: RetentionRules;
  /** Only decides which snapshots are "in the future"; the planner never reads the clock. */
  now: Date;
  /** IANA zone the calendar buckets and `keepWithin` arithmetic are computed in. Default `UTC`. */
  timeZone?: string;
}

export const KEEP_REASON_ORDER: readonly KeepReason[] = [
  'last',
  'hourly',
  'daily',
  'weekly',
  'monthly',
  'yearly',
  'within',
  'newest',
];

const RULE_REASON: Record<CountRule, KeepReason> = {
  keepLast: 'last',
  keepHourly: 'hourly',
  keepDaily: 'daily',
  keepWeekly: 'weekly',
  keepMonthly: 'monthly',
  keepYearly: 'yearly',
};

/** Wall-clock fields of an instant in a zone, plus the zone's UTC offset at that instant. */
interface WallTime {
  year: number;
  month: number; // 1-12
  day: number;
  hour: number;
  minute: number;
  second: number;
  /** Local minus UTC, in ms. */
  offsetMs: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** One formatter per zone: building them is the slow part of Intl. */
function formatterFor(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (f === undefined) {
    try {
      f = new Intl.DateTimeFormat('en-US', {
        timeZone,
        hourCycle: 'h23',
        year: 'numeric',
        month: '2-digit',
        day: '2-digit',
        hour: '2-digit',
        minute: '2-digit',
        second: '2-digit',
      });
    } catch (cause) {
      throw new VmsnapError('bad-input', `timeZone: "${timeZone}" is not an IANA time zone; use e.g. "UTC" or "Europe/Berlin"`, {
        cause,
      });
    }
    formatters.set(timeZone, f);
  }
  return f;
}

/** UTC ms of a wall-clock date; works for years 0-99 too, which Date.UTC maps to 19xx. */
function utcMs(year: number, month: number, day: number, hour = 0, minute = 0, second = 0, ms = 0): number {
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, ms);
  return d.getTime();
}

function wallTime(ms: number, timeZone: string): WallTime {
  const whole = Math.floor(ms / 1000) * 1000;
  const f: Record<string, number> = {};
  for (const part of formatterFor(timeZone).formatToParts(new Date(whole))) {
    if (part.type !== 'literal') f[part.type] = Number(part.value);
  }
  const year = f.year ?? 0;
  const month = f.month ?? 1;
  const day = f.day ?? 1;
  const hour = f.hour ?? 0;
  const minute = f.minute ?? 0;
  const second = f.second ?? 0;
  return { year, month, day, hour, minute, second, offsetMs: utcMs(year, month, day, hour, minute, second) - whole };
}

/**
 * The instant a wall-clock time (given as UTC ms of its fields) names in
 * `timeZone`. Like Temporal's "compatible": a repeated time takes the earlier
 * instant, a skipped time is moved forward by the length of the gap.
 */
function instantOfWall(wallMs: number, timeZone: string): number {
  const DAY = 86_400_000;
  const before = wallTime(wallMs - DAY, timeZone).offsetMs;
  const after = wallTime(wallMs + DAY, timeZone).offsetMs;
  const valid = [wallMs - before, wallMs - after].filter((t) => wallTime(t, timeZone).offsetMs === wallMs - t);
  if (valid.length > 0) return Math.min(...valid);
  return wallMs - before; // in a gap: the pre-transition offset lands after the gap
}

function daysInMonth(year: number, month: number): number {
  return new Date(utcMs(year, month + 1, 1) - 86_400_000).getUTCDate();
}

/** ISO 8601 week-year and week: weeks start Monday, week 1 holds the year's first Thursday. */
function isoWeek(year: number, month: number, day: number): { weekYear: number; week: number } {
  const date = utcMs(year, month, day);
  const dow = (new Date(date).getUTCDay() + 6) % 7; // Monday = 0
  const thursday = new Date(date + (3 - dow) * 86_400_000);
  const weekYear = thursday.getUTCFullYear();
  const week = Math.floor((thursday.getTime() - utcMs(weekYear, 1, 1)) / (7 * 86_400_000)) + 1;
  return { weekYear, week };
}

const pad = (n: number, width = 2): string => String(Math.abs(n)).padStart(width, '0');
const signedYear = (y: number): string => (y < 0 ? `-${pad(y, 4)}` : pad(y, 4));

function offsetLabel(offsetMs: number): string {
  const minutes = Math.round(offsetMs / 60_000);
  return `${minutes < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}

/**
 * Bucket keys per count rule. The hourly key carries the UTC offset so the hour
 * repeated at a DST fall-back (01:30 EDT, then 01:30 EST) is two buckets, as it
 * is two real hours; days, weeks, months and years are plain calendar values.
 */
function bucketKeys(ms: number, timeZone: string): Record<Exclude<CountRule, 'keepLast'>, string> {
  const w = wallTime(ms, timeZone);
  const date = `${signedYear(w.year)}-${pad(w.month)}-${pad(w.day)}`;
  const { weekYear, week } = isoWeek(w.year, w.month, w.day);
  return {
    keepHourly: `${date}T${pad(w.hour)}${offsetLabel(w.offsetMs)}`,
    keepDaily: date,
    keepWeekly: `${signedYear(weekYear)}-W${pad(week)}`,
    keepMonthly: `${signedYear(w.year)}-${pad(w.month)}`,
    keepYearly: signedYear(w.year),
  };
}

/**
 * The `keepWithin` cut-off: years and months together on the local calendar
 * (the day clamped to the target month), then calendar days (so a DST change
 * does not move the time of day), then exact hours.
 */
function withinCutoff(reference: number, d: WithinDuration, timeZone: string): number {
  const w = wallTime(reference, timeZone);
  const monthIndex = w.year * 12 + (w.month - 1) - (d.years * 12 + d.months);
  const year = Math.floor(monthIndex / 12);
  const month = monthIndex - year * 12 + 1;
  const day = Math.min(w.day, daysInMonth(year, month));
  const subMs = reference - Math.floor(reference / 1000) * 1000;
  const wall = utcMs(year, month, day - d.days, w.hour, w.minute, w.second, subMs);
  return instantOfWall(wall, timeZone) - d.hours * 3_600_000;
}

function checkCount(rule: CountRule, value: number | undefined): number {
  if (value === undefined) return 0;
  if (!Number.isInteger(value) || value < -1) {
    throw new VmsnapError('bad-input', `${rule}: ${String(value)} is not a count; use a whole number, or -1 for unlimited`);
  }
  return value;
}

/**
 * Decide which snapshots a policy keeps, with restic `forget` semantics: every
 * count rule walks the snapshots newest first on its own, keeping the newest
 * of each bucket until its count is spent, and keeps the oldest snapshot too
 * while it has count left, so a young history is not cut short. Reasons
 * accumulate across rules. On top of restic, an empty policy is refused and
 * the newest snapshot that is not in the future is never pruned, so a typo in
 * a policy cannot delete everything.
 */
export function planRetention(candidates: readonly RetentionCandidate[], options: PlanRetentionOptions): RetentionPlan {
  const { rules, now } = options;
  const timeZone = options.timeZone ?? 'UTC';
  if (isEmptyRetention(rules)) {
    throw new VmsnapError(
      'bad-input',
      'retention: the policy keeps nothing; give at least one keep rule (keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly or keepWithin)',
    );
  }
  const counts = COUNT_RULES.map((rule) => [rule, checkCount(rule, rules[rule])] as const);
  const within = rules.keepWithin === undefined ? undefined : parseWithinDuration(rules.keepWithin);
  if (Number.isNaN(now.getTime())) throw new VmsnapError('bad-input', 'now: invalid date');
  formatterFor(timeZone); // refuse a bad zone even when there is nothing to plan
  if (candidates.length === 0) return { keep: [], prune: [] };

  candidates.forEach((c, i) => {
    if (!(c.time instanceof Date) || Number.isNaN(c.time.getTime())) {
      throw new VmsnapError('bad-input', `candidates[${i}] (${c.id}): invalid time`);
    }
  });
  const sorted = candidates
    .map((c, index) => ({ c, index, ms: c.time.getTime() }))
    .sort((a, b) => b.ms - a.ms || a.index - b.index);
  const reasons = sorted.map(() => new Set<KeepReason>());
  const lastIndex = sorted.length - 1;

  for (const [rule, count] of counts) {
    if (count === 0) continue;
    let left = count; // -1 stays -1: unlimited
    let lastBucket: string | undefined;
    for (let i = 0; i <= lastIndex && left !== 0; i++) {
      const item = sorted[i]!;
      const bucket = rule === 'keepLast' ? `#${i}` : bucketKeys(item.ms, timeZone)[rule];
      // restic also keeps the oldest snapshot while the rule has count left.
      if (bucket !== lastBucket || i === lastIndex) {
        reasons[i]!.add(RULE_REASON[rule]);
        lastBucket = bucket;
        if (left > 0) left--;
      }
    }
  }

  const nowMs = now.getTime();
  const newest = sorted.findIndex((s) => s.ms <= nowMs);
  if (within !== undefined && within.years + within.months + within.days + within.hours > 0 && newest !== -1) {
    const cutoff = withinCutoff(sorted[newest]!.ms, within, timeZone);
    sorted.forEach((s, i) => {
      if (s.ms > cutoff) reasons[i]!.add('within');
    });
  }
  if (newest !== -1 && reasons[newest]!.size === 0) reasons[newest]!.add('newest');

  const plan: RetentionPlan = { keep: [], prune: [] };
  sorted.forEach((s, i) => {
    const set = reasons[i]!;
    const decision = { id: s.c.id, time: s.c.time, reasons: KEEP_REASON_ORDER.filter((r) => set.has(r)) };
    (set.size > 0 ? plan.keep : plan.prune).push(decision);
  });
  return plan;
}
