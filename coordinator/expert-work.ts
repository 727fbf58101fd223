// The experts' work as the nodes count it: the rows their routers sent each expert, summed over the swarm's
// heartbeats. Replica counts alone balance nothing when a router favours some experts (a pretrained one does), so
// the run hands this to the planner, which swaps replicas between nodes doing more and less than their share.
// A router in training shifts its favourites within seconds (the load-balancing loss pushes back on any of them),
// and each move costs the moved experts their optimizer state and a step of calls, so the balance is looked at
// only every `intervalMs`, over rows of several windows: a lasting skew moves experts, a passing one does not.

export interface ExpertWorkOptions {
  /** Experts in the job: layers × experts per layer. */
  groups: number;
  /** New rows needed for a look; each look halves the rows counted before it, so older windows count less. */
  windowRows: number;
  /** Time between two looks at the balance. */
  intervalMs: number;
  now: () => number;
}

export class ExpertWork {
  private readonly rows: Float64Array;
  private fresh = 0;
  private lastLook: number;

  constructor(private readonly options: ExpertWorkOptions) {
    this.rows = new Float64Array(options.groups);
    this.lastLook = options.now();
  }

  /** Adds a heartbeat's counts; throws (taking none) unless there is one non-negative integer per expert. */
  add(rows: readonly number[]): void {
    const { groups } = this.options;
    if (rows.length !== groups) throw new RangeError(`expertRows has ${rows.length} counts, the job ${groups} experts`);
    if (!rows.every((n) => Number.isSafeInteger(n) && n >= 0)) throw new RangeError('expertRows must be non-negative integers');
    rows.forEach((n, g) => (this.rows[g] += n));
    this.fresh += rows.reduce((a, b) => a + b, 0);
  }

  /** The work to balance when a look is due (a window of new rows, intervalMs since the last look), else undefined. */
  take(): Float64Array | undefined {
    const now = this.options.now();
    if (this.fresh < this.options.windowRows || now - this.lastLook < this.options.intervalMs) return undefined;
    const work = this.rows.slice();
    this.rows.forEach((n, g) => (this.rows[g] = n / 2));
    this.fresh = 0;
    this.lastLook = now;
    return work;
  }
}
