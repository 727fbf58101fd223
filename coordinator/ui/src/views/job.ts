// One job: its numbers (progress and ETA, speed, traffic, averaging health), the loss chart, the
// controls (pause, resume, cancel, delete, result download), checkpoints and a text sample.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import type { JobView, MetricPoint, NodeView } from '../../../api/service.ts';
import { ApiError, deleteJson, postJson, withToken } from '../api.ts';
import {
  formatByteRate, formatBytes, formatCount, formatEta, formatNumber, formatPercent, formatRatio, formatTime, shortId, UNKNOWN,
} from '../logic/format.ts';
import { compressionRatio, flaggedPeers, trafficRates } from '../logic/job-metrics.ts';
import { LossChart } from './chart.ts';
import { PlacementMap } from './placement.ts';
import { valueOf } from './input.ts';
import { useLiveState, useSession } from './session.ts';

/** What a sample asks for: a few sentences, a little randomness. */
const SAMPLE_TOKENS = 64;
const SAMPLE_TEMPERATURE = 0.8;

function jobPath(job: JobView, rest = ''): string {
  return `/api/jobs/${encodeURIComponent(job.id)}${rest}`;
}

function Tile({ label, value, detail }: { label: string; value: string; detail?: string }) {
  return html`<div class="tile"><div class="tile-label">${label}</div><div class="tile-value">${value}</div>
    ${detail && html`<div class="tile-detail">${detail}</div>`}</div>`;
}

export function JobTiles({ job, points, nodes }: { job: JobView; points: MetricPoint[]; nodes: NodeView[] }) {
  const last = points[points.length - 1];
  // Rates of a job that stopped would be its last moments': none.
  const rates = job.state === 'running' ? trafficRates(points) : {};
  const flagged = flaggedPeers(nodes, job.id);
  return html`<div class="tiles">
    <div class="tile wide">
      <div class="tile-label">Micro-batches</div>
      <div class="tile-value">${formatCount(job.completed)} / ${formatCount(job.total)}</div>
      <progress max=${job.total || 1} value=${job.completed} aria-label="progress">${formatPercent(job.completed, job.total)}</progress>
      <div class="tile-detail">
        ${formatPercent(job.completed, job.total)} · ${job.state === 'running' ? formatEta(job.etaSeconds) : job.state}
      </div>
    </div>
    <${Tile} label="Loss" value=${formatNumber(last?.loss)} detail=${`held-out ${formatNumber(lastDefined(points, 'heldOut'))}`} />
    <${Tile} label="Tokens/s" value=${formatNumber(last?.tokensPerSecond)} detail=${`${last?.nodes ?? 0} nodes`} />
    <${Tile} label="In / out" value=${`${formatByteRate(rates.received)} / ${formatByteRate(rates.sent)}`}
      detail=${`total ${formatBytes(last?.bytesReceived)} / ${formatBytes(last?.bytesSent)}`} />
    <${Tile} label="Compression" value=${formatRatio(compressionRatio(last))}
      detail=${`updates: ${formatBytes(last?.updateBytes)} sent for ${formatBytes(last?.updateRawBytes)} as f32`} />
    <${Tile} label="Staleness" value=${last ? formatNumber(last.staleness) : UNKNOWN} detail="local steps since averaging" />
    <${Tile} label="Refused updates" value=${formatCount(last?.refusedUpdates)} />
    <${Tile} label="Dropped expert calls" value=${formatCount(last?.droppedExpertCalls)} />
    <div class="tile"><div class="tile-label">Flagged peers</div><div class="tile-value">${flagged.length}</div>
      ${flagged.length > 0 && html`<div class="tile-detail">
        ${flagged.map((peer) => html`<code title=${peer}>${shortId(peer)} </code>`)}
      </div>`}
    </div>
  </div>`;
}

function lastDefined(points: MetricPoint[], key: 'heldOut' | 'loss'): number | undefined {
  for (let i = points.length - 1; i >= 0; i--) if (points[i][key] !== undefined) return points[i][key];
  return undefined;
}

export function JobControls({ job }: { job: JobView }) {
  const { token } = useSession();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const act = (action: 'pause' | 'resume' | 'cancel' | 'delete') => async () => {
    if ((action === 'cancel' || action === 'delete') && !confirm(`${action} job ${job.name}?`)) return;
    setBusy(true);
    setError(undefined);
    try {
      if (action === 'delete') {
        await deleteJson(jobPath(job), token);
        location.hash = '#/';
      } else {
        await postJson(jobPath(job, `/${action}`), token);
      }
    } catch (failure) {
      setError(failure instanceof ApiError ? failure.message : String(failure));
    } finally {
      setBusy(false);
    }
  };
  const active = job.state === 'running' || job.state === 'queued';
  const button = (action: Parameters<typeof act>[0], label: string, danger = false) =>
    html`<button type="button" class=${danger ? 'danger' : undefined} disabled=${busy} onClick=${act(action)}>${label}</button>`;
  return html`<div class="controls">
    ${job.hasResult && html`<a class="button" href=${withToken(jobPath(job, '/result'), token)} download>Download result</a>`}
    ${token && html`
      ${active && button('pause', 'Pause')}
      ${job.state === 'paused' && button('resume', 'Resume')}
      ${(active || job.state === 'paused') && button('cancel', 'Cancel', true)}
      ${!active && job.state !== 'paused' && button('delete', 'Delete', true)}
    `}
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </div>`;
}

function Checkpoints({ job }: { job: JobView }) {
  const { token } = useSession();
  const state = useLiveState();
  const list = [...(state.checkpoints[job.id] ?? [])].sort((a, b) => b.round - a.round);
  if (list.length === 0) return html`<p class="empty">No checkpoint yet.</p>`;
  return html`<div class="table-wrap"><table>
    <thead><tr><th scope="col" class="num">Round</th><th scope="col" class="num">Micro-batches</th><th scope="col">Written</th>
      <th scope="col" class="num">Size</th><th scope="col"></th></tr></thead>
    <tbody>${list.map((checkpoint) => html`<tr key=${checkpoint.round}>
      <td class="num">${checkpoint.round}</td><td class="num">${formatCount(checkpoint.completed)}</td>
      <td>${formatTime(checkpoint.createdAt)}</td><td class="num">${formatBytes(checkpoint.bytes)}</td>
      <td><a href=${withToken(jobPath(job, `/checkpoints/${checkpoint.round}/download`), token)} download>Download</a></td>
    </tr>`)}</tbody>
  </table></div>`;
}

function SamplePanel({ job }: { job: JobView }) {
  const { token } = useSession();
  const [prompt, setPrompt] = useState('The ');
  const [sample, setSample] = useState<{ prompt: string; text: string; round: number } | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      // The service answers with the continuation alone: shown after the prompt it continues.
      const request = { prompt, maxTokens: SAMPLE_TOKENS, temperature: SAMPLE_TEMPERATURE };
      const answer = await postJson<{ text: string; round: number }>(jobPath(job, '/sample'), token, request);
      setSample({ prompt, ...answer });
    } catch (failure) {
      setError(failure instanceof ApiError ? failure.message : String(failure));
    } finally {
      setBusy(false);
    }
  };
  if (!token) return html`<p class="empty">Log in to sample text from the model.</p>`;
  return html`<form class="sample" onSubmit=${submit}>
    <label for="sample-prompt">Prompt</label>
    <div class="row"><input id="sample-prompt" value=${prompt} onInput=${(e: Event) => setPrompt(valueOf(e))} />
      <button type="submit" disabled=${busy}>${busy ? 'Sampling…' : 'Sample'}</button></div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${sample && html`<blockquote data-testid="sample-text"><strong>${sample.prompt}</strong>${sample.text}
      <footer class="muted">from round ${sample.round}</footer></blockquote>`}
  </form>`;
}

export function JobPage({ jobId }: { jobId: string }) {
  const { live } = useSession();
  const state = useLiveState();
  useEffect(() => live.watch(jobId), [live, jobId]);
  const job = state.jobs.find((candidate) => candidate.id === jobId);
  if (!job) return html`<section><p class="empty">${state.connection === 'live' ? `No job ${jobId}.` : 'Loading…'}</p></section>`;
  const points = state.metrics[job.id] ?? [];
  return html`<div class="page">
    <section>
      <div class="section-head">
        <h1>${job.name} <span class=${`badge state-${job.state}`} data-testid="job-state">${job.state}</span></h1>
        <${JobControls} job=${job} />
      </div>
      ${job.error && html`<p class=${job.state === 'failed' ? 'error' : 'muted'}>${job.error}</p>`}
      <p class="muted">${[
        job.spec.mode === 'lora' ? `LoRA r=${job.spec.lora?.rank} α=${job.spec.lora?.alpha}` : 'full training',
        `base ${job.base ?? 'none (from scratch)'} (${job.spec.baseFormat})`, `corpus ${job.spec.corpus}`,
        `created ${formatTime(job.createdAt)}`,
      ].join(' · ')}</p>
      <${JobTiles} job=${job} points=${points} nodes=${state.nodes} />
      <${LossChart} points=${points} />
    </section>
    <section><h2>Expert placement</h2><${PlacementMap} job=${job} placement=${state.placements[job.id]} nodes=${state.nodes} /></section>
    <section><h2>Checkpoints</h2><${Checkpoints} job=${job} /></section>
    <section><h2>Sample</h2><${SamplePanel} job=${job} /></section>
    <section><details><summary>Job spec</summary><pre class="spec">${JSON.stringify(job.spec, null, 2)}</pre></details></section>
  </div>`;
}
