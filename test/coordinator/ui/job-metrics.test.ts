// What the job view derives from metric samples: traffic rates over the window, the x scale, the
// live series' duplicate handling, and the flagged peers of a job's nodes.
import { describe, expect, it } from 'vitest';
import type { MetricPoint, NodeView } from '../../../coordinator/api/service.ts';
import {
  appendPoint, compressionRatio, flaggedPeers, LOG_X_FROM_BATCHES, RATE_WINDOW_MS, trafficRates, xScaleFor,
} from '../../../coordinator/ui/src/logic/job-metrics.ts';

const point = (at: number, completed: number, bytesSent = 0, bytesReceived = 0): MetricPoint => ({
  at, completed, tokensPerSecond: 0, nodes: 1, bytesSent, bytesReceived, refusedUpdates: 0, droppedExpertCalls: 0, staleness: 0,
});

describe('trafficRates', () => {
  it('divides the byte totals\' growth by the time between the newest sample and the oldest within the window', () => {
    const points = [
      point(0, 0, 0, 0), point(10_000, 1, 5_000, 1_000), point(20_000, 2, 9_000, 3_000), point(RATE_WINDOW_MS + 5_000, 3, 21_000, 7_000),
    ];
    // Window [5 s, 35 s]: from the sample at 10 s to the one at 35 s.
    expect(trafficRates(points)).toEqual({ sent: (21_000 - 5_000) / 25, received: (7_000 - 1_000) / 25 });
  });
  it('uses the previous sample when it is older than the window, and never goes negative', () => {
    expect(trafficRates([point(0, 0, 100, 100), point(60_000, 1, 40, 6100)])).toEqual({ sent: 0, received: 100 });
  });
  it('knows nothing before two samples', () => {
    expect(trafficRates([])).toEqual({});
    expect(trafficRates([point(0, 0)])).toEqual({});
  });
});

describe('xScaleFor', () => {
  it(`turns logarithmic from ${LOG_X_FROM_BATCHES} completed micro-batches`, () => {
    expect(xScaleFor([])).toBe('linear');
    expect(xScaleFor([point(0, 1), point(1, LOG_X_FROM_BATCHES - 1)])).toBe('linear');
    expect(xScaleFor([point(0, 1), point(1, LOG_X_FROM_BATCHES)])).toBe('log');
  });
});

describe('appendPoint', () => {
  it('appends newer samples in place and skips repeats and older ones', () => {
    const points = [point(1000, 5)];
    expect(appendPoint(points, point(2000, 6))).toBe(true);
    expect(appendPoint(points, point(2000, 6))).toBe(false);
    expect(appendPoint(points, point(1500, 7))).toBe(false);
    expect(appendPoint(points, point(2000, 7))).toBe(true); // same millisecond, more progress
    expect(points.map((p) => p.completed)).toEqual([5, 6, 7]);
  });
});

describe('flaggedPeers', () => {
  it('lists each peer flagged by a node of the job once, sorted', () => {
    const node = (nodeId: string, jobId: string | undefined, flagged: string[]) => ({ nodeId, jobId, flaggedPeers: flagged }) as NodeView;
    const nodes = [node('a', 'j', ['z', 'x']), node('b', 'j', ['x']), node('c', 'other', ['w']), node('d', undefined, ['v'])];
    expect(flaggedPeers(nodes, 'j')).toEqual(['x', 'z']);
  });
});

describe('compressionRatio', () => {
  it('is the f32 size of the updates over their encoded size, unknown before any update', () => {
    const base = point(1, 1);
    expect(compressionRatio(undefined)).toBeUndefined();
    expect(compressionRatio(base)).toBeUndefined();
    expect(compressionRatio({ ...base, updateBytes: 0, updateRawBytes: 0 })).toBeUndefined();
    expect(compressionRatio({ ...base, updateBytes: 1000, updateRawBytes: 3600 })).toBe(3.6);
  });
});
