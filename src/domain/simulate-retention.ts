import { VmsnapError } from '../errors.js';
import { planRetention, type PlanRetentionOptions } from './plan-retention.js';

/** What `vmsnap retention simulate --json` prints: times echoed exactly as given, newest first. */
export interface SimulateOutput {
  keep: { time: string; reasons: string[] }[];
  prune: { time: string }[];
}

const RFC3339_RE =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

function isLeapYear(y: number): boolean {
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
}

/**
 * Strict RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`), because
 * `Date.parse` accepts local times and rolls `02-30` over into March, and a
 * retention plan built on a misread time deletes the wrong snapshot.
 * Fractions beyond milliseconds are truncated; leap seconds (`:60`) are
 * refused since a Date cannot hold them.
 */
export function parseRfc3339(s: string, field: string): Date {
  const shown = JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}…` : s);
  const fail = (why?: string): never => {
    throw new VmsnapError(
      'bad-input',
      `${field}: ${shown} is not an RFC3339 time${why === undefined ? '' : ` (${why})`}; use e.g. "2026-11-22T10:15:00Z" or "2026-11-22T11:15:00+01:00"`,
    );
  };
  const m = RFC3339_RE.exec(s);
  if (m === null) return fail();
  const [, ys, mos, ds, hs, mis, ss, frac, z, sign, ohs, oms] = m;
  const [year, month, day, hour, minute, second] = [ys, mos, ds, hs, mis, ss].map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  if (month < 1 || month > 12) fail(`month ${mos} is out of range`);
  const monthDays = [31, isLeapYear(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1] ?? 31;
  if (day < 1 || day > monthDays) fail(`day ${ds} is out of range`);
  if (hour > 23) fail(`hour ${hs} is out of range`);
  if (minute > 59) fail(`minute ${mis} is out of range`);
  if (second === 60) fail('leap seconds are not supported');
  if (second > 59) fail(`second ${ss} is out of range`);
  let offsetMinutes = 0;
  if (z === undefined) {
    const oh = Number(ohs);
    const om = Number(oms);
    if (oh > 23 || om > 59) fail(`offset ${sign}${ohs}:${oms} is out of range`);
    offsetMinutes = (sign === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const ms = frac === undefined ? 0 : Number(frac.slice(0, 3).padEnd(3, '0'));
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, ms);
  return new Date(d.getTime() - offsetMinutes * 60_000);
}

/** Read the simulate input file: a JSON array of RFC 3339 strings, each checked so errors name its index. */
export function parseTimesInput(json: string): string[] {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    throw new VmsnapError('bad-input', `input: not valid JSON (${why}); expected an array of RFC3339 time strings`, {
      cause,
    });
  }
  if (!Array.isArray(value)) {
    const got = value === null ? 'null' : typeof value;
    throw new VmsnapError('bad-input', `input: expected a JSON array of RFC3339 time strings, got ${got}`);
  }
  return value.map((v: unknown, i) => {
    if (typeof v !== 'string') {
      const got = v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
      throw new VmsnapError('bad-input', `input[${i}]: expected an RFC3339 time string, got ${got}`);
    }
    parseRfc3339(v, `input[${i}]`);
    return v;
  });
}

/**
 * Run the planner on bare times so a policy can be tried before it deletes
 * anything. Each time is its own candidate, so duplicates stay separate.
 */
export function simulateRetention(times: readonly string[], options: PlanRetentionOptions): SimulateOutput {
  const candidates = times.map((t, i) => ({ id: String(i), time: parseRfc3339(t, `input[${i}]`) }));
  const plan = planRetention(candidates, options);
  const original = (id: string): string => times[Number(id)] ?? id;
  return {
    keep: plan.keep.map((d) => ({ time: original(d.id), reasons: [...d.reasons] })),
    prune: plan.prune.map((d) => ({ time: original(d.id) })),
  };
}

/**
 * The terminal view: one row per snapshot, newest first, then "N kept, M
 * pruned". Kept and pruned rows are merged by time; at equal times kept rows
 * come first. No trailing newline.
 */
export function formatRetentionTable(out: SimulateOutput): string {
  const row = (time: string, field: string, action: string, reasons: string, order: number) => ({
    time,
    action,
    reasons,
    ms: parseRfc3339(time, field).getTime(),
    order,
  });
  const rows = [
    ...out.keep.map((k, i) => row(k.time, `keep[${i}].time`, 'keep', k.reasons.join(', '), 0)),
    ...out.prune.map((p, i) => row(p.time, `prune[${i}].time`, 'prune', '', 1)),
  ];
  // Array sort is stable, so each list keeps its own newest-first order within a tie.
  rows.sort((a, b) => b.ms - a.ms || a.order - b.order);
  const summary = `${out.keep.length} kept, ${out.prune.length} pruned`;
  if (rows.length === 0) return summary;
  const header = { time: 'TIME', action: 'ACTION', reasons: 'REASONS' };
  const timeWidth = Math.max(header.time.length, ...rows.map((r) => r.time.length));
  const actionWidth = Math.max(header.action.length, ...rows.map((r) => r.action.length));
  const line = (r: { time: string; action: string; reasons: string }): string =>
    `${r.time.padEnd(timeWidth)}  ${r.action.padEnd(actionWidth)}  ${r.reasons}`.trimEnd();
  return [line(header), ...rows.map(line), summary].join('\n');
}
