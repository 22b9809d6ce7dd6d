/**
 * Inter-process locks on the data root, with proper-lockfile: the server holds one for its lifetime so a
 * second server on the same TSVOL_DATA refuses to start; the CLI takes the same kind of lock around each
 * mutation. A lock left by a process killed with -9 goes stale after STALE_MS and is then taken over.
 */
import fs from 'node:fs';
import lockfile from 'proper-lockfile';
import { ConflictError, errnoCode } from '../errors.js';

/** A lock whose mtime is older than this is considered abandoned (proper-lockfile's minimum is 2 s). */
export const STALE_MS = 2000;

/** Releases a lock taken by acquireLock. */
export type ReleaseLock = () => Promise<void>;

/**
 * Takes the lock `<file>.lock`, waiting up to `waitMs` for a holder to release it or go stale. `what`
 * names the holder in the error (`"tsvol server"`). `onLost` runs if the lock is compromised later
 * (someone removed it, or this process stalled past STALE_MS).
 */
export async function acquireLock(
  file: string,
  what: string,
  waitMs: number,
  onLost: (err: Error) => void,
): Promise<ReleaseLock> {
  fs.mkdirSync(file, { recursive: true });
  const retries = Math.max(0, Math.ceil(waitMs / 250));
  try {
    return await lockfile.lock(file, {
      realpath: false,
      stale: STALE_MS,
      update: STALE_MS / 2,
      retries: { retries, factor: 1, minTimeout: 250, maxTimeout: 250 },
      onCompromised: onLost,
    });
  } catch (err) {
    if (errnoCode(err) === 'ELOCKED') {
      throw new ConflictError(
        `${file} is locked by another ${what} (lock ${file}.lock); stop it first or use another TSVOL_DATA`,
        { cause: err },
      );
    }
    throw err;
  }
}
