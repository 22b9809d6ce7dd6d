/**
 * VolumeStore: the volume side of the metadata store (src/store/meta-store.ts), as the volume service
 * uses it: records from the in-memory map, writes through MetaStore.commit (one atomic, durable unit in a
 * group-commit batch). A thin view: the records, their parsing and the database live in src/store/.
 */
import { fsyncDirShared } from '../sys/durable.js';
import type { Layout } from './layout.js';
import type { Change, MetaStore } from './meta-store.js';
import { openMetaStore } from './open.js';
import type { VolumeRecord } from './records.js';

export { nullProtoRecord, type VolumeRecord, type VolumeSpec } from './records.js';

/** The durable volume records. */
export interface VolumeStore {
  get(name: string): VolumeRecord | undefined;
  list(): IterableIterator<VolumeRecord>;
  readonly size: number;
  /**
   * Inserts or replaces `record` durably; the cache changes only after the commit, to this very object.
   * `syncDirs` are fsynced first (shared with concurrent callers, src/sys/durable.ts): directories whose
   * renames the record depends on. `also` commits with the record, atomically: a layered volume's
   * holdChange (src/layers/layer-store.ts), so that the volume and its layer hold exist together or not.
   */
  put(record: VolumeRecord, syncDirs?: readonly string[], also?: readonly Change[]): Promise<void>;
  /** Deletes the record durably; `also` commits with it, atomically (e.g. releaseChange of its layer hold). */
  delete(name: string, also?: readonly Change[]): Promise<void>;
  /** Small persistent key/value facts about the store (boot id). */
  getMeta(key: string): string | undefined;
  putMeta(key: string, value: string): Promise<void>;
  /** The whole metadata store behind this view (for changes that span volumes and layers). */
  readonly meta: MetaStore;
  /** Commits anything queued and closes the database (when this was its last user in the process). */
  close(): Promise<void>;
}

/** A VolumeStore view over `meta`; `close` runs `onClose`. */
export function volumeStoreOf(meta: MetaStore, onClose: () => Promise<void> = () => meta.close()): VolumeStore {
  return {
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
    },
    getMeta: (key) => meta.getMeta(key),
    async putMeta(key, value) {
      await meta.commit([{ op: 'meta.put', key, value }]);
    },
    meta,
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
