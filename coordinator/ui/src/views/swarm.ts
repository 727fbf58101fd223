// The swarm's nodes as a table (status, capacity, hosted experts, traffic, last heartbeat) and the
// join panel with the exact commands a volunteer runs.
import { html } from 'htm/preact';
import { useState } from 'preact/hooks';
import type { NodeView, SwarmInfo } from '../../../api/service.ts';
import { formatAgo, formatBytes, formatNumber, shortId } from '../logic/format.ts';
import { valueOf } from './input.ts';
import { useNow } from './session.ts';

const STATUS_ORDER = { training: 0, idle: 1, slow: 2, gone: 3 } as const;

function expertList(node: NodeView): string {
  return node.experts.map((ref) => `layer ${ref.layer} expert ${ref.expert}`).join('\n') || 'no experts';
}

export function NodesTable({ nodes }: { nodes: NodeView[] }) {
  const now = useNow();
  if (nodes.length === 0) return html`<p class="empty">No node has joined yet: see "Join this swarm".</p>`;
  const sorted = [...nodes].sort((a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.firstSeen - b.firstSeen);
  return html`<div class="table-wrap"><table class="nodes">
    <thead><tr>
      <th scope="col">Node</th><th scope="col">Status</th><th scope="col" class="num">Cores</th>
      <th scope="col" class="num">GFLOPS</th><th scope="col" class="num">Memory used / budget</th><th scope="col" class="num">Experts</th>
      <th scope="col" class="num">In</th><th scope="col" class="num">Out</th><th scope="col">Last heartbeat</th>
    </tr></thead>
    <tbody>${sorted.map((node) => html`<tr key=${node.nodeId} data-status=${node.status}>
      <td><code title=${node.nodeId}>${shortId(node.nodeId, 10)}</code></td>
      <td><span class=${`badge status-${node.status}`}>${node.status}</span></td>
      <td class="num">${node.cores}</td>
      <td class="num">${formatNumber(node.gemmGflops)}</td>
      <td class="num">${node.memoryUsedBytes === undefined ? '' : `${formatBytes(node.memoryUsedBytes)} / `}${formatBytes(node.memoryBytes)}</td>
      <td class="num"><span title=${expertList(node)}>${node.experts.length}</span></td>
      <td class="num">${formatBytes(node.bytesReceived)}</td>
      <td class="num">${formatBytes(node.bytesSent)}</td>
      <td>${formatAgo(node.lastSeen, now)}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

/** Addresses others can dial come first: loopback ones only work on the coordinator's own machine. */
function rankAddrs(addrs: string[]): string[] {
  const local = (addr: string) => /\/ip4\/127\.|\/ip6\/::1\//.test(addr);
  return [...addrs.filter((addr) => !local(addr)), ...addrs.filter(local)];
}

export function JoinPanel({ swarm }: { swarm: SwarmInfo | undefined }) {
  const addrs = rankAddrs(swarm?.addrs ?? []);
  const [chosen, setChosen] = useState(0);
  if (!swarm) return html`<p class="empty">Loading…</p>`;
  if (addrs.length === 0) return html`<p class="empty">The coordinator lists no address to join.</p>`;
  const addr = addrs[Math.min(chosen, addrs.length - 1)];
  const tokenPart = swarm.joinTokenRequired ? ' --token <token>' : '';
  const dockerToken = swarm.joinTokenRequired ? ' SWARMTRAIN_TOKEN=<token>' : '';
  return html`<div class="join">
    ${addrs.length > 1 && html`<label>Address <select value=${chosen} onChange=${(e: Event) => setChosen(Number(valueOf(e)))}>
      ${addrs.map((option, i) => html`<option value=${i}>${option}</option>`)}
    </select></label>`}
    <p>With Docker, in a checkout of swarmtrain:</p>
    <${CopyLine} text=${`SWARMTRAIN_JOIN=${addr}${dockerToken} docker compose up -d`} />
    <p>With Node.js 20.19 or later:</p>
    <${CopyLine} text=${`npx swarmtrain node --join ${addr}${tokenPart}`} />
    ${swarm.joinTokenRequired
      && html`<p class="hint">Replace <code>${'<token>'}</code> with the swarm's join token (ask its operator).</p>`}
  </div>`;
}

function CopyLine({ text }: { text: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    await navigator.clipboard?.writeText(text);
    setCopied(true);
    setTimeout(() => setCopied(false), 1500);
  };
  return html`<div class="copy-line"><pre><code>${text}</code></pre>
    ${navigator.clipboard && html`<button type="button" class="small" onClick=${copy}>${copied ? 'Copied' : 'Copy'}</button>`}
  </div>`;
}
