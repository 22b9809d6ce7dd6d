/**
 * Inter-process locks on the data root, held by the kernel (#9 §8): flock(2) on a lock file that is never
 * deleted. The server holds one for its lifetime so a second server on the same TSVOL_DATA refuses to
 * start; the layer store takes one around each mutation, across the CLI and the server.
 *
 * Why flock and not a lock directory with a heartbeat (proper-lockfile, which this replaces): the kernel
 * ties the lock to an open file description, so
 * - it is released the instant its holder dies, kill -9 included (the kernel closes the fd): there is no
 *   staleness guess, and no wait after a crash;
 * - it cannot "go stale" while its holder lives: nothing has to be refreshed, so a holder whose event loop
 *   is blocked for minutes (a syncfs or rmSync on a slow disk) still holds it, and nobody else can enter.
 *   A lock that is lost while held is impossible by construction, so there is no "compromised" callback
 *   to ignore. The only way around it is to delete the lock file by hand (tsvol never deletes it; it sits
 *   in a root-only directory): a process that opened the new file would then lock another inode. Taking
 *   the lock checks the locked inode is still the one at the path, so a file replaced meanwhile is retried.
 * Waiting never blocks the event loop: the lock is tried with LOCK_NB and polled every POLL_MS. The fd is
 * opened O_CLOEXEC (as libuv opens every fd), so a child process never inherits, and never prolongs, a lock.
 *
 * Leftovers of the proper-lockfile era are harmless: `<file>` was an empty directory (replaced by the lock
 * file on first use) and `<file>.lock/` is ignored.
 */
import fs from 'node:fs';
import { ConflictError, errnoCode } from '../errors.js';
import { tryFlock } from './libc.js';

/** How often a held lock is tried again while waiting. */
export const POLL_MS = 50;

/** Releases a lock taken by acquireLock. Idempotent. */
export type ReleaseLock = () => Promise<void>;

/** Opens (creating if needed) the lock file, replacing an empty directory left by proper-lockfile. */
function openLockFile(file: string): number {
  for (;;) {
    try {
      return fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      if (errnoCode(err) === 'ELOOP') throw new ConflictError(`lock file ${file} is a symlink; remove it`, { cause: err });
      if (errnoCode(err) !== 'EISDIR') throw err;
    }
    // proper-lockfile's era made `<file>` an empty directory (its lock was `<file>.lock`): it is only a name.
    try {
      fs.rmdirSync(file);
    } catch (err) {
      // ENOENT: another process replaced it first; ENOTDIR: and already made the lock file. Open that.
      const code = errnoCode(err);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new ConflictError(`${file} is a directory, not a lock file; remove it`, { cause: err });
    }
  }
}

/** True if `fd` is still the file at `file` (nobody deleted or replaced it since it was opened). */
function isCurrent(fd: number, file: string): boolean {
  const at = fs.lstatSync(file, { throwIfNoEntry: false });
  const held = fs.fstatSync(fd);
  return at !== undefined && at.ino === held.ino && at.dev === held.dev;
}

/** The holder a lock file names (`<pid> <what>`), for an error message. */
function holderOf(fd: number): string | undefined {
  const buf = Buffer.alloc(512);
  const n = fs.readSync(fd, buf, 0, buf.length, 0);
  const m = /^(\d+) (.+)\n/.exec(buf.subarray(0, n).toString('utf8'));
  return m === null ? undefined : `${m[2]!} (pid ${m[1]!})`;
}

/**
 * Takes the lock `file` (flock on a regular file, created if missing), waiting up to `waitMs` for a holder
 * to release it or die. The holder's pid and `what` (`"tsvol server"`) are written into the file, and the
 * error on timeout names them. The lock cannot be lost while this process lives (see the module comment).
 */
export async function acquireLock(file: string, what: string, waitMs: number): Promise<ReleaseLock> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const fd = openLockFile(file);
    let holder: string | undefined;
    try {
      if (tryFlock(fd)) {
        if (isCurrent(fd, file)) return ownedLock(fd, what);
        fs.closeSync(fd);
        continue; // replaced between open and flock: lock the file that is there now
      }
      holder = holderOf(fd);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    fs.closeSync(fd);
    if (Date.now() >= deadline) {
      throw new ConflictError(
        `${file} is locked by another ${holder ?? what}; stop it first or use another TSVOL_DATA`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Records the owner in the locked file and returns its release. */
function ownedLock(fd: number, what: string): ReleaseLock {
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid} ${what.replace(/\n/g, ' ')}\n`, 0);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  let open = true;
  return async () => {
    if (!open) return;
    open = false;
    try {
      fs.ftruncateSync(fd, 0); // no stale owner named after us
    } finally {
      fs.closeSync(fd); // the kernel drops the lock with the last fd of this open file description
    }
  };
}
