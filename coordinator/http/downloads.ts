// Checkpoints and results as tar archives: GET /api/jobs/:id/checkpoints (the list),
// .../checkpoints/:round/download and .../result, each a FileSet streamed under its `name` folder.
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pack } from 'tar-stream';
import { CheckpointViewSchema } from '../api/schemas.ts';
import type { FileSet, SwarmService } from '../api/service.ts';
import { HttpError } from './errors.ts';
import { JobIdParams, jobOf } from './jobs.ts';

/** A tar archive of the set, files read one after another; sizes are the files' own (read before the first byte goes). */
async function tarOf(set: FileSet): Promise<Readable> {
  const sizes = await Promise.all(set.files.map(async (file) => (await stat(file.path)).size));
  const archive = pack();
  const mtime = new Date();
  (async () => {
    for (const [i, file] of set.files.entries()) {
      const entry = archive.entry({ name: `${set.name}/${file.name}`, size: sizes[i], mode: 0o644, mtime });
      await pipeline(createReadStream(file.path), entry);
    }
    archive.finalize();
  })().catch((err: Error) => archive.destroy(err));
  // tar-stream's packs are streamx streams: Node's own Readable for Fastify.
  return Readable.from(archive, { objectMode: false });
}

const sendTar = async (reply: FastifyReply, set: FileSet) => reply
  .type('application/x-tar')
  .header('content-disposition', `attachment; filename="${set.name.replace(/[^A-Za-z0-9._-]/g, '_')}.tar"`)
  .send(await tarOf(set));

const TarResponse = { 200: Type.String({ description: 'a tar archive (application/x-tar)', format: 'binary' }) };

export const downloadRoutes: FastifyPluginAsyncTypebox<{ service: SwarmService }> = async (app, { service }) => {
  const tags = ['results'];
  const known = (id: string) => jobOf(service, id).id;

  app.get('/api/jobs/:id/checkpoints', {
    schema: { summary: "the job's checkpoints, oldest first", tags, params: JobIdParams, response: { 200: Type.Array(CheckpointViewSchema) } },
  }, async (request) => service.checkpoints(known(request.params.id)));

  app.get('/api/jobs/:id/checkpoints/:round/download', {
    schema: {
      summary: 'one checkpoint as a tar archive', tags, produces: ['application/x-tar'],
      params: Type.Composite([JobIdParams, Type.Object({ round: Type.Integer({ minimum: 0 }) })]), response: TarResponse,
    },
  }, async (request, reply) => {
    const { id, round } = request.params;
    const set = service.checkpointFiles(known(id), round);
    if (set === undefined) throw new HttpError(404, `job ${id} has no checkpoint of round ${round}`);
    return sendTar(reply, set);
  });

  app.get('/api/jobs/:id/result', {
    schema: {
      summary: 'the trained adapter or checkpoint, with its tokenizer, as a tar archive', tags, produces: ['application/x-tar'],
      params: JobIdParams, response: TarResponse,
    },
  }, async (request, reply) => {
    const set = service.result(known(request.params.id));
    if (set === undefined) throw new HttpError(404, `job ${request.params.id} has no result yet`);
    return sendTar(reply, set);
  });
};
