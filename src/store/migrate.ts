/**
 * The 0.1 migration: 0.1's layer manager kept its records as one JSON file each under layers/ (volumes
 * were already in tsvol.db). At the first start of this version (server, or a CLI under the server lock),
 * they are imported into the database in one transaction with a mark in `meta`, then deleted (the paths are
 * layout.ts's Legacy01Layout):
 *
 *   layers/chains/<hex>.json        → layers
 *   layers/tags/<name>              → tags (the file holds the ChainID)
 *   layers/holds/<hex>/<holder>     → layer_holds (the file name is the URI-encoded holder)
 *   layers/containers/<name>.json   → containers (containers/<name>/ keeps the directories)
 *   layers/store, layers/store.lock/  0.1's layer lock (a flock file, or proper-lockfile's directories)
 *
 * Crash-safe at every instant (crash points below, tested by test/migrate-0.1.test.ts): before the commit
 * nothing has changed, so the next start imports again; the commit holds the import and the mark
 * together; after it, JSON files are stale and only ever deleted, never imported again (a crash mid-delete
 * leaves some for the next start to delete). Dot-names are writeFileDurable's temp files torn by a crash:
 * never records (#9 §10c), deleted with the rest. Volume records with holds in 0.1's object form are read
 * as they are (records.ts parseVolume) and rewritten in the new form by their next change.
 */
import fs from 'node:fs';
import path from 'node:path';
import { InternalError, describeError, errnoCode } from '../errors.js';
import { fsyncDir, isTempName } from '../sys/durable.js';
import { crashPoint } from '../sys/crash-point.js';
import { removePathSync } from '../sys/remove.js';
import type { Layout, LayersLayout, Legacy01Layout } from './layout.js';
import type { MetaStore } from './meta-store.js';
import type { ContainerRecord, LayerRecord } from './records.js';
import type { Change } from './schema.js';

/** The meta key marking the 0.1 layer records as imported (value: what was imported, as JSON). */
export const MIGRATED_KEY = 'migrated-0.1-layers';

/** What a migration did. */
export interface MigrationReport {
  /** False if the mark was already there (only stale files, if any, were deleted). */
  readonly imported: boolean;
  readonly layers: number;
  readonly tags: number;
  readonly holds: number;
  readonly containers: number;
  /** Records that referred to a layer that does not exist (0.1 could leave none; kept in the mark). */
  readonly skipped: readonly string[];
  /** JSON files and 0.1 lock leftovers deleted. */
  readonly deleted: number;
  /**
   * Mounts found inside what was deleted, left in place with the directories holding them (never deleted
   * through): the next start tries again once they are unmounted.
   */
  readonly left: readonly string[];
}

/** Directory entries that are records (no dot-names), or none if the directory does not exist. */
function entries(dir: string): string[] {
  try {
    return fs.readdirSync(dir).filter((n) => !isTempName(n)).sort();
  } catch (err) {
    // ENOENT: 0.1 never made it (the layer manager was never used).
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
}

function readJson<T>(file: string): T {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch (err) {
    throw new InternalError(`0.1 record ${file} is unreadable (${describeError(err)}); fix or remove it, then start again`, { cause: err });
  }
}

/**
 * 0.1 held a layer for a layered volume as `volume "<name>"` before committing the volume's record and
 * released it after deleting the record, so a crash could leave a hold whose volume is not (or no longer)
 * on that layer; 0.1's start-up released those (releaseOrphanHolds). Such a hold is not imported: from now
 * on a volume and its hold are committed together.
 */
const VOLUME_HOLDER = /^volume "(.+)"$/;

/** Reads what 0.1 left (at `old`) as changes, parents before children; records on missing layers are skipped. */
function readOldRecords(old: Legacy01Layout, store: MetaStore): { changes: Change[]; counts: Omit<MigrationReport, 'imported' | 'deleted' | 'left'> } {
  const byId = new Map<string, LayerRecord>();
  for (const f of entries(old.chainsDir)) {
    if (!f.endsWith('.json')) continue;
    const r = readJson<LayerRecord>(old.chainFile(f.slice(0, -'.json'.length)));
    byId.set(r.id, { id: r.id, diffId: r.diffId, parent: r.parent ?? undefined, size: r.size, files: r.files, createdAt: r.createdAt });
  }
  const changes: Change[] = [];
  const skipped: string[] = [];
  const isOrphanVolumeHold = (holder: string, layer: string): boolean => {
    const m = VOLUME_HOLDER.exec(holder);
    if (m === null) return false; // another kind of holder: kept as it is
    const spec = store.getVolume(m[1]!)?.spec;
    return spec?.kind !== 'layered' || spec.layer !== layer;
  };
  const placed = new Set<string>();
  // Parents first: a foreign key is checked at each insert.
  const place = (rec: LayerRecord, depth: number): boolean => {
    if (placed.has(rec.id)) return true;
    const parent = rec.parent === undefined ? undefined : byId.get(rec.parent);
    if (rec.parent !== undefined && (parent === undefined || depth > 10_000 || !place(parent, depth + 1))) {
      skipped.push(`layer ${rec.id} (parent ${rec.parent} missing)`);
      byId.delete(rec.id);
      return false;
    }
    placed.add(rec.id);
    changes.push({ op: 'layer.put', layer: rec });
    return true;
  };
  for (const rec of [...byId.values()]) place(rec, 0);
  let tags = 0;
  for (const name of entries(old.tagsDir)) {
    const layer = fs.readFileSync(old.tagFile(name), 'utf8').trim();
    if (!placed.has(layer)) skipped.push(`tag "${name}" (layer ${layer} missing)`);
    else {
      changes.push({ op: 'tag.put', name, layer });
      tags++;
    }
  }
  let holds = 0;
  for (const hex of entries(old.holdsDir)) {
    for (const file of entries(old.holdsOf(hex))) {
      const layer = `sha256:${hex}`;
      const holder = decodeURIComponent(file);
      if (!placed.has(layer)) skipped.push(`hold ${holder} (layer ${layer} missing)`);
      else if (isOrphanVolumeHold(holder, layer)) skipped.push(`hold ${holder} on ${layer} (no such layered volume: a Create or Remove 0.1 did not finish)`);
      else {
        changes.push({ op: 'layerHold.put', layer, holder });
        holds++;
      }
    }
  }
  let containers = 0;
  for (const f of entries(old.containersDir)) {
    if (!f.endsWith('.json')) continue;
    const rec = readJson<ContainerRecord>(old.containerRecord(f.slice(0, -'.json'.length)));
    if (!placed.has(rec.from)) skipped.push(`container "${rec.name}" (layer ${rec.from} missing)`);
    else {
      changes.push({ op: 'container.put', record: { ...rec, driver: rec.driver ?? 'overlay' } });
      containers++;
    }
  }
  return { changes, counts: { layers: placed.size, tags, holds, containers, skipped } };
}

/**
 * Deletes `p` (a file or a tree) by the deleter's walk, never through a symlink and never across a mount
 * (src/sys/remove.ts): a mount found inside is left with the directories holding it, added to `left`.
 * True if there was something.
 */
function remove(p: string, left: string[]): boolean {
  if (!fs.existsSync(p)) return false;
  left.push(...removePathSync(p));
  crashPoint('migrate:mid-delete');
  return true;
}

/** Deletes 0.1's record files and lock under `layers`; the container directories stay. Returns how many entries went. */
function deleteOldRecords(layers: LayersLayout, left: string[]): number {
  const old = layers.legacy01;
  let deleted = 0;
  for (const d of [old.chainsDir, old.tagsDir, old.holdsDir, old.lockFile, old.lockDir]) if (remove(d, left)) deleted++;
  const containers = old.containersDir;
  let touched = false;
  for (const f of fs.existsSync(containers) ? fs.readdirSync(containers) : []) {
    // <name>.json and writeFileDurable's temp files (.<name>.json.tmp-<hex>), as listed; <name>/ is the
    // container itself.
    if (!f.endsWith('.json') && !(isTempName(f) && f.includes('.json'))) continue;
    if (remove(path.join(containers, f), left)) deleted++;
    touched = true;
  }
  if (touched) fsyncDir(containers);
  if (deleted > 0) fsyncDir(layers.root);
  return deleted;
}

/**
 * Imports 0.1's JSON layer records into `store` (once: the mark in meta says it is done) and deletes
 * them. Call it where the store is opened, in the process that writes (the server, or a CLI holding the
 * server lock), before anything else uses the layers.
 */
export function migrate(layout: Layout, store: MetaStore): MigrationReport {
  let imported = false;
  let counts: Omit<MigrationReport, 'imported' | 'deleted' | 'left'> = { layers: 0, tags: 0, holds: 0, containers: 0, skipped: [] };
  if (store.getMeta(MIGRATED_KEY) === undefined) {
    const read = readOldRecords(layout.layers.legacy01, store);
    counts = read.counts;
    crashPoint('migrate:before-commit');
    const mark = JSON.stringify({ at: new Date().toISOString(), ...counts });
    store.commitNow([...read.changes, { op: 'meta.put', key: MIGRATED_KEY, value: mark }]);
    imported = true;
    crashPoint('migrate:after-commit');
  }
  const left: string[] = [];
  const deleted = deleteOldRecords(layout.layers, left);
  return { imported, ...counts, deleted, left };
}
