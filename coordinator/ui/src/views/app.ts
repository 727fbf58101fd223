// The page: a header (navigation, connection state, login), and the route the hash names:
// #/ the swarm dashboard, #/jobs/<id> one job, #/new the create-job form.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import type { JobView } from '../../../api/service.ts';
import { ApiError, checkToken } from '../api.ts';
import type { Connection } from '../live.ts';
import { formatCount, formatPercent, formatTime } from '../logic/format.ts';
import type { JsonSchema } from '../logic/job-form.ts';
import { LossChart } from './chart.ts';
import { JobForm } from './job-form.ts';
import { JobPage, JobTiles } from './job.ts';
import { PlacementMap } from './placement.ts';
import { valueOf } from './input.ts';
import { useLiveState, useSession } from './session.ts';
import { JoinPanel, NodesTable } from './swarm.ts';

type Route = { page: 'swarm' } | { page: 'job'; jobId: string } | { page: 'new' };

function routeOf(hash: string): Route {
  const job = /^#\/jobs\/(.+)$/.exec(hash);
  if (job) return { page: 'job', jobId: decodeURIComponent(job[1]) };
  return hash === '#/new' ? { page: 'new' } : { page: 'swarm' };
}

function useRoute(): Route {
  const [route, setRoute] = useState(routeOf(location.hash));
  useEffect(() => {
    const follow = () => setRoute(routeOf(location.hash));
    addEventListener('hashchange', follow);
    return () => removeEventListener('hashchange', follow);
  }, []);
  return route;
}

const CONNECTION_TEXT: Record<Connection, string> = {
  connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', unauthorized: 'log in to view',
};

function Login() {
  const { token, setToken } = useSession();
  const [open, setOpen] = useState(false);
  const [draft, setDraft] = useState('');
  const [error, setError] = useState<string | undefined>();
  if (token) return html`<button type="button" class="small" onClick=${() => setToken(undefined)}>Log out</button>`;
  if (!open) return html`<button type="button" class="small primary" onClick=${() => setOpen(true)}>Log in</button>`;
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      if (await checkToken(draft.trim())) setToken(draft.trim());
      else setError('The coordinator refused this token.');
    } catch (failure) {
      setError(failure instanceof ApiError ? failure.message : `Cannot reach the coordinator: ${String(failure)}`);
    }
  };
  return html`<form class="login" onSubmit=${submit}>
    <label for="login-token">API token</label>
    <input id="login-token" type="password" autocomplete="current-password" value=${draft} autofocus
      onInput=${(e: Event) => { setDraft(valueOf(e)); setError(undefined); }} />
    <button type="submit" class="small primary">Log in</button>
    ${error && html`<span class="error" role="alert">${error}</span>`}
  </form>`;
}

function JobsTable({ jobs }: { jobs: JobView[] }) {
  if (jobs.length === 0) return html`<p class="empty">No job yet.</p>`;
  const sorted = [...jobs].sort((a, b) => b.createdAt - a.createdAt);
  return html`<div class="table-wrap"><table>
    <thead><tr><th scope="col">Job</th><th scope="col">State</th><th scope="col">Mode</th>
      <th scope="col" class="num">Progress</th><th scope="col">Created</th></tr></thead>
    <tbody>${sorted.map((job) => html`<tr key=${job.id}>
      <td><a href=${`#/jobs/${encodeURIComponent(job.id)}`}>${job.name}</a></td>
      <td><span class=${`badge state-${job.state}`}>${job.state}</span></td>
      <td>${job.spec.mode}</td>
      <td class="num">${formatCount(job.completed)} / ${formatCount(job.total)} (${formatPercent(job.completed, job.total)})</td>
      <td>${formatTime(job.createdAt)}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

function SwarmPage() {
  const state = useLiveState();
  const jobs = [...state.jobs].sort((a, b) => b.createdAt - a.createdAt);
  // The job to show: the running one, else the latest that ran (job events keep states current).
  const current = jobs.find((job) => job.state === 'running') ?? jobs.find((job) => job.state !== 'queued');
  const { live } = useSession();
  useEffect(() => { if (current) live.watch(current.id); }, [live, current?.id]);
  return html`<div class="page">
    ${current && html`<section>
      <div class="section-head"><h2>${current.state === 'running' ? 'Running' : 'Latest'} job${': '}
        <a href=${`#/jobs/${encodeURIComponent(current.id)}`}>${current.name}</a>
        <span class=${`badge state-${current.state}`}>${current.state}</span></h2></div>
      <${JobTiles} job=${current} points=${state.metrics[current.id] ?? []} nodes=${state.nodes} />
      <${LossChart} points=${state.metrics[current.id] ?? []} />
    </section>`}
    <section><h2>Nodes <span class="muted">(${state.nodes.filter((node) => node.status !== 'gone').length} alive)</span></h2>
      <${NodesTable} nodes=${state.nodes} /></section>
    ${current && html`<section><h2>Expert placement</h2>
      <${PlacementMap} job=${current} placement=${state.placements[current.id]} nodes=${state.nodes} /></section>`}
    <section><h2>Jobs</h2><${JobsTable} jobs=${jobs} /></section>
    <section><h2>Join this swarm</h2><${JoinPanel} swarm=${state.swarm} /></section>
  </div>`;
}

export function App({ schema }: { schema: JsonSchema }) {
  const route = useRoute();
  const state = useLiveState();
  const { token } = useSession();
  const page = state.connection === 'unauthorized' && !token
    ? html`<section class="page"><p>This coordinator's API needs a token even to read: log in above.</p></section>`
    : route.page === 'job' ? html`<${JobPage} jobId=${route.jobId} />`
    : route.page === 'new' ? html`<div class="page"><section><h1>New job</h1><${JobForm} schema=${schema} /></section></div>`
    : html`<${SwarmPage} />`;
  return html`<header class="top">
      <a class="brand" href="#/">swarmtrain</a>
      <nav><a href="#/" aria-current=${route.page === 'swarm' ? 'page' : undefined}>Swarm</a>
        ${token && html`<a href="#/new" aria-current=${route.page === 'new' ? 'page' : undefined}>New job</a>`}</nav>
      <span class=${`connection connection-${state.connection}`} role="status">${CONNECTION_TEXT[state.connection]}</span>
      ${!token && html`<span class="muted small">read-only</span>`}
      <${Login} />
    </header>
    <main>${page}</main>`;
}
