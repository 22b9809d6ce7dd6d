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
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InvalidArgumentError, UnavailableError, errnoCode, wrapError } from './errors.js';
import { imageOps, type ImageOps } from './images/image-ops.js';
import { createContainerStore, type ContainerStore } from './layers/containers.js';
import { layerOps, type LayerOps } from './layers/layer-ops.js';
import { createLayerStore, type LayerStore } from './layers/layer-store.js';
import { createLogger, type Logger } from './log.js';
import { serverPaths } from './server-paths.js';
import { CLUSTER_MARKER, createLayout, type Layout } from './store/layout.js';
import { openClusterStore } from './store/cluster-store.js';
import { openMetaStore } from './store/open.js';
import { volumeStoreOf, type VolumeStore } from './store/volume-store.js';
import { fsTypeOf, type FsType } from './sys/fs-type.js';
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
  /**
   * The server's start-up repair of the layer store: deletes diff directories, split files and short
   * links no layer record uses (what a process killed while it published or deleted a diff left, which
   * otherwise stayed until `tsvol layer gc`). Opens the layer store only if a layer was ever stored.
   */
  repairLayers(): Promise<{ removed: string[]; left: string[] }>;
  /** Closes the stores (commits what is pending). The caller still holds the server lock. */
  close(): Promise<void>;
}

/**
 * Cluster mode (#14): refuses a data root that is not a shared filesystem every node mounts, rather than
 * silently becoming a local store: it must exist (tsvol never makes it) and be of a shared type (statfs
 * f_type: FUSE, NFS, SMB/CIFS, Ceph, GFS2, OCFS2, Lustre, GPFS …, src/sys/fs-type.ts). Also refuses what
 * cluster mode does not offer: mountpoints on the shared root (TSVOL_MOUNTS must be node-local) and CSI.
 */
export function checkSharedRoot(config: Config): FsType {
  const root = config.dataRoot;
  if (config.mountsRoot === undefined) {
    throw new InvalidArgumentError('TSVOL_SCOPE=global needs TSVOL_MOUNTS: mountpoints are per node and must not be on the shared root (the managed plugin sets it)');
  }
  if (config.csiSocket !== undefined) {
    throw new InvalidArgumentError('TSVOL_SCOPE=global does not serve CSI: unset TSVOL_CSI_SOCKET and CSI_ENDPOINT (CSI volumes are node-local, #12)');
  }
  let type: FsType;
  try {
    type = fsTypeOf(root);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      throw new UnavailableError(`TSVOL_SCOPE=global: TSVOL_DATA=${root} does not exist: the shared filesystem is not mounted there (mount it on every node, then start tsvol)`);
    }
    throw wrapError(`TSVOL_SCOPE=global: cannot examine TSVOL_DATA=${root}`, err);
  }
  if (!type.shared) {
    throw new UnavailableError(
      `TSVOL_SCOPE=global: TSVOL_DATA=${root} is on a local filesystem (${type.name}), not a shared one: the shared filesystem is not mounted there. ` +
        'Mount the filesystem every node shares (GlusterFS or ceph-fuse over FUSE, NFS, CIFS, CephFS …) at that path, or use TSVOL_SCOPE=local',
    );
  }
  return type;
}

/**
 * Makes the data root root-only (#9 §5), creating it if needed, then takes its server lock, waiting up to
 * `waitMs` for a holder to release it or die; a ConflictError naming the holder otherwise. Held until
 * released or this process exits (a flock: src/sys/lock.ts).
 */
export async function lockDataRoot(config: Config, waitMs: number): Promise<ReleaseLock> {
  const { root, lockFile } = serverPaths(config);
  // Cluster mode: never make the shared root (that would be a local store); each node's own lock, in its
  // own directory (nodes/<node>/, src/store/layout.ts).
  if (config.scope === 'global') checkSharedRoot(config);
  else if (fs.existsSync(path.join(root, CLUSTER_MARKER))) {
    throw new ConflictError(`TSVOL_DATA=${root} is a cluster-mode root (${CLUSTER_MARKER}): set TSVOL_SCOPE=global and TSVOL_NODE_ID, or use another TSVOL_DATA`);
  }
  // The lock file lives in the data root: make the root as the server does, closed to other users first.
  makePrivateDir(root);
  if (config.scope === 'global') makePrivateDir(path.dirname(lockFile));
  return acquireLock(lockFile, 'tsvol server', waitMs);
}

/**
 * Opens the state of `config`'s data root. The caller holds the server lock (lockDataRoot) from before
 * this until after close(). The one metadata store is opened (and a 0.1 data root migrated, logged once)
 * here and passed down: every part of the process reads and writes the same store. Nothing else is
 * repaired here: the server reconciles before it serves; a command working alone leaves repair to the
 * next server start. The layer store opens on first use: volumes that never use layers never touch it.
 * In cluster mode (#14) the store is the shared root itself (openClusterState).
 */
export async function openState(config: Config, log: Logger): Promise<State> {
  if (config.scope === 'global') return openClusterState(config, log);
  const layout = createLayout(config.dataRoot);
  const { store: meta, migration } = openMetaStore(layout);
  if (migration.imported) log.info({ migration }, 'migrated the 0.1 layer records into tsvol.db');
  if (migration.left.length > 0) log.warn({ mounts: migration.left }, "mounts inside 0.1's record directories were left in place; unmount them and start again to delete the rest");
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
    repairLayers: async () => (fs.existsSync(layout.layers.diffsDir) ? layers().sweepUnusedDiffs() : { removed: [], left: [] }),
    close: () => store.close(),
  };
}

/** Why the layer manager and images are not offered in cluster mode (#14). */
const NO_LAYERS_IN_CLUSTER =
  'the layer manager and images are not offered in cluster mode (TSVOL_SCOPE=global): their store is one host\'s SQLite database, which must not live on a shared filesystem';

/** Operations of type T whose every method rejects with `err` (the layer and image operations in cluster mode). */
function refusingOps<T extends object>(err: () => Error): T {
  return new Proxy({} as T, { get: () => () => Promise.reject(err()) });
}

/**
 * Cluster mode (#14): the volume store is the shared root (src/store/cluster-store.ts, which claims this
 * node's lease and keeps renewing it until close); no SQLite is opened. Layers and images are refused.
 */
async function openClusterState(config: Config, log: Logger): Promise<State> {
  const layout = createLayout(config.dataRoot, config.nodeId);
  const store = await openClusterStore({ layout, leaseMs: config.leaseSeconds * 1000, log });
  const layers = (): LayerStore => {
    throw new UnavailableError(NO_LAYERS_IN_CLUSTER);
  };
  const layered = createLayeredVolumes(layout, layers, async () => layers().resolve('').id);
  const service = createVolumeService({ config, layout, store, log, layered, sharedRoot: store.root });
  return {
    layout,
    store,
    service,
    volumes: volumeOps({ config, layout, store, service }),
    layers: refusingOps<LayerOps>(() => new UnavailableError(NO_LAYERS_IN_CLUSTER)),
    images: refusingOps<ImageOps>(() => new UnavailableError(NO_LAYERS_IN_CLUSTER)),
    repairLayers: async () => ({ removed: [], left: [] }),
    close: () => store.close(),
  };
}

/**
 * Runs `fn` with this process's own operations over `config`'s data root, opened before and closed after.
 * The caller holds the server lock for the whole call (lockDataRoot). Logs nothing: a command's output is
 * its result and its errors.
 */
export async function withOwnState<T>(config: Config, fn: (ops: ControlOps) => Promise<T>): Promise<T> {
  const state = await openState(config, createLogger('silent'));
  try {
    return await fn(state);
  } finally {
    await state.close();
  }
}
