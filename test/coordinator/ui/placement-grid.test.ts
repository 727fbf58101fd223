// The placement map's cells: holders and live counts per layer × expert, degraded and dead cells
// marked from the node list (gone or unknown nodes are not live), counted for the legend.
import { describe, expect, it } from 'vitest';
import type { NodeView, Placement } from '../../../coordinator/api/service.ts';
import { cellTitle, placementGrid } from '../../../coordinator/ui/src/logic/placement-grid.ts';

const node = (nodeId: string, status: NodeView['status']): NodeView => ({
  nodeId, status, cores: 2, gemmGflops: 40, memoryBytes: 2 ** 30, addrs: [], experts: [], step: 0, tokensPerSecond: 0,
  bytesSent: 0, bytesReceived: 0, flaggedPeers: [], lastSeen: 0, firstSeen: 0,
});

const placement: Placement = {
  jobId: 'j', version: 4, numLayers: 2, numExperts: 3, replication: 2,
  cells: [
    { layer: 0, expert: 0, holders: ['a', 'b'] },
    { layer: 0, expert: 1, holders: ['a', 'gone'] },
    { layer: 0, expert: 2, holders: ['gone'] },
    { layer: 1, expert: 0, holders: ['slow', 'b', 'a'] },
    { layer: 1, expert: 1, holders: ['stranger'] },
    // layer 1, expert 2 is not listed: nobody holds it.
  ],
};
const nodes = [node('a', 'training'), node('b', 'idle'), node('slow', 'slow'), node('gone', 'gone')];

describe('placementGrid', () => {
  const grid = placementGrid(placement, nodes);

  it('lays out numLayers rows of numExperts cells, each with its holders and their statuses', () => {
    expect(grid.rows.map((row) => row.map((cell) => `${cell.layer}/${cell.expert}`)))
      .toEqual([['0/0', '0/1', '0/2'], ['1/0', '1/1', '1/2']]);
    expect(grid.rows[1][0].holders).toEqual([
      { nodeId: 'slow', status: 'slow' }, { nodeId: 'b', status: 'idle' }, { nodeId: 'a', status: 'training' },
    ]);
  });

  it('marks cells with fewer live holders than the replication degraded, and with none dead', () => {
    expect(grid.rows.map((row) => row.map((cell) => [cell.live, cell.health]))).toEqual([
      [[2, 'ok'], [1, 'degraded'], [0, 'dead']],
      [[3, 'ok'], [0, 'dead'], [0, 'dead']],
    ]);
    expect(grid.counts).toEqual({ ok: 2, degraded: 1, dead: 3 });
  });

  it('names every holder and its status in the tooltip', () => {
    expect(cellTitle(grid.rows[0][1], 2)).toBe('layer 0, expert 1: 1 of 2 live holders (degraded)\na (training)\ngone (gone)');
    expect(cellTitle(grid.rows[1][1], 2)).toBe('layer 1, expert 1: 0 of 2 live holders (dead)\nstranger (unknown)');
  });

  it('counts a slow node as live: slow is still serving', () => {
    const cells = [{ layer: 0, expert: 0, holders: ['slow'] }];
    const single = placementGrid({ ...placement, numLayers: 1, numExperts: 1, replication: 1, cells }, nodes);
    expect(single.rows[0][0].health).toBe('ok');
  });
});
