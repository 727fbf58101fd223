// The coordinator's HTTP API as the UI calls it: JSON requests with the bearer token, URLs that
// carry the token for what cannot set a header (the event stream, download links), multipart
// uploads, and the token itself, kept in sessionStorage only (gone with the tab).

const TOKEN_KEY = 'swarmtrain.token';

export function savedToken(): string | undefined {
  return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}

export function saveToken(token: string | undefined): void {
  if (token === undefined) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

/** A refused request: the HTTP status and the API's error body (`field` names the input at fault on a 400). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

/** `path` with `?token=` added, for GET routes reached without headers (EventSource, links). */
export function withToken(path: string, token: string | undefined): string {
  if (!token) return path;
  return `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

async function send<T>(method: string, path: string, token: string | undefined, body?: BodyInit, type?: string): Promise<T> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (type) headers['content-type'] = type;
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  const parsed = text === '' ? undefined : parseJson(text);
  if (!response.ok) {
    const error = (parsed ?? {}) as { message?: string; field?: string };
    throw new ApiError(response.status, error.message ?? `${method} ${path}: HTTP ${response.status}`, error.field);
  }
  return parsed as T;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return { message: text };
  }
}

export function getJson<T>(path: string, token: string | undefined): Promise<T> {
  return send<T>('GET', path, token);
}

export function postJson<T>(path: string, token: string | undefined, body?: unknown): Promise<T> {
  return body === undefined ? send<T>('POST', path, token) : send<T>('POST', path, token, JSON.stringify(body), 'application/json');
}

export function deleteJson<T>(path: string, token: string | undefined): Promise<T> {
  return send<T>('DELETE', path, token);
}

/** Multipart POST: a `name` field, then the files (the browser sets the boundary). */
export function upload<T>(path: string, token: string | undefined, name: string, files: File[]): Promise<T> {
  const form = new FormData();
  form.append('name', name);
  for (const file of files) form.append('file', file, file.name);
  return send<T>('POST', path, token, form);
}

/** Whether the coordinator takes `token` for changes: a pause of a job that cannot exist is 404 with it, 401 without. */
export async function checkToken(token: string): Promise<boolean> {
  try {
    await postJson('/api/jobs/-/pause', token);
    return true;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return error.status !== 401 && error.status !== 403;
  }
}
