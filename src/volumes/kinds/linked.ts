/**
 * A volume record's commits together with its LinkedChanges (./kind.ts), in one place. Today the layer
 * store keeps its holds in files of its own, so a hold is made before the record and released after it:
 * a crash between the two leaves a hold with no volume, which start-up releases (reconcile,
 * releaseOrphanHolds), never a volume without its hold.
 *
 * TODO(kinds): #10 with the one MetaStore, each function below becomes one `store.commit([...])` of the
 * record's change and the linked changes (`layerHold.put` / `layerHold.delete`) in one transaction, and
 * start-up's orphan-hold release goes.
 */
import { describeError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { VolumeRecord, VolumeStore } from '../../store/volume-store.js';
import type { LayeredVolumes } from '../layered.js';
import type { LinkedChange } from './kind.js';

/** What the commits need. */
export interface LinkedDeps {
  readonly store: VolumeStore;
  readonly layered: LayeredVolumes;
  readonly log: Logger;
}

async function undo(deps: LinkedDeps, name: string, changes: readonly LinkedChange[]): Promise<void> {
  for (const c of changes) {
    try {
      await deps.layered.layers.releaseLayer(c.layer, c.holder);
    } catch (err) {
      deps.log.warn({ volume: name, layer: c.layer, err: describeError(err) }, 'could not release layer hold; start-up will');
    }
  }
}

/**
 * Commits a new record with its linked changes; on failure none of them stays. `syncDirs` are made
 * durable first (VolumeStore.put).
 */
export async function commitCreate(deps: LinkedDeps, rec: VolumeRecord, changes: readonly LinkedChange[], syncDirs?: readonly string[]): Promise<void> {
  const made: LinkedChange[] = [];
  try {
    for (const c of changes) {
      await deps.layered.layers.holdLayer(c.layer, c.holder);
      made.push(c);
    }
    await deps.store.put(rec, syncDirs);
  } catch (err) {
    await undo(deps, rec.name, made);
    throw err;
  }
}

/** Deletes a record, then undoes its linked changes (failures logged: start-up releases orphan holds). */
export async function commitRemove(deps: LinkedDeps, rec: VolumeRecord, changes: readonly LinkedChange[]): Promise<void> {
  await deps.store.delete(rec.name);
  await undo(deps, rec.name, changes);
}
