/**
 * What `tsvol image …` does (#11), one implementation for both callers, as for the layer operations
 * (src/layers/layer-ops.ts): the running server, for the CLI's requests on its control socket, and the
 * CLI itself while it holds the server lock. Images are rows of the one metadata store (src/store/
 * schema.ts `images`): a reference → image ID, manifest digest, config and manifest bytes, and the top
 * layer's ChainID, which the row holds (`layer rm` and gc respect it). The layers are ordinary layers
 * of the layer store, imported through its hostile-input-safe importLayer; `image rm` drops the
 * reference only (gc reclaims the layers).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InvalidArgumentError, NotFoundError, describeError } from '../errors.js';
import { chainId, type LayerRecord, type LayerStore, type StagedLayer } from '../layers/layer-store.js';
import type { Change, MetaStore } from '../store/meta-store.js';
import type { ImageRecord } from '../store/records.js';
import { crashPoint } from '../sys/crash-point.js';
import { withStage } from '../sys/staging.js';
import type { BlobStore } from './blob-store.js';
import { Channel, readAhead } from './channel.js';
import { COMPRESSED_LAYER_TYPES, parseConfig, parseManifest, type HistoryEntry } from './formats.js';
import type { GcBarrier } from './gc-barrier.js';
import { ingestLayer, type Ingested } from './ingest.js';
import { asText, planLoad, type ImageDocumentsOf } from './load.js';
import { FRAME, readFrames, type PullHeader } from './pull-stream.js';
import { familiarRepository, formatReference, isImageId, normalizeReference, parseReference } from './reference.js';
import { writeDockerArchive, type SaveItem } from './save.js';
import { MAX_JSON, spoolArchive } from './spool.js';

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

/** What a push sends: the stored documents, byte-exact, the chain (base first) and the kept blobs. */
export interface ImageDocuments {
  readonly name: string;
  readonly manifest: string;
  readonly config: string;
  /** `made`: tsvol wrote the manifest (a push compresses the layers and makes a new one). */
  readonly origin: 'received' | 'made';
  readonly layers: readonly { readonly id: string; readonly diffId: string }[];
  /** The blobs kept for this manifest (readBlob sends them), with the repository each came from. */
  readonly blobs: readonly { readonly digest: string; readonly size: number; readonly source: string | undefined }[];
}

/** Which of a pull's layers and blobs the store has (ImageOps.stored). */
export interface StoredQuery {
  /** The config's rootfs.diff_ids: layer i is stored if the chain of diff_ids[0..i] is. */
  readonly diffIds: readonly string[];
  /** Blob digests: stored if kept in the blob area. */
  readonly blobs: readonly string[];
}

/** The answer to a StoredQuery, index by index. */
export interface StoredAnswer {
  readonly layers: boolean[];
  readonly blobs: boolean[];
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
  /**
   * Stores a pulled image from a pull stream (src/images/pull-stream.ts): unpacks its blobs as their
   * frames arrive, checks every digest, size and DiffID, keeps compressed blobs, and names the image.
   */
  pull(input: AsyncIterable<Buffer>): Promise<LoadedImage[]>;
  /** Which layers (by chain) and blobs the store has, so that a pull fetches only the others. */
  stored(query: StoredQuery): Promise<StoredAnswer>;
  /** The image's manifest and config bytes, its chain and kept blobs, for a push. */
  documents(ref: string): Promise<ImageDocuments>;
  /** Streams a kept blob to `sink` (a push of a pulled image sends it as it came). */
  readBlob(digest: string, sink: ImageSaveSink): Promise<void>;
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
  /** The blob area (compressed blobs kept byte-exact). */
  readonly blobs: () => BlobStore;
}

/** One image ready to be stored: its documents and its layers, each read and checked (or stored already). */
interface Storable extends ImageDocumentsOf {
  /** Per layer, base first: what was read of it (nothing when its chain was stored), its descriptor's type. */
  readonly layers: readonly { readonly ingested: Ingested | undefined; readonly mediaType: string | undefined; readonly digest: string | undefined }[];
  /** Where its blobs came from (a pull's repository), for mounts on push. */
  readonly source: string | undefined;
}

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

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

  /**
   * The ChainIDs of each prefix of a diff_ids list, computed once per list and extended as far as asked:
   * asking for every i of one list costs one hash per layer, not i of them.
   */
  const chainIds = new WeakMap<readonly string[], string[]>();
  /** True if the chain of diffIds[0..i] is a stored layer. */
  function hasChain(diffIds: readonly string[], i: number): boolean {
    let ids = chainIds.get(diffIds);
    if (ids === undefined) chainIds.set(diffIds, (ids = []));
    while (ids.length <= i) ids.push(chainId(ids[ids.length - 1], diffIds[ids.length]!));
    return meta.getLayer(ids[i]!) !== undefined;
  }

  /**
   * True if an archive entry is a layer the store has for sure, by its name alone: a `blobs/sha256/<hex>`
   * that is a stored DiffID (a plain tar's digest is its DiffID), or a `<hex>/layer.tar` whose hex is a
   * stored ChainID (tsvol's own saves). Such a layer is only hashed, not unpacked again.
   */
  function alreadyStored(name: string): boolean {
    const blob = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
    if (blob !== undefined) return meta.diffUsers(`sha256:${blob}`) > 0;
    const v1 = /^([0-9a-f]{64})\/layer\.tar$/.exec(name)?.[1];
    return v1 !== undefined && meta.getLayer(`sha256:${v1}`) !== undefined;
  }

  /**
   * Stores checked images: publishes each missing layer (base first), then the compressed blobs they came
   * with, then commits every name, blob row and blob hold in one commit (record last). Everything was
   * verified before; what can still fail here is the disk.
   */
  async function storeImages(store: LayerStore, items: readonly Storable[]): Promise<LoadedImage[]> {
    const blobs = ctx.blobs();
    const rows: Change[] = [];
    const holds: Change[] = [];
    const images: Change[] = [];
    const files: { file: string; digest: string }[] = [];
    const newBlobs = new Set<string>();
    const loaded: LoadedImage[] = [];
    for (const item of items) {
      const diffIds = item.parsed.rootfs.diff_ids;
      let parent: string | undefined;
      for (const [i, l] of item.layers.entries()) {
        const want = chainId(parent, diffIds[i]!);
        if (meta.getLayer(want) === undefined) {
          const staged: StagedLayer | undefined = l.ingested?.staged ?? (l.ingested?.diffId === diffIds[i] ? store.reuseDiff(diffIds[i]!) : undefined);
          if (staged === undefined || staged.diffId !== diffIds[i]) {
            throw new ConflictError(`layer ${i} of image ${item.id} (${diffIds[i]}) is neither stored nor read: it was removed while the image was loading; load or pull again`);
          }
          const { layer } = await store.publishLayer(staged, parent);
          if (layer.id !== want) throw new InvalidArgumentError(`layer ${i} of image ${item.id} stored as ${layer.id}, not ${want}`);
        }
        parent = want;
        // A compressed layer's blob, kept byte-exact for a push: only when it is the very blob the manifest
        // names and it unpacks to this layer.
        const digest = l.digest ?? l.ingested?.digest;
        if (item.made || l.mediaType === undefined || !COMPRESSED_LAYER_TYPES.has(l.mediaType) || digest === undefined) continue;
        const ing = l.ingested;
        if (!newBlobs.has(digest) && !blobs.has(digest)) {
          if (ing?.kept === undefined || ing.digest !== digest || ing.diffId !== diffIds[i]) continue;
          files.push({ file: ing.kept, digest });
          newBlobs.add(digest);
          rows.push({ op: 'blob.put', blob: { digest, size: ing.size, mediaType: l.mediaType, source: item.source, createdAt: new Date().toISOString() } });
        } else if (item.source !== undefined && blobs.has(digest)) {
          // Kept already: remember this repository too if the blob had none (blob.put keeps a first source).
          rows.push({ op: 'blob.put', blob: { ...meta.getBlob(digest)!, source: item.source } });
        }
        holds.push({ op: 'manifestBlob.put', manifest: item.digest, blob: digest });
      }
      const names = item.names.length > 0 ? item.names : [item.id];
      const createdAt = new Date().toISOString();
      const origin = item.made ? 'made' : 'received';
      for (const name of names) images.push({ op: 'image.put', image: { name, id: item.id, digest: item.digest, top: parent!, config: item.config, manifest: item.manifest, createdAt, origin } });
      loaded.push({ names: item.names.map(familiar), id: item.id });
    }
    blobs.publish(files);
    crashPoint('image-store:before-commit');
    await meta.commit([...rows, ...holds, ...images]);
    return loaded;
  }

  /** Receives a pull stream into `dir` (see ImageOps.pull). */
  async function receivePull(store: LayerStore, input: AsyncIterable<Buffer>, dir: string): Promise<LoadedImage[]> {
    const frames = readFrames(input)[Symbol.asyncIterator]();
    const first = await frames.next();
    if (first.done === true || first.value.type !== FRAME.header) throw new InvalidArgumentError('pull stream refused: it does not start with its header');
    const h = parseHeader(first.value.payload);
    const manifestBytes = Buffer.from(h.manifest, 'base64');
    const configBytes = Buffer.from(h.config, 'base64');
    if (manifestBytes.length > MAX_JSON || configBytes.length > MAX_JSON) throw new InvalidArgumentError(`pull of ${h.name} refused: a document over ${MAX_JSON} bytes`);
    const name = normalizeReference(h.name);
    const src = parseReference(h.source);
    const source = `${src.domain}/${src.path}`;
    const digest = sha256(manifestBytes);
    const manifest = asText(manifestBytes, `manifest of ${name}`);
    const m = parseManifest(manifestBytes, `manifest of ${name}`, h.mediaType);
    const id = sha256(configBytes);
    if (id !== m.config.digest) throw new InvalidArgumentError(`config of ${name} refused: its content has digest ${id}, not ${m.config.digest}`);
    const config = asText(configBytes, `config of ${name}`);
    const parsed = parseConfig(configBytes, `config of ${name}`);
    const diffIds = parsed.rootfs.diff_ids;
    if (diffIds.length !== m.layers.length) {
      throw new InvalidArgumentError(`${name} refused: its manifest lists ${m.layers.length} layers but its config's rootfs.diff_ids has ${diffIds.length}`);
    }
    const missing = diffIds.map((_, i) => !hasChain(diffIds, i));
    const sent = new Map<string, number>();
    for (const [j, b] of h.blobs.entries()) {
      const at = m.layers.findIndex((l) => l.digest === b.digest);
      if (at < 0 || m.layers[at]!.size !== b.size || sent.has(b.digest)) throw new InvalidArgumentError(`pull of ${name} refused: blob ${j} (${b.digest}) is not one of its layers, or sent twice`);
      sent.set(b.digest, j);
    }
    for (const [i, l] of m.layers.entries()) {
      if (missing[i] && !sent.has(l.digest)) throw new InvalidArgumentError(`pull of ${name} refused: layer ${i} (${l.digest}) is neither stored nor sent`);
    }
    const sources = h.blobs.map(() => new Channel<Buffer>(8));
    const ingests = h.blobs.map((b, j) => {
      const unpack = m.layers.some((l, i) => l.digest === b.digest && missing[i]);
      const keep = m.layers.some((l) => l.digest === b.digest && COMPRESSED_LAYER_TYPES.has(l.mediaType)) ? path.join(dir, `b${j}`) : undefined;
      // now: the blobs share one sender, so an unpack fed as they come must not wait for another's turn.
      const ingest = ingestLayer(sources[j]!, store, { unpack, now: true, ...(keep === undefined ? {} : { keep }) });
      // Awaited once the stream is read; a failure meanwhile (a disk error) stops its source, and waits.
      ingest.catch(() => undefined);
      return ingest;
    });
    const received = h.blobs.map(() => 0);
    const ended = h.blobs.map(() => false);
    try {
      let complete = false;
      for (let r = await frames.next(); r.done !== true; r = await frames.next()) {
        const f = r.value;
        if (f.type === FRAME.end) {
          complete = true;
          break;
        }
        const j = f.index;
        if (j >= h.blobs.length || ended[j] || (f.type !== FRAME.data && f.type !== FRAME.blobEnd)) throw new InvalidArgumentError(`pull stream refused: frame ${f.type} for blob ${j}`);
        if (f.type === FRAME.data) {
          received[j]! += f.payload.length;
          if (received[j]! > h.blobs[j]!.size) throw new InvalidArgumentError(`blob ${h.blobs[j]!.digest} refused: longer than its ${h.blobs[j]!.size} bytes`);
          await sources[j]!.push(f.payload);
        } else {
          if (received[j] !== h.blobs[j]!.size) throw new InvalidArgumentError(`blob ${h.blobs[j]!.digest} refused: ${received[j]} of its ${h.blobs[j]!.size} bytes`);
          ended[j] = true;
          sources[j]!.end();
        }
      }
      if (!complete || ended.some((e) => !e)) throw new InvalidArgumentError(`the pull of ${name} was cut short`);
    } catch (err) {
      for (const s of sources) s.fail(err);
      const done = await Promise.allSettled(ingests);
      await Promise.allSettled(done.map((d) => (d.status === 'fulfilled' ? d.value.staged?.discard() : undefined)));
      throw err;
    }
    const results = await Promise.all(ingests);
    try {
      for (const [j, b] of h.blobs.entries()) {
        const r = results[j]!;
        if (r.error !== undefined) throw new InvalidArgumentError(`blob ${b.digest} of ${name}: ${r.error.message}`, { cause: r.error });
        if (r.digest !== b.digest) throw new InvalidArgumentError(`blob ${b.digest} of ${name} refused: its content has digest ${r.digest}`);
      }
      const layers = m.layers.map((l, i) => {
        const j = sent.get(l.digest);
        const ingested = j === undefined ? undefined : results[j];
        if (ingested !== undefined && ingested.diffId !== diffIds[i]) {
          throw new InvalidArgumentError(`layer ${i} (${l.digest}) of ${name} refused: its uncompressed digest ${ingested.diffId} is not rootfs.diff_ids[${i}] ${diffIds[i]}`);
        }
        return { ingested, mediaType: l.mediaType, digest: l.digest };
      });
      return await storeImages(store, [{ names: [name], id, config, parsed, manifest, digest, made: false, layers, source }]);
    } finally {
      await Promise.allSettled(results.map((r) => r.staged?.discard()));
    }
  }

  return {
    async load(input) {
      const store = ctx.layers(); // opens the layer store (its directories) before anything is read
      fs.mkdirSync(ctx.tmpDir, { recursive: true, mode: 0o700 });
      return withStage(ctx.tmpDir, 'image-load', (dir) =>
        ctx.barrier.shared(async () => {
          const ingest = (body: AsyncIterable<Buffer>, keep: string, name: string): Promise<Ingested> =>
            ingestLayer(body, store, { unpack: !alreadyStored(name), keep });
          const spool = await spoolArchive(readAhead(input), dir, ingest);
          try {
            const plans = await planLoad(spool, hasChain);
            return await storeImages(
              store,
              plans.map((p) => ({ ...p, source: undefined, layers: p.layers.map((l) => ({ ingested: l.ingested, mediaType: l.mediaType, digest: l.digest })) })),
            );
          } finally {
            await Promise.allSettled(spool.ingested().map((l) => l.staged?.discard()));
          }
        }),
      );
    },

    async pull(input) {
      const store = ctx.layers();
      fs.mkdirSync(ctx.tmpDir, { recursive: true, mode: 0o700 });
      return withStage(ctx.tmpDir, 'image-pull', (dir) => ctx.barrier.shared(() => receivePull(store, readAhead(input), dir)));
    },

    async stored(query) {
      const store = ctx.layers();
      const blobs = ctx.blobs();
      let parent: string | undefined;
      let present = true;
      const layers = query.diffIds.map((d) => {
        parent = chainId(parent, String(d));
        present = present && store.meta.getLayer(parent) !== undefined;
        return present;
      });
      return { layers, blobs: query.blobs.map((d) => blobs.has(String(d))) };
    },

    async readBlob(digest, sink) {
      const stream = ctx.blobs().read(digest);
      await sink(stream);
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
      const blobs = ctx.blobs();
      const kept = meta.blobsOf(row.digest).filter((b) => blobs.has(b.digest));
      return {
        name: row.name,
        manifest: row.manifest,
        config: row.config,
        origin: row.origin,
        layers: chainOf(row).map((l) => ({ id: l.id, diffId: l.diffId })),
        blobs: kept.map((b) => ({ digest: b.digest, size: b.size, source: b.source })),
      };
    },
  };
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

/** A pull stream's header, checked field by field (it crossed a socket). */
function parseHeader(payload: Buffer): PullHeader {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`pull stream refused: its header is not JSON (${describeError(err)})`);
  }
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const str = (k: string): string => {
    if (typeof o[k] !== 'string') throw new InvalidArgumentError(`pull stream refused: its header needs "${k}"`);
    return o[k];
  };
  if (!Array.isArray(o.blobs)) throw new InvalidArgumentError('pull stream refused: its header needs "blobs"');
  const blobs = (o.blobs as unknown[]).map((b) => {
    const d = (typeof b === 'object' && b !== null ? b : {}) as Record<string, unknown>;
    if (typeof d.digest !== 'string' || typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
      throw new InvalidArgumentError('pull stream refused: a blob needs a digest and a size');
    }
    return { digest: d.digest, size: d.size };
  });
  return { name: str('name'), source: str('source'), manifest: str('manifest'), mediaType: str('mediaType'), config: str('config'), blobs };
}
