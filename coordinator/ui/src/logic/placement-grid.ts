// The expert placement map as rows of cells: for each layer × expert its holders, how many of them
// are alive, and whether the cell is healthy, degraded (fewer live holders than the replication)
// or dead (none), so the map shows at a glance which experts are at risk.
import type { NodeStatus, NodeView, Placement } from '../../../api/service.ts';

export type CellHealth = 'ok' | 'degraded' | 'dead';

export interface HolderView {
  nodeId: string;
  /** 'unknown' when the node is not in the node list (it left before the UI saw it). */
  status: NodeStatus | 'unknown';
}

export interface PlacementCell {
  layer: number;
  expert: number;
  holders: HolderView[];
  live: number;
  health: CellHealth;
}

export interface PlacementGrid {
  replication: number;
  /** rows[layer][expert]. */
  rows: PlacementCell[][];
  counts: Record<CellHealth, number>;
}

/** A holder counts as live unless its node is gone or unknown. */
function isLive(holder: HolderView): boolean {
  return holder.status !== 'gone' && holder.status !== 'unknown';
}

/** Lays `placement` out as numLayers × numExperts cells; a cell the placement does not list has no holders (dead). */
export function placementGrid(placement: Placement, nodes: NodeView[]): PlacementGrid {
  const statusOf = new Map(nodes.map((node) => [node.nodeId, node.status]));
  const holdersOf = new Map(placement.cells.map((cell) => [`${cell.layer}/${cell.expert}`, cell.holders]));
  const counts: Record<CellHealth, number> = { ok: 0, degraded: 0, dead: 0 };
  const rows: PlacementCell[][] = [];
  for (let layer = 0; layer < placement.numLayers; layer++) {
    const row: PlacementCell[] = [];
    for (let expert = 0; expert < placement.numExperts; expert++) {
      const holders = (holdersOf.get(`${layer}/${expert}`) ?? [])
        .map((nodeId): HolderView => ({ nodeId, status: statusOf.get(nodeId) ?? 'unknown' }));
      const live = holders.filter(isLive).length;
      const health: CellHealth = live === 0 ? 'dead' : live < placement.replication ? 'degraded' : 'ok';
      counts[health]++;
      row.push({ layer, expert, holders, live, health });
    }
    rows.push(row);
  }
  return { replication: placement.replication, rows, counts };
}

/** The cell's tooltip: which expert, its health, and each holder with its status. */
export function cellTitle(cell: PlacementCell, replication: number): string {
  const head = `layer ${cell.layer}, expert ${cell.expert}: ${cell.live} of ${replication} live holders (${cell.health})`;
  return [head, ...cell.holders.map((holder) => `${holder.nodeId} (${holder.status})`)].join('\n');
}
