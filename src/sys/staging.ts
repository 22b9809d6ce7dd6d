/**
 * Staging directories that belong to a live process (#9 §7). A stage is a directory in a `tmp/` (volumes
 * being built or deleted, layers being imported, commits being written) whose owner holds a flock(2) on an
 * fd of the directory for as long as it works there. The kernel drops that lock when the owner closes
 * the fd or dies (kill -9 included), so "is its owner alive?" is one non-blocking flock, with no pid, boot
 * id or clock to trust:
 *
 * - sweepStages deletes exactly the entries it can lock: their owners are gone. A stage whose owner lives
 *   (a `tsvol volume import` running while a server starts) is left alone.
 * - The lock is on the inode, not the name, so it follows a rename: a volume built in tmp/ and renamed into
 *   volumes/<name> stays locked until its owner has committed the record (then release()). Start-up, which
 *   deletes record-less volume directories, skips one that is locked (claimDir), so the window between the
 *   rename and the commit is closed for any other process.
 *
 * - stageThenPublish (and buildStaged, its first half) is the one build-in-tmp → rename → commit of tsvol
 *   (#10): fill a locked stage, flush it (syncfs), rename it into place and make the rename durable, keep
 *   it locked until the caller's record is committed, and remove it (from tmp/ or its new name) on failure.
 *
 * Deletion never crosses a mountpoint and runs on the deleter's worker thread (removeTreeNoCross), which
 * is handed the stage's locked fd and closes it once the tree is gone: the lock outlives the delete. Every
 * fd is opened O_CLOEXEC (libuv's default), so a child process never inherits a stage's lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { nanoid } from 'nanoid';
import { errnoCode } from '../errors.js';
import { crashPoint } from './crash-point.js';
import { fsyncDir, syncFilesystem } from './durable.js';
import { tryFlock } from './libc.js';
import { POLL_MS } from './lock.js';
import { removeTreeNoCross } from './remove.js';

/** A locked directory: a stage being built, or an existing directory claimed for deletion. */
export interface Stage {
  /** Where the directory is now (rename moves it). */
  readonly dir: string;
  /** Renames the directory (same filesystem): the lock goes with it, until release(). */
  rename(dest: string): void;
  /** Drops the lock and leaves the directory where it is (someone's record owns it now). Idempotent. */
  release(): void;
  /**
   * Deletes the directory if it is still this stage's (never across a mountpoint, off the event loop),
   * then releases the lock. Returns the mountpoints it left in place. `background`: nobody is waiting for
   * it, so deletions that someone awaits go first (removeTreeNoCross).
   */
  remove(background?: boolean): Promise<string[]>;
}

const DIR_FLAGS = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

/** True if `fd` is still the entry at `p` (not deleted, not replaced since it was opened). */
function isCurrent(fd: number, p: string): boolean {
  const at = fs.lstatSync(p, { throwIfNoEntry: false });
  const held = fs.fstatSync(fd);
  return at !== undefined && at.ino === held.ino && at.dev === held.dev;
}

/** Opens directory `p` and locks it; undefined if it is gone or another open file holds its lock. */
function lockDir(p: string): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(p, DIR_FLAGS);
  } catch (err) {
    // ENOENT: deleted meanwhile (its owner finished, or another sweeper): nothing to claim.
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    if (tryFlock(fd) && isCurrent(fd, p)) return fd;
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  fs.closeSync(fd);
  return undefined;
}

function stageOf(initial: string, fd: number): Stage {
  let dir = initial;
  let open = true;
  const release = (): void => {
    if (!open) return;
    open = false;
    fs.closeSync(fd);
  };
  return {
    get dir() {
      return dir;
    },
    rename(dest) {
      fs.renameSync(dir, dest);
      dir = dest;
    },
    release,
    async remove(background = false) {
      if (!open) return [];
      open = false;
      let ours: boolean;
      try {
        // Only our own inode: if the name now holds something else, that is not ours to delete.
        ours = isCurrent(fd, dir);
      } catch (err) {
        fs.closeSync(fd);
        throw err;
      }
      if (!ours) {
        // Closed off the event loop too: the inode may be a deleted directory, which this close frees.
        await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
        return [];
      }
      // An empty stage (a publish renamed its contents away) is one rmdir here, not a trip to the deleter's
      // worker, which a CLI process would start for it (#13). Anything else (ENOTEMPTY; EBUSY: a mountpoint)
      // goes to the deleter, which knows what to leave.
      try {
        fs.rmdirSync(dir);
        fs.closeSync(fd);
        return [];
      } catch (err) {
        const code = errnoCode(err);
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'EBUSY') {
          fs.closeSync(fd);
          if (code === 'ENOENT') return []; // gone already (a concurrent sweep): the state we want
          throw err;
        }
      }
      // The fd (and its lock) goes to the deleter, which closes it once the tree is gone.
      return removeTreeNoCross(dir, { lockFd: fd, background });
    },
  };
}

/**
 * Makes a fresh stage `tmpDir/<kind>-<id>/` (mode `mode` before the umask) and locks it. A sweeper can
 * lock the empty directory between mkdir and flock: then this tries another name (the sweeper deletes
 * the empty one), so a stage handed out is always locked by its owner.
 */
export async function createStage(tmpDir: string, kind: string, mode = 0o700): Promise<Stage> {
  for (let attempt = 0; ; attempt++) {
    const dir = path.join(tmpDir, `${kind}-${nanoid(10)}`);
    await fs.promises.mkdir(dir, { mode });
    const fd = lockDir(dir);
    if (fd !== undefined) return stageOf(dir, fd);
    if (attempt >= 5) throw new Error(`could not lock a new staging directory in ${tmpDir}: something keeps taking them`);
  }
}

/**
 * Claims an existing directory (for deletion, or to learn that its owner is dead): locks it and returns
 * it as a stage, or undefined if it is gone or a live process still holds its lock after `waitMs` (polled
 * every POLL_MS, never blocking the event loop).
 */
export async function claimDir(dir: string, waitMs = 0): Promise<Stage | undefined> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const fd = lockDir(dir);
    if (fd !== undefined) return stageOf(dir, fd);
    if (Date.now() >= deadline || !fs.existsSync(dir)) return undefined;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** What a sweep found. */
export interface Sweep {
  /** Entries whose owner is dead (or that no process can own: not directories): being deleted. */
  readonly dead: string[];
  /** Entries a live process owns: left alone. */
  readonly live: string[];
  /** Settles once every dead entry is deleted; resolves to the mountpoints left in place inside them. */
  readonly done: Promise<string[]>;
}

/**
 * Deletes the entries of `tmpDir` whose owner is dead: each directory is claimed with a non-blocking
 * flock (EWOULDBLOCK: a live owner, left alone) and, once claimed, deleted with its lock held (Stage.remove:
 * never across a mountpoint, off the event loop). Anything that is not a directory cannot be a stage and is
 * unlinked. The claims are made before this returns; the deletions run in `done`.
 */
export function sweepStages(tmpDir: string): Sweep {
  const dead: string[] = [];
  const live: string[] = [];
  const jobs: Promise<string[]>[] = [];
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(tmpDir, { withFileTypes: true });
  } catch (err) {
    // ENOENT: no tmp/ yet, so nothing was ever staged.
    if (errnoCode(err) !== 'ENOENT') throw err;
    entries = [];
  }
  for (const entry of entries) {
    const p = path.join(tmpDir, entry.name);
    if (!entry.isDirectory()) {
      dead.push(entry.name);
      jobs.push(
        fs.promises.unlink(p).then(
          () => [],
          (err: unknown) => {
            // ENOENT: gone meanwhile, which is what we wanted.
            if (errnoCode(err) !== 'ENOENT') throw err;
            return [];
          },
        ),
      );
      continue;
    }
    const fd = lockDir(p);
    if (fd === undefined) {
      if (fs.existsSync(p)) live.push(entry.name);
      continue;
    }
    dead.push(entry.name);
    jobs.push(stageOf(p, fd).remove());
  }
  return { dead, live, done: Promise.all(jobs).then((skipped) => skipped.flat()) };
}

/**
 * Runs `fn` in a fresh scratch stage `tmpDir/<kind>-<id>/` (locked while it lives, so no sweep in another
 * process takes it) and removes the stage afterwards, whatever happens: for work whose result leaves the
 * stage by other means (a layer's diff renamed out of it, a commit's changes read back as a tar).
 */
export async function withStage<T>(tmpDir: string, kind: string, fn: (dir: string) => Promise<T>, mode = 0o700): Promise<T> {
  const stage = await createStage(tmpDir, kind, mode);
  try {
    return await fn(stage.dir);
  } finally {
    await stage.remove();
  }
}

/** Where and how stageThenPublish builds and publishes a directory. */
export interface PublishSpec {
  /** The `tmp/` to stage in: on the same filesystem as `dest` (the publish is a rename). */
  readonly tmpDir: string;
  /** The stage's name prefix (`<kind>-<id>`), for sweeps and for people reading tmp/. */
  readonly kind: string;
  /** The stage's mode before the umask (it becomes `dest`'s mode). Default 0700. */
  readonly mode?: number;
  /** Where the directory is published; the rename fails if something is there already. */
  readonly dest: string;
  /** The error for a `dest` taken meanwhile (the rename's EEXIST/ENOTEMPTY); default: the rename's own. */
  readonly taken?: () => Error;
  /**
   * Makes the rename durable before the caller commits its record: fsyncs `dest`'s parent by default. A
   * caller that coalesces concurrent fsyncs of one directory passes its own.
   */
  readonly syncParent?: (dir: string) => void | Promise<void>;
}

/**
 * The first half of stageThenPublish, for a caller that commits its record later: builds the directory
 * with `fill` in a fresh locked stage, flushes the filesystem (syncfs: every file of the tree at once),
 * renames it to `spec.dest` and makes the rename durable. Returns the stage, still locked under its new
 * name: release() it once the record is committed, or remove() it if the commit fails. On any failure
 * here the stage is removed and the error rethrown.
 */
export async function buildStaged(spec: PublishSpec, fill: (dir: string) => Promise<void>): Promise<Stage> {
  const stage = await createStage(spec.tmpDir, spec.kind, spec.mode);
  try {
    await fill(stage.dir);
    // Every file on disk before the name says the tree exists: a crash after the rename never exposes a
    // half-written tree under its real name.
    syncFilesystem(stage.dir);
    crashPoint('stage:before-rename');
    try {
      stage.rename(spec.dest);
    } catch (err) {
      const code = errnoCode(err);
      if (spec.taken !== undefined && (code === 'EEXIST' || code === 'ENOTEMPTY')) throw spec.taken();
      throw err;
    }
    await (spec.syncParent ?? fsyncDir)(path.dirname(spec.dest));
    crashPoint('stage:after-rename');
    return stage;
  } catch (err) {
    await stage.remove();
    throw err;
  }
}

/**
 * Builds a directory in a locked stage and publishes it at `spec.dest` (buildStaged), then runs `commit`
 * (the caller's record) with the directory still locked, so no sweep or start-up in another process can
 * take it for record-less debris; releases the lock once `commit` has returned. If `commit` fails, the
 * published directory is removed. A kill -9 at any instant leaves either the directory and its record, or
 * a stage (in tmp/ or at `dest`, without a record) that start-up deletes.
 */
export async function stageThenPublish<T>(spec: PublishSpec, fill: (dir: string) => Promise<void>, commit: (dir: string) => Promise<T>): Promise<T> {
  const stage = await buildStaged(spec, fill);
  let committed = false;
  try {
    const out = await commit(stage.dir);
    committed = true;
    return out;
  } finally {
    // Committed: the record owns the directory; unlock it. Else the published directory goes.
    if (committed) stage.release();
    else await stage.remove();
  }
}
