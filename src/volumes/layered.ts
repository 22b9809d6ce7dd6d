/**
 * Layered volumes (`-o layer=ID|NAME`, #6): a copy-on-write volume on a layer chain of the layer manager.
 * The chain is overlayfs's read-only lower directories and the volume's own directory the upper, so the
 * volume starts with the image's files and only what is written costs space:
 *
 *   volumes/<name>/upper   what the volume's users wrote (overlay's upper directory; whiteouts for deletions)
 *   volumes/<name>/work    overlay's work directory
 *   volumes/<name>/_data   the merged tree, mounted while the volume is held (like a loop-backed sized volume;
 *                          the volume service unmounts both kinds the same way)
 *
 * The layer is held (LayerStore.holdLayer) as `volume "<name>"` from before the volume's record is
 * committed until after its record is deleted, so `tsvol layer rm` and `gc` can never take a layer from
 * under a volume. A crash between the hold and the record leaves a hold with no volume: start-up releases
 * it (releaseOrphanHolds).
 */
import fs from 'node:fs';
import path from 'node:path';
import { createLayerStore, type LayerRecord, type LayerStore } from '../layers/layer-store.js';
import { createOverlayMounter, type OverlayMounter } from '../layers/overlay.js';
import { writeTree } from '../layers/tar/writer.js';
import type { Layout } from '../store/layout.js';
import type { VolumeRecord } from '../store/volume-store.js';
import type { Beneath } from '../sys/beneath.js';
import { isMountRoot } from '../sys/libc.js';

/** The layer manager as layered volumes use it. */
export interface LayeredVolumes {
  readonly layers: LayerStore;
  /** The holder name a volume's layer hold carries. */
  holderOf(name: string): string;
  /** Makes the upper, work and (empty) merged directories in `dir`, a volume directory being built. */
  build(dir: string): Promise<void>;
  /** Mounts the merged tree at volumes/<name>/_data (no-op when already mounted). */
  mount(name: string, layer: string): void;
  /** The directory holding what was written to the volume (the volume's own usage). */
  upperDir(name: string): string;
  /**
   * A new read-only layer from a volume: a layered volume's upper directory on top of its layer (so the
   * layer's whiteouts carry deletions), any other volume's files as a base layer.
   */
  commit(rec: VolumeRecord, dataDir: string | Beneath): Promise<LayerRecord>;
  /** Releases holds named `volume "<x>"` whose volume no longer exists on that layer; returns how many. */
  releaseOrphanHolds(isHeldBy: (volume: string, layer: string) => boolean): Promise<number>;
}

const HOLDER = /^volume "(.+)"$/;

/** Opens the layer store of the data root (lazily: volumes that never use layers never touch it). */
export function createLayeredVolumes(layout: Layout): LayeredVolumes {
  let store: LayerStore | undefined;
  let mounter: OverlayMounter | undefined;
  const layers = (): LayerStore => (store ??= createLayerStore(layout.layersDir));
  const dirs = (name: string) => ({
    upper: path.join(layout.volumeDir(name), 'upper'),
    work: path.join(layout.volumeDir(name), 'work'),
    merged: layout.dataDir(name),
  });

  return {
    get layers() {
      return layers();
    },
    holderOf: (name) => `volume "${name}"`,
    async build(dir) {
      await fs.promises.mkdir(path.join(dir, 'upper'), { mode: 0o755 });
      await fs.promises.mkdir(path.join(dir, 'work'), { mode: 0o700 });
      await fs.promises.mkdir(path.join(dir, '_data'), { mode: 0o755 });
    },
    mount(name, layer) {
      const d = dirs(name);
      if (isMountRoot(d.merged)) return; // a restarted server keeps its held volumes' mounts
      mounter ??= createOverlayMounter(layout.layersDir, layers());
      mounter.mount(layer, d);
    },
    upperDir: (name) => dirs(name).upper,
    async commit(rec, dataDir) {
      if (rec.spec.kind === 'layered') return layers().importLayer(writeTree(dirs(rec.name).upper), rec.spec.layer);
      return layers().importLayer(writeTree(dataDir));
    },
    async releaseOrphanHolds(isHeldBy) {
      let released = 0;
      // One indexed query of the metadata store (0.1's holds/ files were imported by the migration).
      for (const { layer, holder } of layers().listHolds()) {
        const m = HOLDER.exec(holder);
        if (m === null || isHeldBy(m[1]!, layer)) continue;
        await layers().releaseLayer(layer, holder);
        released++;
      }
      return released;
    },
  };
}
