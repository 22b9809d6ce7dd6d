/**
 * On-disk layout of the data root (TSVOL_DATA). Every path of the data root is built here: the volume code's
 * (Layout, VolumeFiles) and the layer manager's (LayersLayout below, with 0.1's leftovers in Legacy01Layout).
 *
 *   tsvol.db                 SQLite metadata (WAL): the truth about what exists — volumes, layers, tags,
 *                            layer holds and containers (src/store/meta-store.ts)
 *   server.lock              flock(2), never deleted (src/sys/lock.ts): one server per data root, or one `tsvol`
 *                            command while no server runs
 *   control.sock             the server's control API (mode 0600): how the CLI reaches the running server, seen at
 *                            the same host path with the managed plugin (TSVOL_DATA is a bind of data.source)
 *   volumes/<name>/_data     a volume's contents (moby's local-driver layout); the mountpoint of a loop-backed
 *                            sized volume's image and of a layered volume's overlay while held
 *   volumes/<name>/disk.img  a loop-backed sized volume's sparse ext4 image (src/volumes/size-limit.ts)
 *   volumes/<name>/growing   empty: a grow of that image is under way or was cut short (kinds/sized.ts)
 *   volumes/<name>/upper     a layered volume's writes: overlay's upper directory (src/volumes/layered.ts)
 *   volumes/<name>/work      a layered volume's overlay work directory
 *   tmp/new-<id>/            a volume directory being built; renamed into volumes/ when complete
 *   tmp/rm-<id>/             a removed volume's directory, being deleted in the background
 *   tmp/grow-<id>/disk.img   an offline grow's copy of a volume's image, renamed over volumes/<name>/disk.img
 *                            once grown (src/volumes/size-limit.ts growImageOffline)
 *   binds/<name>             without TSVOL_MOUNTS: a held bind-style volume's mountpoint, a bind mount of
 *                            the pinned, re-checked device directory (#9 §10a); what Mount and Path return.
 *                            binds/ is 0700 inside the 0700 root: no path to host data for other users.
 *   blobs/sha256/<hex>       image blobs kept byte-exact (a pull's compressed layers, #11), named by digest;
 *                            rows of tsvol.db say which manifest holds which (src/images/blob-store.ts)
 *   layers/                  the layer manager's data only (src/layers; its records are in tsvol.db):
 *                            diffs, container directories, overlay's short links l/ (LayersLayout)
 *
 * tmp/ sits on the same filesystem as volumes/ so that the renames are atomic. Each entry in tmp/ is a
 * stage (src/sys/staging.ts): its owner holds a flock on it while it lives, so start-up deletes only
 * the stages of dead processes, never a CLI import in flight.
 *
 * Cluster mode (#14, TSVOL_SCOPE=global; src/store/cluster-store.ts) on a shared root every node mounts:
 * no tsvol.db, no layers/; each volume directory carries its own record and every node's holds, and what
 * one node alone uses lives under nodes/<node>/ (createLayout's `node`), so that no two nodes share a lock,
 * a socket or a staging area:
 *
 *   tsvol-cluster                  marker, made by the first node: this root is a cluster-mode root
 *   volumes/<name>/record          the volume's record (JSON), written into the stage before the rename
 *                                  that publishes the directory, never changed afterwards
 *   volumes/<name>/_data           its contents
 *   volumes/<name>/holds/<node>    node <node>'s holds on it (JSON mount IDs); only that node writes it
 *   volumes/<name>/removing/<node> node <node> is removing it (JSON: its instance); only that node writes it
 *   nodes/<node>/lease             the node's lease (JSON: instance, host, pid, boot, expiry), renewed
 *                                  every third of TSVOL_LEASE_SECONDS by its live server
 *   nodes/<node>/meta              small facts of that node (its boot id), as tsvol.db's meta table
 *   nodes/<node>/server.lock       the node's server lock (flock)
 *   nodes/<node>/control.sock      the node's control socket
 *   nodes/<node>/tmp/              the node's stages: volumes being built (new-*), removed volumes being
 *                                  deleted (rm-*); only that node sweeps them (no grow-*: cluster mode
 *                                  refuses sized volumes)
 */
import path from 'node:path';

/**
 * Paths inside one volume directory, wherever it is: volumes/<name>, or a stage in tmp/ being built
 * (the same names, so that the rename into volumes/ moves a finished volume whole).
 */
export interface VolumeFiles {
  /** _data: what containers see. */
  readonly data: string;
  /** disk.img: a loop-backed sized volume's ext4 image. */
  readonly image: string;
  /** growing: present from before a grow's commit until its filesystem has grown (#12). */
  readonly growing: string;
  /** upper: a layered volume's writes (overlay's upper directory). */
  readonly upper: string;
  /** work: a layered volume's overlay work directory (same filesystem as upper). */
  readonly work: string;
}

/** volumes/<name>/_data (moby's name): what containers see. */
const DATA = '_data';

/** The paths inside volume directory `dir` (see VolumeFiles). */
export function volumeFiles(dir: string): VolumeFiles {
  return {
    data: path.join(dir, DATA),
    image: path.join(dir, 'disk.img'),
    growing: path.join(dir, 'growing'),
    upper: path.join(dir, 'upper'),
    work: path.join(dir, 'work'),
  };
}

/** Paths inside one data root. */
export interface Layout {
  readonly root: string;
  /**
   * Cluster mode: this node's ID; lockFile, controlSocket, tmpDir and bindsDir are then its own, under
   * nodes/<node>/ (see the header). Undefined in local mode.
   */
  readonly node: string | undefined;
  /** nodes/<node>/ in cluster mode (undefined in local mode). */
  readonly nodeDir: string | undefined;
  readonly dbFile: string;
  readonly lockFile: string;
  /** control.sock: the running server's control API, for the CLI (src/http/control.ts). */
  readonly controlSocket: string;
  readonly volumesDir: string;
  readonly tmpDir: string;
  readonly layersDir: string;
  /** binds/: mountpoints of bind-style volumes when TSVOL_MOUNTS is unset (#9 §10a). */
  readonly bindsDir: string;
  /** blobs/sha256/: the image blob area (#11), on the same filesystem as tmp/ (a blob is published by a link). */
  readonly blobsDir: string;
  /** blobs/sha256/<hex>: the blob whose digest is `sha256:<hex>` (a checked digest: hex only). */
  blobFile(digest: string): string;
  /** binds/<name>: where a held bind-style volume is mounted when TSVOL_MOUNTS is unset. */
  bindMountpoint(name: string): string;
  /** volumes/<name>: the directory that holds one named volume. */
  volumeDir(name: string): string;
  /** volumes/<name>/_data: what containers see. */
  dataDir(name: string): string;
  /** The paths inside volumes/<name> (VolumeFiles). */
  filesOf(name: string): VolumeFiles;
  /** tmp/rm-<id>: where a removed volume's directory is moved to be deleted in the background. */
  removedDir(id: string): string;
  /** The paths inside layers/ (LayersLayout). */
  readonly layers: LayersLayout;
}

/** nodes/: one directory per node in cluster mode (see the header). */
export const NODES_DIR = 'nodes';
/** The marker of a cluster-mode root (see the header). */
export const CLUSTER_MARKER = 'tsvol-cluster';

/**
 * Builds the layout of the data root `root`; in cluster mode, of node `node` on it (its own lock, socket,
 * tmp/ and binds/ under nodes/<node>/). Names must already be validated (no separators).
 */
export function createLayout(root: string, node?: string): Layout {
  const volumesDir = path.join(root, 'volumes');
  const layersDir = path.join(root, 'layers');
  const nodeDir = node === undefined ? undefined : path.join(root, NODES_DIR, node);
  const own = nodeDir ?? root;
  const tmpDir = path.join(own, 'tmp');
  return {
    root,
    node,
    nodeDir,
    dbFile: path.join(root, 'tsvol.db'),
    lockFile: path.join(own, 'server.lock'),
    controlSocket: path.join(own, 'control.sock'),
    volumesDir,
    tmpDir,
    layersDir,
    bindsDir: path.join(own, 'binds'),
    blobsDir: path.join(root, 'blobs', 'sha256'),
    blobFile: (digest) => path.join(root, 'blobs', 'sha256', digestHex(digest)),
    bindMountpoint: (name) => path.join(own, 'binds', name),
    // Concatenation, not path.join: List and Get build one of these per volume (path.join was a tenth of a
    // 100k-volume List's CPU), and a validated name is one normalized component (names.ts).
    volumeDir: (name) => `${volumesDir}${path.sep}${name}`,
    dataDir: (name) => `${volumesDir}${path.sep}${name}${path.sep}${DATA}`,
    filesOf: (name) => volumeFiles(path.join(volumesDir, name)),
    removedDir: (id) => path.join(tmpDir, `rm-${id}`),
    layers: layersLayout(layersDir),
  };
}


/** The hex of a `sha256:<hex>` digest: how a diff is named under layers/diffs/. */
export function digestHex(digest: string): string {
  return digest.slice('sha256:'.length);
}

/**
 * Paths inside one layer stage (layers/tmp/<kind>-<id>/): an import or a commit is unpacked there, then
 * its two parts are renamed into diffs/ (src/layers/layer-store.ts).
 */
export interface LayerStageFiles {
  /** diff/: the layer's unpacked contents, renamed to diffs/<hex>/. */
  readonly diff: string;
  /** split: the raw tar headers, renamed to diffs/<hex>.split. */
  readonly split: string;
}

/** The paths inside layer stage `stage` (see LayerStageFiles). */
export function layerStageFiles(stage: string): LayerStageFiles {
  return { diff: path.join(stage, 'diff'), split: path.join(stage, 'split') };
}

/** The name of a container's first upper directory, and of every upper a record does not name. */
const FIRST_UPPER = 'upper';

/** Paths inside one container layer's directory (layers/containers/<name>/): overlay's directories. */
export interface ContainerDirs {
  /** containers/<name>: the container's directory, removed whole with it. */
  readonly base: string;
  /** containers/<name>/upper or upper-<stamp>: the container's writes (the one its record names). */
  readonly upper: string;
  /** containers/<name>/work: overlay's work directory (same filesystem as upper). */
  readonly work: string;
  /** containers/<name>/merged: where the merged tree appears (the copy driver's full copy). */
  readonly merged: string;
}

/**
 * Paths inside the layer manager's directory (TSVOL_DATA/layers). Data only: the records (layers, tags,
 * holds, containers) are rows of tsvol.db. The layout follows containerd's overlay snapshotter and moby's
 * overlay2 (diff directories by content, `l/` short links):
 *
 *   diffs/<hex>/                   a diff's unpacked contents, named by its DiffID's hex and stored once
 *                                  whatever its parent (src/layers/layer-store.ts)
 *   diffs/<hex>.split              its raw tar headers, for a byte-exact export (the tar-split idea)
 *   diffs/<hex>.link               the name of its short link in l/, made on the diff's first mount
 *   l/<4 chars> -> ../diffs/<hex>  short links, so that 500 lower layers fit in one page of mount data
 *                                  (src/layers/overlay.ts)
 *   containers/<name>/upper        a container layer's writes (overlay's upper directory) …
 *   containers/<name>/upper-<t>    … or, after an in-place commit, a fresh one: the record names which
 *                                  (src/layers/containers.ts)
 *   containers/<name>/work         its overlay work directory
 *   containers/<name>/merged       its merged tree (an overlay mountpoint, or the copy driver's copy)
 *   tmp/<kind>-<id>/               stages (imports, commits), each locked by its live owner
 *                                  (src/sys/staging.ts); inside, diff/ and split (LayerStageFiles)
 *   tmp/rm-<id>/                   a deleted diff, moved aside to be deleted
 *
 * tmp/ sits on the same filesystem as diffs/, so that publishing a stage is a rename.
 */
export interface LayersLayout {
  /** layers/ itself: overlay's mount options are relative to it. */
  readonly root: string;
  /** diffs/: every diff directory and its .split and .link files. */
  readonly diffsDir: string;
  /** tmp/: the layer manager's stages. */
  readonly tmpDir: string;
  /** l/: overlay's short links. */
  readonly linksDir: string;
  /** containers/: one directory per container layer. */
  readonly containersDir: string;
  /** diffs/<hex>: the unpacked diff whose DiffID's hex is `hex`. */
  diffDir(hex: string): string;
  /** diffs/<hex>.split: the diff's raw tar headers. */
  splitFile(hex: string): string;
  /** diffs/<hex>.link: the name of the diff's short link, once mounted. */
  linkFile(hex: string): string;
  /** l/<id>: the short link `id` (a symlink to ../diffs/<hex>). */
  shortLink(id: string): string;
  /** The directories of container layer `name` whose upper directory is named `upper` (default `upper`). */
  containerDirs(name: string, upper?: string): ContainerDirs;
  /** A new upper directory name for a container, unique per millisecond: `upper-<base-36 time>`. */
  newUpperName(): string;
  /** True if `entry` of a container's directory is an upper directory (`upper` or `upper-<t>`). */
  isUpperName(entry: string): boolean;
  /** tmp/rm-<id>: where a deleted diff is moved before it is deleted. */
  removedDir(id: string): string;
  /** What tsvol 0.1 kept here (Legacy01Layout): read and deleted once by the migration. */
  readonly legacy01: Legacy01Layout;
}

/**
 * tsvol 0.1's records under layers/, one JSON file each (0.1 only; src/store/migrate.ts imports them into
 * tsvol.db and deletes them). Never written by this version.
 *
 *   chains/<hex>.json             a layer record, named by its ChainID's hex
 *   tags/<name>                   a tag: the file holds the ChainID
 *   holds/<hex>/<holder>          a hold on layer <hex>: the file name is the URI-encoded holder
 *   containers/<name>.json        a container layer's record, beside its directory containers/<name>/
 *   store                         0.1's layer lock: a flock file …
 *   store.lock/                   … or proper-lockfile's directory
 */
export interface Legacy01Layout {
  /** chains/: the layer records. */
  readonly chainsDir: string;
  /** tags/: the tags. */
  readonly tagsDir: string;
  /** holds/: the holds, a directory per layer. */
  readonly holdsDir: string;
  /** containers/: container records (<name>.json) beside the containers' directories. */
  readonly containersDir: string;
  /** store: 0.1's layer lock file. */
  readonly lockFile: string;
  /** store.lock/: 0.1's proper-lockfile lock directory. */
  readonly lockDir: string;
  /** chains/<hex>.json: the record of the layer whose ChainID's hex is `hex`. */
  chainFile(hex: string): string;
  /** tags/<name>: tag `name`. */
  tagFile(name: string): string;
  /** holds/<hex>: the holds on the layer whose ChainID's hex is `hex`, one file each (holds/<hex>/<holder>). */
  holdsOf(hex: string): string;
  /** containers/<name>.json: container layer `name`'s record. */
  containerRecord(name: string): string;
}

/** Builds the layout of the layer manager's directory `root` (TSVOL_DATA/layers; see LayersLayout). */
export function layersLayout(root: string): LayersLayout {
  const diffsDir = path.join(root, 'diffs');
  const tmpDir = path.join(root, 'tmp');
  const linksDir = path.join(root, 'l');
  const containersDir = path.join(root, 'containers');
  return {
    root,
    diffsDir,
    tmpDir,
    linksDir,
    containersDir,
    diffDir: (hex) => path.join(diffsDir, hex),
    splitFile: (hex) => `${path.join(diffsDir, hex)}.split`,
    linkFile: (hex) => `${path.join(diffsDir, hex)}.link`,
    shortLink: (id) => path.join(linksDir, id),
    containerDirs: (name, upper = FIRST_UPPER) => ({
      base: path.join(containersDir, name),
      upper: path.join(containersDir, name, upper),
      work: path.join(containersDir, name, 'work'),
      merged: path.join(containersDir, name, 'merged'),
    }),
    newUpperName: () => `${FIRST_UPPER}-${Date.now().toString(36)}`,
    isUpperName: (entry) => entry === FIRST_UPPER || entry.startsWith(`${FIRST_UPPER}-`),
    removedDir: (id) => path.join(tmpDir, `rm-${id}`),
    legacy01: legacy01Layout(root),
  };
}

/** The 0.1 names under the layer manager's directory `root` (see Legacy01Layout). */
function legacy01Layout(root: string): Legacy01Layout {
  const chainsDir = path.join(root, 'chains');
  const tagsDir = path.join(root, 'tags');
  const holdsDir = path.join(root, 'holds');
  const containersDir = path.join(root, 'containers');
  return {
    chainsDir,
    tagsDir,
    holdsDir,
    containersDir,
    lockFile: path.join(root, 'store'),
    lockDir: path.join(root, 'store.lock'),
    chainFile: (hex) => path.join(chainsDir, `${hex}.json`),
    tagFile: (name) => path.join(tagsDir, name),
    holdsOf: (hex) => path.join(holdsDir, hex),
    containerRecord: (name) => path.join(containersDir, `${name}.json`),
  };
}
