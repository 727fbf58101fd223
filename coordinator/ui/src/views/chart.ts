// The loss chart (uPlot): training and held-out loss over completed micro-batches, downsampled to
// about two points per pixel column and redrawn at most once a frame; x turns logarithmic on long runs.
import { html } from 'htm/preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import type { MetricPoint } from '../../../api/service.ts';
import type { Scale } from '../logic/downsample.ts';
import { lossChartData, xScaleFor } from '../logic/job-metrics.ts';
import { formatNumber } from '../logic/format.ts';
import { valueOf } from './input.ts';

const HEIGHT = 260;
/** Tick steps of the micro-batch axis: whole batches, 1-2-5 per decade. */
const BATCH_STEPS = Array.from({ length: 10 }, (_, decade) => [1, 2, 5].map((step) => step * 10 ** decade)).flat();

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function chartOptions(width: number, scale: Scale): uPlot.Options {
  const axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--grid'), width: 1 }, ticks: { stroke: cssVar('--grid'), width: 1 } };
  return {
    width, height: HEIGHT,
    scales: { x: { time: false, distr: scale === 'log' ? 3 : 1 } },
    axes: [
      { ...axis, label: 'micro-batches', incrs: BATCH_STEPS, // On a log axis uPlot passes null for the unlabelled minor ticks.
        values: (_plot, ticks) => ticks.map((tick) => (tick === null ? '' : formatNumber(tick))) },
      { ...axis, label: 'loss' },
    ],
    series: [
      { label: 'batches', value: (_plot, value) => (value === null ? '—' : formatNumber(value)) },
      { label: 'loss', stroke: cssVar('--accent'), width: 1.5, spanGaps: true },
      { label: 'held-out', stroke: cssVar('--accent-2'), width: 2, dash: [6, 4], spanGaps: true, points: { show: true, size: 4 } },
    ],
    legend: { live: true },
  };
}

export function LossChart({ points }: { points: MetricPoint[] }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);
  const [chosenScale, setChosenScale] = useState<Scale | 'auto'>('auto');
  const scale = chosenScale === 'auto' ? xScaleFor(points) : chosenScale;
  const latest = useRef(points);
  latest.current = points;

  // One chart per x scale (uPlot fixes a scale's distribution when built), resized with its box.
  useEffect(() => {
    const element = box.current!;
    const width = () => Math.max(200, element.clientWidth);
    const chart = new uPlot(chartOptions(width(), scale), lossChartData(latest.current, width(), scale), element);
    plot.current = chart;
    const resize = new ResizeObserver(() => chart.setSize({ width: width(), height: HEIGHT }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      chart.destroy();
      plot.current = undefined;
    };
  }, [scale]);

  // New samples: one redraw per animation frame however many arrive.
  useEffect(() => {
    const frame = requestAnimationFrame(() => {
      const chart = plot.current;
      if (chart) chart.setData(lossChartData(latest.current, Math.max(200, chart.width), scale));
    });
    return () => cancelAnimationFrame(frame);
  }, [points, scale]);

  const pick = (e: Event) => setChosenScale(valueOf(e) as Scale | 'auto');
  return html`<figure class="chart">
    <div class="chart-head">
      <figcaption>Loss (${points.length} samples)</figcaption>
      <label class="small">x axis <select value=${chosenScale} onChange=${pick}>
        <option value="auto">auto (${xScaleFor(points)})</option><option value="linear">linear</option><option value="log">log</option>
      </select></label>
    </div>
    <div ref=${box} class="chart-box" data-testid="loss-chart"></div>
    ${points.length === 0 && html`<p class="empty">No samples yet.</p>`}
  </figure>`;
}
