// Corpus and model uploads: multipart bodies reach the service as files with the bytes sent (which it
// moves), and bad uploads are 4xx: a missing or bad name, wrong or extra files, a file over the limit
// (413), a body that is not multipart (415) or is cut short (400). Temp folders do not pile up.
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AUTH, testApi, type TestApi } from './setup.ts';

const MAX_UPLOAD = 64 * 1024;
let api: TestApi;
beforeEach(() => {
  api = testApi({ maxUploadBytes: MAX_UPLOAD });
});
afterEach(() => api.close());

const form = (fields: Record<string, string>, files: [field: string, name: string, content: string | Buffer][]) => {
  const data = new FormData();
  for (const [key, value] of Object.entries(fields)) data.append(key, value);
  for (const [field, name, content] of files) data.append(field, new Blob([typeof content === 'string' ? content : new Uint8Array(content)]), name);
  return data;
};
const upload = (url: string, payload: FormData) => api.app.inject({ method: 'POST', url, headers: AUTH, payload });
const uploadDirs = () => readdirSync(tmpdir()).filter((name) => name.startsWith('swarmtrain-upload-')).length;

describe('POST /api/corpora', () => {
  it('hands the uploaded file to the service under its name, then lists it', async () => {
    const before = uploadDirs();
    const text = 'Call me Ishmael.\n'.repeat(1000);
    const response = await upload('/api/corpora', form({ name: 'whales' }, [['file', 'whales.txt', text]]));
    expect(response.statusCode, response.body).toBe(201);
    expect(response.json()).toEqual({ name: 'whales', bytes: text.length, bundled: false });
    expect(readFileSync(join(api.service.dir, 'corpora', 'whales', 'corpus.txt'), 'utf8')).toBe(text);
    const list = (await api.app.inject({ url: '/api/corpora' })).json();
    expect(list).toContainEqual({ name: 'whales', bytes: text.length, bundled: false });
    expect(list).toContainEqual(expect.objectContaining({ name: 'moby-dick', bundled: true }));
    expect(uploadDirs()).toBe(before);
  });

  it('refuses a file over maxUploadBytes with 413 and keeps nothing', async () => {
    const before = uploadDirs();
    const response = await upload('/api/corpora', form({ name: 'big' }, [['file', 'big.txt', Buffer.alloc(MAX_UPLOAD + 1, 97)]]));
    expect(response.statusCode).toBe(413);
    expect(response.json()).toEqual({
      statusCode: 413, error: 'Payload Too Large', message: `a file is larger than the coordinator's upload limit of ${MAX_UPLOAD} bytes`,
    });
    expect(api.service.corpora().map((c) => c.name)).not.toContain('big');
    expect(uploadDirs()).toBe(before);
  });

  it('refuses bad uploads with 4xx naming the problem', async () => {
    const cases: [FormData, number, RegExp][] = [
      [form({}, [['file', 'a.txt', 'text']]), 400, /field `name` is required/],
      [form({ name: '../etc' }, [['file', 'a.txt', 'text']]), 400, /field `name`/],
      [form({ name: 'a' }, []), 400, /exactly one file/],
      [form({ name: 'a' }, [['document', 'a.txt', 'text']]), 400, /unknown file field "document"/],
      [form({ name: 'a', colour: 'red' }, [['file', 'a.txt', 'text']]), 400, /unknown field "colour"/],
      [form({ name: 'a' }, [['file', 'a.txt', '']]), 400, /empty/],
      [form({ name: 'moby-dick' }, [['file', 'a.txt', 'text']]), 409, /exists/],
    ];
    for (const [payload, status, message] of cases) {
      const response = await upload('/api/corpora', payload);
      expect(response.statusCode, response.body).toBe(status);
      expect(response.json().message).toMatch(message);
    }
  });

  it('answers 415 for a JSON body and 400 for a multipart body cut short', async () => {
    const json = await api.app.inject({ method: 'POST', url: '/api/corpora', headers: AUTH, payload: { name: 'x' } });
    expect(json.statusCode).toBe(415);
    expect(json.json().message).toMatch(/multipart\/form-data/);
    const cut = await api.app.inject({
      method: 'POST', url: '/api/corpora', headers: { ...AUTH, 'content-type': 'multipart/form-data; boundary=XYZ' },
      payload: '--XYZ\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n' +
        '--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc',
    });
    expect(cut.statusCode).toBe(400);
    expect(cut.json()).toMatchObject({ statusCode: 400, error: 'Bad Request' });
    const noBoundary = await api.app.inject({
      method: 'POST', url: '/api/corpora', headers: { ...AUTH, 'content-type': 'multipart/form-data' }, payload: 'x',
    });
    expect(noBoundary.statusCode).toBe(400);
  });
});

describe('POST /api/models', () => {
  const modelFiles: [string, string, string | Buffer][] = [
    ['files', 'config.json', '{"model_type":"mixtral"}'], ['files', 'tokenizer.json', '{"model":{}}'],
    ['files', 'model-00001-of-00002.safetensors', Buffer.from([1, 2, 3])], ['files', 'model-00002-of-00002.safetensors', Buffer.from([4, 5])],
    ['files', 'model.safetensors.index.json', '{"weight_map":{}}'],
  ];

  it('hands every file to the service under its own name, then lists the model', async () => {
    const response = await upload('/api/models', form({ name: 'tiny-mixtral' }, modelFiles));
    expect(response.statusCode, response.body).toBe(201);
    const bytes = modelFiles.reduce((sum, [, , content]) => sum + Buffer.byteLength(content), 0);
    expect(response.json()).toEqual({ name: 'tiny-mixtral', bytes });
    for (const [, name, content] of modelFiles) {
      expect(readFileSync(join(api.service.dir, 'models', 'tiny-mixtral', name)).equals(Buffer.from(content))).toBe(true);
    }
    expect((await api.app.inject({ url: '/api/models' })).json()).toEqual([{ name: 'tiny-mixtral', bytes }]);
  });

  it('refuses files a model folder does not hold, a model without its config, and oversized parts', async () => {
    const stray = await upload('/api/models', form({ name: 'm' }, [...modelFiles, ['files', 'run.sh', 'echo']]));
    expect(stray.statusCode).toBe(400);
    expect(stray.json().message).toMatch(/unexpected file "run.sh"/);
    const noConfig = await upload('/api/models', form({ name: 'm' }, modelFiles.slice(1)));
    expect(noConfig.statusCode).toBe(400);
    expect(noConfig.json()).toMatchObject({ field: 'files', message: 'a model needs config.json' });
    const oversized: [string, string, Buffer] = ['files', 'model.safetensors', Buffer.alloc(MAX_UPLOAD + 10)];
    const huge = await upload('/api/models', form({ name: 'm' }, [...modelFiles.slice(0, 2), oversized]));
    expect(huge.statusCode).toBe(413);
    expect(api.service.models()).toEqual([]);
  });
});
