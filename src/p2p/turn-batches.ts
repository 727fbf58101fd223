// Requests to one peer started in the same turn of the event loop, gathered into one: each request costs both
// ends a stream and a few milliseconds of CPU beyond its bytes, and callers (a round's groups, a layer's expert
// calls) start theirs together.

/** Batches by key (a peer, say), each handed to `send` once the turn that opened it has run its synchronous code. */
export class TurnBatches<B> {
  private readonly open = new Map<string, B>();

  constructor(private readonly send: (batch: B) => void) {}

  /** The batch of `key` opened this turn when `fits` it, else a new one from `create` (sent at the end of this turn). */
  batch(key: string, create: () => B, fits: (batch: B) => boolean): B {
    const current = this.open.get(key);
    if (current && fits(current)) return current;
    const opened = create();
    this.open.set(key, opened);
    queueMicrotask(() => {
      if (this.open.get(key) === opened) this.open.delete(key);
      this.send(opened);
    });
    return opened;
  }
}
