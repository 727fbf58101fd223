// Reads a tar archive into { path: bytes } with tar-stream's extractor (an independent reader of what the API packs).
import { extract } from 'tar-stream';

export async function untar(archive: Uint8Array): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const reader = extract();
  const done = (async () => {
    for await (const entry of reader) {
      const chunks: Buffer[] = [];
      for await (const chunk of entry) chunks.push(chunk as Buffer);
      files.set(entry.header.name, Buffer.concat(chunks));
    }
  })();
  reader.end(Buffer.from(archive));
  await done;
  return files;
}
