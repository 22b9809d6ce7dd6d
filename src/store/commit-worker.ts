/**
 * The write side of the metadata store, on a worker thread: it owns the only write connection of this
 * process and commits one batch at a time (WAL, synchronous=FULL: one fsync of the WAL per batch), so the
 * fsync never blocks the event loop. While a batch is being committed the main thread gathers the next
 * one: group commit with a pipeline of depth one, whose batches grow with load.
 *
 * Each change set runs in its own savepoint, so one refused set (a foreign key, say) does not sink the
 * others, and a set is all or nothing. No directory work happens here: callers make the filesystem durable
 * before they commit (src/sys/durable.ts fsyncDirShared), so a batch is SQLite's work only.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { BatchReply, BatchRequest, SetError } from './commit-protocol.js';
import { PRAGMAS, STATEMENTS } from './schema.js';

const { dbFile } = workerData as { dbFile: string };
const db = new Database(dbFile);
// FULL: the WAL is fsynced at every commit, so an acknowledged reply survives power loss. foreign_keys:
// the structure refuses a dangling or still-referenced layer (src/store/schema.ts).
for (const p of PRAGMAS) db.pragma(p);

const statements = new Map(Object.entries(STATEMENTS).map(([name, sql]) => [name, db.prepare(sql)]));

function setError(err: unknown): SetError {
  const code = typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
  return { message: err instanceof Error ? err.message : String(err), code };
}

/** One change set, all or nothing: called inside runBatch, better-sqlite3 runs it in a savepoint. */
const runSet = db.transaction((set: BatchRequest['sets'][number]) => {
  for (const op of set) statements.get(op.s)!.run(...op.a);
});

/**
 * A batch: one transaction, each set in its own savepoint. Both wrappers are made once: making them per
 * batch (better-sqlite3 defines five functions each time) was about half the CPU of a one-volume commit,
 * fsync aside (20–37 µs per commit with them, 11–20 without; #13).
 */
const runBatch = db.transaction((sets: BatchRequest['sets']): (SetError | null)[] => {
  const errors: (SetError | null)[] = [];
  for (const set of sets) {
    try {
      runSet(set);
      errors.push(null);
    } catch (err) {
      errors.push(setError(err));
    }
  }
  return errors;
});

function handle(req: BatchRequest): BatchReply {
  return { id: req.id, errors: runBatch.immediate(req.sets) };
}

parentPort!.on('message', (req: BatchRequest | 'close') => {
  if (req === 'close') {
    db.close();
    parentPort!.postMessage('closed');
    return;
  }
  try {
    parentPort!.postMessage(handle(req));
  } catch (err) {
    parentPort!.postMessage({ id: req.id, fatal: err instanceof Error ? err.message : String(err) } satisfies BatchReply);
  }
});
