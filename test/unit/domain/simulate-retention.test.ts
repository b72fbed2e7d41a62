import { describe, expect, it } from 'vitest';
import {
  formatRetentionTable,
  parseRfc3339,
  parseTimesInput,
  simulateRetention,
  type SimulateOutput,
} from '../../../src/domain/simulate-retention.js';
import { VmsnapError } from '../../../src/errors.js';

const NOW = new Date('2100-01-01T00:00:00Z');

function errorOf(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(VmsnapError);
    return err as VmsnapError;
  }
  throw new Error('expected a VmsnapError');
}

describe('parseRfc3339: accepted', () => {
  it.each([
    ['2026-11-22T10:15:00Z', '2026-11-22T10:15:00.000Z'],
    ['2026-11-22t10:15:00z', '2026-11-22T10:15:00.000Z'],
    ['2026-11-22T11:15:00+01:00', '2026-11-22T10:15:00.000Z'],
    ['2026-11-22T05:45:00-04:30', '2026-11-22T10:15:00.000Z'],
    ['2026-11-22T10:15:00-00:00', '2026-11-22T10:15:00.000Z'],
    ['2026-01-01T00:30:00+01:00', '2025-12-31T23:30:00.000Z'],
    ['2026-11-22T10:15:00.5Z', '2026-11-22T10:15:00.500Z'],
    ['2026-11-22T10:15:00.05Z', '2026-11-22T10:15:00.050Z'],
    // Beyond milliseconds is truncated.
    ['2026-11-22T10:15:00.123456789Z', '2026-11-22T10:15:00.123Z'],
    ['2024-02-29T23:59:59Z', '2024-02-29T23:59:59.000Z'],
    ['2000-02-29T00:00:00Z', '2000-02-29T00:00:00.000Z'],
    // Two-digit years are not 19xx.
    ['0099-01-01T00:00:00Z', '0099-01-01T00:00:00.000Z'],
    ['2026-12-31T23:59:59+14:00', '2026-12-31T09:59:59.000Z'],
  ])('%s -> %s', (input, iso) => {
    expect(parseRfc3339(input, 'when').toISOString()).toBe(iso);
  });
});

describe('parseRfc3339: refused', () => {
  it.each([
    ['2026-13-01T00:00:00Z', /month 13/],
    ['2026-00-10T00:00:00Z', /month 00/],
    ['2026-02-29T00:00:00Z', /day 29/],
    ['1900-02-29T00:00:00Z', /day 29/],
    ['2026-04-31T00:00:00Z', /day 31/],
    ['2026-01-00T00:00:00Z', /day 00/],
    ['2026-11-22T24:00:00Z', /hour 24/],
    ['2026-11-22T10:60:00Z', /minute 60/],
    ['2026-12-31T23:59:60Z', /leap second/],
    ['2026-11-22T10:15:61Z', /second 61/],
    ['2026-11-22T10:15:00+24:00', /offset \+24:00/],
    ['2026-11-22T10:15:00+01:60', /offset \+01:60/],
    ['2026-11-22 10:15:00Z', /RFC3339/],
    ['2026-11-22T10:15Z', /RFC3339/],
    ['2026-11-22T10:15:00', /RFC3339/],
    ['2026-11-22T10:15:00+0100', /RFC3339/],
    ['2026-11-22T10:15:00+01', /RFC3339/],
    ['2026-11-22T10:15:00.Z', /RFC3339/],
    ['2026-11-22', /RFC3339/],
    ['2026-1-22T10:15:00Z', /RFC3339/],
    [' 2026-11-22T10:15:00Z', /RFC3339/],
    ['2026-11-22T10:15:00Z ', /RFC3339/],
    ['', /RFC3339/],
    ['1763806500', /RFC3339/],
  ])('%j', (input, detail) => {
    const err = errorOf(() => parseRfc3339(input, '--now'));
    expect(err.code).toBe('bad-input');
    expect(err.message.startsWith(`--now: ${JSON.stringify(input)} is not an RFC3339 time`)).toBe(true);
    expect(err.message).toMatch(detail);
    expect(err.message).not.toContain('\n');
  });
});

describe('parseTimesInput', () => {
  it('returns the strings as given', () => {
    const input = '["2026-11-21T11:00:00+01:00", "2026-11-20t10:00:00z"]';
    expect(parseTimesInput(input)).toEqual(['2026-11-21T11:00:00+01:00', '2026-11-20t10:00:00z']);
  });

  it('an empty array is fine', () => {
    expect(parseTimesInput(' [ ]\n')).toEqual([]);
  });

  it.each([
    ['not json', /^input: not valid JSON/],
    ['', /^input: not valid JSON/],
    ['{"times": []}', /^input: expected a JSON array of RFC3339 time strings, got object$/],
    ['null', /^input: expected a JSON array of RFC3339 time strings, got null$/],
    ['"2026-11-22T10:15:00Z"', /^input: expected a JSON array of RFC3339 time strings, got string$/],
    ['["2026-11-22T10:15:00Z", 1763806500]', /^input\[1\]: expected an RFC3339 time string, got number$/],
    ['[null]', /^input\[0\]: expected an RFC3339 time string, got null$/],
    ['[["2026-11-22T10:15:00Z"]]', /^input\[0\]: expected an RFC3339 time string, got array$/],
    [
      '["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-13-01"]',
      /^input\[3\]: "2026-13-01" is not an RFC3339 time/,
    ],
    ['["2026-01-01T00:00:00Z", "2026-02-30T00:00:00Z"]', /^input\[1\]: "2026-02-30T00:00:00Z" is not an RFC3339 time \(day 30/],
  ])('%j is refused', (input, message) => {
    const err = errorOf(() => parseTimesInput(input));
    expect(err.code).toBe('bad-input');
    expect(err.message).toMatch(message);
  });
});

describe('simulateRetention', () => {
  it.each<[string, string[], Parameters<typeof simulateRetention>[1], SimulateOutput]>([
    [
      'the help example: keep-daily 7',
      ['2026-11-20T10:00:00Z', '2026-11-21T10:00:00Z', '2026-11-21T11:00:00Z'],
      { rules: { keepDaily: 7 }, now: NOW },
      {
        // Nov 21 11:00, Nov 21 10:00 (same day), Nov 20 10:00 (new day).
        keep: [
          { time: '2026-11-21T11:00:00Z', reasons: ['daily'] },
          { time: '2026-11-20T10:00:00Z', reasons: ['daily'] },
        ],
        prune: [{ time: '2026-11-21T10:00:00Z' }],
      },
    ],
    [
      'times are echoed exactly and ordered by instant',
      // 10:00Z, 10:00Z Nov 20, 11:00Z, 10:30Z
      ['2026-11-21T11:00:00+01:00', '2026-11-20T10:00:00Z', '2026-11-21t11:00:00z', '2026-11-21T10:30:00Z'],
      { rules: { keepLast: 1, keepDaily: 7 }, now: NOW },
      {
        keep: [
          { time: '2026-11-21t11:00:00z', reasons: ['last', 'daily'] },
          { time: '2026-11-20T10:00:00Z', reasons: ['daily'] },
        ],
        prune: [{ time: '2026-11-21T10:30:00Z' }, { time: '2026-11-21T11:00:00+01:00' }],
      },
    ],
    [
      'days in the given zone: 23:30Z Nov 20 is Nov 21 in Berlin',
      ['2026-11-21T10:00:00Z', '2026-11-20T23:30:00Z', '2026-11-20T10:00:00Z'],
      { rules: { keepDaily: 2 }, now: NOW, timeZone: 'Europe/Berlin' },
      {
        keep: [
          { time: '2026-11-21T10:00:00Z', reasons: ['daily'] },
          { time: '2026-11-20T10:00:00Z', reasons: ['daily'] },
        ],
        prune: [{ time: '2026-11-20T23:30:00Z' }],
      },
    ],
    [
      'duplicates stay separate candidates',
      ['2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'],
      { rules: { keepLast: 2 }, now: NOW },
      {
        keep: [
          { time: '2026-01-01T00:00:00Z', reasons: ['last'] },
          { time: '2026-01-01T00:00:00Z', reasons: ['last'] },
        ],
        prune: [{ time: '2026-01-01T00:00:00Z' }],
      },
    ],
    [
      'a future snapshot takes the slot, the newest past one is kept anyway',
      ['2026-01-01T00:00:00Z', '2026-06-01T00:00:00Z', '2025-12-01T00:00:00Z'],
      { rules: { keepLast: 1 }, now: new Date('2026-03-01T00:00:00Z') },
      {
        keep: [
          { time: '2026-06-01T00:00:00Z', reasons: ['last'] },
          { time: '2026-01-01T00:00:00Z', reasons: ['newest'] },
        ],
        prune: [{ time: '2025-12-01T00:00:00Z' }],
      },
    ],
    [
      'keepWithin 1d keeps strictly after the cut-off',
      ['2026-03-10T12:00:00Z', '2026-03-09T12:00:00Z', '2026-03-09T12:00:01Z'],
      { rules: { keepWithin: '1d' }, now: NOW },
      {
        keep: [
          { time: '2026-03-10T12:00:00Z', reasons: ['within'] },
          { time: '2026-03-09T12:00:01Z', reasons: ['within'] },
        ],
        prune: [{ time: '2026-03-09T12:00:00Z' }],
      },
    ],
    ['no times', [], { rules: { keepLast: 1 }, now: NOW }, { keep: [], prune: [] }],
  ])('%s', (_name, times, options, expected) => {
    expect(simulateRetention(times, options)).toEqual(expected);
  });

  it('refuses an empty policy', () => {
    const err = errorOf(() => simulateRetention(['2026-01-01T00:00:00Z'], { rules: {}, now: NOW }));
    expect(err.code).toBe('bad-input');
    expect(err.message).toMatch(/give at least one keep rule/);
  });

  it('names the index of a bad time', () => {
    const err = errorOf(() => simulateRetention(['2026-01-01T00:00:00Z', 'yesterday'], { rules: { keepLast: 1 }, now: NOW }));
    expect(err.message).toMatch(/^input\[1\]: "yesterday" is not an RFC3339 time/);
  });

  it('the output is plain JSON', () => {
    const out = simulateRetention(['2026-01-01T00:00:00Z'], { rules: { keepLast: 1 }, now: NOW });
    expect(JSON.stringify(out)).toBe('{"keep":[{"time":"2026-01-01T00:00:00Z","reasons":["last"]}],"prune":[]}');
  });
});

describe('formatRetentionTable', () => {
  it.each<[string, SimulateOutput, string[]]>([
    [
      'rows newest first, kept and pruned merged',
      {
        keep: [
          { time: '2026-11-21T11:00:00Z', reasons: ['last', 'daily'] },
          { time: '2026-11-20T10:00:00Z', reasons: ['daily'] },
        ],
        prune: [{ time: '2026-11-21T10:00:00Z' }],
      },
      [
        'TIME                  ACTION  REASONS',
        '2026-11-21T11:00:00Z  keep    last, daily',
        '2026-11-21T10:00:00Z  prune',
        '2026-11-20T10:00:00Z  keep    daily',
        '2 kept, 1 pruned',
      ],
    ],
    [
      'ordered by instant, not by the text; columns fit the longest time',
      {
        keep: [{ time: '2026-11-21T11:00:00+01:00', reasons: ['newest'] }],
        prune: [{ time: '2026-11-21T10:30:00Z' }],
      },
      [
        'TIME                       ACTION  REASONS',
        '2026-11-21T10:30:00Z       prune',
        '2026-11-21T11:00:00+01:00  keep    newest',
        '1 kept, 1 pruned',
      ],
    ],
    [
      'at equal times kept rows come first',
      {
        keep: [{ time: '2026-01-01T00:00:00Z', reasons: ['last'] }],
        prune: [{ time: '2026-01-01T00:00:00Z' }],
      },
      ['TIME                  ACTION  REASONS', '2026-01-01T00:00:00Z  keep    last', '2026-01-01T00:00:00Z  prune', '1 kept, 1 pruned'],
    ],
    [
      'all pruned',
      { keep: [], prune: [{ time: '2026-01-01T00:00:00Z' }] },
      ['TIME                  ACTION  REASONS', '2026-01-01T00:00:00Z  prune', '0 kept, 1 pruned'],
    ],
    ['nothing at all', { keep: [], prune: [] }, ['0 kept, 0 pruned']],
  ])('%s', (_name, out, lines) => {
    expect(formatRetentionTable(out)).toBe(lines.join('\n'));
  });
});
