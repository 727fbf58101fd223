// Event-loop delay of the process it is loaded into (`node --import ./bench/loop-delay.mjs`): every 2 s, the
// window's p50, p99 and max in ms, its garbage collections' longest pause and total, and its JS heap and the memory
// outside it (array buffers, sockets' buffers) in bytes at the window's end, as a JSON line on stdout,
// `{"event":"loop-delay",...}`, beside the process's own JSON events. bench/volunteers.ts loads it into the
// coordinator: a request's round trip includes this wait.
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const WINDOW_MS = 2000;
const RESOLUTION_MS = 10;
const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
histogram.enable();
const gc = { longest: 0, total: 0 };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gc.longest = Math.max(gc.longest, entry.duration);
    gc.total += entry.duration;
  }
}).observe({ entryTypes: ['gc'] });
const heap = () => {
  const { heapUsed, external } = process.memoryUsage();
  return { heapUsed, external };
};
const round = (ms) => Math.round(ms * 100) / 100;
// The histogram holds the time between its timer's ticks: the delay is what exceeds the tick.
const ms = (ns) => Math.max(0, round(ns / 1e6 - RESOLUTION_MS));
setInterval(() => {
  const line = {
    event: 'loop-delay', p50: ms(histogram.percentile(50)), p99: ms(histogram.percentile(99)), max: ms(histogram.max),
    gcLongest: round(gc.longest), gcTotal: round(gc.total), ...heap(),
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  histogram.reset();
  Object.assign(gc, { longest: 0, total: 0 });
}, WINDOW_MS).unref();
