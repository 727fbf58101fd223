// Parameter state between nodes: a node serves the current values of the groups it holds, and a
// new replica of an expert, or a node that (re)joins a running job, fetches them from a holder.
// A group's state is what training changes: the trunk's trainable tensors, or an expert's
// tensors (its frozen base included, which a new holder does not have).
import { f32Tensor, parseGroupId, tensorF32, type NamedTensor } from '../proto/index.ts';
import { expertOf, type F32Tensor } from '../src/model/config.ts';
import type { Model } from '../src/model/model.ts';
import { RefusedError, type DialTarget, type Rpc } from '../src/p2p/index.ts';

/** Names fetched per request, keeping each reply well under the message cap. */
const NAMES_PER_REQUEST = 16;

/** The tensors of a group held here, or undefined when this node does not hold it. */
function groupState(model: Pick<Model, 'params' | 'experts'>, group: string): Map<string, F32Tensor> | undefined {
  const ref = parseGroupId(group);
  if (ref?.kind === 'trunk') return model.params.snapshot((p) => p.grad !== undefined && !expertOf(p.name));
  if (!ref || !model.experts.hosts(ref.layer, ref.expert)) return undefined;
  return model.experts.state(ref.layer, ref.expert);
}

/** `admitted` may ask the coordinator first: a node that just joined is not in our plan yet. */
export async function serveState(
  rpc: Rpc, model: Pick<Model, 'params' | 'experts'>, admitted: (peer: string) => Promise<boolean>, jobId: string, round: () => number,
): Promise<void> {
  await rpc.handle('state', async (request, { peer }) => {
    if (!(await admitted(peer.toString()))) throw new RefusedError(`peer ${peer} is not admitted to job ${jobId}`);
    if (request.jobId !== jobId) throw new RefusedError(`this node trains job ${jobId}, not ${request.jobId}`);
    const state = groupState(model, request.group);
    if (!state) throw new RefusedError(`group ${request.group} is not held here`);
    const parts: NamedTensor[] = [];
    for (const name of request.names) {
      const tensor = state.get(name);
      if (!tensor) throw new RefusedError(`group ${request.group} has no tensor ${name}`);
      parts.push({ name, tensor: f32Tensor(tensor.shape, tensor.data) });
    }
    return { jobId, group: request.group, round: round(), available: [...state.keys()], parts };
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
