// GET /api/events over a real socket: every SwarmEvent arrives in order as one SSE frame (id, event,
// data), idle streams get heartbeat comments, and the subscription ends when the client disconnects
// or the server closes, so nothing leaks.
import { afterEach, describe, expect, it } from 'vitest';
import type { SwarmEvent } from '../../../coordinator/api/service.ts';
import { listeningApi, TOKEN, type TestApi } from './setup.ts';

let api: (TestApi & { url: string }) | undefined;
afterEach(() => api?.close());

/** Reads the stream's text until `done` says it has enough. */
async function readUntil(body: ReadableStream<Uint8Array>, done: (text: string) => boolean): Promise<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!done(text)) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    text += decoder.decode(value, { stream: true });
  }
  reader.releaseLock();
  return text;
}

/** Waits (polling) for a condition the server reaches on its own, such as a closed subscription. */
async function eventually(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(condition()).toBe(true);
}

describe('GET /api/events', () => {
  it('delivers each event as an SSE frame, in order, and unsubscribes when the client goes', async () => {
    api = await listeningApi();
    const abort = new AbortController();
    const response = await fetch(`${api.url}/api/events`, { signal: abort.signal });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    await eventually(() => api!.service.subscriberCount === 1);

    const sent: SwarmEvent[] = [];
    const job = await api.service.createJob({ totalBatches: 3 });
    api.service.setNode({ nodeId: 'n1' });
    api.service.advance(job.id, 1);
    api.service.addCheckpoint(job.id, 1, { 'a.bin': 'x' });
    api.service.advance(job.id, 2);
    // The fake numbers events from 1; the stream must carry all of them (job, job, node, metrics, job, checkpoint, metrics, job).
    const text = await readUntil(response.body!, (t) => t.includes('id: 8\n'));
    const frames = text.split('\n\n').filter((frame) => frame.startsWith('id: '));
    for (const frame of frames) {
      const [id, event, data] = frame.split('\n');
      const parsed = JSON.parse(data.slice('data: '.length)) as SwarmEvent;
      expect(id).toBe(`id: ${parsed.seq}`);
      expect(event).toBe(`event: ${parsed.type}`);
      sent.push(parsed);
    }
    expect(sent.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(sent.map((e) => e.type)).toEqual(['job', 'job', 'node', 'metrics', 'job', 'checkpoint', 'metrics', 'job']);
    expect(sent.at(-1)).toMatchObject({ type: 'job', job: { id: job.id, state: 'done' } });

    abort.abort();
    await eventually(() => api!.service.subscriberCount === 0);
  });

  it('sends heartbeat comments on an idle stream and ends open streams when the server closes', async () => {
    api = await listeningApi({ heartbeatMs: 20, protectReads: true });
    expect((await fetch(`${api.url}/api/events`)).status).toBe(401);
    const streams = await Promise.all([1, 2, 3].map(() => fetch(`${api!.url}/api/events?token=${TOKEN}`)));
    await eventually(() => api!.service.subscriberCount === 3);
    const text = await readUntil(streams[0].body!, (t) => (t.match(/: heartbeat\n\n/g) ?? []).length >= 2);
    expect(text.startsWith(': connected\n\n')).toBe(true);
    await api.app.close();
    expect(api.service.subscriberCount).toBe(0);
    for (const stream of streams) await readUntil(stream.body!, () => false); // each ends
  });
});
