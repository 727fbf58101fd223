// What a node serves of the `state` protocol (src/p2p/state.ts): the current values of the groups it
// holds, for a new replica of an expert or a node that (re)joins a running job. A group's state is what
// training changes: the trunk's trainable tensors and adapters, an expert's tensors (full) or adapters (LoRA:
// the frozen base is the job's on every node, from its blobs or the seed, and checkpoints need not carry it).
import { parseGroupId } from '../proto/index.ts';
import { expertOf, type F32Tensor } from '../src/model/config.ts';
import type { Model } from '../src/model/model.ts';
import { serveGroups, type Rpc } from '../src/p2p/index.ts';

/** The tensors of a group held here, or undefined when this node does not hold it. */
export function groupState(model: Pick<Model, 'params' | 'experts' | 'weights'>, group: string): Map<string, F32Tensor> | undefined {
  const ref = parseGroupId(group);
  // The trunk's adapters whole: a frozen LoRA A (LoRA-FA) is part of the result too.
  const changes = (name: string) => model.weights.loraShapes.has(name);
  if (ref?.kind === 'trunk') return model.params.snapshot((p) => (p.grad !== undefined || changes(p.name)) && !expertOf(p.name));
  if (!ref || !model.experts.hosts(ref.layer, ref.expert)) return undefined;
  const names = model.experts.tensorNames(ref.layer, ref.expert);
  return model.weights.snapshot(model.weights.options.mode === 'full' ? names : names.filter(changes));
}

/**
 * The last state of experts this node gave up, served a while longer: a re-plan that moves an expert names this
 * node in the plan's `handover`, and the new holder copies the state from here, so the move keeps its training
 * even where this node applies the plan (and drops the expert) first.
 */
export class ReleasedGroups {
  private readonly kept = new Map<string, { state: Map<string, F32Tensor>; until: number }>();

  constructor(private readonly keepMs: number, private readonly now: () => number = Date.now) {}

  keep(group: string, state: Map<string, F32Tensor>): void {
    this.kept.set(group, { state, until: this.now() + this.keepMs });
  }

  get(group: string): Map<string, F32Tensor> | undefined {
    for (const [name, { until }] of this.kept) if (until <= this.now()) this.kept.delete(name);
    return this.kept.get(group)?.state;
  }
}

/** `admitted` may ask the coordinator first: a node that just joined is not in our plan yet. */
export async function serveState(
  rpc: Rpc, model: Pick<Model, 'params' | 'experts' | 'weights'>, released: ReleasedGroups,
  admitted: (peer: string) => Promise<boolean>, jobId: string, round: () => number,
): Promise<void> {
  await serveGroups(rpc, { jobId, admitted, round, lookup: (group) => groupState(model, group) ?? released.get(group) });
}
