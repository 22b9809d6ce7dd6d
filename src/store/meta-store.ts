/**
 * MetaStore: every piece of tsvol's metadata in one SQLite database, tsvol.db (WAL, synchronous=FULL,
 * foreign keys ON; tables in src/store/schema.ts): volumes (with their mount holds), layers, tags, layer
 * holds, container layers, and images (#11). Disk is truth; the store knows nothing of Docker's types and
 * does no filesystem work: callers build and flush their directories, then commit the records.
 *
 * Writes: `commit(changes)` is one atomic, durable unit (a savepoint inside a group-commit batch on a
 * worker thread, src/store/group-commit.ts): a layered volume and its layer hold land together or not at
 * all. Reads are synchronous: volumes from an in-memory Map (the hot path of Docker's Get and List),
 * everything else by indexed prepared statements on this thread's connection, so the cost of a read
 * never grows with the number of layers.
 *
 * One process writes at a time: the server, or a `tsvol` command holding the server lock (src/sys/lock.ts).
 * So the volume cache is never stale and there is no change log to replay: a commit updates the cache with
 * the very object committed, and identity-keyed caches above (the service's per-record info) keep hitting.
 * Layer-side reads go to SQLite every time, so they see every committed write whoever made it.
 *
 * Why SQLite and not a JSON file per record (0.1's layer manager, README "Choosing the store"): a commit
 * holds any number of changes, so group commit turns N concurrent requests into one fsync, changes to
 * several records land together without a journal of our own, and foreign keys keep references whole.
 */
import Database from 'better-sqlite3';
import { ConflictError, InUseError, InternalError, NotFoundError, wrapError } from '../errors.js';
import { makePrivateDir } from '../sys/private-dir.js';
import type { SetError } from './commit-protocol.js';
import { createGroupCommitter, type GroupCommitter } from './group-commit.js';
import type { Layout } from './layout.js';
import type { BlobRecord, ContainerRecord, ImageRecord, LayerRecord, VolumeRecord } from './records.js';
import { parseVolume } from './records.js';
import { PRAGMAS, READS, SCHEMA, STATEMENTS, opsOf, type Change } from './schema.js';

export type { Change } from './schema.js';

/** A tag or a layer hold, as listed. */
export interface TagRow {
  readonly name: string;
  readonly layer: string;
}

/** A hold on a layer by `holder` (e.g. `volume "db"`). */
export interface HoldRow {
  readonly layer: string;
  readonly holder: string;
}

/** The metadata of one data root. */
export interface MetaStore {
  /** Commits `changes` as one atomic, durable unit; the caches change only after the commit. */
  commit(changes: readonly Change[]): Promise<void>;

  getVolume(name: string): VolumeRecord | undefined;
  volumes(): IterableIterator<VolumeRecord>;
  readonly volumeCount: number;
  getMeta(key: string): string | undefined;

  getLayer(id: string): LayerRecord | undefined;
  /** Up to `limit` layers whose ChainID starts with `sha256:<hexPrefix>` (a range scan of the key). */
  layersByPrefix(hexPrefix: string, limit: number): LayerRecord[];
  /** Every layer (listings and gc only). */
  layers(): LayerRecord[];
  /** ChainIDs of the layers whose parent is `id`. */
  childrenOf(id: string): string[];
  /** How many layers share the diff `diffId` (stored once for all of them). */
  diffUsers(diffId: string): number;
  /** Every DiffID some layer uses (gc). */
  diffIds(): Set<string>;
  /** A layer whose diff is `diffId`, if any (its size and file count are the diff's). */
  layerWithDiff(diffId: string): LayerRecord | undefined;

  /** The layer tag `name` names. */
  getTag(name: string): string | undefined;
  tagsOf(layer: string): string[];
  tags(): TagRow[];

  holdsOf(layer: string): string[];
  holds(): HoldRow[];

  getContainer(name: string): ContainerRecord | undefined;
  /** Names of the container layers sitting on `layer`. */
  containersOn(layer: string): string[];
  containers(): ContainerRecord[];

  /** The image reference `name` (normalized). */
  getImage(name: string): ImageRecord | undefined;
  /** Up to `limit` image references whose image ID starts with `sha256:<hexPrefix>`. */
  imagesById(hexPrefix: string, limit: number): ImageRecord[];
  /** Names of the image references whose top layer is `layer`. */
  imagesOn(layer: string): string[];
  /** Every image reference, by name. */
  images(): ImageRecord[];

  /** The blob `digest` of the blob area, if it has a row. */
  getBlob(digest: string): BlobRecord | undefined;
  /** The blobs the manifest `digest` holds. */
  blobsOf(manifest: string): BlobRecord[];
  /** Every blob (gc). */
  blobs(): BlobRecord[];
  /** Every manifest → blob hold (gc). */
  manifestBlobs(): { manifest: string; blob: string }[];

  /**
   * Commits `changes` synchronously on this thread's connection. Start-up only (the migration, src/store/
   * migrate.ts), before the first commit(): it blocks the event loop for an fsync.
   */
  commitNow(changes: readonly Change[]): void;
  /** Commits anything queued and closes the database. */
  close(): Promise<void>;
}

interface LayerRow {
  id: string;
  diff_id: string;
  parent: string | null;
  size: number;
  files: number;
  created_at: string;
}

function toLayer(row: LayerRow): LayerRecord {
  return { id: row.id, diffId: row.diff_id, parent: row.parent ?? undefined, size: row.size, files: row.files, createdAt: row.created_at };
}

interface ImageRow {
  name: string;
  id: string;
  digest: string;
  top: string;
  config: string;
  manifest: string;
  created_at: string;
  origin: string;
}

function toImage(row: ImageRow): ImageRecord {
  const origin = row.origin === 'made' ? 'made' : 'received';
  return { name: row.name, id: row.id, digest: row.digest, top: row.top, config: row.config, manifest: row.manifest, createdAt: row.created_at, origin };
}

interface BlobRow {
  digest: string;
  size: number;
  media_type: string;
  source: string | null;
  created_at: string;
}

function toBlob(row: BlobRow): BlobRecord {
  return { digest: row.digest, size: row.size, mediaType: row.media_type, source: row.source ?? undefined, createdAt: row.created_at };
}

function parseContainer(json: string): ContainerRecord {
  const rec = JSON.parse(json) as ContainerRecord;
  return { ...rec, driver: rec.driver ?? 'overlay' };
}

/** What a refused change set becomes: a foreign key names a layer that is gone, or one still in use. */
function refusal(changes: readonly Change[], err: SetError): Error {
  const what = changes.map((c) => c.op).join(', ');
  // RESTRICT reports SQLITE_CONSTRAINT_TRIGGER (SQLite implements the action as a trigger), a dangling
  // reference SQLITE_CONSTRAINT_FOREIGNKEY; both say "FOREIGN KEY constraint failed".
  if (err.code === 'SQLITE_CONSTRAINT_FOREIGNKEY' || /FOREIGN KEY constraint failed/.test(err.message)) {
    if (changes.some((c) => c.op === 'layer.delete')) {
      return new InUseError(`metadata change refused (${what}): a layer still held by a child, tag, hold, container or image cannot be deleted`);
    }
    return new NotFoundError(`metadata change refused (${what}): a layer it refers to does not exist`);
  }
  if (err.code?.startsWith('SQLITE_CONSTRAINT') === true) return new ConflictError(`metadata change refused (${what}): ${err.message}`);
  return new InternalError(`metadata commit failed (${what}): ${err.message}`);
}

/** Opens (creating if needed) the database `layout.dbFile` and loads the volume records. */
export function createMetaStore(layout: Layout): MetaStore {
  // Root-only (#9 §5): whoever creates the data root (server or CLI), no other user traverses it.
  makePrivateDir(layout.root);
  let db: Database.Database;
  try {
    db = new Database(layout.dbFile);
    for (const p of PRAGMAS) db.pragma(p);
    db.exec(SCHEMA);
    // Before #11 the images table was reserved with another shape and never written: replace it.
    const cols = (db.pragma('table_info(images)') as { name: string }[]).map((c) => c.name);
    if (!cols.includes('manifest')) {
      db.exec('DROP TABLE images');
      db.exec(SCHEMA);
    } else if (!cols.includes('origin')) {
      // Schema 2 (#11's first images) had no origin: their manifests were kept as given or made, and a
      // push sent either as it is, which `received` keeps doing.
      db.exec("ALTER TABLE images ADD COLUMN origin TEXT NOT NULL DEFAULT 'received'");
    }
  } catch (err) {
    throw wrapError(`open metadata database ${layout.dbFile}`, err);
  }
  const prep = (sql: string) => db.prepare(sql);
  const q = {
    layer: prep(READS.layer),
    layerRange: prep(READS.layerRange),
    layerAll: prep(READS.layerAll),
    children: prep(READS.children).pluck(),
    diffUsers: prep(READS.diffUsers).pluck(),
    diffIds: prep(READS.diffIds).pluck(),
    layerWithDiff: prep(READS.layerWithDiff),
    tag: prep(READS.tag).pluck(),
    tagsOf: prep(READS.tagsOf).pluck(),
    tagAll: prep(READS.tagAll),
    holdsOf: prep(READS.holdsOf).pluck(),
    holdAll: prep(READS.holdAll),
    container: prep(READS.container).pluck(),
    containersOn: prep(READS.containersOn).pluck(),
    containerAll: prep(READS.containerAll).pluck(),
    image: prep(READS.image),
    imagesById: prep(READS.imagesById),
    imagesOn: prep(READS.imagesOn).pluck(),
    imageAll: prep(READS.imageAll),
    blob: prep(READS.blob),
    blobsOf: prep(READS.blobsOf),
    blobAll: prep(READS.blobAll),
    manifestBlobAll: prep(READS.manifestBlobAll),
  };
  const volumes = new Map<string, VolumeRecord>();
  const meta = new Map<string, string>();
  for (const [name, json] of db.prepare('SELECT name, record FROM volumes').raw().iterate() as Iterable<[string, string]>) {
    volumes.set(name, parseVolume(name, json));
  }
  for (const [key, value] of db.prepare('SELECT key, value FROM meta').raw().all() as [string, string][]) meta.set(key, value);
  // Started on the first commit: a read-only command (`tsvol layer ls`) never starts a thread.
  let committer: GroupCommitter | undefined;

  /** Makes committed changes visible in the caches, with the very objects committed. */
  function applyToCaches(changes: readonly Change[]): void {
    for (const c of changes) {
      if (c.op === 'volume.put') volumes.set(c.record.name, c.record);
      else if (c.op === 'volume.delete') volumes.delete(c.name);
      else if (c.op === 'meta.put') meta.set(c.key, c.value);
    }
  }

  return {
    async commit(changes) {
      if (changes.length === 0) return;
      committer ??= createGroupCommitter(layout.dbFile);
      const refused = await committer.commit(changes.map(opsOf));
      if (refused !== null) throw refusal(changes, refused);
      applyToCaches(changes);
    },
    commitNow(changes) {
      if (committer !== undefined) throw new InternalError('commitNow after commit: start-up work only');
      const stmts = new Map(Object.entries(STATEMENTS).map(([name, sql]) => [name, db.prepare(sql)]));
      try {
        db.transaction(() => {
          for (const op of changes.map(opsOf)) stmts.get(op.s)!.run(...op.a);
        }).immediate();
      } catch (err) {
        const code = typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
        throw refusal(changes, { message: err instanceof Error ? err.message : String(err), code });
      }
      applyToCaches(changes);
    },

    getVolume: (name) => volumes.get(name),
    volumes: () => volumes.values(),
    get volumeCount() {
      return volumes.size;
    },
    getMeta: (key) => meta.get(key),

    getLayer(id) {
      const row = q.layer.get(id) as LayerRow | undefined;
      return row === undefined ? undefined : toLayer(row);
    },
    layersByPrefix(hexPrefix, limit) {
      // Hex digits sort below 'g': [sha256:<prefix>, sha256:<prefix>g) holds exactly the IDs with that prefix.
      return (q.layerRange.all(`sha256:${hexPrefix}`, `sha256:${hexPrefix}g`, limit) as LayerRow[]).map(toLayer);
    },
    layers: () => (q.layerAll.all() as LayerRow[]).map(toLayer),
    childrenOf: (id) => q.children.all(id) as string[],
    diffUsers: (diffId) => q.diffUsers.get(diffId) as number,
    diffIds: () => new Set(q.diffIds.all() as string[]),
    layerWithDiff(diffId) {
      const row = q.layerWithDiff.get(diffId) as LayerRow | undefined;
      return row === undefined ? undefined : toLayer(row);
    },

    getTag: (name) => q.tag.get(name) as string | undefined,
    tagsOf: (layer) => q.tagsOf.all(layer) as string[],
    tags: () => q.tagAll.all() as TagRow[],

    holdsOf: (layer) => q.holdsOf.all(layer) as string[],
    holds: () => q.holdAll.all() as HoldRow[],

    getContainer(name) {
      const json = q.container.get(name) as string | undefined;
      return json === undefined ? undefined : parseContainer(json);
    },
    containersOn: (layer) => q.containersOn.all(layer) as string[],
    containers: () => (q.containerAll.all() as string[]).map(parseContainer),

    getImage(name) {
      const row = q.image.get(name) as ImageRow | undefined;
      return row === undefined ? undefined : toImage(row);
    },
    imagesById: (hexPrefix, limit) => (q.imagesById.all(`sha256:${hexPrefix}`, `sha256:${hexPrefix}g`, limit) as ImageRow[]).map(toImage),
    imagesOn: (layer) => q.imagesOn.all(layer) as string[],
    images: () => (q.imageAll.all() as ImageRow[]).map(toImage),

    getBlob(digest) {
      const row = q.blob.get(digest) as BlobRow | undefined;
      return row === undefined ? undefined : toBlob(row);
    },
    blobsOf: (manifest) => (q.blobsOf.all(manifest) as BlobRow[]).map(toBlob),
    blobs: () => (q.blobAll.all() as BlobRow[]).map(toBlob),
    manifestBlobs: () => q.manifestBlobAll.all() as { manifest: string; blob: string }[],

    async close() {
      await committer?.close();
      db.close();
    },
  };
}
