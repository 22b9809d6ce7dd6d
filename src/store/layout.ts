/**
 * On-disk layout of the data root (TSVOL_DATA). Every path the volume code touches is built here.
 *
 *   tsvol.db                 SQLite metadata (WAL): one row per volume — the truth about what exists
 *   server.lock              flock(2), never deleted (src/sys/lock.ts): one server per data root, or one `tsvol`
 *                            command while no server runs
 *   control.sock             the server's control API (mode 0600): how the CLI reaches the running server, seen at
 *                            the same host path with the managed plugin (TSVOL_DATA is a bind of data.source)
 *   volumes/<name>/_data     a volume's contents (moby's local-driver layout); the mountpoint of a loop-backed
 *                            sized volume's image and of a layered volume's overlay while held
 *   volumes/<name>/disk.img  a loop-backed sized volume's sparse ext4 image (src/volumes/size-limit.ts)
 *   volumes/<name>/upper     a layered volume's writes: overlay's upper directory (src/volumes/layered.ts)
 *   volumes/<name>/work      a layered volume's overlay work directory
 *   tmp/new-<id>/            a volume directory being built; renamed into volumes/ when complete
 *   tmp/rm-<id>/             a removed volume's directory, being deleted in the background
 *   binds/<name>             without TSVOL_MOUNTS: a held bind-style volume's mountpoint, a bind mount of
 *                            the pinned, re-checked device directory (#9 §10a); what Mount and Path return.
 *                            binds/ is 0700 inside the 0700 root: no path to host data for other users.
 *   layers/                  the layer manager's store (src/layers)
 *
 * tmp/ sits on the same filesystem as volumes/ so that the renames are atomic. Each entry in tmp/ is a
 * stage (src/sys/staging.ts): its owner holds a flock on it while it lives, so start-up deletes only
 * the stages of dead processes, never a CLI import in flight.
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
  /** upper: a layered volume's writes (overlay's upper directory). */
  readonly upper: string;
  /** work: a layered volume's overlay work directory (same filesystem as upper). */
  readonly work: string;
}

/** The paths inside volume directory `dir` (see VolumeFiles). */
export function volumeFiles(dir: string): VolumeFiles {
  return {
    data: path.join(dir, '_data'),
    image: path.join(dir, 'disk.img'),
    upper: path.join(dir, 'upper'),
    work: path.join(dir, 'work'),
  };
}

/** Paths inside one data root. */
export interface Layout {
  readonly root: string;
  readonly dbFile: string;
  readonly lockFile: string;
  /** control.sock: the running server's control API, for the CLI (src/http/control.ts). */
  readonly controlSocket: string;
  readonly volumesDir: string;
  readonly tmpDir: string;
  readonly layersDir: string;
  /** binds/: mountpoints of bind-style volumes when TSVOL_MOUNTS is unset (#9 §10a). */
  readonly bindsDir: string;
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
}

/** Builds the layout of the data root `root`. Names must already be validated (no separators). */
export function createLayout(root: string): Layout {
  const volumesDir = path.join(root, 'volumes');
  return {
    root,
    dbFile: path.join(root, 'tsvol.db'),
    lockFile: path.join(root, 'server.lock'),
    controlSocket: path.join(root, 'control.sock'),
    volumesDir,
    tmpDir: path.join(root, 'tmp'),
    layersDir: path.join(root, 'layers'),
    bindsDir: path.join(root, 'binds'),
    bindMountpoint: (name) => path.join(root, 'binds', name),
    volumeDir: (name) => path.join(volumesDir, name),
    dataDir: (name) => volumeFiles(path.join(volumesDir, name)).data,
    filesOf: (name) => volumeFiles(path.join(volumesDir, name)),
    removedDir: (id) => path.join(root, 'tmp', `rm-${id}`),
  };
}
