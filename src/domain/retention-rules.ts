import { VmsnapError } from '../errors.js';

/**
 * Retention rules as users write them (config `retention:` and the
 * `retention simulate` flags). Counts are whole numbers; -1 means unlimited.
 * `keepWithin` is a calendar duration such as `1y6m`, `14d` or `36h`.
 */
export interface RetentionRules {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  keepWithin?: string;
}

export const COUNT_RULES = [
  'keepLast',
  'keepHourly',
  'keepDaily',
  'keepWeekly',
  'keepMonthly',
  'keepYearly',
] as const;
export type CountRule = (typeof COUNT_RULES)[number];

/** A parsed `keepWithin`: calendar parts, applied as y, then m, then d, then h. */
export interface WithinDuration {
  years: number;
  months: number;
  days: number;
  hours: number;
}

const WITHIN_RE = /^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$/;

/** Parse `1y2m3d4h` (any subset, in that order). Throws a bad-input error naming `field`. */
export function parseWithinDuration(spec: string, field = 'keepWithin'): WithinDuration {
  const m = WITHIN_RE.exec(spec);
  if (spec === '' || m === null) {
    throw new VmsnapError(
      'bad-input',
      `${field}: "${spec}" is not a duration; use a number with y (years), m (months), d (days) or h (hours) in that order, e.g. "1y6m" or "36h"`,
    );
  }
  const [, y, mo, d, h] = m;
  return {
    years: Number(y ?? 0),
    months: Number(mo ?? 0),
    days: Number(d ?? 0),
    hours: Number(h ?? 0),
  };
}

/** True when no rule would keep anything: such a policy is refused, never applied. */
export function isEmptyRetention(rules: RetentionRules): boolean {
  const anyCount = COUNT_RULES.some((k) => {
    const v = rules[k];
    return v !== undefined && v !== 0;
  });
  if (anyCount) return false;
  if (rules.keepWithin === undefined) return true;
  const w = parseWithinDuration(rules.keepWithin);
  return w.years + w.months + w.days + w.hours === 0;
}
