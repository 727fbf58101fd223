// The UI's number, byte, rate, duration, ETA and age formats, pinned down case by case.
import { describe, expect, it } from 'vitest';
import {
  formatAgo, formatByteRate, formatBytes, formatCount, formatDuration, formatEta, formatNumber, formatPercent, shortId, UNKNOWN,
} from '../../../coordinator/ui/src/logic/format.ts';

describe('formatNumber', () => {
  it('writes 3 significant digits with an SI prefix', () => {
    expect([0, 0.1234, 3.14159, 12.345, 123.4, 999, 999.6, 1234, 45_678, 2_500_000, 7.2e9].map(formatNumber))
      .toEqual(['0', '0.12', '3.14', '12.3', '123', '999', '1k', '1.23k', '45.7k', '2.5M', '7.2G']);
  });
  it('writes tiny values in exponent form, negatives with their sign, unknowns as a dash', () => {
    expect(formatNumber(0.00012)).toBe('1.20e-4');
    expect(formatNumber(-1500)).toBe('-1.5k');
    expect([undefined, NaN, Infinity].map(formatNumber)).toEqual([UNKNOWN, UNKNOWN, UNKNOWN]);
  });
});

describe('formatCount', () => {
  it('writes whole numbers with thousands separators', () => {
    expect([0, 999, 12_345, 1_234_567.4].map(formatCount)).toEqual(['0', '999', '12,345', '1,234,567']);
  });
});

describe('formatBytes and formatByteRate', () => {
  it('use binary units', () => {
    expect([0, 512, 1023, 1024, 1536, 10 * 2 ** 20, 2.25 * 2 ** 30, 3 * 2 ** 40].map(formatBytes))
      .toEqual(['0 B', '512 B', '1023 B', '1 KiB', '1.5 KiB', '10 MiB', '2.25 GiB', '3 TiB']);
    expect(formatByteRate(180_000)).toBe('176 KiB/s');
  });
  it('write unknown or negative sizes as a dash', () => {
    expect([undefined, -1, NaN].map(formatBytes)).toEqual([UNKNOWN, UNKNOWN, UNKNOWN]);
    expect(formatByteRate(undefined)).toBe(UNKNOWN);
  });
});

describe('formatDuration, formatEta and formatAgo', () => {
  it('write a duration in its two largest units', () => {
    expect([0, 42.4, 59.6, 185, 3600, 7620, 86_400 + 4 * 3600 + 59].map(formatDuration))
      .toEqual(['0s', '42s', '1m 00s', '3m 05s', '1h 00m', '2h 07m', '1d 04h']);
  });
  it('write an ETA as time left, unknown when the coordinator cannot tell', () => {
    expect(formatEta(185)).toBe('~3m 05s left');
    expect(formatEta(0.2)).toBe('done soon');
    expect(formatEta(undefined)).toBe(UNKNOWN);
  });
  it('write a heartbeat as an age seen from now', () => {
    const now = 1_700_000_000_000;
    expect(formatAgo(now - 400, now)).toBe('just now');
    expect(formatAgo(now - 12_000, now)).toBe('12s ago');
    expect(formatAgo(now - 95_000, now)).toBe('1m 35s ago');
    expect(formatAgo(undefined, now)).toBe(UNKNOWN);
  });
});

describe('formatPercent and shortId', () => {
  it('clamp a percentage to [0, 100] with one decimal', () => {
    expect([formatPercent(1, 3), formatPercent(5, 4), formatPercent(0, 0)]).toEqual(['33.3%', '100.0%', UNKNOWN]);
  });
  it('keep the tail of a peer id, which tells ids apart', () => {
    expect(shortId('12D3KooWAbcdefXYZ123')).toBe('…XYZ123');
    expect(shortId('short')).toBe('short');
  });
});
