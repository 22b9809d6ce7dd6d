/**
 * What `tsvol layer …` and `tsvol container …` do, one implementation each (#10: the CLI is a client). Two
 * callers, never at once on one data root, as for the volume operations (src/volumes/volume-ops.ts): the
 * running server, for the CLI's requests on its control socket (src/http/control.ts), and the CLI itself,
 * only while it holds the server lock so that no server runs (src/state.ts). Either way one process owns
 * the layer store, its container mounts and its locks.
 *
 * The operations are the only callers of LayerStore and ContainerStore for the CLI: a change to how those
 * are built or called is made here and in src/state.ts, nowhere in src/cli/ or src/http/.
 */
import { NotFoundError } from '../errors.js';
import type { Change, ContainerStore } from './containers.js';
import type { LayerRecord, LayerStore } from './layer-store.js';

export type { Change } from './containers.js';
export type { LayerRecord } from './layer-store.js';

/**
 * Receives a layer's export: its own diff as a tar stream, byte-identical to what was imported. The
 * export lasts until the promise settles.
 */
export type LayerExportSink = (tar: AsyncIterable<Buffer>) => Promise<void>;

/** What `tsvol layer rm` did: the tags it removed and the layers it deleted. */
export interface RemovedLayers {
  readonly untagged: string[];
  readonly deleted: string[];
}

/** What `tsvol layer gc` removed (layer IDs and crash leftovers). */
export interface CollectedLayers {
  readonly removed: string[];
}

/**
 * The CLI's layer and container operations; the control client (src/http/control-client.ts) offers the
 * same ones. A `ref` is a layer ID (`sha256:…`, or a unique hex prefix of 12+ characters) or a tag.
 */
export interface LayerOps {
  /** Imports a layer tar (plain or gzip) on top of `parent`; returns the layer (the existing one if identical). */
  importLayer(input: AsyncIterable<Buffer>, parent: string | undefined): Promise<LayerRecord>;
  /** Resolves `ref`, then streams that layer's own diff to `sink`; an unknown `ref` fails before `sink` runs. */
  exportLayer(ref: string, sink: LayerExportSink): Promise<void>;
  /** Every layer, in no particular order. */
  listLayers(): Promise<LayerRecord[]>;
  /** The chain from `ref` down to its base, top first. */
  history(ref: string): Promise<LayerRecord[]>;
  /** Names a layer `name` (a tag holds it). */
  tag(ref: string, name: string): Promise<void>;
  /** Removes a layer nothing holds; given a tag, untags (and removes the layer if that was its last holder). */
  removeLayer(ref: string): Promise<RemovedLayers>;
  /** Removes every layer held by nothing, and crash leftovers. */
  gc(): Promise<CollectedLayers>;
  /**
   * Makes and mounts a writable container layer `name` on `from` (a layer, or an image's top layer, #11);
   * returns the merged path.
   */
  createContainer(name: string, from: string): Promise<string>;
  /** The container's merged path, mounted again if needed (after a reboot or an interrupted commit). */
  mountContainer(name: string): Promise<string>;
  /** Changes since the container's base layer or its last commit, like `docker diff`. */
  diffContainer(name: string): Promise<Change[]>;
  /** A new read-only layer from the container's writable layer; returns it. */
  commitContainer(name: string): Promise<LayerRecord>;
  /** Unmounts and discards a container layer. */
  removeContainer(name: string): Promise<void>;
}

/**
 * What the operations work on: the one process's stores. Functions, so a command that never touches
 * containers never opens their store (which makes its directory, and may probe overlayfs).
 */
export interface LayerOpsContext {
  readonly layers: () => LayerStore;
  readonly containers: () => ContainerStore;
  /** The top layer's ChainID of image `ref` (#11: `container create --from` an image); NotFound if none. */
  readonly imageTop?: (ref: string) => Promise<string>;
  /** Runs a gc where no image load is between its layer imports and its image rows (#11). */
  readonly gcExclusive?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Deletes the image blobs nothing holds any longer (#11); returns their digests. Runs in the same gc. */
  readonly gcBlobs?: () => Promise<string[]>;
}

/** The operations over `ctx`. */
export function layerOps(ctx: LayerOpsContext): LayerOps {
  const { layers, containers } = ctx;
  // Every method is async, so that a store failing to open (a directory it cannot make) rejects rather
  // than throwing at the call.
  return {
    async importLayer(input, parent) {
      return layers().importLayer(input, parent);
    },
    async exportLayer(ref, sink) {
      const store = layers();
      const rec = store.resolve(ref);
      await sink(store.exportLayer(rec.id));
    },
    async listLayers() {
      return layers().list();
    },
    async history(ref) {
      return layers().history(ref);
    },
    async tag(ref, name) {
      await layers().tag(ref, name);
    },
    async removeLayer(ref) {
      return layers().remove(ref);
    },
    async gc() {
      const run = async (): Promise<CollectedLayers> => {
        const { removed } = await layers().gc();
        const blobs = ctx.gcBlobs === undefined ? [] : await ctx.gcBlobs();
        return { removed: [...removed, ...blobs.map((d) => `blobs/sha256/${d.slice(7)}`)] };
      };
      return ctx.gcExclusive === undefined ? run() : ctx.gcExclusive(run);
    },
    async createContainer(name, from) {
      const store = containers();
      let base = from;
      try {
        layers().resolve(from);
      } catch (err) {
        // Not a layer: an image's top layer (#11). Neither: say both were looked for.
        if (!(err instanceof NotFoundError) || ctx.imageTop === undefined) throw err;
        try {
          base = await ctx.imageTop(from);
        } catch (imageErr) {
          if (!(imageErr instanceof NotFoundError)) throw imageErr;
          throw new NotFoundError(`"${from}" is neither a layer nor an image; \`tsvol layer ls\` and \`tsvol image ls\` list them`, { cause: imageErr });
        }
      }
      return store.create(name, base);
    },
    async mountContainer(name) {
      return containers().mergedPath(name);
    },
    async diffContainer(name) {
      return containers().diff(name);
    },
    async commitContainer(name) {
      return containers().commit(name);
    },
    async removeContainer(name) {
      await containers().remove(name);
    },
  };
}
