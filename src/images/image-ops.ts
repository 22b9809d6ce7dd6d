/**
 * What `tsvol image …` does (#11), one implementation for both callers, as for the layer operations
 * (src/layers/layer-ops.ts): the running server, for the CLI's requests on its control socket, and the
 * CLI itself while it holds the server lock. Images are rows of the one metadata store (src/store/
 * schema.ts `images`): a reference → image ID, manifest digest, config and manifest bytes, and the top
 * layer's ChainID, which the row holds (`layer rm` and gc respect it). The layers are ordinary layers
 * of the layer store, imported through its hostile-input-safe importLayer; `image rm` drops the
 * reference only (gc reclaims the layers).
 */
import fs from 'node:fs';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { chainId, type LayerRecord, type LayerStore } from '../layers/layer-store.js';
import type { Change, MetaStore } from '../store/meta-store.js';
import type { ImageRecord } from '../store/records.js';
import { withStage } from '../sys/staging.js';
import { parseConfig, type HistoryEntry } from './formats.js';
import type { GcBarrier } from './gc-barrier.js';
import { planLoad } from './load.js';
import { familiarRepository, isImageId, normalizeReference, parseReference } from './reference.js';
import { writeDockerArchive, type SaveItem } from './save.js';
import { spoolArchive } from './spool.js';

/** One image loaded: how Docker prints it (`app:latest`, or the ID for an unnamed image). */
export interface LoadedImage {
  readonly names: string[];
  readonly id: string;
}

/** A row of `tsvol image ls`. */
export interface ImageSummary {
  /** Familiar repository (`app`, `127.0.0.1:5000/x`), `<none>` for an unnamed image. */
  readonly repository: string;
  /** Tag, `<none>` when the reference is by digest or there is none. */
  readonly tag: string;
  /** The normalized reference (the row's key). */
  readonly name: string;
  readonly id: string;
  readonly digest: string;
  readonly top: string;
  /** The config's `created`. */
  readonly created: string | undefined;
  /** Bytes of file content in all the image's layers. */
  readonly size: number;
}

/** What `tsvol image inspect` shows. */
export interface ImageDetails extends ImageSummary {
  /** Every name of this image ID, familiar form. */
  readonly repoTags: string[];
  /** The chain's ChainIDs, base first. */
  readonly layers: string[];
  readonly manifest: unknown;
  readonly config: unknown;
}

/** One row of `tsvol image history`: one history entry of the config, newest first. */
export interface ImageHistoryRow {
  readonly created: string | undefined;
  readonly createdBy: string;
  readonly comment: string | undefined;
  readonly emptyLayer: boolean;
  /** Bytes of the layer this step made (0 for an empty layer). */
  readonly size: number;
  /** ChainID of the layer this step made, if any. */
  readonly layer: string | undefined;
}

/** What a push sends: the stored documents, byte-exact, and the chain (base first). */
export interface ImageDocuments {
  readonly name: string;
  readonly manifest: string;
  readonly config: string;
  readonly layers: readonly { readonly id: string; readonly diffId: string }[];
}

/** Receives a saved archive (a tar stream); the save lasts until the promise settles. */
export type ImageSaveSink = (tar: AsyncIterable<Buffer>) => Promise<void>;

/** The image operations; the control client (src/http/control-client.ts) offers the same ones. */
export interface ImageOps {
  /** Loads every image of an archive (docker save 20.10 / ≥ 25, OCI layout tar), plain or gzip. */
  load(input: AsyncIterable<Buffer>): Promise<LoadedImage[]>;
  /** Resolves every ref, then streams a docker-save (20.10) archive of them to `sink`. */
  save(refs: readonly string[], sink: ImageSaveSink): Promise<void>;
  list(): Promise<ImageSummary[]>;
  inspect(ref: string): Promise<ImageDetails>;
  history(ref: string): Promise<ImageHistoryRow[]>;
  /** Adds the name `target` to the image `source` names. */
  tag(source: string, target: string): Promise<void>;
  /** Drops the reference `ref` (never the layers); returns the names it removed, familiar form. */
  remove(ref: string): Promise<{ untagged: string[] }>;
  /** The image's manifest and config bytes and its chain, for a push. */
  documents(ref: string): Promise<ImageDocuments>;
  /** The ChainID of the image's top layer, for volumes and containers built on an image. */
  topLayer(ref: string): Promise<string>;
}

/** What the image operations work on. */
export interface ImageOpsContext {
  readonly meta: MetaStore;
  readonly layers: () => LayerStore;
  /** The data root's tmp/ (same filesystem): load and save stages. */
  readonly tmpDir: string;
  /** Keeps a layer gc out of a load's window between its layer imports and its image rows. */
  readonly barrier: GcBarrier;
}

/** How Docker shows a stored name: repository and tag (`<none>` where there is none). */
function shownName(name: string): { repository: string; tag: string } {
  if (isImageId(name)) return { repository: '<none>', tag: '<none>' };
  const ref = parseReference(name);
  return { repository: familiarRepository(ref), tag: ref.tag ?? '<none>' };
}

/** How `Loaded image:` prints a name. */
function familiar(name: string): string {
  const { repository, tag } = shownName(name);
  const ref = parseReference(name);
  return ref.digest !== undefined ? `${repository}@${ref.digest}` : `${repository}:${tag}`;
}

/** The image operations over `ctx`. */
export function imageOps(ctx: ImageOpsContext): ImageOps {
  const { meta } = ctx;

  /** Resolves a reference or image ID (a unique prefix of 12+ hex digits) to one stored row. */
  function resolve(ref: string): ImageRecord {
    const hex = /^(?:sha256:)?([0-9a-f]{12,64})$/.exec(ref)?.[1];
    if (hex !== undefined) {
      const rows = meta.imagesById(hex, 1000);
      const ids = new Set(rows.map((r) => r.id));
      if (ids.size === 1) return rows[0]!;
      if (ids.size > 1) throw new InvalidArgumentError(`image ID prefix "${ref}" is ambiguous (${ids.size} images)`);
    }
    let name: string;
    try {
      name = normalizeReference(ref);
    } catch (err) {
      if (hex !== undefined) throw new NotFoundError(`image "${ref}" not found; \`tsvol image ls\` lists images`);
      throw err;
    }
    const row = meta.getImage(name);
    if (row) return row;
    const parsed = parseReference(name);
    if (parsed.digest !== undefined) {
      // name@digest finds any name of that repository whose manifest has that digest (as Docker does).
      const repo = `${parsed.domain}/${parsed.path}`;
      const hit = meta.images().find((r) => r.digest === parsed.digest && !isImageId(r.name) && r.name.startsWith(`${repo}:`));
      if (hit) return hit;
    }
    throw new NotFoundError(`image "${ref}" not found; \`tsvol image load\` or \`tsvol image pull\` brings one in, \`tsvol image ls\` lists them`);
  }

  /** The image's chain, base first. */
  function chainOf(row: ImageRecord): LayerRecord[] {
    return ctx.layers().history(row.top).reverse();
  }

  function summary(row: ImageRecord): ImageSummary {
    const created = parseConfig(row.config, `config ${row.id}`).created;
    const size = chainOf(row).reduce((n, l) => n + l.size, 0);
    return { ...shownName(row.name), name: row.name, id: row.id, digest: row.digest, top: row.top, created, size };
  }

  return {
    async load(input) {
      const store = ctx.layers(); // opens the layer store (its directories) before anything is read
      fs.mkdirSync(ctx.tmpDir, { recursive: true, mode: 0o700 });
      return withStage(ctx.tmpDir, 'image-load', async (dir) => {
        const spool = await spoolArchive(input, dir);
        const plans = await planLoad(spool);
        return ctx.barrier.shared(async () => {
          const changes: Change[] = [];
          const loaded: LoadedImage[] = [];
          const created: string[] = [];
          try {
            for (const plan of plans) {
              let parent: string | undefined;
              for (const [i, p] of plan.layers.entries()) {
                const want = chainId(parent, plan.parsed.rootfs.diff_ids[i]!);
                // A layer already stored is not stored again (content-addressed by ChainID).
                if (meta.getLayer(want) === undefined) {
                  const rec = await store.importLayer(fs.createReadStream(spool.file(p), { highWaterMark: 1 << 20 }), parent);
                  created.push(rec.id);
                  if (rec.id !== want) throw new InvalidArgumentError(`layer ${p} imported as ${rec.id}, not ${want}: its content changed while it was read`);
                }
                parent = want;
              }
              const names = plan.names.length > 0 ? plan.names : [plan.id];
              const createdAt = new Date().toISOString();
              for (const name of names) changes.push({ op: 'image.put', image: { name, id: plan.id, digest: plan.digest, top: parent!, config: plan.config, manifest: plan.manifest, createdAt } });
              loaded.push({ names: plan.names.map(familiar), id: plan.id });
            }
            await meta.commit(changes);
          } catch (err) {
            // A layer refused by the import (its digest was right, its entries hostile) or a failed commit:
            // the layers this load made go again, newest first, so a refused archive stores nothing.
            await removeLayers(store, created);
            throw err;
          }
          return loaded;
        });
      });
    },

    async save(refs, sink) {
      if (refs.length === 0) throw new InvalidArgumentError('image save needs at least one image reference');
      const byId = new Map<string, { row: ImageRecord; tags: { repository: string; tag: string }[] }>();
      for (const ref of refs) {
        const row = resolve(ref);
        let entry = byId.get(row.id);
        if (entry === undefined) byId.set(row.id, (entry = { row, tags: [] }));
        // Saved by name: that name; by ID: every tagged name of the image, as docker save does.
        const byName = !/^(?:sha256:)?[0-9a-f]{12,64}$/.test(ref);
        const names = byName ? [row.name] : meta.images().filter((r) => r.id === row.id).map((r) => r.name);
        for (const n of names) {
          const s = shownName(n);
          if (s.tag !== '<none>' && !entry.tags.some((t) => t.repository === s.repository && t.tag === s.tag)) entry.tags.push(s);
        }
      }
      const store = ctx.layers();
      fs.mkdirSync(ctx.tmpDir, { recursive: true, mode: 0o700 });
      const items: SaveItem[] = [...byId.values()].map(({ row, tags }) => ({
        id: row.id,
        config: row.config,
        repoTags: tags,
        layers: chainOf(row).map((l) => ({ id: l.id, diffId: l.diffId })),
      }));
      await withStage(ctx.tmpDir, 'image-save', (dir) => sink(writeDockerArchive(items, (id) => store.exportLayer(id), dir)));
    },

    async list() {
      return meta.images().map(summary);
    },

    async inspect(ref) {
      const row = resolve(ref);
      const names = meta.images().filter((r) => r.id === row.id && !isImageId(r.name));
      return {
        ...summary(row),
        repoTags: names.map((r) => familiar(r.name)),
        layers: chainOf(row).map((l) => l.id),
        manifest: JSON.parse(row.manifest) as unknown,
        config: JSON.parse(row.config) as unknown,
      };
    },

    async history(ref) {
      const row = resolve(ref);
      const config = parseConfig(row.config, `config ${row.id}`);
      const chain = chainOf(row);
      const entries: readonly HistoryEntry[] = config.history ?? chain.map(() => ({}));
      let next = 0;
      const rows = entries.map((h): ImageHistoryRow => {
        const empty = h.empty_layer === true;
        const layer = empty ? undefined : chain[next++];
        return { created: h.created, createdBy: h.created_by ?? '', comment: h.comment, emptyLayer: empty, size: layer?.size ?? 0, layer: layer?.id };
      });
      return rows.reverse();
    },

    async tag(source, target) {
      const row = resolve(source);
      const name = normalizeReference(target);
      if (parseReference(name).digest !== undefined) throw new InvalidArgumentError(`cannot tag with a digest reference "${target}": a digest is the manifest's, not a name`);
      await meta.commit([{ op: 'image.put', image: { ...row, name, createdAt: new Date().toISOString() } }]);
    },

    async remove(ref) {
      const row = resolve(ref);
      const byId = /^(?:sha256:)?[0-9a-f]{12,64}$/.test(ref) && !meta.getImage(safeNormalize(ref) ?? '');
      const names = byId ? meta.images().filter((r) => r.id === row.id).map((r) => r.name) : [row.name];
      if (byId && names.length > 1) {
        throw new ConflictError(`image ${row.id.slice(7, 19)} is referenced by ${names.map(familiar).join(', ')}; remove those names one by one`);
      }
      await meta.commit(names.map((name) => ({ op: 'image.delete', name }) as const));
      return { untagged: names.map((n) => (isImageId(n) ? n : familiar(n))) };
    },

    async topLayer(ref) {
      return resolve(ref).top;
    },

    async documents(ref) {
      const row = resolve(ref);
      return { name: row.name, manifest: row.manifest, config: row.config, layers: chainOf(row).map((l) => ({ id: l.id, diffId: l.diffId })) };
    },
  };
}

/** Removes the layers `ids` (a failed load's), newest first; what cannot go is left to `tsvol layer gc`. */
async function removeLayers(store: LayerStore, ids: readonly string[]): Promise<void> {
  for (const id of [...ids].reverse()) {
    try {
      await store.remove(id);
    } catch {
      // Held meanwhile (another load or a volume took it): then it is not this load's to remove.
      continue;
    }
  }
}

/** `ref` normalized, or undefined when it is no valid reference (an image ID prefix). */
function safeNormalize(ref: string): string | undefined {
  try {
    return normalizeReference(ref);
  } catch {
    // Not a name: the caller treats it as an ID.
    return undefined;
  }
}
