/**
 * Group commit: mutations queued during one turn of the event loop are applied in a single SQLite
 * transaction, so N concurrent requests cost one fsync instead of N. Durability is never skipped: a
 * promise resolves only after the transaction that holds its change has committed (WAL, synchronous=FULL).
 * Each mutation runs in its own savepoint, so one failing mutation does not sink the others in its batch.
 */
import type Database from 'better-sqlite3';
import { fsyncDir } from '../sys/durable.js';

interface Pending {
  readonly apply: () => void;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/** Batches mutations into durable transactions. */
export interface GroupCommitter {
  /**
   * Queues `apply` (synchronous SQL) for the next batch. Directories in `syncDirs` are fsynced once per
   * batch before the transaction commits (new volume directories renamed into them become durable first).
   */
  commit(apply: () => void, syncDirs?: readonly string[]): Promise<void>;
  /** Commits whatever is queued now (used when shutting down). */
  flush(): void;
}

/** Hooks run inside each batch's write transaction, before and after its mutations. */
export interface BatchHooks {
  readonly before?: () => void;
  readonly after?: () => void;
}

/** Creates a committer on `db`. */
export function createGroupCommitter(db: Database.Database, hooks: BatchHooks = {}): GroupCommitter {
  let queue: Pending[] = [];
  let dirs = new Set<string>();
  let scheduled = false;

  function flush(): void {
    scheduled = false;
    if (queue.length === 0) return;
    const batch = queue;
    const batchDirs = dirs;
    queue = [];
    dirs = new Set();
    const outcomes: unknown[] = new Array(batch.length);
    try {
      for (const dir of batchDirs) fsyncDir(dir);
      // IMMEDIATE: take the write lock at BEGIN, so hooks.before sees every other process's commits.
      db.transaction(() => {
        hooks.before?.();
        batch.forEach((p, i) => {
          try {
            db.transaction(p.apply)(); // nested: a savepoint per mutation
            outcomes[i] = undefined;
          } catch (err) {
            outcomes[i] = err ?? new Error('mutation failed');
          }
        });
        hooks.after?.();
      }).immediate();
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    batch.forEach((p, i) => (outcomes[i] === undefined ? p.resolve() : p.reject(outcomes[i])));
  }

  return {
    commit(apply, syncDirs = []) {
      return new Promise<void>((resolve, reject) => {
        queue.push({ apply, resolve, reject });
        for (const d of syncDirs) dirs.add(d);
        if (!scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      });
    },
    flush,
  };
}
