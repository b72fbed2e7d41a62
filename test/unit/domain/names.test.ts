import { describe, expect, it } from 'vitest';
import {
  chooseSnapshotName,
  formatSnapshotName,
  isDefaultSnapshotName,
  isValidName,
  validateName,
} from '../../../src/domain/names.js';
import { VmsnapError } from '../../../src/errors.js';

describe('formatSnapshotName', () => {
  it.each([
    ['2026-11-22T10:15:00.000Z', '20261122T101500Z'],
    ['2026-11-22T10:15:00.999Z', '20261122T101500Z'],
    ['1999-12-31T23:59:59Z', '19991231T235959Z'],
    // A non-UTC instant is named by its UTC time.
    ['2026-03-29T03:30:00+02:00', '20260329T013000Z'],
    ['2026-10-25T02:30:00+01:00', '20261025T013000Z'],
  ])('%s -> %s', (iso, name) => {
    expect(formatSnapshotName(new Date(iso))).toBe(name);
  });

  it('names across the Europe/Berlin DST fall-back stay distinct and sorted', () => {
    // 02:30 CEST and 02:30 CET are an hour apart; names are UTC so they never collide.
    const a = formatSnapshotName(new Date('2026-10-25T02:30:00+02:00'));
    const b = formatSnapshotName(new Date('2026-10-25T02:30:00+01:00'));
    expect(a).toBe('20261025T003000Z');
    expect(b).toBe('20261025T013000Z');
    expect([b, a].sort()).toEqual([a, b]);
  });

  it('every generated name is a valid name and a default name', () => {
    for (const iso of ['2026-01-01T00:00:00Z', '2026-12-31T23:59:59Z', '2000-02-29T12:00:00Z']) {
      const n = formatSnapshotName(new Date(iso));
      expect(isValidName(n)).toBe(true);
      expect(isDefaultSnapshotName(n)).toBe(true);
    }
  });

  it('refuses an invalid date', () => {
    expect(() => formatSnapshotName(new Date('nope'))).toThrow(VmsnapError);
  });
});

describe('chooseSnapshotName', () => {
  const now = new Date('2026-11-22T10:15:00Z');
  it('uses the bare time when free', () => {
    expect(chooseSnapshotName(now, new Set())).toBe('20261122T101500Z');
  });
  it('adds a two-digit suffix on a same-second collision', () => {
    expect(chooseSnapshotName(now, new Set(['20261122T101500Z']))).toBe('20261122T101500Z-01');
    expect(chooseSnapshotName(now, new Set(['20261122T101500Z', '20261122T101500Z-01']))).toBe('20261122T101500Z-02');
  });
  it('suffixed names keep sorting by time', () => {
    const names = ['20261122T101501Z', '20261122T101500Z-10', '20261122T101500Z', '20261122T101500Z-02'];
    expect([...names].sort()).toEqual(['20261122T101500Z', '20261122T101500Z-02', '20261122T101500Z-10', '20261122T101501Z']);
  });
  it('gives up with a retryable conflict after 99', () => {
    const taken = new Set(['20261122T101500Z']);
    for (let i = 1; i <= 99; i++) taken.add(`20261122T101500Z-${String(i).padStart(2, '0')}`);
    try {
      chooseSnapshotName(now, taken);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(VmsnapError);
      expect((err as VmsnapError).code).toBe('conflict');
      expect((err as VmsnapError).retryable).toBe(true);
    }
  });
});

describe('validateName', () => {
  it.each(['a', 'A9', 'before-upgrade', 'v1.2_rc-3', '0day', 'x'.repeat(128), '20261122T101500Z'])('accepts %s', (n) => {
    expect(validateName(n, 'name')).toBe(n);
  });
  it.each([
    ['', 'empty'],
    ['-x', 'leading dash'],
    ['.hidden', 'leading dot'],
    ['_x', 'leading underscore'],
    ['a/b', 'slash'],
    ['a..b', 'dot-dot'],
    ['..', 'parent'],
    ['a b', 'space'],
    ['a;rm', 'shell metachar'],
    ['a$b', 'dollar'],
    ['a\0b', 'NUL'],
    ['ä', 'non-ascii'],
    ['x'.repeat(129), 'too long'],
    ['12345', 'all digits (qcow2 snapshot id)'],
  ])('refuses %j (%s) with a bad-input error naming the field', (n) => {
    try {
      validateName(n, 'snapshot name');
      expect.unreachable();
    } catch (err) {
      expect((err as VmsnapError).code).toBe('bad-input');
      expect((err as VmsnapError).message).toMatch(/^snapshot name: /);
      expect((err as VmsnapError).message).not.toContain('\n');
    }
  });
  it('refuses non-strings', () => {
    expect(() => validateName(42, 'name')).toThrow(/expected a name/);
  });
});
