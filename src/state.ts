/**
 * One data root's state as one process opens it: layout → store → service → layer and container stores →
 * the operations the CLI asks for. Two openers, never at once on one data root (#9 §6, #10): the server
 * (src/server.ts), for its whole life, and a `tsvol` command that found no server, for its one command.
 * Both hold the server lock (TSVOL_DATA/server.lock) while the state is open; this module takes it too, so
 * that src/cli/ reaches the state and the lock only through here (it never imports store/ or sys/).
 *
 * Every construction of the stores is here and in the operations (src/volumes/volume-ops.ts,
 * src/layers/layer-ops.ts): a store that changes how it is opened changes these files, not its callers.
 */
import type { Config } from './config.js';
import type { ControlOps } from './http/control-client.js';
import { createBlobStore, type BlobStore } from './images/blob-store.js';
import { createGcBarrier } from './images/gc-barrier.js';
import { imageOps } from './images/image-ops.js';
import { createContainerStore, type ContainerStore } from './layers/containers.js';
import { layerOps } from './layers/layer-ops.js';
import { createLayerStore, type LayerStore } from './layers/layer-store.js';
import { createLogger, type Logger } from './log.js';
import { serverPaths } from './server-paths.js';
import { createLayout, type Layout } from './store/layout.js';
import { openMetaStore } from './store/open.js';
import { volumeStoreOf, type VolumeStore } from './store/volume-store.js';
import { acquireLock, type ReleaseLock } from './sys/lock.js';
import { makePrivateDir } from './sys/private-dir.js';
import { createLayeredVolumes } from './volumes/layered.js';
import { volumeOps } from './volumes/volume-ops.js';
import { createVolumeService, type VolumeMechanics, type VolumeService } from './volumes/volume-service.js';

export type { ReleaseLock } from './sys/lock.js';

/** An open data root: its stores, the volume service, and the operations over them (as the control API's). */
export interface State extends ControlOps {
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly service: VolumeService & VolumeMechanics;
  /** Closes the stores (commits what is pending). The caller still holds the server lock. */
  close(): Promise<void>;
}

/**
 * Makes the data root root-only (#9 §5), creating it if needed, then takes its server lock, waiting up to
 * `waitMs` for a holder to release it or die; a ConflictError naming the holder otherwise. Held until
 * released or this process exits (a flock: src/sys/lock.ts).
 */
export async function lockDataRoot(config: Config, waitMs: number): Promise<ReleaseLock> {
  const { root, lockFile } = serverPaths(config);
  // The lock file lives in the data root: make the root as the server does, closed to other users first.
  makePrivateDir(root);
  return acquireLock(lockFile, 'tsvol server', waitMs);
}

/**
 * Opens the state of `config`'s data root. The caller holds the server lock (lockDataRoot) from before
 * this until after close(). The one metadata store is opened (and a 0.1 data root migrated, logged once)
 * here and passed down: every part of the process reads and writes the same store. Nothing else is
 * repaired here: the server reconciles before it serves; a command working alone leaves repair to the
 * next server start. The layer store opens on first use: volumes that never use layers never touch it.
 */
export function openState(config: Config, log: Logger): State {
  const layout = createLayout(config.dataRoot);
  const { store: meta, migration } = openMetaStore(layout);
  if (migration.imported) log.info({ migration }, 'migrated the 0.1 layer records into tsvol.db');
  const store = volumeStoreOf(meta);
  let layerStore: LayerStore | undefined;
  const layers = (): LayerStore => (layerStore ??= createLayerStore(layout.layersDir, meta));
  const barrier = createGcBarrier();
  let blobStore: BlobStore | undefined;
  const blobs = (): BlobStore => (blobStore ??= createBlobStore(layout, meta));
  const images = imageOps({ meta, layers, tmpDir: layout.tmpDir, barrier, blobs });
  const layered = createLayeredVolumes(layout, layers, (ref) => images.topLayer(ref));
  const service = createVolumeService({ config, layout, store, log, layered });
  let containers: ContainerStore | undefined;
  return {
    layout,
    store,
    service,
    volumes: volumeOps({ config, layout, store, service }),
    layers: layerOps({
      layers,
      containers: () => (containers ??= createContainerStore(layout.layersDir, layers(), config.layerDriver)),
      imageTop: (ref) => images.topLayer(ref),
      gcExclusive: (fn) => barrier.exclusive(fn),
      gcBlobs: () => blobs().gc(),
    }),
    images,
    close: () => store.close(),
  };
}

/**
 * Runs `fn` with this process's own operations over `config`'s data root, opened before and closed after.
 * The caller holds the server lock for the whole call (lockDataRoot). Logs nothing: a command's output is
 * its result and its errors.
 */
export async function withOwnState<T>(config: Config, fn: (ops: ControlOps) => Promise<T>): Promise<T> {
  const state = openState(config, createLogger('silent'));
  try {
    return await fn(state);
  } finally {
    await state.close();
  }
}
