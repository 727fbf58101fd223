// Corpora and base models: GET lists them; POST takes a multipart upload (field `name`, then the
// files), writes each file to a temp folder and hands the paths to the service, which moves them.
import multipart, { type Multipart } from '@fastify/multipart';
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { FastifyRequest } from 'fastify';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { CorpusSchema, MODEL_FILE, ModelSchema, UploadNameSchema } from '../api/schemas.ts';
import { ServiceError, type SwarmService } from '../api/service.ts';
import { HttpError } from './errors.ts';

const MAX_MODEL_FILES = 256;

/** What a route accepts: each file's size, and (by throwing HttpError) which fields and names. */
interface UploadRules {
  maxBytes: number;
  acceptFile(field: string, name: string): void;
}

interface Upload {
  name: string;
  files: { name: string; path: string }[];
}

const nameChecker = TypeCompiler.Compile(UploadNameSchema);

/**
 * Reads the multipart body into `dir`: the `name` field and every file part under its own file name,
 * as the rules allow. Bad or oversized multipart bodies become 4xx errors.
 */
async function readUpload(request: FastifyRequest, dir: string, rules: UploadRules): Promise<Upload> {
  if (!request.isMultipart()) throw new HttpError(415, 'send multipart/form-data: a `name` field and the file(s)');
  let name: string | undefined;
  const files: Upload['files'] = [];
  try {
    for await (const part of request.parts() as AsyncIterableIterator<Multipart>) {
      if (part.type === 'field') {
        if (part.fieldname !== 'name') throw new HttpError(400, `unknown field ${JSON.stringify(part.fieldname)} (expected name)`, part.fieldname);
        name = String(part.value);
        continue;
      }
      const fileName = basename(part.filename ?? '');
      rules.acceptFile(part.fieldname, fileName);
      if (files.some((file) => file.name === fileName)) throw new HttpError(400, `file ${fileName} sent twice`, part.fieldname);
      const path = join(dir, `${files.length}-${fileName}`);
      await pipeline(part.file, createWriteStream(path));
      files.push({ name: fileName, path });
    }
  } catch (err) {
    if ((err as { code?: string }).code === 'FST_REQ_FILE_TOO_LARGE') {
      throw new HttpError(413, `a file is larger than the coordinator's upload limit of ${rules.maxBytes} bytes`);
    }
    if (err instanceof HttpError || (err as { statusCode?: number }).statusCode !== undefined) throw err;
    throw new HttpError(400, `malformed multipart body: ${(err as Error).message}`);
  }
  if (name === undefined || !nameChecker.Check(name)) {
    throw new HttpError(400, 'field `name` is required: 1-64 letters, digits, dots, dashes or underscores, starting with a letter or digit', 'name');
  }
  return { name, files };
}

/** Runs `use` on the request's upload in a temp folder, removed before the answer goes (the service has moved what it keeps). */
async function withUpload<T>(request: FastifyRequest, rules: UploadRules, use: (upload: Upload) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'swarmtrain-upload-'));
  try {
    return await use(await readUpload(request, dir, rules));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export const uploadRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService; maxUploadBytes: number }> = async (app, options) => {
  const { service, maxUploadBytes } = options;
  await app.register(multipart, {
    limits: { fileSize: maxUploadBytes, files: MAX_MODEL_FILES, fields: 4, fieldSize: 1024, parts: MAX_MODEL_FILES + 4 },
  });
  const consumes = ['multipart/form-data'];

  app.get('/api/corpora', {
    schema: { summary: 'bundled and uploaded corpora', tags: ['data'], response: { 200: Type.Array(CorpusSchema) } },
  }, async () => service.corpora());

  app.post('/api/corpora', {
    schema: {
      summary: 'upload a corpus: field `name`, file `file` (.txt, or .jsonl with a text field per line)', tags: ['data'], consumes,
      response: { 201: CorpusSchema },
    },
  }, async (request, reply) => {
    reply.code(201);
    return withUpload(request, {
      maxBytes: maxUploadBytes,
      acceptFile(field) {
        if (field !== 'file') throw new HttpError(400, `unknown file field ${JSON.stringify(field)} (expected file)`, field);
      },
    }, async ({ name, files }) => {
      if (files.length !== 1) throw new ServiceError('invalid', 'send exactly one file, in field `file`', 'file');
      return service.addCorpus(name, files[0].path);
    });
  });

  app.get('/api/models', {
    schema: { summary: 'base model folders', tags: ['data'], response: { 200: Type.Array(ModelSchema) } },
  }, async () => service.models());

  app.post('/api/models', {
    schema: {
      summary: 'upload a base model: field `name`, files config.json, tokenizer.json, *.safetensors (and model.safetensors.index.json)',
      tags: ['data'], consumes, response: { 201: ModelSchema },
    },
  }, async (request, reply) => {
    reply.code(201);
    return withUpload(request, {
      maxBytes: maxUploadBytes,
      acceptFile(field, name) {
        if (MODEL_FILE.test(name)) return;
        const expected = 'a model is config.json, tokenizer.json, *.safetensors and model.safetensors.index.json';
        throw new HttpError(400, `unexpected file ${JSON.stringify(name)}: ${expected}`, field);
      },
    }, ({ name, files }) => service.addModel(name, files));
  });
};
