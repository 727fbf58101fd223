// How the UI writes numbers, bytes, rates, durations, ETAs and ages: short, fixed-width-ish text
// for tables and tiles. Pure, so the tests can pin each form down.

/** Shown where a value is unknown (no sample yet, not running). */
export const UNKNOWN = '—';

const SI_PREFIXES = ['', 'k', 'M', 'G', 'T', 'P'];
const BINARY_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 3 significant digits, without a trailing ".0": 0.123, 12.3, 123. */
function threeDigits(value: number): string {
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return String(Number(value.toFixed(digits)));
}

/** A count or speed with an SI prefix: 950, 1.2k, 45.6M; small values keep 3 significant digits. */
export function formatNumber(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return UNKNOWN;
  let scaled = value;
  let prefix = 0;
  while (Math.abs(scaled) >= 999.5 && prefix < SI_PREFIXES.length - 1) {
    scaled /= 1000;
    prefix++;
  }
  if (prefix === 0 && Math.abs(value) < 0.001 && value !== 0) return value.toExponential(2);
  return threeDigits(scaled) + SI_PREFIXES[prefix];
}

/** How many times smaller: 12.3×. */
export function formatRatio(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? UNKNOWN : `${formatNumber(value)}×`;
}

/** An integer with thousands separators: 12,345. */
export function formatCount(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return UNKNOWN;
  return Math.round(value).toLocaleString('en-US');
}

/** Bytes in binary units: 512 B, 1.5 KiB, 2.25 GiB. */
export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes) || bytes < 0) return UNKNOWN;
  let scaled = bytes;
  let unit = 0;
  while (scaled >= 1023.5 && unit < BINARY_UNITS.length - 1) {
    scaled /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(bytes)} B` : `${threeDigits(scaled)} ${BINARY_UNITS[unit]}`;
}

export function formatByteRate(bytesPerSecond: number | undefined): string {
  const bytes = formatBytes(bytesPerSecond);
  return bytes === UNKNOWN ? UNKNOWN : `${bytes}/s`;
}

/** A duration in its two largest units: 42s, 3m 05s, 2h 07m, 3d 04h. */
export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return UNKNOWN;
  const whole = Math.round(seconds);
  if (whole < 60) return `${whole}s`;
  const pad = (n: number) => String(n).padStart(2, '0');
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return `${minutes}m ${pad(whole % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}h ${pad(minutes % 60)}m`;
  return `${Math.floor(hours / 24)}d ${pad(hours % 24)}h`;
}

/** Time left, or UNKNOWN when the coordinator cannot tell yet. */
export function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return UNKNOWN;
  return seconds < 1 ? 'done soon' : `~${formatDuration(seconds)} left`;
}

/** How long ago `at` (ms since the epoch) was, seen at `now`: "just now", "12s ago", "3m 05s ago". */
export function formatAgo(at: number | undefined, now: number): string {
  if (at === undefined || !Number.isFinite(at)) return UNKNOWN;
  const seconds = (now - at) / 1000;
  return seconds < 1 ? 'just now' : `${formatDuration(seconds)} ago`;
}

/** Completed out of total as a percentage with one decimal, clamped to [0, 100]. */
export function formatPercent(done: number, total: number): string {
  if (!(total > 0)) return UNKNOWN;
  const percent = Math.min(100, Math.max(0, (done / total) * 100));
  return `${percent.toFixed(1)}%`;
}

/** A peer id cut to its tail, which is what tells two libp2p ids apart: "…X4f9Qa". */
export function shortId(id: string, keep = 6): string {
  return id.length <= keep + 1 ? id : `…${id.slice(-keep)}`;
}

/** A date and time in the viewer's locale, to the second. */
export function formatTime(at: number | undefined): string {
  if (at === undefined || !Number.isFinite(at)) return UNKNOWN;
  return new Date(at).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}
