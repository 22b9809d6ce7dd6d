/**
 * The records the metadata store keeps (src/store/meta-store.ts), and how a volume record is stored. Plain
 * data only: the store never sees Docker's wire types, and the layer manager's modules re-export the
 * layer and container records from here (layers → store, never the other way).
 */
import { InternalError } from '../errors.js';

/**
 * Volume names: moby daemon/volume/local's `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$` (so at least two characters), at
 * most VOLUME_NAME_MAX_BYTES (one path component). Here so that the service (src/volumes/names.ts) and the
 * cluster store's strict parser of records other nodes wrote (cluster-files.ts) apply the one rule.
 */
export const VOLUME_NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;
/** A name is one path component on disk; ext4/xfs allow 255 bytes. */
export const VOLUME_NAME_MAX_BYTES = 255;
/** Mount IDs: printable ASCII without spaces, possibly empty (src/volumes/names.ts validateMountId). */
export const MOUNT_ID_RE = /^[\x21-\x7e]*$/;
/** Longest mount ID accepted; dockerd's are 64 characters. */
export const MAX_MOUNT_ID = 128;

/** True if `name` is a valid volume name (VOLUME_NAME_RE, at most VOLUME_NAME_MAX_BYTES). */
export function isVolumeName(name: string): boolean {
  return VOLUME_NAME_RE.test(name) && Buffer.byteLength(name) <= VOLUME_NAME_MAX_BYTES;
}

/** True if `id` is an acceptable mount ID (MOUNT_ID_RE, at most MAX_MOUNT_ID characters). */
export function isMountId(id: string): boolean {
  return id.length <= MAX_MOUNT_ID && MOUNT_ID_RE.test(id);
}

/** What a volume is, as validated at Create. Persisted as JSON: add kinds, never change old ones. */
export type VolumeSpec =
  | { readonly kind: 'named'; readonly uid?: number; readonly gid?: number; readonly mode?: number }
  | { readonly kind: 'bind'; readonly device: string }
  /**
   * A hard size limit (#6): a project quota on volumes/<name>/_data (`projectId`), or its own ext4 image
   * volumes/<name>/disk.img, loop-mounted on _data while held.
   */
  | {
      readonly kind: 'sized';
      readonly limit: number;
      readonly backing: 'quota' | 'loop';
      readonly projectId?: number;
      readonly uid?: number;
      readonly gid?: number;
      readonly mode?: number;
    }
  /** A full copy of volume `from` as it was at Create (#6); afterwards an ordinary named volume. */
  | { readonly kind: 'clone'; readonly from: string }
  /** Copy-on-write on a layer chain (ChainID), src/volumes/layered.ts; `image`: the reference it came from (#11). */
  | { readonly kind: 'layered'; readonly layer: string; readonly image?: string };

/** One volume's durable record. */
export interface VolumeRecord {
  readonly name: string;
  /** RFC 3339 creation time. */
  readonly createdAt: string;
  readonly spec: VolumeSpec;
  /**
   * The options exactly as the caller gave them (shown in Status). A null-prototype object: its keys came
   * from a request (#9 §4), so no key can reach Object.prototype.
   */
  readonly options: Readonly<Record<string, string>>;
  /**
   * Active holds: Docker mount ID → how many Mounts with that ID are not yet unmounted. A Map, never an
   * object: the IDs come from requests, and `rec.holds[id]` with the ID `constructor` would read
   * Object.prototype (#9 §4). Persisted as an array of [id, count] pairs (serializeVolume).
   */
  readonly holds: ReadonlyMap<string, number>;
  /**
   * Cluster mode (#14): a random ID given at Create, so that a node can tell the volume it read from a
   * volume of the same name created after another node removed it (src/store/cluster-store.ts). Unset in
   * local mode, where one process writes the store.
   */
  readonly incarnation?: string;
}

/** One read-only layer (src/layers/layer-store.ts). */
export interface LayerRecord {
  /** ChainID, `sha256:<hex>`. */
  readonly id: string;
  readonly diffId: string;
  readonly parent: string | undefined;
  /** Bytes of regular-file content in this layer's own diff. */
  readonly size: number;
  readonly files: number;
  readonly createdAt: string;
}

/** One image reference (src/images/, #11); the image's layers are ordinary layers, held through `top`. */
export interface ImageRecord {
  /** The normalized reference (`docker.io/library/app:latest`), or the image ID for an unnamed image. */
  readonly name: string;
  /** Image ID: `sha256:` of the config bytes. */
  readonly id: string;
  /** Manifest digest: `sha256:` of the manifest bytes. */
  readonly digest: string;
  /** ChainID of the top layer. */
  readonly top: string;
  /** The config JSON, byte-exact. */
  readonly config: string;
  /** The manifest JSON, byte-exact. */
  readonly manifest: string;
  readonly createdAt: string;
  /**
   * `received`: the manifest came with the image (a registry, an OCI layout), so a push sends it as it
   * is; `made`: tsvol wrote it (a Docker 20.10 save has none), so a push compresses the layers and makes
   * a new one, as `docker push` does.
   */
  readonly origin: 'received' | 'made';
}

/** A blob kept in the blob area (TSVOL_DATA/blobs/sha256/<hex>, #11): a compressed layer as it was pulled. */
export interface BlobRecord {
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  /** The repository it came from (`127.0.0.1:5000/tsimg/app`), for a cross-repository mount on push. */
  readonly source: string | undefined;
  readonly createdAt: string;
}

/** Storage drivers for container layers. */
export type LayerDriver = 'overlay' | 'copy';

/** A container layer (src/layers/containers.ts). */
export interface ContainerRecord {
  readonly name: string;
  /** The read-only layer it sits on (ChainID). */
  readonly from: string;
  /** How it is stored: an overlay mount, or a full copy (copy-driver.ts). */
  readonly driver: LayerDriver;
  readonly createdAt: string;
  /** The upper directory's name in containers/<name>/: `upper`, until a commit swaps in a fresh one. */
  readonly upper?: string;
  /**
   * A commit in progress (the journal of commitInPlace): the layer it makes and the fresh upper the
   * container moves to, with the committing process, so that another process can tell a live commit
   * from one that crashed. `next.from` may name a layer that does not exist (yet): it is no foreign key.
   * `next.diff`, when the commit moves the upper directory itself into the layer store (the layer's diff
   * is new): the DiffID whose directory, diffs/<hex>, the upper becomes. Until the journal is settled,
   * that directory is still the container's: gc and publish leave it, and settling moves it back if the
   * layer's record was never committed.
   */
  readonly next?: { readonly from: string; readonly upper: string; readonly pid: number; readonly boot: string; readonly diff?: string };
}

/** A null-prototype copy of `entries`, for objects whose keys come from a request. */
export function nullProtoRecord<V>(entries: Iterable<readonly [string, V]>): Record<string, V> {
  const out = Object.create(null) as Record<string, V>;
  for (const [k, v] of entries) out[k] = v;
  return out;
}

/** A volume record as stored: holds as [id, count] pairs, which JSON round-trips (a Map would become `{}`). */
export function serializeVolume(rec: VolumeRecord): string {
  return JSON.stringify({ ...rec, holds: [...rec.holds] });
}

/**
 * A hold count as stored. Records written before #9 §4 kept holds in an object and could hold garbage for
 * a prototype name (`(holds.constructor ?? 0) + 1` made a string): such an ID was mounted at least once,
 * so anything but a positive integer counts as one hold. Erring towards a hold keeps Remove refusing.
 */
function holdCountOf(value: unknown): number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : 1;
}

/** Holds from either stored form: [id, count] pairs, or (records before #9 §4) an object, migrated on read. */
function parseHolds(raw: unknown): Map<string, number> {
  const holds = new Map<string, number>();
  if (raw === undefined || raw === null) return holds;
  if (Array.isArray(raw)) {
    for (const pair of raw as unknown[]) {
      if (!Array.isArray(pair) || typeof pair[0] !== 'string') throw new Error('holds: want [id, count] pairs');
      holds.set(pair[0], holdCountOf(pair[1]));
    }
    return holds;
  }
  if (typeof raw !== 'object') throw new Error('holds: want [id, count] pairs');
  // JSON.parse makes every key an own property, `__proto__` included: Object.entries sees them all.
  for (const [id, count] of Object.entries(raw)) holds.set(id, holdCountOf(count));
  return holds;
}

/** A stored volume record, checked; holds in the old object form are read as a Map. */
export function parseVolume(name: string, json: string): VolumeRecord {
  try {
    const rec = JSON.parse(json) as Omit<VolumeRecord, 'holds'> & { holds?: unknown };
    if (rec.name !== name || typeof rec.spec !== 'object') throw new Error('name or spec mismatch');
    return { ...rec, options: nullProtoRecord(Object.entries(rec.options ?? {})), holds: parseHolds(rec.holds) };
  } catch (err) {
    throw new InternalError(`volume record "${name}" in the database is corrupt: ${String(err)}`);
  }
}
