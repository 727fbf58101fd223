// Learning-rate schedule: linear warmup to `lr`, then cosine decay to `minLr` at `totalSteps`.
export interface ScheduleOptions {
  lr: number;
  minLr: number;
  warmupSteps: number;
  totalSteps: number;
}

/** Learning rate for update number `step` (0-based). */
export function learningRate(step: number, { lr, minLr, warmupSteps, totalSteps }: ScheduleOptions): number {
  if (step < warmupSteps) return (lr * (step + 1)) / warmupSteps;
  const decaySteps = Math.max(1, totalSteps - warmupSteps);
  const progress = Math.min(1, (step - warmupSteps) / decaySteps);
  return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * progress));
}
