// Event-loop delay of the process it is loaded into (`node --import ./bench/loop-delay.mjs`): every 2 s, the
// window's p50, p99 and max in ms as a JSON line on stdout, `{"event":"loop-delay",...}`, beside the process's
// own JSON events. bench/volunteers.ts loads it into the coordinator: a request's round trip includes this wait.
import { monitorEventLoopDelay } from 'node:perf_hooks';

const WINDOW_MS = 2000;
const RESOLUTION_MS = 10;
const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
histogram.enable();
// The histogram holds the time between its timer's ticks: the delay is what exceeds the tick.
const ms = (ns) => Math.max(0, Math.round(ns / 1e4) / 100 - RESOLUTION_MS);
setInterval(() => {
  const line = { event: 'loop-delay', p50: ms(histogram.percentile(50)), p99: ms(histogram.percentile(99)), max: ms(histogram.max) };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  histogram.reset();
}, WINDOW_MS).unref();
