/**
 * Writes images as `docker save` of Docker 20.10 does (#11; moby image/tarexport): `<id>.json` configs,
 * one `<v1id>/` per layer with VERSION, json and an uncompressed layer.tar, `manifest.json` and
 * `repositories`. `docker load` reads manifest.json and checks each layer.tar's digest against the
 * config's diff_ids, so the layer bytes come from the layer store's byte-exact export. v1 IDs are the
 * layers' ChainIDs (hex): unique per position in a chain, so a layer shared by two images is written once.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InternalError } from '../errors.js';
import { BLOCK, blankHeader, encodeHeader, padding } from '../layers/tar/format.js';

/** One image to save. */
export interface SaveItem {
  readonly id: string;
  readonly config: string;
  /** Familiar `repo:tag` names (none for an image saved by ID). */
  readonly repoTags: readonly { repository: string; tag: string }[];
  /** The chain, base first: ChainID and DiffID. */
  readonly layers: readonly { id: string; diffId: string }[];
}

function header(p: string, type: 'file' | 'dir', size: number): Buffer {
  return encodeHeader(blankHeader(p, type, { mode: type === 'dir' ? 0o755 : 0o644, size }));
}

function* smallFile(p: string, body: string | Buffer): Generator<Buffer> {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
  yield header(p, 'file', b.length);
  yield b;
  yield Buffer.alloc(padding(b.length));
}

/**
 * The archive of `items` as a tar stream. Each layer is first exported to a file in `scratch` (a tar
 * header needs its size first), its digest checked against the DiffID, then copied out and deleted.
 */
export async function* writeDockerArchive(items: readonly SaveItem[], exportLayer: (id: string) => AsyncIterable<Buffer>, scratch: string): AsyncGenerator<Buffer> {
  const written = new Set<string>();
  const manifest: { Config: string; RepoTags: string[] | null; Layers: string[] }[] = [];
  const repositories = new Map<string, Map<string, string>>();
  for (const item of items) {
    const configName = `${item.id.slice(7)}.json`;
    if (!written.has(configName)) {
      written.add(configName);
      yield* smallFile(configName, item.config);
    }
    let parent: string | undefined;
    const layerPaths: string[] = [];
    for (const l of item.layers) {
      const v1 = l.id.slice(7);
      layerPaths.push(`${v1}/layer.tar`);
      if (!written.has(v1)) {
        written.add(v1);
        yield header(`${v1}/`, 'dir', 0);
        yield* smallFile(`${v1}/VERSION`, '1.0');
        yield* smallFile(`${v1}/json`, JSON.stringify({ id: v1, ...(parent === undefined ? {} : { parent }), created: '1970-01-01T00:00:00Z', container_config: {}, os: 'linux' }));
        const spool = path.join(scratch, v1);
        const fd = fs.openSync(spool, 'wx', 0o600);
        const hash = createHash('sha256');
        let size = 0;
        try {
          for await (const chunk of exportLayer(l.id)) {
            hash.update(chunk);
            size += chunk.length;
            fs.writeSync(fd, chunk);
          }
        } finally {
          fs.closeSync(fd);
        }
        const got = `sha256:${hash.digest('hex')}`;
        if (got !== l.diffId) throw new InternalError(`layer ${l.id} exported with digest ${got}, not its DiffID ${l.diffId}: the layer store is damaged`);
        yield header(`${v1}/layer.tar`, 'file', size);
        for await (const chunk of fs.createReadStream(spool, { highWaterMark: 1 << 20 })) yield chunk as Buffer;
        yield Buffer.alloc(padding(size));
        fs.rmSync(spool);
      }
      parent = v1;
    }
    manifest.push({ Config: configName, RepoTags: item.repoTags.length === 0 ? null : item.repoTags.map((t) => `${t.repository}:${t.tag}`), Layers: layerPaths });
    for (const t of item.repoTags) {
      let repo = repositories.get(t.repository);
      if (repo === undefined) repositories.set(t.repository, (repo = new Map()));
      repo.set(t.tag, parent!);
    }
  }
  yield* smallFile('manifest.json', JSON.stringify(manifest));
  if (repositories.size > 0) {
    yield* smallFile('repositories', JSON.stringify(Object.fromEntries([...repositories].map(([r, tags]) => [r, Object.fromEntries(tags)]))));
  }
  yield Buffer.alloc(2 * BLOCK);
}
