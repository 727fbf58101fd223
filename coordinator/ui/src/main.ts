// The web UI's entry: reads the token kept in this tab, starts following the swarm, renders the app.
// JOB_REQUEST_SCHEMA is written in at build time (coordinator/ui/build.mjs) from the API's schema
// of POST /api/jobs, so the form checks what the API checks.
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { html } from 'htm/preact';
import { render } from 'preact';
import { useMemo, useState } from 'preact/hooks';
import { savedToken, saveToken } from './api.ts';
import { LiveSwarm } from './live.ts';
import type { JsonSchema } from './logic/job-form.ts';
import { App } from './views/app.ts';
import { SessionContext, type Session } from './views/session.ts';

declare const JOB_REQUEST_SCHEMA: JsonSchema;

function Root() {
  const [token, setTokenState] = useState(savedToken);
  const live = useMemo(() => {
    const swarm = new LiveSwarm(token);
    swarm.start();
    return swarm;
  }, []);
  const session: Session = {
    live, token,
    setToken(next) {
      saveToken(next);
      setTokenState(next);
      live.start(next);
    },
  };
  return html`<${SessionContext.Provider} value=${session}><${App} schema=${JOB_REQUEST_SCHEMA} /></${SessionContext.Provider}>`;
}

const container = document.getElementById('app')!;
container.textContent = ''; // the "Loading" line index.html shows until the script runs
render(html`<${Root} />`, container);
