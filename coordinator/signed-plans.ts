// The plans nodes are sent, each (version, address view) made and signed once: nodes of one view get
// the same peer addresses (addresses.ts), so most share one wire form. Recent ones are kept, so a node on
// one of them gets only the changes to the newest (planDelta), each computed once.
import { planDelta, type Plan, type PlanDelta } from '../proto/index.ts';

export interface SignedPlan {
  plan: Plan;
  planSignature: Uint8Array;
}

export class SignedPlans {
  /** By version, then by view key; the oldest versions go past `history`. */
  private readonly byVersion = new Map<number, Map<string, SignedPlan>>();
  /** Deltas to a plan, by the plan they start from. */
  private readonly deltas = new WeakMap<Plan, Map<Plan, PlanDelta>>();
  /** The view of the plan each node was sent last: of the plan it holds. */
  private readonly sentView = new Map<string, string>();

  /** history: versions kept to send deltas from (a node further behind gets the whole plan). */
  constructor(private readonly sign: (plan: Plan) => Uint8Array, private readonly history = 32) {}

  /** The plan of `version` for `receiver` (of view `view`), made by `make` and signed when the view's first node asks. */
  signed(receiver: string, version: number, view: string, make: () => Plan): SignedPlan {
    this.sentView.set(receiver, view);
    let views = this.byVersion.get(version);
    if (!views) {
      this.byVersion.set(version, (views = new Map()));
      for (const old of this.byVersion.keys()) if (this.byVersion.size > this.history) this.byVersion.delete(old);
    }
    let signed = views.get(view);
    if (!signed) {
      const plan = make();
      views.set(view, (signed = { plan, planSignature: this.sign(plan) }));
    }
    return signed;
  }

  /** The plan of `version` in the view `receiver` was last sent a plan of, if still kept: the one it holds. */
  held(receiver: string, version: number): Plan | undefined {
    const view = this.sentView.get(receiver);
    return view === undefined ? undefined : this.byVersion.get(version)?.get(view)?.plan;
  }

  /** The changes from `from` to `to`, computed once. */
  delta(from: Plan, to: Plan): PlanDelta {
    let byBase = this.deltas.get(to);
    if (!byBase) this.deltas.set(to, (byBase = new Map()));
    let delta = byBase.get(from);
    if (!delta) byBase.set(from, (delta = planDelta(from, to)));
    return delta;
  }
}
