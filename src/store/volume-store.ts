/**
 * VolumeStore: the durable volume records, as the volume service uses them. Two implementations, one
 * contract (test/store-contract.test.ts runs the same cases against both, as containerd runs one suite
 * against every snapshotter):
 *
 * - local (TSVOL_SCOPE=local): a view of the SQLite metadata store (src/store/meta-store.ts): records from
 *   the in-memory map, writes through MetaStore.commit (one atomic, durable unit in a group-commit batch).
 * - global (cluster mode, #14): src/store/cluster-store.ts, the shared filesystem itself: one directory per
 *   volume carrying its record and each node's holds, every read from the filesystem.
 *
 * A record's `holds` are this node's (in local mode there is one node): what is mounted here. Other nodes'
 * holds are `holdsElsewhere`, and Remove refuses them while their node's lease lives.
 */
import { fsyncDirShared } from '../sys/durable.js';
import type { Layout } from './layout.js';
import type { Change, MetaStore } from './meta-store.js';
import { openMetaStore } from './open.js';
import type { VolumeRecord } from './records.js';

export { nullProtoRecord, type VolumeRecord, type VolumeSpec } from './records.js';

/** One other node's holds on a volume (cluster mode). */
export interface NodeHolds {
  readonly node: string;
  /** Mount ID → count, as that node wrote them. */
  readonly holds: ReadonlyMap<string, number>;
  /** The node's lease is valid now: its holds count. */
  readonly live: boolean;
  /** How long ago its lease expired (0 while live; Infinity with no lease at all). */
  readonly expiredForMs: number;
}

/** The durable volume records. */
export interface VolumeStore {
  /** `local`: one host, SQLite. `global`: cluster mode on a shared root (#14). */
  readonly scope: 'local' | 'global';
  /** The record of `name` with this node's holds, or undefined. */
  get(name: string): VolumeRecord | undefined;
  list(): IterableIterator<VolumeRecord>;
  readonly size: number;
  /**
   * Inserts or replaces `record` durably (in cluster mode: this node's holds; the record itself was
   * published with its directory, stageRecord). `syncDirs` are fsynced first: directories whose renames
   * the record depends on. `also` commits with the record, atomically: a layered volume's holdChange
   * (src/layers/layer-store.ts), so that the volume and its layer hold exist together or not (local only).
   * In cluster mode a put that adds a hold is a Mount: refused while another node removes the volume,
   * or while this node's lease has lapsed.
   */
  put(record: VolumeRecord, syncDirs?: readonly string[], also?: readonly Change[]): Promise<void>;
  /**
   * Deletes the record durably; `also` commits with it (e.g. releaseChange of its layer hold). Returns
   * where the volume's directory went when deleting the record moved it (cluster mode: into this node's
   * tmp/, for the caller to delete in the background); undefined when the files stay at volumes/<name>
   * (local mode: the kind destroys them), or when another node removed the volume first. In cluster mode
   * refused while another live node holds the volume, naming it.
   */
  delete(name: string, also?: readonly Change[]): Promise<string | undefined>;
  /** Other nodes' holds on `name` (cluster mode); always none in local mode. */
  holdsElsewhere(name: string): readonly NodeHolds[];
  /**
   * Cluster mode: writes `rec` into the stage directory `dir` that its build renames to volumes/<name>,
   * so that the one rename publishes the volume with its record. Undefined in local mode (the record is
   * committed after the build).
   */
  readonly stageRecord: ((rec: VolumeRecord, dir: string) => void) | undefined;
  /** Small persistent facts about this node's store (boot id). */
  getMeta(key: string): string | undefined;
  putMeta(key: string, value: string): Promise<void>;
  /** Commits anything queued and closes the store (when this was its last user in the process). */
  close(): Promise<void>;
}

/** A VolumeStore view over `meta`; `close` runs `onClose`. */
export function volumeStoreOf(meta: MetaStore, onClose: () => Promise<void> = () => meta.close()): VolumeStore {
  return {
    scope: 'local',
    get: (name) => meta.getVolume(name),
    list: () => meta.volumes(),
    get size() {
      return meta.volumeCount;
    },
    async put(record, syncDirs = [], also = []) {
      await Promise.all(syncDirs.map(fsyncDirShared));
      await meta.commit([{ op: 'volume.put', record }, ...also]);
    },
    async delete(name, also = []) {
      await meta.commit([{ op: 'volume.delete', name }, ...also]);
      return undefined;
    },
    holdsElsewhere: () => [],
    stageRecord: undefined,
    getMeta: (key) => meta.getMeta(key),
    async putMeta(key, value) {
      await meta.commit([{ op: 'meta.put', key, value }]);
    },
    close: onClose,
  };
}

/**
 * Opens the metadata store of `layout` on its own (migrating 0.1's records on first open) and returns its
 * volume view, which closes the store. For a process that uses only volumes (tests); the server and the
 * CLI open the one store in src/state.ts and pass it down.
 */
export function createVolumeStore(layout: Layout): VolumeStore {
  const { store } = openMetaStore(layout);
  return volumeStoreOf(store);
}
