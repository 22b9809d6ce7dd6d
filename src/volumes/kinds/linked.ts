/**
 * A volume record's commits together with its LinkedChanges (./kind.ts): one transaction of the one store
 * (#10). A layered volume and its layer hold exist together or not at all, and the store's foreign key
 * refuses the hold (so the Create fails) if the layer was removed meanwhile.
 */
import { holdChange, releaseChange } from '../../layers/layer-store.js';
import type { VolumeRecord, VolumeStore } from '../../store/volume-store.js';
import type { LinkedChange } from './kind.js';

/** Commits a new record with its linked changes, atomically. */
export async function commitCreate(store: VolumeStore, rec: VolumeRecord, changes: readonly LinkedChange[]): Promise<void> {
  await store.put(rec, [], changes.map((c) => holdChange(c.layer, c.holder)));
}

/** Deletes a record and undoes its linked changes, atomically. */
export async function commitRemove(store: VolumeStore, rec: VolumeRecord, changes: readonly LinkedChange[]): Promise<void> {
  await store.delete(rec.name, changes.map((c) => releaseChange(c.layer, c.holder)));
}
