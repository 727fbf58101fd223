// The averaging arithmetic, apart from any transport (hivemind's accumulators are the model):
// aggregation (aggregate.ts), outlier refusal (screen.ts), the outer step (outer.ts), parts and owners (partition.ts),
// small groups per round (groups.ts), the per-value passes in JavaScript or on the kernels (passes.ts).
export * from './aggregate.ts';
export * from './screen.ts';
export * from './outer.ts';
export * from './partition.ts';
export * from './groups.ts';
export * from './passes.ts';
