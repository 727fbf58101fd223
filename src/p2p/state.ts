// The `state` protocol's two ends, shared by nodes and the coordinator: serving the tensors of
// parameter groups by name to admitted peers, and fetching a whole group a few tensors at a time.
import { f32Tensor, tensorF32, type NamedTensor } from '../../proto/index.ts';
import type { F32Tensor } from '../model/config.ts';
import { RefusedError } from './errors.ts';
import type { DialTarget, Rpc } from './rpc.ts';

/** Names fetched per request, keeping each reply well under the message cap. */
const NAMES_PER_REQUEST = 16;

export interface GroupSource {
  jobId: string;
  /** `admitted` may ask the coordinator first: a node that just joined is not in our plan yet. */
  admitted: (peer: string) => Promise<boolean>;
  /** A group's tensors as they are now, or undefined when this end does not have it. */
  lookup: (group: string) => Map<string, F32Tensor> | undefined;
  /** The round (or step) the served values come from. */
  round: () => number;
  /** Called once per group fetch (its first, list-only request), after the checks passed. */
  onServe?: (group: string, peer: string) => void;
}

export async function serveGroups(rpc: Rpc, source: GroupSource): Promise<void> {
  const { jobId } = source;
  await rpc.handle('state', async (request, { peer }) => {
    if (!(await source.admitted(peer.toString()))) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (request.jobId !== jobId) throw new RefusedError(`this peer serves job ${jobId}, not ${request.jobId}`);
    const state = source.lookup(request.group);
    if (!state) throw new RefusedError(`group ${request.group} is not held here`);
    const parts: NamedTensor[] = [];
    for (const name of request.names) {
      const tensor = state.get(name);
      if (!tensor) throw new RefusedError(`group ${request.group} has no tensor ${name}`);
      parts.push({ name, tensor: f32Tensor(tensor.shape, tensor.data) });
    }
    if (request.names.length === 0) source.onServe?.(request.group, peer.toString());
    return { jobId, group: request.group, round: source.round(), available: [...state.keys()], parts };
  }, { maxConcurrent: 8 });
}

/** Fetches a group from a holder, a few tensors per request: all of it, or the tensors `wanted` picks. */
export async function fetchGroup(
  rpc: Rpc, target: DialTarget, jobId: string, group: string, timeoutMs: number, wanted: (name: string) => boolean = () => true,
): Promise<Map<string, F32Tensor>> {
  const available = (await rpc.request(target, 'state', { jobId, group, names: [] }, { timeout: timeoutMs })).available.filter(wanted);
  const out = new Map<string, F32Tensor>();
  for (let i = 0; i < available.length; i += NAMES_PER_REQUEST) {
    const names = available.slice(i, i + NAMES_PER_REQUEST);
    const reply = await rpc.request(target, 'state', { jobId, group, names }, { timeout: timeoutMs });
    for (const { name, tensor } of reply.parts) {
      const data = Float32Array.from(tensorF32(tensor));
      for (let j = 0; j < data.length; j++) if (!Number.isFinite(data[j])) throw new Error(`state of ${group}: ${name} has a non-finite value`);
      out.set(name, { shape: tensor.shape, data });
    }
  }
  for (const name of available) if (!out.has(name)) throw new Error(`state of ${group}: ${name} was not sent`);
  return out;
}
