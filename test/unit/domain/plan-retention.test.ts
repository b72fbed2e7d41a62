import { describe, expect, it } from 'vitest';
import { planRetention, type RetentionCandidate, type RetentionPlan } from '../../../src/domain/plan-retention.js';
import type { RetentionRules } from '../../../src/domain/retention-rules.js';
import { VmsnapError } from '../../../src/errors.js';

// Expected values below are worked out by hand from the rules; the comments
// show the working (weekday, ISO week, local time) so a reader can check them.

const FAR_FUTURE = '2100-01-01T00:00:00Z';

interface RunOptions {
  now?: string;
  timeZone?: string;
}

/** Candidates whose ids are their ISO times, unless an id is given as `id@time`. */
function candidates(specs: readonly string[]): RetentionCandidate[] {
  return specs.map((s) => {
    const at = s.indexOf('@');
    return at === -1 ? { id: s, time: new Date(s) } : { id: s.slice(0, at), time: new Date(s.slice(at + 1)) };
  });
}

/** Plan, shown compactly: kept as "id reason,reason", pruned as "id". */
function run(specs: readonly string[], rules: RetentionRules, opts: RunOptions = {}): { keep: string[]; prune: string[] } {
  const plan: RetentionPlan = planRetention(candidates(specs), {
    rules,
    now: new Date(opts.now ?? FAR_FUTURE),
    ...(opts.timeZone === undefined ? {} : { timeZone: opts.timeZone }),
  });
  for (const p of plan.prune) expect(p.reasons).toEqual([]);
  return {
    keep: plan.keep.map((d) => `${d.id} ${d.reasons.join(',')}`),
    prune: plan.prune.map((d) => d.id),
  };
}

// A series, newest first, in UTC:
//   s1  Tue 2026-03-10 12:00  W11
//   s2  Tue 2026-03-10 08:00  W11
//   s3  Mon 2026-03-09 23:00  W11
//   s4  Mon 2026-03-09 22:30  W11
//   s5  Mon 2026-03-09 22:10  W11 (same hour as s4)
//   s6  Mon 2026-03-02 10:00  W10
//   s7  Sun 2026-03-01 10:00  W09
//   s8  Sun 2026-02-15 10:00  W07
//   s9  Wed 2025-12-31 10:00  2026-W01 (ISO week-year 2026, calendar year 2025)
//   s10 Sun 2025-06-01 10:00  2025-W22
const SERIES = [
  's1@2026-03-10T12:00:00Z',
  's2@2026-03-10T08:00:00Z',
  's3@2026-03-09T23:00:00Z',
  's4@2026-03-09T22:30:00Z',
  's5@2026-03-09T22:10:00Z',
  's6@2026-03-02T10:00:00Z',
  's7@2026-03-01T10:00:00Z',
  's8@2026-02-15T10:00:00Z',
  's9@2025-12-31T10:00:00Z',
  's10@2025-06-01T10:00:00Z',
];
const ALL = ['s1', 's2', 's3', 's4', 's5', 's6', 's7', 's8', 's9', 's10'];
const kept = (reason: string, ids: string[]) => ids.map((id) => `${id} ${reason}`);
const rest = (ids: string[]) => ALL.filter((id) => !ids.includes(id));

describe('planRetention: each count rule on its own', () => {
  it.each<[string, RetentionRules, string, string[]]>([
    ['keepLast 3', { keepLast: 3 }, 'last', ['s1', 's2', 's3']],
    ['keepLast 10 (exactly all)', { keepLast: 10 }, 'last', ALL],
    ['keepLast 20 (more than there are)', { keepLast: 20 }, 'last', ALL],
    ['keepLast -1', { keepLast: -1 }, 'last', ALL],
    // s5 shares s4's hour.
    ['keepHourly 4', { keepHourly: 4 }, 'hourly', ['s1', 's2', 's3', 's4']],
    ['keepHourly -1', { keepHourly: -1 }, 'hourly', ['s1', 's2', 's3', 's4', 's6', 's7', 's8', 's9', 's10']],
    // Mar 10, Mar 9, Mar 2.
    ['keepDaily 3', { keepDaily: 3 }, 'daily', ['s1', 's3', 's6']],
    ['keepDaily -1', { keepDaily: -1 }, 'daily', ['s1', 's3', 's6', 's7', 's8', 's9', 's10']],
    // W11, W10, W09.
    ['keepWeekly 3', { keepWeekly: 3 }, 'weekly', ['s1', 's6', 's7']],
    // W11, W10, W09, W07, 2026-W01: budget spent on s9, so s10 goes.
    ['keepWeekly 5', { keepWeekly: 5 }, 'weekly', ['s1', 's6', 's7', 's8', 's9']],
    ['keepMonthly 2', { keepMonthly: 2 }, 'monthly', ['s1', 's8']],
    // 2026-03, 2026-02, 2025-12: spent before s10 (2025-06).
    ['keepMonthly 3', { keepMonthly: 3 }, 'monthly', ['s1', 's8', 's9']],
    // 2026-03, 2026-02, 2025-12, 2025-06.
    ['keepMonthly 4', { keepMonthly: 4 }, 'monthly', ['s1', 's8', 's9', 's10']],
    ['keepYearly 1', { keepYearly: 1 }, 'yearly', ['s1']],
    // 2026, 2025: spent on s9, and s10 is in 2025 anyway.
    ['keepYearly 2', { keepYearly: 2 }, 'yearly', ['s1', 's9']],
    // 2026, 2025, one left at the oldest: s10 is kept although it shares 2025 with s9.
    ['keepYearly 3 (oldest kept with budget left)', { keepYearly: 3 }, 'yearly', ['s1', 's9', 's10']],
    ['keepYearly -1', { keepYearly: -1 }, 'yearly', ['s1', 's9', 's10']],
  ])('%s', (_name, rules, reason, ids) => {
    expect(run(SERIES, rules)).toEqual({ keep: kept(reason, ids), prune: rest(ids) });
  });
});

describe('planRetention: combined rules are independent and reasons accumulate', () => {
  it('last 2, daily 3, weekly 2, monthly 2, yearly 2', () => {
    // last: s1 s2 | daily: s1 s3 s6 | weekly: s1 s6 | monthly: s1 s8 | yearly: s1 s9
    expect(run(SERIES, { keepYearly: 2, keepMonthly: 2, keepWeekly: 2, keepDaily: 3, keepLast: 2 })).toEqual({
      keep: ['s1 last,daily,weekly,monthly,yearly', 's2 last', 's3 daily', 's6 daily,weekly', 's8 monthly', 's9 yearly'],
      prune: ['s4', 's5', 's7', 's10'],
    });
  });

  it('adding keepWithin 1d keeps everything after 2026-03-09T12:00Z too', () => {
    expect(
      run(SERIES, { keepLast: 2, keepDaily: 3, keepWeekly: 2, keepMonthly: 2, keepYearly: 2, keepWithin: '1d' }),
    ).toEqual({
      keep: [
        's1 last,daily,weekly,monthly,yearly,within',
        's2 last,within',
        's3 daily,within',
        's4 within',
        's5 within',
        's6 daily,weekly',
        's8 monthly',
        's9 yearly',
      ],
      prune: ['s7', 's10'],
    });
  });

  it('keepLast and keepDaily both count s1', () => {
    // last keeps s1; daily still counts Mar 10 (s1) and Mar 9 (s3), so s6 is not reached.
    expect(run(SERIES, { keepLast: 1, keepDaily: 2 })).toEqual({
      keep: ['s1 last,daily', 's3 daily'],
      prune: rest(['s1', 's3']),
    });
  });

  it('several unlimited rules', () => {
    expect(run(SERIES, { keepDaily: -1, keepYearly: -1 })).toEqual({
      keep: ['s1 daily,yearly', 's3 daily', 's6 daily', 's7 daily', 's8 daily', 's9 daily,yearly', 's10 daily,yearly'],
      prune: ['s2', 's4', 's5'],
    });
  });
});

describe('planRetention: the oldest snapshot is kept while a rule has count left', () => {
  const days = ['a@2026-01-02T10:00:00Z', 'b@2026-01-01T20:00:00Z', 'c@2026-01-01T08:00:00Z'];
  it.each<[string, RetentionRules, string[], string[]]>([
    // a (Jan 2), b (Jan 1), count left: c shares Jan 1 but is the oldest.
    ['daily 5 keeps the oldest in a used bucket', { keepDaily: 5 }, ['a daily', 'b daily', 'c daily'], []],
    ['daily 2 is spent before the oldest', { keepDaily: 2 }, ['a daily', 'b daily'], ['c']],
    ['daily -1 keeps the oldest', { keepDaily: -1 }, ['a daily', 'b daily', 'c daily'], []],
    ['weekly 1 is spent at once', { keepWeekly: 1 }, ['a weekly'], ['b', 'c']],
    // All three share a week: a, then c as the oldest.
    ['weekly 2 keeps newest and oldest', { keepWeekly: 2 }, ['a weekly', 'c weekly'], ['b']],
    ['monthly 3 keeps newest and oldest', { keepMonthly: 3 }, ['a monthly', 'c monthly'], ['b']],
  ])('%s', (_name, rules, keep, prune) => {
    expect(run(days, rules)).toEqual({ keep, prune });
  });
});

describe('planRetention: ISO weeks and year boundaries', () => {
  // 2026 starts on a Thursday, so it has 53 ISO weeks:
  //   Sun 2027-01-03 and Fri 2027-01-01 and Thu 2026-12-31 and Mon 2026-12-28 are 2026-W53,
  //   Mon 2027-01-04 is 2027-W01, Sun 2026-12-27 is 2026-W52.
  const turn2027 = [
    '2027-01-04T00:00:00Z',
    '2027-01-03T23:00:00Z',
    '2027-01-01T12:00:00Z',
    '2026-12-31T12:00:00Z',
    '2026-12-28T00:00:00Z',
    '2026-12-27T23:59:00Z',
  ];
  // 2020 is a leap year starting on Wednesday: 53 ISO weeks.
  //   Mon 2021-01-04 is 2021-W01; Sun 2021-01-03, Fri 2021-01-01, Mon 2020-12-28 are 2020-W53;
  //   Sun 2020-12-27 is 2020-W52; Sun 2020-12-20 is 2020-W51.
  const turn2021 = [
    '2021-01-04T08:00:00Z',
    '2021-01-03T08:00:00Z',
    '2021-01-01T08:00:00Z',
    '2020-12-28T08:00:00Z',
    '2020-12-27T08:00:00Z',
    '2020-12-20T08:00:00Z',
  ];
  // Mon 2025-12-29 is already 2026-W01; Sun 2025-12-28 is 2025-W52.
  const turn2026 = ['2026-01-02T10:00:00Z', '2025-12-29T10:00:00Z', '2025-12-28T10:00:00Z', '2025-12-27T10:00:00Z'];

  it.each<[string, string[], RetentionRules, string[], string[]]>([
    ['2027 weekly 2', turn2027, { keepWeekly: 2 }, ['2027-01-04T00:00:00Z', '2027-01-03T23:00:00Z'], ['2027-01-01T12:00:00Z', '2026-12-31T12:00:00Z', '2026-12-28T00:00:00Z', '2026-12-27T23:59:00Z']],
    ['2027 weekly 3', turn2027, { keepWeekly: 3 }, ['2027-01-04T00:00:00Z', '2027-01-03T23:00:00Z', '2026-12-27T23:59:00Z'], ['2027-01-01T12:00:00Z', '2026-12-31T12:00:00Z', '2026-12-28T00:00:00Z']],
    // Calendar years, not ISO week-years: Jan 1 is 2027.
    ['2027 yearly 2', turn2027, { keepYearly: 2 }, ['2027-01-04T00:00:00Z', '2026-12-31T12:00:00Z'], ['2027-01-03T23:00:00Z', '2027-01-01T12:00:00Z', '2026-12-28T00:00:00Z', '2026-12-27T23:59:00Z']],
    ['2027 monthly 2', turn2027, { keepMonthly: 2 }, ['2027-01-04T00:00:00Z', '2026-12-31T12:00:00Z'], ['2027-01-03T23:00:00Z', '2027-01-01T12:00:00Z', '2026-12-28T00:00:00Z', '2026-12-27T23:59:00Z']],
    ['2027 daily 3', turn2027, { keepDaily: 3 }, ['2027-01-04T00:00:00Z', '2027-01-03T23:00:00Z', '2027-01-01T12:00:00Z'], ['2026-12-31T12:00:00Z', '2026-12-28T00:00:00Z', '2026-12-27T23:59:00Z']],
    ['2020-W53 weekly 2', turn2021, { keepWeekly: 2 }, ['2021-01-04T08:00:00Z', '2021-01-03T08:00:00Z'], ['2021-01-01T08:00:00Z', '2020-12-28T08:00:00Z', '2020-12-27T08:00:00Z', '2020-12-20T08:00:00Z']],
    ['2020-W53 weekly 3', turn2021, { keepWeekly: 3 }, ['2021-01-04T08:00:00Z', '2021-01-03T08:00:00Z', '2020-12-27T08:00:00Z'], ['2021-01-01T08:00:00Z', '2020-12-28T08:00:00Z', '2020-12-20T08:00:00Z']],
    ['2020-W53 weekly 4', turn2021, { keepWeekly: 4 }, ['2021-01-04T08:00:00Z', '2021-01-03T08:00:00Z', '2020-12-27T08:00:00Z', '2020-12-20T08:00:00Z'], ['2021-01-01T08:00:00Z', '2020-12-28T08:00:00Z']],
    ['2021 yearly 2', turn2021, { keepYearly: 2 }, ['2021-01-04T08:00:00Z', '2020-12-28T08:00:00Z'], ['2021-01-03T08:00:00Z', '2021-01-01T08:00:00Z', '2020-12-27T08:00:00Z', '2020-12-20T08:00:00Z']],
    ['2026-W01 starts in December', turn2026, { keepWeekly: 2 }, ['2026-01-02T10:00:00Z', '2025-12-28T10:00:00Z'], ['2025-12-29T10:00:00Z', '2025-12-27T10:00:00Z']],
    ['2026 yearly 2', turn2026, { keepYearly: 2 }, ['2026-01-02T10:00:00Z', '2025-12-29T10:00:00Z'], ['2025-12-28T10:00:00Z', '2025-12-27T10:00:00Z']],
  ])('%s', (_name, times, rules, keepIds, prune) => {
    const reason = Object.keys(rules)[0]!.slice(4).toLowerCase();
    expect(run(times, rules)).toEqual({ keep: keepIds.map((id) => `${id} ${reason}`), prune });
  });
});

describe('planRetention: buckets in a time zone', () => {
  it.each<[string, string[], RetentionRules, string | undefined, string[], string[]]>([
    // 03:00Z on Mar 10 is 23:00 EDT on Mar 9 (US DST began Mar 8).
    ['New York daily, evening UTC-4', ['2026-03-10T05:00:00Z', '2026-03-10T03:00:00Z', '2026-03-09T12:00:00Z'], { keepDaily: 2 }, 'America/New_York', ['2026-03-10T05:00:00Z', '2026-03-10T03:00:00Z'], ['2026-03-09T12:00:00Z']],
    ['same times in UTC', ['2026-03-10T05:00:00Z', '2026-03-10T03:00:00Z', '2026-03-09T12:00:00Z'], { keepDaily: 2 }, undefined, ['2026-03-10T05:00:00Z', '2026-03-09T12:00:00Z'], ['2026-03-10T03:00:00Z']],
    // Nov 1 2026 in New York lasts 25 hours: 04:00Z Nov 1 (00:00 EDT) to 05:00Z Nov 2 (00:00 EST).
    // 04:59Z Nov 2 = 23:59 EST Nov 1; 04:00Z Nov 1 = 00:00 EDT Nov 1; 03:59Z Nov 1 = 23:59 EDT Oct 31.
    ['New York daily across fall-back', ['2026-11-02T04:59:00Z', '2026-11-01T04:00:00Z', '2026-11-01T03:59:00Z'], { keepDaily: 2 }, 'America/New_York', ['2026-11-02T04:59:00Z', '2026-11-01T03:59:00Z'], ['2026-11-01T04:00:00Z']],
    ['same times in UTC', ['2026-11-02T04:59:00Z', '2026-11-01T04:00:00Z', '2026-11-01T03:59:00Z'], { keepDaily: 2 }, 'UTC', ['2026-11-02T04:59:00Z', '2026-11-01T04:00:00Z'], ['2026-11-01T03:59:00Z']],
    // Oct 25 2026 in Berlin lasts 25 hours: 22:00Z Oct 24 (00:00 CEST) to 23:00Z Oct 25 (00:00 CET).
    ['Berlin daily across fall-back', ['2026-10-25T22:59:00Z', '2026-10-24T22:00:00Z', '2026-10-24T21:59:00Z'], { keepDaily: 2 }, 'Europe/Berlin', ['2026-10-25T22:59:00Z', '2026-10-24T21:59:00Z'], ['2026-10-24T22:00:00Z']],
    // Mar 29 2026 in Berlin lasts 23 hours: 23:00Z Mar 28 (00:00 CET) to 22:00Z Mar 29 (00:00 CEST).
    ['Berlin daily across spring-forward', ['2026-03-29T22:00:00Z', '2026-03-29T21:59:00Z', '2026-03-28T23:00:00Z', '2026-03-28T22:59:00Z'], { keepDaily: 3 }, 'Europe/Berlin', ['2026-03-29T22:00:00Z', '2026-03-29T21:59:00Z', '2026-03-28T22:59:00Z'], ['2026-03-28T23:00:00Z']],
    // The repeated hour is two buckets: 06:50Z = 01:50 EST, 06:30Z = 01:30 EST,
    // 05:30Z = 01:30 EDT, 05:10Z = 01:10 EDT, 04:59Z = 00:59 EDT.
    ['New York hourly, repeated 01:00 hour', ['2026-11-01T06:50:00Z', '2026-11-01T06:30:00Z', '2026-11-01T05:30:00Z', '2026-11-01T05:10:00Z', '2026-11-01T04:59:00Z'], { keepHourly: 2 }, 'America/New_York', ['2026-11-01T06:50:00Z', '2026-11-01T05:30:00Z'], ['2026-11-01T06:30:00Z', '2026-11-01T05:10:00Z', '2026-11-01T04:59:00Z']],
    ['New York hourly 3', ['2026-11-01T06:50:00Z', '2026-11-01T06:30:00Z', '2026-11-01T05:30:00Z', '2026-11-01T05:10:00Z', '2026-11-01T04:59:00Z'], { keepHourly: 3 }, 'America/New_York', ['2026-11-01T06:50:00Z', '2026-11-01T05:30:00Z', '2026-11-01T04:59:00Z'], ['2026-11-01T06:30:00Z', '2026-11-01T05:10:00Z']],
    // 01:45Z = 02:45 CET, 01:30Z = 02:30 CET, 00:30Z = 02:30 CEST, 00:15Z = 02:15 CEST.
    ['Berlin hourly, repeated 02:00 hour', ['2026-10-25T01:45:00Z', '2026-10-25T01:30:00Z', '2026-10-25T00:30:00Z', '2026-10-25T00:15:00Z'], { keepHourly: 2 }, 'Europe/Berlin', ['2026-10-25T01:45:00Z', '2026-10-25T00:30:00Z'], ['2026-10-25T01:30:00Z', '2026-10-25T00:15:00Z']],
    // Half-hour offset: 18:30Z = 00:00 IST Jan 2, 18:29Z = 23:59 IST Jan 1, 00:00Z = 05:30 IST Jan 1.
    ['Kolkata daily (+05:30)', ['2026-01-01T18:30:00Z', '2026-01-01T18:29:00Z', '2026-01-01T00:00:00Z'], { keepDaily: 2 }, 'Asia/Kolkata', ['2026-01-01T18:30:00Z', '2026-01-01T18:29:00Z'], ['2026-01-01T00:00:00Z']],
    // 23:30Z Dec 31 is 00:30 CET Jan 1 2027 in Berlin: a new year there, not in UTC.
    ['Berlin yearly', ['2026-12-31T23:30:00Z', '2026-12-31T22:30:00Z', '2026-12-31T10:00:00Z', '2026-01-01T10:00:00Z'], { keepYearly: 2 }, 'Europe/Berlin', ['2026-12-31T23:30:00Z', '2026-12-31T22:30:00Z'], ['2026-12-31T10:00:00Z', '2026-01-01T10:00:00Z']],
  ])('%s', (_name, times, rules, timeZone, keepIds, prune) => {
    const reason = Object.keys(rules)[0]!.slice(4).toLowerCase();
    expect(run(times, rules, timeZone === undefined ? {} : { timeZone })).toEqual({
      keep: keepIds.map((id) => `${id} ${reason}`),
      prune,
    });
  });
});

describe('planRetention: keepWithin', () => {
  it.each<[string, string, string[], string?]>([
    // [rule, newest, then: just after the cut-off (kept), exactly at it (pruned)]
    ['1d', '2026-03-10T12:00:00Z', ['2026-03-09T12:00:00.001Z', '2026-03-09T12:00:00Z']],
    ['36h', '2026-03-10T12:00:00Z', ['2026-03-09T00:00:01Z', '2026-03-09T00:00:00Z']],
    ['1d12h', '2026-03-10T12:00:00Z', ['2026-03-09T00:00:01Z', '2026-03-09T00:00:00Z']],
    ['2y', '2026-03-10T12:00:00Z', ['2024-03-10T12:00:01Z', '2024-03-10T12:00:00Z']],
    ['1y6m', '2026-03-10T12:00:00Z', ['2024-09-10T12:00:01Z', '2024-09-10T12:00:00Z']],
    ['3m', '2026-01-15T00:00:00Z', ['2025-10-15T00:00:01Z', '2025-10-15T00:00:00Z']],
    ['1y2m3d4h', '2026-03-10T12:00:00Z', ['2025-01-07T08:00:01Z', '2025-01-07T08:00:00Z']],
    // Month subtraction clamps the day: Mar 31 - 1m = Feb 28 (Feb 29 in a leap year).
    ['1m', '2026-03-31T12:00:00Z', ['2026-02-28T12:00:01Z', '2026-02-28T12:00:00Z']],
    ['1m', '2024-03-31T00:00:00Z', ['2024-02-29T00:00:00.001Z', '2024-02-29T00:00:00Z']],
    ['1y', '2024-02-29T10:00:00Z', ['2023-02-28T10:00:01Z', '2023-02-28T10:00:00Z']],
    // Years and months move together, then the day is clamped once: 13 months before Feb 29 2024.
    ['1y1m', '2024-02-29T10:00:00Z', ['2023-01-29T10:00:01Z', '2023-01-29T10:00:00Z']],
    // Days come after the clamp: Mar 31 - 1m = Feb 28, - 1d = Feb 27.
    ['1m1d', '2026-03-31T12:00:00Z', ['2026-02-27T12:00:01Z', '2026-02-27T12:00:00Z']],
    ['1m', '2026-05-31T12:00:00Z', ['2026-04-30T12:00:01Z', '2026-04-30T12:00:00Z']],
    // Berlin 12:00 CEST Mar 29 (10:00Z) minus a calendar day is 12:00 CET Mar 28 (11:00Z): 23 real hours.
    ['1d', '2026-03-29T10:00:00Z', ['2026-03-28T11:00:01Z', '2026-03-28T11:00:00Z'], 'Europe/Berlin'],
    // Hours are exact: 24h before 10:00Z is 10:00Z.
    ['24h', '2026-03-29T10:00:00Z', ['2026-03-28T10:00:01Z', '2026-03-28T10:00:00Z'], 'Europe/Berlin'],
    // 02:30 CEST Mar 30 (00:30Z) minus a day is 02:30 Mar 29, which Berlin skips: moved forward to 03:30 CEST (01:30Z).
    ['1d', '2026-03-30T00:30:00Z', ['2026-03-29T01:30:01Z', '2026-03-29T01:30:00Z'], 'Europe/Berlin'],
    // 02:30 CET Oct 26 (01:30Z) minus a day is 02:30 Oct 25, which happens twice: the earlier, CEST (00:30Z).
    ['1d', '2026-10-26T01:30:00Z', ['2026-10-25T00:30:01Z', '2026-10-25T00:30:00Z'], 'Europe/Berlin'],
    // New York: 12:00 EST Nov 2 (17:00Z) minus a day is 12:00 EST Nov 1 (17:00Z), after the fall-back at 02:00.
    ['1d', '2026-11-02T17:00:00Z', ['2026-11-01T17:00:01Z', '2026-11-01T17:00:00Z'], 'America/New_York'],
    // 12:00 EDT Mar 8 (16:00Z) minus a day is 12:00 EST Mar 7 (17:00Z): 23 real hours.
    ['1d', '2026-03-08T16:00:00Z', ['2026-03-07T17:00:01Z', '2026-03-07T17:00:00Z'], 'America/New_York'],
  ])('%s before %s (%s) in %s', (within, newest, [inside, atCutoff], timeZone) => {
    const times = [newest, inside!, atCutoff!, '2000-01-01T00:00:00Z'];
    expect(run(times, { keepWithin: within }, timeZone === undefined ? {} : { timeZone })).toEqual({
      keep: [`${newest} within`, `${inside} within`],
      prune: [atCutoff, '2000-01-01T00:00:00Z'],
    });
  });

  it('the same times in UTC: a calendar day is 24 hours', () => {
    const times = ['2026-03-29T10:00:00Z', '2026-03-28T11:00:00Z', '2026-03-28T10:00:01Z', '2026-03-28T10:00:00Z'];
    expect(run(times, { keepWithin: '1d' })).toEqual({
      keep: ['2026-03-29T10:00:00Z within', '2026-03-28T11:00:00Z within', '2026-03-28T10:00:01Z within'],
      prune: ['2026-03-28T10:00:00Z'],
    });
  });

  it('is measured from the newest snapshot that is not in the future', () => {
    // now 12:00Z Mar 10: reference is 11:00Z Mar 10, cut-off 11:00Z Mar 9; the future one is after it.
    const times = ['2026-03-20T00:00:00Z', '2026-03-10T11:00:00Z', '2026-03-09T11:00:01Z', '2026-03-09T11:00:00Z'];
    expect(run(times, { keepWithin: '1d' }, { now: '2026-03-10T12:00:00Z' })).toEqual({
      keep: ['2026-03-20T00:00:00Z within', '2026-03-10T11:00:00Z within', '2026-03-09T11:00:01Z within'],
      prune: ['2026-03-09T11:00:00Z'],
    });
  });

  it('a snapshot exactly at now is not in the future', () => {
    const times = ['2026-03-10T12:00:00Z', '2026-03-09T12:00:01Z', '2026-03-09T12:00:00Z'];
    expect(run(times, { keepWithin: '1d' }, { now: '2026-03-10T12:00:00Z' })).toEqual({
      keep: ['2026-03-10T12:00:00Z within', '2026-03-09T12:00:01Z within'],
      prune: ['2026-03-09T12:00:00Z'],
    });
  });

  it('keeps nothing when every snapshot is in the future', () => {
    const times = ['2026-02-01T00:00:00Z', '2026-01-15T00:00:00Z'];
    expect(run(times, { keepWithin: '1y' }, { now: '2026-01-01T00:00:00Z' })).toEqual({
      keep: [],
      prune: ['2026-02-01T00:00:00Z', '2026-01-15T00:00:00Z'],
    });
  });

  it('a zero duration is off when another rule is set', () => {
    expect(run(SERIES, { keepWithin: '0d', keepLast: 1 })).toEqual({ keep: ['s1 last'], prune: rest(['s1']) });
  });
});

describe('planRetention: future-dated snapshots', () => {
  const now = '2026-03-10T12:00:00Z';
  // f is in the future; n is exactly now; p is in the past.
  const times = ['f@2026-03-11T00:00:00Z', 'n@2026-03-10T12:00:00Z', 'p@2026-03-10T08:00:00Z'];
  it.each<[string, RetentionRules, string[], string[]]>([
    // The future snapshot takes the only slot; the newest past one is saved by the safety net.
    ['keepLast 1', { keepLast: 1 }, ['f last', 'n newest'], ['p']],
    ['keepLast 2', { keepLast: 2 }, ['f last', 'n last'], ['p']],
    ['keepDaily 1', { keepDaily: 1 }, ['f daily', 'n newest'], ['p']],
    // Mar 11, Mar 10: spent before p (also Mar 10).
    ['keepDaily 2', { keepDaily: 2 }, ['f daily', 'n daily'], ['p']],
    // Mar 11, Mar 10, then p as the oldest with count left.
    ['keepDaily 3', { keepDaily: 3 }, ['f daily', 'n daily', 'p daily'], []],
    // Same week: f, then p as the oldest; n is saved by the safety net.
    ['keepWeekly 5', { keepWeekly: 5 }, ['f weekly', 'n newest', 'p weekly'], []],
  ])('%s', (_name, rules, keep, prune) => {
    expect(run(times, rules, { now })).toEqual({ keep, prune });
  });

  it('only future snapshots: nothing is protected by the safety net', () => {
    expect(run(['f@2026-03-12T00:00:00Z', 'g@2026-03-11T00:00:00Z'], { keepLast: 1 }, { now })).toEqual({
      keep: ['f last'],
      prune: ['g'],
    });
  });
});

describe('planRetention: duplicates, order, input', () => {
  const same = '2026-01-01T10:00:00Z';
  const dups = [`a@${same}`, `b@${same}`, `c@${same}`, 'd@2026-01-01T09:00:00Z'];
  it.each<[string, string[], RetentionRules, string[], string[]]>([
    ['keepLast counts each duplicate', dups, { keepLast: 2 }, ['a last', 'b last'], ['c', 'd']],
    ['a bucket keeps only the first duplicate', dups, { keepHourly: 1 }, ['a hourly'], ['b', 'c', 'd']],
    // a (10:00 hour), d (09:00 hour) and oldest.
    ['hourly 5', dups, { keepHourly: 5 }, ['a hourly', 'd hourly'], ['b', 'c']],
    // All on Jan 1: a, then d as the oldest.
    ['daily 5', dups, { keepDaily: 5 }, ['a daily', 'd daily'], ['b', 'c']],
    // Duplicates at the oldest time: the last of them is the oldest snapshot.
    ['duplicates at the end', ['x@2026-01-02T00:00:00Z', `a@${same}`, `b@${same}`, `c@${same}`], { keepDaily: 5 }, ['x daily', 'a daily', 'c daily'], ['b']],
    ['ties keep input order', [`second@${same}`, `first@${same}`], { keepLast: 1 }, ['second last'], ['first']],
  ])('%s', (_name, specs, rules, keep, prune) => {
    expect(run(specs, rules)).toEqual({ keep, prune });
  });

  it('unordered input gives the same plan as sorted input, newest first', () => {
    const shuffled = [SERIES[4]!, SERIES[9]!, SERIES[0]!, SERIES[6]!, SERIES[2]!, SERIES[8]!, SERIES[1]!, SERIES[5]!, SERIES[7]!, SERIES[3]!];
    expect(run(shuffled, { keepDaily: 3, keepMonthly: 2 })).toEqual({
      keep: ['s1 daily,monthly', 's3 daily', 's6 daily', 's8 monthly'],
      prune: ['s2', 's4', 's5', 's7', 's9', 's10'],
    });
  });

  it('returns the candidates own ids and Date values', () => {
    const time = new Date('2026-01-01T00:00:00Z');
    const plan = planRetention([{ id: 'snap-1', time }], { rules: { keepLast: 1 }, now: new Date(FAR_FUTURE) });
    expect(plan).toEqual({ keep: [{ id: 'snap-1', time, reasons: ['last'] }], prune: [] });
  });

  it('no candidates: an empty plan', () => {
    expect(planRetention([], { rules: { keepDaily: 7 }, now: new Date(FAR_FUTURE) })).toEqual({ keep: [], prune: [] });
  });

  it('does not change its input', () => {
    const input = candidates(['b@2026-01-01T00:00:00Z', 'a@2026-01-02T00:00:00Z']);
    planRetention(input, { rules: { keepLast: 1 }, now: new Date(FAR_FUTURE) });
    expect(input.map((c) => c.id)).toEqual(['b', 'a']);
  });
});

describe('planRetention: refused policies and input', () => {
  const one = candidates(['2026-01-01T00:00:00Z']);
  it.each<[string, RetentionRules]>([
    ['no rules', {}],
    ['all zero', { keepLast: 0, keepHourly: 0, keepDaily: 0, keepWeekly: 0, keepMonthly: 0, keepYearly: 0 }],
    ['zero duration', { keepWithin: '0d' }],
    ['zero everything', { keepDaily: 0, keepWithin: '0y0m0d0h' }],
  ])('empty policy (%s) is refused', (_name, rules) => {
    for (const input of [one, []]) {
      const call = () => planRetention(input, { rules, now: new Date(FAR_FUTURE) });
      expect(call).toThrow(VmsnapError);
      expect(call).toThrow(/give at least one keep rule/);
      try {
        call();
      } catch (err) {
        expect((err as VmsnapError).code).toBe('bad-input');
      }
    }
  });

  it.each<[string, RetentionRules, RegExp]>([
    ['fractional count', { keepDaily: 2.5 }, /^keepDaily: 2.5 is not a count/],
    ['count below -1', { keepLast: -2 }, /^keepLast: -2 is not a count/],
    ['NaN count', { keepWeekly: Number.NaN }, /^keepWeekly: NaN is not a count/],
    ['bad duration', { keepWithin: '2w' }, /^keepWithin: "2w" is not a duration/],
    ['bad duration next to a count', { keepLast: 1, keepWithin: '1h1d' }, /^keepWithin: "1h1d" is not a duration/],
  ])('%s is refused', (_name, rules, message) => {
    expect(() => planRetention(one, { rules, now: new Date(FAR_FUTURE) })).toThrow(message);
  });

  it('an unknown time zone is refused', () => {
    expect(() => planRetention(one, { rules: { keepDaily: 1 }, now: new Date(FAR_FUTURE), timeZone: 'Mars/Olympus' })).toThrow(
      /^timeZone: "Mars\/Olympus" is not an IANA time zone/,
    );
  });

  it('an invalid candidate time is refused', () => {
    expect(() =>
      planRetention([{ id: 'x', time: new Date('nope') }], { rules: { keepDaily: 1 }, now: new Date(FAR_FUTURE) }),
    ).toThrow(/^candidates\[0\] \(x\): invalid time/);
  });
});
