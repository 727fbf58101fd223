// What the job view derives from its metric samples: the loss chart's table (downsampled, on a
// log x once the run is long), traffic rates from the byte totals, and the live series kept in order.
import type { MetricPoint, NodeView } from '../../../api/service.ts';
import { alignSeries, downsampleMinMax, type Scale } from './downsample.ts';

/** From this many completed micro-batches on, the loss chart's x axis is logarithmic. */
export const LOG_X_FROM_BATCHES = 1000;
/** Traffic rates span the samples of this window (the newest and the oldest within it). */
export const RATE_WINDOW_MS = 30_000;

export function xScaleFor(points: readonly MetricPoint[]): Scale {
  const last = points[points.length - 1];
  return last !== undefined && last.completed >= LOG_X_FROM_BATCHES ? 'log' : 'linear';
}

/** uPlot's table for the loss chart: x = completed micro-batches, then training loss, then held-out loss. */
export function lossChartData(points: readonly MetricPoint[], buckets: number, scale: Scale): [number[], ...(number | null)[][]] {
  const xs = points.map((point) => point.completed);
  return alignSeries([
    downsampleMinMax(xs, points.map((point) => point.loss), buckets, scale),
    downsampleMinMax(xs, points.map((point) => point.heldOut), buckets, scale),
  ]);
}

/** Bytes per second sent and received over the last RATE_WINDOW_MS; undefined before two samples. */
export function trafficRates(points: readonly MetricPoint[]): { sent?: number; received?: number } {
  const newest = points[points.length - 1];
  if (newest === undefined || points.length < 2) return {};
  let oldest = points[points.length - 2];
  for (let i = points.length - 3; i >= 0 && newest.at - points[i].at <= RATE_WINDOW_MS; i--) oldest = points[i];
  const seconds = (newest.at - oldest.at) / 1000;
  if (!(seconds > 0)) return {};
  // Totals drop when a node leaves the job: no negative rate.
  return {
    sent: Math.max(0, newest.bytesSent - oldest.bytesSent) / seconds,
    received: Math.max(0, newest.bytesReceived - oldest.bytesReceived) / seconds,
  };
}

/** How many times smaller the nodes' parameter updates were on the wire than as plain f32; undefined before any. */
export function compressionRatio(point: MetricPoint | undefined): number | undefined {
  if (!point?.updateBytes || point.updateRawBytes === undefined) return undefined;
  return point.updateRawBytes / point.updateBytes;
}

/**
 * Adds `point` to the series in place unless it is a duplicate (samples arrive in time and
 * progress order, so an older or repeated one is); returns whether it was added. In place: a long run streams
 * ~100,000 samples, and copying the series for each would cost quadratic time.
 */
export function appendPoint(points: MetricPoint[], point: MetricPoint): boolean {
  const last = points[points.length - 1];
  if (last !== undefined && (point.at < last.at || (point.at === last.at && point.completed <= last.completed))) return false;
  points.push(point);
  return true;
}

/** Peers flagged by the nodes training `jobId` (sent a delta far outside the group's), each once. */
export function flaggedPeers(nodes: readonly NodeView[], jobId: string): string[] {
  return [...new Set(nodes.filter((node) => node.jobId === jobId).flatMap((node) => node.flaggedPeers))].sort();
}
