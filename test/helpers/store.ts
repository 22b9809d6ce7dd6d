/**
 * Test helpers reading and planting metadata in a data root's tsvol.db directly (the state a crash leaves),
 * on a connection of their own: SQLite's WAL lets them read while a server runs.
 */
import path from 'node:path';
import Database from 'better-sqlite3';
import { createLayerStore, type LayerStore } from '../../src/layers/layer-store.js';
import { createLayout } from '../../src/store/layout.js';
import { openMetaStore } from '../../src/store/open.js';

/** Runs `fn` on a connection to `data`/tsvol.db with foreign keys on, closed afterwards. */
export function withDb<T>(data: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path.join(data, 'tsvol.db'));
  try {
    db.pragma('busy_timeout = 5000');
    db.pragma('foreign_keys = ON');
    return fn(db);
  } finally {
    db.close();
  }
}

/** Every layer hold in the data root `data`, as `{ layer, holder }`, sorted. */
export function layerHolds(data: string): { layer: string; holder: string }[] {
  return withDb(data, (db) => db.prepare('SELECT layer, holder FROM layer_holds ORDER BY layer, holder').all() as { layer: string; holder: string }[]);
}

/** The holders of `layer` (a ChainID), sorted. */
export function holdersOf(data: string, layer: string): string[] {
  return withDb(data, (db) => db.prepare('SELECT holder FROM layer_holds WHERE layer = ? ORDER BY holder').pluck().all(layer) as string[]);
}

/** Plants a hold, as a process that crashed after holding a layer would leave it (no server running). */
export function plantLayerHold(data: string, layer: string, holder: string): void {
  withDb(data, (db) => db.prepare('INSERT OR IGNORE INTO layer_holds (layer, holder) VALUES (?, ?)').run(layer, holder));
}

/**
 * The layer store under `root` (a data root's layers/) on a metadata store of its own, for tests that drive
 * the layer store in-process (the server and the CLI open the one store in src/state.ts). Left open: the
 * test process exits with it.
 */
export function openLayerStore(root: string): LayerStore {
  return createLayerStore(root, openMetaStore(createLayout(path.dirname(root))).store);
}
