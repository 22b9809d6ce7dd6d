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
 * Deletion never crosses a mountpoint (removeTreeNoCross). Every fd is opened O_CLOEXEC (libuv's default),
 * so a child process never inherits a stage's lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { nanoid } from 'nanoid';
import { errnoCode } from '../errors.js';
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
   * Deletes the directory if it is still this stage's (never across a mountpoint), then releases the lock.
   * Returns the mountpoints it left in place.
   */
  remove(): Promise<string[]>;
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
    async remove() {
      try {
        // Only our own inode: if the name now holds something else, that is not ours to delete.
        return open && isCurrent(fd, dir) ? await removeTreeNoCross(dir) : [];
      } finally {
        release();
      }
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
 * flock (EWOULDBLOCK: a live owner, left alone) and, once claimed, deleted with its lock held, by
 * `remove` (removeTreeNoCross by default: never across a mountpoint). Anything that is not a directory
 * cannot be a stage and is unlinked. The claims are made before this returns; the deletions run in `done`.
 */
export function sweepStages(tmpDir: string, remove: (dir: string) => Promise<string[]> = removeTreeNoCross): Sweep {
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
    jobs.push(remove(p).finally(() => fs.closeSync(fd)));
  }
  return { dead, live, done: Promise.all(jobs).then((skipped) => skipped.flat()) };
}
