// The expert placement map: a layers × experts grid, each cell its number of live holders, colored
// by health; the tooltip lists the holders, and a focused cell (Tab) names them too. Re-rendered on
// every plan event and node change.
import { html } from 'htm/preact';
import { useState } from 'preact/hooks';
import type { JobView, NodeView, Placement } from '../../../api/service.ts';
import { cellTitle, placementGrid } from '../logic/placement-grid.ts';

export function PlacementMap({ job, placement, nodes }: { job: JobView; placement: Placement | undefined; nodes: NodeView[] }) {
  // The focused cell, whose holders are listed under the grid: a tooltip needs a mouse.
  const [focused, setFocused] = useState<{ layer: number; expert: number } | undefined>();
  // A job that ended has let its nodes go: its last plan would show every cell dead.
  if (job.state !== 'running' && job.state !== 'paused') {
    return html`<p class="empty">Experts are placed while the job runs (it is ${job.state}).</p>`;
  }
  if (!placement) return html`<p class="empty">No placement yet: the coordinator plans one when the job starts.</p>`;
  const grid = placementGrid(placement, nodes);
  const { ok, degraded, dead } = grid.counts;
  const focusedCell = focused && grid.rows[focused.layer]?.[focused.expert];
  return html`<div class="placement">
    <p class="legend">
      <span class="swatch health-ok"></span> ${ok} at full replication (${grid.replication})
      <span class="swatch health-degraded"></span> ${degraded} degraded
      <span class="swatch health-dead"></span> ${dead} without a live holder
      <span class="muted"> · plan v${placement.version}</span>
    </p>
    ${placement.degraded && html`<p class="warning" role="status">${placement.degraded}</p>`}
    <div class="grid-wrap">
      <table class="placement-grid" aria-label="Expert placement: live holders per layer and expert">
        <thead><tr><th scope="col"><span class="sr-only">Layer</span></th>
          ${grid.rows[0]?.map((cell) => html`<th scope="col">E${cell.expert}</th>`)}</tr></thead>
        <tbody>${grid.rows.map((row, layer) => html`<tr key=${layer}><th scope="row">L${layer}</th>
          ${row.map((cell) => {
            const title = cellTitle(cell, grid.replication);
            return html`<td class=${`cell health-${cell.health}`} title=${title} tabindex="0" aria-label=${title}
              onFocus=${() => setFocused(cell)} onBlur=${() => setFocused(undefined)}
              data-layer=${cell.layer} data-expert=${cell.expert} data-health=${cell.health}>${cell.live}</td>`;
          })}
        </tr>`)}</tbody>
      </table>
    </div>
    <p class="small muted" aria-hidden="true" data-testid="cell-detail">
      ${focusedCell ? cellTitle(focusedCell, grid.replication).replaceAll('\n', ' · ') : 'Tab to a cell to list its holders.'}</p>
  </div>`;
}
