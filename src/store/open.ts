/**
 * Opening the metadata store of a data root: the database, then the 0.1 migration (src/store/migrate.ts),
 * before anything reads the layer side.
 * One process opens it once (src/state.ts) and passes it down: two openers in one process would be two
 * writers with two caches.
 */
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
