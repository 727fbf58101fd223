// A typed client of the coordinator's HTTP API (fetch-based): one method per route, the live event
// stream parsed from SSE, and errors that carry the server's status and message.
import type {
  CheckpointView, JobRequest, JobView, MetricPoint, NodeView, Placement, SwarmEvent, SwarmInfo,
} from './api/service.ts';

/** The server answered with an error: its status and message (and the field it named). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

/** No answer at all: the coordinator is down, or the URL is wrong. */
export class UnreachableError extends Error {
  override name = 'UnreachableError';
}

export interface ClientOptions {
  /** e.g. http://127.0.0.1:8080 */
  url: string;
  /** The API token (needed to change anything, and to read when the coordinator protects reads). */
  token?: string;
}

export type Corpus = { name: string; bytes: number; bundled: boolean };
export type Model = { name: string; bytes: number };

export class CoordinatorClient {
  readonly url: string;
  private readonly token: string | undefined;

  constructor(options: ClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
  }

  health = () => this.json<{ ok: true; version: string; uptimeSeconds: number; runningJob?: string }>('GET', '/healthz');
  swarm = () => this.json<SwarmInfo>('GET', '/api/swarm');
  nodes = () => this.json<NodeView[]>('GET', '/api/nodes');
  jobs = () => this.json<JobView[]>('GET', '/api/jobs');
  job = (id: string) => this.json<JobView>('GET', `/api/jobs/${encodeURIComponent(id)}`);
  createJob = (request: JobRequest) => this.json<JobView>('POST', '/api/jobs', request);
  pauseJob = (id: string) => this.json<JobView>('POST', `/api/jobs/${encodeURIComponent(id)}/pause`);
  resumeJob = (id: string) => this.json<JobView>('POST', `/api/jobs/${encodeURIComponent(id)}/resume`);
  cancelJob = (id: string) => this.json<JobView>('POST', `/api/jobs/${encodeURIComponent(id)}/cancel`);
  deleteJob = async (id: string): Promise<void> => {
    await this.request('DELETE', `/api/jobs/${encodeURIComponent(id)}`);
  };
  metrics = async (id: string, points?: number): Promise<MetricPoint[]> => {
    const query = points === undefined ? '' : `?points=${points}`;
    return (await this.json<{ points: MetricPoint[] }>('GET', `/api/jobs/${encodeURIComponent(id)}/metrics${query}`)).points;
  };
  placement = (id: string) => this.json<Placement>('GET', `/api/jobs/${encodeURIComponent(id)}/placement`);
  checkpoints = (id: string) => this.json<CheckpointView[]>('GET', `/api/jobs/${encodeURIComponent(id)}/checkpoints`);
  sample = (id: string, request: { prompt: string; maxTokens?: number; temperature?: number }) =>
    this.json<{ text: string; round: number }>('POST', `/api/jobs/${encodeURIComponent(id)}/sample`, request);
  corpora = () => this.json<Corpus[]>('GET', '/api/corpora');
  models = () => this.json<Model[]>('GET', '/api/models');

  /** The job's result (or a checkpoint's files) as a tar stream. */
  async download(id: string, checkpointRound?: number): Promise<ReadableStream<Uint8Array>> {
    const path = checkpointRound === undefined ? 'result' : `checkpoints/${checkpointRound}/download`;
    const response = await this.request('GET', `/api/jobs/${encodeURIComponent(id)}/${path}`);
    return response.body!;
  }

  /** Uploads a corpus file (a Blob: fs.openAsBlob streams one from disk). */
  addCorpus(name: string, file: Blob, fileName = `${name}.txt`): Promise<Corpus> {
    const form = new FormData();
    form.append('name', name);
    form.append('file', file, fileName);
    return this.json<Corpus>('POST', '/api/corpora', form);
  }

  /** Uploads a model folder's files (config.json, tokenizer.json, *.safetensors, the index). */
  addModel(name: string, files: { name: string; data: Blob }[]): Promise<Model> {
    const form = new FormData();
    form.append('name', name);
    for (const file of files) form.append('files', file.data, file.name);
    return this.json<Model>('POST', '/api/models', form);
  }

  /**
   * The live events from the moment this resolves (the server has subscribed by then) until `signal`
   * aborts or the server ends the stream.
   */
  async events(signal?: AbortSignal): Promise<AsyncGenerator<SwarmEvent>> {
    const response = await this.request('GET', '/api/events', undefined, signal);
    return parseEvents(response.body!, signal);
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.request(method, path, body)).json() as Promise<T>;
  }

  private async request(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = this.token === undefined ? {} : { authorization: `Bearer ${this.token}` };
    const isForm = body instanceof FormData;
    if (body !== undefined && !isForm) headers['content-type'] = 'application/json';
    let response: Response;
    try {
      response = await fetch(`${this.url}${path}`, {
        method, headers, signal, ...(body === undefined ? {} : { body: isForm ? body : JSON.stringify(body) }),
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new UnreachableError(`cannot reach the coordinator at ${this.url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
    }
    if (response.ok) return response;
    const text = await response.text();
    let parsed: { message?: unknown; field?: unknown } = {};
    try {
      parsed = JSON.parse(text);
    } catch {
      // not our error shape: the status and the text say it
    }
    const message = typeof parsed.message === 'string' ? parsed.message
      : `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ''}`;
    throw new ApiError(response.status, message, typeof parsed.field === 'string' ? parsed.field : undefined);
  }
}

/** SSE frames to SwarmEvents: `data:` lines joined, comments and other fields skipped. */
async function* parseEvents(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<SwarmEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split('\n').filter((line) => line.startsWith('data:')).map((line) => line.slice(5).replace(/^ /, ''));
        if (data.length > 0) yield JSON.parse(data.join('\n')) as SwarmEvent;
      }
    }
  } catch (err) {
    if (!signal?.aborted) throw err;
  }
}
