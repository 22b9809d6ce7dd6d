/**
 * Background deletion of volume directories (containerd's Remove: commit metadata, then delete data). A
 * directory is moved into tmp/ first, so its name is free at once, and deleted there holding its lock (a
 * stage tmp/rm-*): a crash mid-delete leaves debris that the next start-up sweeps (sys/staging.ts).
 * Deletion never crosses a mountpoint and runs off the event loop, behind any deletion someone awaits
 * (sys/remove.ts, #13): a Remove's reply never waits for it. Failures are logged, never returned.
 */
import fs from 'node:fs';
import { nanoid } from 'nanoid';
import { describeError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Layout } from '../store/layout.js';
import { claimDir, type Stage } from '../sys/staging.js';

/** Deletes volume directories in the background. */
export interface Deleter {
  /**
   * Moves `target` (a path, or a directory already claimed) into tmp/ and deletes it in the background.
   * Returns false, leaving it in place, if a live process holds the directory's lock for more than
   * `waitMs`: a volume built or imported by another process that has not released it since its record
   * was committed, or (at start-up) has not committed its record yet (sys/staging.ts).
   */
  delete(target: string | Stage, name: string, waitMs?: number): Promise<boolean>;
  /** Waits for the deletions under way to settle (tests, shutdown). */
  drain(): Promise<void>;
}

/** A deleter for volume directories of `layout`. */
export function createDeleter(layout: Layout, log: Logger): Deleter {
  const deletions = new Set<Promise<void>>();
  return {
    async delete(target, name, waitMs = 0) {
      const dir = typeof target === 'string' ? target : target.dir;
      let claim: Stage | undefined;
      try {
        claim = typeof target === 'string' ? await claimDir(dir, waitMs) : target;
      } catch (err) {
        // Not a directory we can open (nothing tsvol makes): leave it, and say so.
        log.warn({ volume: name, err: describeError(err) }, 'could not claim removed volume directory; left in place');
        return false;
      }
      if (claim === undefined) {
        // Gone (power loss right after Create: nothing to delete), or owned by a live builder.
        if (fs.existsSync(dir)) log.info({ volume: name }, 'volume directory is locked by a live process; leaving it');
        return false;
      }
      try {
        claim.rename(layout.removedDir(nanoid(10)));
      } catch (err) {
        claim.release();
        // ENOENT: the directory was already gone; nothing to delete.
        if (errnoCode(err) !== 'ENOENT') log.warn({ volume: name, err: describeError(err) }, 'could not move removed volume to tmp/');
        return false;
      }
      const job = claim
        .remove(true)
        .then((skipped) => {
          if (skipped.length > 0) log.warn({ volume: name, mounts: skipped }, 'removed volume had mounts inside; left them and their directories in tmp/');
        })
        .catch((err: unknown) => log.warn({ volume: name, err: describeError(err) }, 'deleting removed volume failed; start-up will retry'))
        .finally(() => deletions.delete(job));
      deletions.add(job);
      return true;
    },
    async drain() {
      await Promise.all([...deletions]);
    },
  };
}
