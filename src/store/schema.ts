/**
 * The metadata database (tsvol.db): its tables, the one way to change them (`Change`), and the SQL each
 * change runs on the commit worker. Foreign keys are ON and RESTRICT, so the structure itself refuses
 * what the code checks first for a friendly message: deleting a layer that is a parent, tagged, held, or
 * under a container, or recording anything on a layer that does not exist. Every foreign key column is
 * indexed, so such a check (and every read of the layer manager) is a B-tree lookup, never a scan.
 */
import type { BlobRecord, ContainerRecord, ImageRecord, LayerRecord, VolumeRecord } from './records.js';
import { serializeVolume } from './records.js';

/** The schema version this code writes (meta key `schema`). */
export const SCHEMA_VERSION = '3';

/**
 * Tables. `volumes` and `meta` are 0.1's, unchanged (0.1's `changes` log is dropped: one process writes at
 * a time, so nobody needs to catch up with another's commits).
 *
 * `images` (#11): one row per image reference. `name` is the normalized reference
 * (`docker.io/library/redis:7`, `docker.io/library/app@sha256:…`, or the bare image ID `sha256:…` for an
 * image loaded without a name), `id` the image ID (the config's digest), `digest` the manifest digest,
 * `top` the ChainID of its top layer (which the row holds, like a tag: `layer rm` and gc respect it),
 * `config` and `manifest` the exact bytes of the config and manifest JSON (their digests are computed
 * from them: byte-exact is what makes a save or push reproduce the image ID and manifest digest), and
 * `created_at` RFC 3339. They live in the row rather than in blobs/sha256/: they are a few KiB, and the
 * reference and its blobs then land in one atomic commit and go with one delete (no blob GC, no window
 * where a reference names a blob that is not durable yet). `origin` says where the manifest came from:
 * `received` (a registry or an archive gave these bytes: a push sends them as they are) or `made` (a
 * Docker 20.10 save has no distribution manifest, so tsvol wrote one: a push compresses the layers and
 * makes a new one, as `docker push` does).
 *
 * `blobs` and `manifest_blobs` (#11): the compressed layer blobs an image came with (a pull's gzip layers),
 * kept byte-exact in TSVOL_DATA/blobs/sha256/<hex> so that a push sends the very manifest and blobs that
 * were pulled (same manifest digest). `blobs` is one row per blob file (digest, size, media type, and the
 * repository it came from, `host/path`, for a cross-repository mount on push); `manifest_blobs` says which
 * manifest (by digest, the `digest` of `images`) holds which blob. A manifest no image names any longer
 * holds nothing, and `tsvol layer gc` deletes its rows, the blobs no manifest holds, and then their files
 * (src/images/blob-store.ts). A blob file is published before its row and the row before the image's, all
 * in the load's one commit: a crash leaves at most a file without a row, which gc deletes.
 */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS volumes (name TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layers (
  id TEXT PRIMARY KEY,
  diff_id TEXT NOT NULL,
  parent TEXT REFERENCES layers (id) ON DELETE RESTRICT,
  size INTEGER NOT NULL,
  files INTEGER NOT NULL,
  created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS layers_by_parent ON layers (parent);
CREATE INDEX IF NOT EXISTS layers_by_diff ON layers (diff_id);
CREATE TABLE IF NOT EXISTS tags (
  name TEXT PRIMARY KEY,
  layer TEXT NOT NULL REFERENCES layers (id) ON DELETE RESTRICT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_layer ON tags (layer);
CREATE TABLE IF NOT EXISTS layer_holds (
  layer TEXT NOT NULL REFERENCES layers (id) ON DELETE RESTRICT,
  holder TEXT NOT NULL,
  PRIMARY KEY (layer, holder)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS containers (
  name TEXT PRIMARY KEY,
  base TEXT NOT NULL REFERENCES layers (id) ON DELETE RESTRICT,
  record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS containers_by_base ON containers (base);
CREATE TABLE IF NOT EXISTS images (
  name TEXT PRIMARY KEY,
  id TEXT NOT NULL,
  digest TEXT NOT NULL,
  top TEXT NOT NULL REFERENCES layers (id) ON DELETE RESTRICT,
  config TEXT NOT NULL,
  manifest TEXT NOT NULL,
  created_at TEXT NOT NULL,
  origin TEXT NOT NULL DEFAULT 'received'
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_by_top ON images (top);
CREATE INDEX IF NOT EXISTS images_by_id ON images (id);
CREATE INDEX IF NOT EXISTS images_by_digest ON images (digest);
CREATE TABLE IF NOT EXISTS blobs (
  digest TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  media_type TEXT NOT NULL,
  source TEXT,
  created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifest_blobs (
  manifest TEXT NOT NULL,
  blob TEXT NOT NULL REFERENCES blobs (digest) ON DELETE RESTRICT,
  PRIMARY KEY (manifest, blob)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_blobs_by_blob ON manifest_blobs (blob);
DROP TABLE IF EXISTS changes;
`;

/** Connection settings shared by the reader (main thread) and the writer (commit worker). */
export const PRAGMAS = ['journal_mode = WAL', 'synchronous = FULL', 'foreign_keys = ON', 'busy_timeout = 5000'] as const;

/**
 * One change to the metadata. A list of them is committed as one atomic, durable unit (MetaStore.commit):
 * e.g. a layered volume's record and its layer hold together.
 */
export type Change =
  | { readonly op: 'volume.put'; readonly record: VolumeRecord }
  | { readonly op: 'volume.delete'; readonly name: string }
  | { readonly op: 'layer.put'; readonly layer: LayerRecord }
  | { readonly op: 'layer.delete'; readonly id: string }
  | { readonly op: 'tag.put'; readonly name: string; readonly layer: string }
  | { readonly op: 'tag.delete'; readonly name: string }
  | { readonly op: 'layerHold.put'; readonly layer: string; readonly holder: string }
  | { readonly op: 'layerHold.delete'; readonly layer: string; readonly holder: string }
  | { readonly op: 'container.put'; readonly record: ContainerRecord }
  | { readonly op: 'container.delete'; readonly name: string }
  | { readonly op: 'image.put'; readonly image: ImageRecord }
  | { readonly op: 'image.delete'; readonly name: string }
  | { readonly op: 'blob.put'; readonly blob: BlobRecord }
  | { readonly op: 'blob.delete'; readonly digest: string }
  | { readonly op: 'manifestBlob.put'; readonly manifest: string; readonly blob: string }
  | { readonly op: 'manifestBlob.delete'; readonly manifest: string; readonly blob: string }
  | { readonly op: 'meta.put'; readonly key: string; readonly value: string };

/** The SQL of each statement the worker runs, by name (prepared once). */
export const STATEMENTS = {
  volumePut: 'INSERT OR REPLACE INTO volumes (name, record) VALUES (?, ?)',
  volumeDelete: 'DELETE FROM volumes WHERE name = ?',
  // An upsert, not INSERT OR REPLACE: REPLACE deletes the old row first, which a RESTRICT key refuses.
  layerPut:
    'INSERT INTO layers (id, diff_id, parent, size, files, created_at) VALUES (?, ?, ?, ?, ?, ?) ' +
    'ON CONFLICT (id) DO UPDATE SET diff_id = excluded.diff_id, parent = excluded.parent, size = excluded.size, files = excluded.files, created_at = excluded.created_at',
  layerDelete: 'DELETE FROM layers WHERE id = ?',
  tagPut: 'INSERT INTO tags (name, layer) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET layer = excluded.layer',
  tagDelete: 'DELETE FROM tags WHERE name = ?',
  holdPut: 'INSERT OR IGNORE INTO layer_holds (layer, holder) VALUES (?, ?)',
  holdDelete: 'DELETE FROM layer_holds WHERE layer = ? AND holder = ?',
  containerPut: 'INSERT INTO containers (name, base, record) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET base = excluded.base, record = excluded.record',
  containerDelete: 'DELETE FROM containers WHERE name = ?',
  metaPut: 'INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)',
  imagePut:
    'INSERT INTO images (name, id, digest, top, config, manifest, created_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ' +
    'ON CONFLICT (name) DO UPDATE SET id = excluded.id, digest = excluded.digest, top = excluded.top, config = excluded.config, manifest = excluded.manifest, created_at = excluded.created_at, origin = excluded.origin',
  imageDelete: 'DELETE FROM images WHERE name = ?',
  // A blob stored again keeps its first source (any repository that has it serves a mount).
  blobPut:
    'INSERT INTO blobs (digest, size, media_type, source, created_at) VALUES (?, ?, ?, ?, ?) ' +
    'ON CONFLICT (digest) DO UPDATE SET source = coalesce(blobs.source, excluded.source)',
  blobDelete: 'DELETE FROM blobs WHERE digest = ?',
  manifestBlobPut: 'INSERT OR IGNORE INTO manifest_blobs (manifest, blob) VALUES (?, ?)',
  manifestBlobDelete: 'DELETE FROM manifest_blobs WHERE manifest = ? AND blob = ?',
} as const;

const IMAGE_COLUMNS = 'name, id, digest, top, config, manifest, created_at, origin';

const BLOB_COLUMNS = 'digest, size, media_type, source, created_at';

const LAYER_COLUMNS = 'id, diff_id, parent, size, files, created_at';

/**
 * The reads, on the main thread's connection. Those that serve one operation are lookups on a key or an
 * index (test/store-meta.test.ts checks their query plans): their cost never grows with the number of
 * layers. The `*All` ones and diffIds are listings (`tsvol layer ls`, gc).
 */
export const READS = {
  layer: `SELECT ${LAYER_COLUMNS} FROM layers WHERE id = ?`,
  layerRange: `SELECT ${LAYER_COLUMNS} FROM layers WHERE id >= ? AND id < ? ORDER BY id LIMIT ?`,
  children: 'SELECT id FROM layers WHERE parent = ? ORDER BY id',
  diffUsers: 'SELECT count(*) FROM layers WHERE diff_id = ?',
  layerWithDiff: `SELECT ${LAYER_COLUMNS} FROM layers WHERE diff_id = ? LIMIT 1`,
  tag: 'SELECT layer FROM tags WHERE name = ?',
  tagsOf: 'SELECT name FROM tags WHERE layer = ? ORDER BY name',
  holdsOf: 'SELECT holder FROM layer_holds WHERE layer = ? ORDER BY holder',
  container: 'SELECT record FROM containers WHERE name = ?',
  containersOn: 'SELECT name FROM containers WHERE base = ? ORDER BY name',
  layerAll: `SELECT ${LAYER_COLUMNS} FROM layers`,
  diffIds: 'SELECT DISTINCT diff_id FROM layers',
  tagAll: 'SELECT name, layer FROM tags ORDER BY name',
  holdAll: 'SELECT layer, holder FROM layer_holds ORDER BY layer, holder',
  containerAll: 'SELECT record FROM containers ORDER BY name',
  image: `SELECT ${IMAGE_COLUMNS} FROM images WHERE name = ?`,
  imagesById: `SELECT ${IMAGE_COLUMNS} FROM images WHERE id >= ? AND id < ? ORDER BY id, name LIMIT ?`,
  imagesOn: 'SELECT name FROM images WHERE top = ? ORDER BY name',
  imageAll: `SELECT ${IMAGE_COLUMNS} FROM images ORDER BY name`,
  blob: `SELECT ${BLOB_COLUMNS} FROM blobs WHERE digest = ?`,
  blobsOf: `SELECT ${BLOB_COLUMNS.split(', ').map((c) => `b.${c}`).join(', ')} FROM manifest_blobs m JOIN blobs b ON b.digest = m.blob WHERE m.manifest = ? ORDER BY b.digest`,
  blobAll: `SELECT ${BLOB_COLUMNS} FROM blobs ORDER BY digest`,
  manifestBlobAll: 'SELECT manifest, blob FROM manifest_blobs ORDER BY manifest, blob',
} as const;

/** The reads that serve one operation (not listings): each must be a key or index lookup. */
export const POINT_READS = [
  'layer',
  'layerRange',
  'children',
  'diffUsers',
  'layerWithDiff',
  'tag',
  'tagsOf',
  'holdsOf',
  'container',
  'containersOn',
  'image',
  'imagesById',
  'imagesOn',
  'blob',
  'blobsOf',
] as const;

/** A statement name and its parameters: what a Change becomes on its way to the worker. */
export interface Op {
  readonly s: keyof typeof STATEMENTS;
  readonly a: readonly (string | number | null)[];
}

/** The statements that carry out `change`. */
export function opsOf(change: Change): Op {
  switch (change.op) {
    case 'volume.put':
      return { s: 'volumePut', a: [change.record.name, serializeVolume(change.record)] };
    case 'volume.delete':
      return { s: 'volumeDelete', a: [change.name] };
    case 'layer.put': {
      const l = change.layer;
      return { s: 'layerPut', a: [l.id, l.diffId, l.parent ?? null, l.size, l.files, l.createdAt] };
    }
    case 'layer.delete':
      return { s: 'layerDelete', a: [change.id] };
    case 'tag.put':
      return { s: 'tagPut', a: [change.name, change.layer] };
    case 'tag.delete':
      return { s: 'tagDelete', a: [change.name] };
    case 'layerHold.put':
      return { s: 'holdPut', a: [change.layer, change.holder] };
    case 'layerHold.delete':
      return { s: 'holdDelete', a: [change.layer, change.holder] };
    case 'container.put':
      return { s: 'containerPut', a: [change.record.name, change.record.from, JSON.stringify(change.record)] };
    case 'container.delete':
      return { s: 'containerDelete', a: [change.name] };
    case 'meta.put':
      return { s: 'metaPut', a: [change.key, change.value] };
    case 'image.put': {
      const i = change.image;
      return { s: 'imagePut', a: [i.name, i.id, i.digest, i.top, i.config, i.manifest, i.createdAt, i.origin] };
    }
    case 'image.delete':
      return { s: 'imageDelete', a: [change.name] };
    case 'blob.put': {
      const b = change.blob;
      return { s: 'blobPut', a: [b.digest, b.size, b.mediaType, b.source ?? null, b.createdAt] };
    }
    case 'blob.delete':
      return { s: 'blobDelete', a: [change.digest] };
    case 'manifestBlob.put':
      return { s: 'manifestBlobPut', a: [change.manifest, change.blob] };
    case 'manifestBlob.delete':
      return { s: 'manifestBlobDelete', a: [change.manifest, change.blob] };
  }
}
