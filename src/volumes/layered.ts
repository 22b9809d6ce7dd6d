/**
 * Layered volumes (`-o layer=ID|NAME`, #6): a copy-on-write volume on a layer chain of the layer manager.
 * The chain is overlayfs's read-only lower directories and the volume's own directory the upper, so the
 * volume starts with the image's files and only what is written costs space:
 *
 *   volumes/<name>/upper   what the volume's users wrote (overlay's upper directory; whiteouts for deletions)
 *   volumes/<name>/work    overlay's work directory
 *   volumes/<name>/_data   the merged tree, mounted while the volume is held (like a loop-backed sized volume;
 *                          both unmount it the same way, kinds/common.ts unmountData)
 *
 * The layer is held as `volume "<name>"` exactly as long as the volume's record exists, so `tsvol layer rm`
 * and `gc` can never take a layer from under a volume: the hold is the layered kind's LinkedChange
 * (kinds/layered.ts), committed in the same transaction as the record (volume-service.ts), and the store's
 * foreign key refuses deleting a held layer.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { LayerRecord, LayerStore } from '../layers/layer-store.js';
import { createOverlayMounter, type OverlayMounter } from '../layers/overlay.js';
import { packTree } from '../layers/tree-archive.js';
import type { Layout, VolumeFiles } from '../store/layout.js';
import { NotFoundError } from '../errors.js';
import type { Beneath } from '../sys/beneath.js';
import { isMountRoot } from '../sys/libc.js';

/** The layer manager as layered volumes use it. */
export interface LayeredVolumes {
  readonly layers: LayerStore;
  /**
   * The ChainID of image `ref`'s top layer (#11); NotFound, saying how to bring the image in on the host,
   * when the store has no such image.
   */
  imageTop(ref: string): Promise<string>;
  /** The holder name a volume's layer hold carries. */
  holderOf(name: string): string;
  /** Makes the upper, work and (empty) merged directories of a volume directory being built. */
  build(files: VolumeFiles): Promise<void>;
  /** Mounts the merged tree at volumes/<name>/_data (no-op when already mounted). */
  mount(name: string, layer: string): void;
  /**
   * A new read-only layer from a volume's tree: a layered volume's upper directory on top of its layer
   * `parent` (so the layer's whiteouts carry deletions; VolumeKind.diffOf), any other volume's files as a
   * base layer, in which nothing may read as a whiteout (a `.wh.` name or a 0/0 character device is
   * refused, InvalidArgument naming it: src/layers/tar/writer.ts).
   */
  commitTree(tree: string | Beneath, parent?: string): Promise<LayerRecord>;
}

/** Opens the layer store of the data root (lazily: volumes that never use layers never touch it). */
export function createLayeredVolumes(layout: Layout, layers: () => LayerStore, imageTop: (ref: string) => Promise<string>): LayeredVolumes {
  let mounter: OverlayMounter | undefined;
  const dirs = (name: string) => {
    const files = layout.filesOf(name);
    return { upper: files.upper, work: files.work, merged: files.data };
  };

  return {
    get layers() {
      return layers();
    },
    async imageTop(ref) {
      try {
        return await imageTop(ref);
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err;
        // The managed plugin has no network and never pulls: the image must be brought in on the host.
        throw new NotFoundError(
          `image "${ref}" is not in tsvol's image store; on the host, run \`docker save ${ref} | tsvol image load\` (or \`tsvol image load -i FILE\`), then create the volume again`,
          { cause: err },
        );
      }
    },
    holderOf: (name) => `volume "${name}"`,
    async build(files) {
      await fs.promises.mkdir(files.upper, { mode: 0o755 });
      await fs.promises.mkdir(files.work, { mode: 0o700 });
      await fs.promises.mkdir(files.data, { mode: 0o755 });
    },
    mount(name, layer) {
      const d = dirs(name);
      if (isMountRoot(d.merged)) return; // a restarted server keeps its held volumes' mounts
      mounter ??= createOverlayMounter(layout.layersDir, layers());
      mounter.mount(layer, d);
    },
    async commitTree(tree, parent) {
      // An upper directory (with its parent) holds overlayfs's whiteouts; any other tree holds none.
      return layers().importLayer(packTree(tree, { whiteouts: parent === undefined ? 'none' : 'overlay' }), parent);
    },
  };
}
