/**
 * Opening the metadata store of a data root: the database, then the 0.1 migration (src/store/migrate.ts),
 * before anything reads the layer side.
 *
 * `acquireMetaStore` shares one open store per database within a process, for the factories that still
 * open the store by path (createVolumeStore(layout), createLayerStore(root) without a store): two of them
 * in one process (the server's volume store and its layered volumes' layer store) must not become two
 * writers with two caches. TODO(store): goes once the server and the CLI pass one MetaStore down from
 * src/state.ts #10.
 */
import path from 'node:path';
import type { Layout } from './layout.js';
import { createMetaStore, type MetaStore } from './meta-store.js';
import { migrate, type MigrationReport } from './migrate.js';

/** Opens the store of `layout` and migrates what 0.1 left; the report says what was imported. */
export function openMetaStore(layout: Layout): { store: MetaStore; migration: MigrationReport } {
  const store = createMetaStore(layout);
  try {
    return { store, migration: migrate(layout, store) };
  } catch (err) {
    void store.close();
    throw err;
  }
}

interface Shared {
  readonly store: MetaStore;
  readonly migration: MigrationReport;
  refs: number;
}
const shared = new Map<string, Shared>();

/**
 * A reference to this process's store of `layout` (opened and migrated on first use), what that migration
 * did, and the reference's release.
 */
export function acquireMetaStore(layout: Layout): { store: MetaStore; migration: MigrationReport; release: () => Promise<void> } {
  const key = path.resolve(layout.dbFile);
  let entry = shared.get(key);
  if (entry === undefined) {
    entry = { ...openMetaStore(layout), refs: 0 };
    shared.set(key, entry);
  }
  const held = entry;
  held.refs++;
  let released = false;
  return {
    store: held.store,
    migration: held.migration,
    async release() {
      if (released) return;
      released = true;
      if (--held.refs > 0) return;
      shared.delete(key);
      await held.store.close();
    },
  };
}
