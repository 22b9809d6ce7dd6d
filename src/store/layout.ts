/**
 * On-disk layout of the data root (TSVOL_DATA). Every path the volume code touches is built here.
 *
 *   tsvol.db                 SQLite metadata (WAL): one row per volume — the truth about what exists
 *   server.lock              flock(2), never deleted: one server per data root (src/sys/lock.ts)
 *   volumes/<name>/_data     a named volume's contents (moby's local-driver layout)
 *   tmp/new-<id>/            a volume directory being built; renamed into volumes/ when complete
 *   tmp/rm-<id>/             a removed volume's directory, being deleted in the background
 *   layers/                  the layer manager's store (src/layers)
 *
 * tmp/ sits on the same filesystem as volumes/ so that the renames are atomic. Each entry in tmp/ is a
 * stage (src/sys/staging.ts): its owner holds a flock on it while it lives, so start-up deletes only
 * the stages of dead processes, never a CLI import in flight.
 */
import path from 'node:path';

/** Paths inside one data root. */
export interface Layout {
  readonly root: string;
  readonly dbFile: string;
  readonly lockFile: string;
  readonly volumesDir: string;
  readonly tmpDir: string;
  readonly layersDir: string;
  /** volumes/<name>: the directory that holds one named volume. */
  volumeDir(name: string): string;
  /** volumes/<name>/_data: what containers see. */
  dataDir(name: string): string;
}

/** Builds the layout of the data root `root`. Names must already be validated (no separators). */
export function createLayout(root: string): Layout {
  const volumesDir = path.join(root, 'volumes');
  return {
    root,
    dbFile: path.join(root, 'tsvol.db'),
    lockFile: path.join(root, 'server.lock'),
    volumesDir,
    tmpDir: path.join(root, 'tmp'),
    layersDir: path.join(root, 'layers'),
    volumeDir: (name) => path.join(volumesDir, name),
    dataDir: (name) => path.join(volumesDir, name, '_data'),
  };
}
