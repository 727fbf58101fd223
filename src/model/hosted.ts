// The routed experts this process hosts, and local-first routing of the MoE layers' calls: a
// hosted expert runs here, any other goes to the injected RemoteExperts port (a swarm node's).
import { expertPrefix, type F32Tensor, type ModelConfig } from './config.ts';
import type { ExpertCompute, SwigluExpert } from './expert.ts';
import type { Param } from './params.ts';
import type { ModelWeights } from './weights.ts';

/**
 * Experts held by other processes, reached the way the MoE layer reaches any expert: each call
 * resolves false when no holder answered (after whatever failover the transport does), and the
 * layer then drops that expert for those rows.
 */
export type RemoteExperts = ExpertCompute;

/** Builds a hosted expert over the weights held here. */
export interface ExpertBuilder {
  /** The instance the model's own forward and backward run, keeping activations in its layer's slab. */
  local(layer: number, expert: number): SwigluExpert;
  /** A second instance over the same parameters, with its own activation caches, to serve peers' calls. */
  serving(layer: number, expert: number): SwigluExpert;
}

/** Turns of the event loop a stage boundary gives at most; a turn shorter than BUSY_TURN_MS had nothing to do. */
const MAX_TURNS = 8;
const BUSY_TURN_MS = 0.1;

export class HostedExperts implements ExpertCompute {
  /** Calls of the MoE layers that ran here. */
  localCalls = 0;
  /** [layer][expert]; undefined where another process holds the expert. */
  private readonly local: (SwigluExpert | undefined)[][];
  private readonly servingReplicas = new Map<string, SwigluExpert>();

  constructor(
    config: ModelConfig,
    private readonly weights: ModelWeights,
    private readonly build: ExpertBuilder,
    private readonly remote?: RemoteExperts,
  ) {
    const hosts = weights.options.hosts ?? (() => true);
    this.local = Array.from({ length: config.numLayers }, (_, l) =>
      Array.from({ length: config.numExperts }, (_, e) => (hosts(l, e) ? build.local(l, e) : undefined)));
  }

  hosts(layer: number, expert: number): boolean {
    return this.local[layer]?.[expert] !== undefined;
  }

  forward(layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean> {
    return this.forwardWith(this.local[layer][expert], layer, expert, x, y, rows);
  }

  backward(layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number): Promise<boolean> {
    return this.backwardWith(this.local[layer][expert], layer, expert, x, dy, dx, rows);
  }

  /**
   * The routing of a second lane of the model (another part of the micro-batch in flight at the same time):
   * the same experts here and remote, each local one with an instance of its own (made on first use by
   * `build`, and again after the expert is given up and taken on), so the lanes' activations stay apart.
   */
  lane(build: (layer: number, expert: number) => SwigluExpert): ExpertCompute {
    const instances = new WeakMap<SwigluExpert, SwigluExpert>();
    const instance = (layer: number, expert: number) => {
      const held = this.local[layer][expert];
      if (!held) return undefined;
      let own = instances.get(held);
      if (!own) instances.set(held, (own = build(layer, expert)));
      return own;
    };
    return {
      forward: (layer, expert, x, y, rows) => this.forwardWith(instance(layer, expert), layer, expert, x, y, rows),
      backward: (layer, expert, x, dy, dx, rows) => this.backwardWith(instance(layer, expert), layer, expert, x, dy, dx, rows),
    };
  }

  private async forwardWith(held: SwigluExpert | undefined, layer: number, expert: number, x: Float32Array, y: Float32Array, rows: number): Promise<boolean> {
    if (!held) return this.remote ? this.remote.forward(layer, expert, x, y, rows) : false;
    await this.letPeersIn();
    this.localCalls++;
    held.forward(x, y, rows);
    return true;
  }

  private async backwardWith(
    held: SwigluExpert | undefined, layer: number, expert: number, x: Float32Array, dy: Float32Array, dx: Float32Array, rows: number,
  ): Promise<boolean> {
    if (!held) return this.remote ? this.remote.backward(layer, expert, x, dy, dx, rows) : false;
    await this.letPeersIn();
    this.localCalls++;
    held.backward(x, dy, dx, rows);
    return true;
  }

  /**
   * In a swarm, a local expert runs only after a turn of the event loop, and so do the model's other stages
   * (attention, the head's chunks): the kernels hold the thread, and between them the peers' calls for experts
   * held here are served, so a call waits about one stage, not this node's whole step. The MoE layer starts
   * all of a layer's expert calls at once: the turn lets the remote ones go out before the local ones compute.
   */
  async letPeersIn(): Promise<void> {
    if (!this.remote) return;
    // A call takes a few turns (its request read, answered, the reply written): while a turn had work, give another.
    for (let turn = 0; turn < MAX_TURNS; turn++) {
      const t0 = performance.now();
      await new Promise((resolve) => setImmediate(resolve));
      if (performance.now() - t0 < BUSY_TURN_MS) return;
    }
  }

  /** The replica that serves peers' calls for a hosted expert (made on first use), or undefined when not hosted. */
  servingExpert(layer: number, expert: number): SwigluExpert | undefined {
    if (!this.hosts(layer, expert)) return undefined;
    const key = `${layer}.${expert}`;
    let serving = this.servingReplicas.get(key);
    if (!serving) this.servingReplicas.set(key, (serving = this.build.serving(layer, expert)));
    return serving;
  }

  /** Canonical names of an expert's tensors (base matrices, and LoRA A/B in lora mode). */
  tensorNames(layer: number, expert: number): string[] {
    const prefix = `${expertPrefix(layer, expert)}.`;
    return [...this.weights.shapes.keys(), ...this.weights.loraShapes.keys()].filter((name) => name.startsWith(prefix));
  }

  /**
   * Takes on an expert (a new replica): its tensors come from `state` (a holder's current
   * values; base matrices in fp32) or, when absent, from the seeded initialization. Returns
   * its trainable parameters, for the optimizer.
   */
  add(layer: number, expert: number, state?: Map<string, F32Tensor>): Param[] {
    if (this.hosts(layer, expert)) throw new Error(`model: expert ${layer}.${expert} is already held here`);
    const trainable = this.weights.add(new Set(this.tensorNames(layer, expert)), state);
    this.local[layer][expert] = this.build.local(layer, expert);
    return trainable;
  }

  /** Gives up an expert held here; returns the names of the parameters released. */
  remove(layer: number, expert: number): string[] {
    if (!this.hosts(layer, expert)) throw new Error(`model: expert ${layer}.${expert} is not held here`);
    this.local[layer][expert]!.release();
    this.local[layer][expert] = undefined;
    const key = `${layer}.${expert}`;
    this.servingReplicas.get(key)?.release();
    this.servingReplicas.delete(key);
    const names = this.tensorNames(layer, expert);
    this.weights.remove(names);
    return names;
  }

  /** A hosted expert's current tensors (base matrices dequantized to fp32), to seed a new replica. */
  state(layer: number, expert: number): Map<string, F32Tensor> {
    return this.weights.snapshot(this.tensorNames(layer, expert));
  }
}
