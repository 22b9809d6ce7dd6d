/**
 * The write side of the volume store, on a worker thread: it owns the only write connection of this
 * process and commits one batch at a time (WAL, synchronous=FULL), so the fsync never blocks the event
 * loop. While a batch is being committed the main thread gathers the next one: group commit with a
 * pipeline of depth one, whose batches grow with load.
 *
 * Each mutation runs in its own savepoint, so one failing mutation does not sink the others. Before its
 * mutations, a batch reads the change log past the last entry this worker wrote: those entries are other
 * processes' commits (the CLI), reported back so the main thread refreshes exactly those records.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { fsyncDir } from '../sys/durable.js';
import type { BatchReply, BatchRequest } from './commit-protocol.js';
import { CHANGE_LOG_KEEP, SCHEMA } from './commit-protocol.js';

const { dbFile } = workerData as { dbFile: string };
const db = new Database(dbFile);
db.pragma('journal_mode = WAL');
// FULL: the WAL is fsynced at every commit, so an acknowledged reply survives power loss.
db.pragma('synchronous = FULL');
db.pragma('busy_timeout = 5000');
db.exec(SCHEMA);

const upsert = db.prepare('INSERT OR REPLACE INTO volumes (name, record) VALUES (?, ?)');
const del = db.prepare('DELETE FROM volumes WHERE name = ?');
const putMeta = db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)');
const logChange = db.prepare('INSERT INTO changes (name) VALUES (?)');
const changesSince = db.prepare('SELECT seq, name FROM changes WHERE seq > ? ORDER BY seq').raw();
const newest = db.prepare('SELECT coalesce(max(seq), 0) FROM changes').pluck();
const trim = db.prepare('DELETE FROM changes WHERE seq <= ?');
let lastSeq = newest.get() as number;
let lastTrim = lastSeq;

function handle(req: BatchRequest): BatchReply {
  for (const dir of req.syncDirs) fsyncDir(dir);
  const errors: (string | null)[] = [];
  const foreign: string[] = [];
  db.transaction(() => {
    for (const [seq, name] of changesSince.iterate(lastSeq) as Iterable<[number, string]>) {
      foreign.push(name);
      lastSeq = seq;
    }
    for (const op of req.ops) {
      try {
        db.transaction(() => {
          if (op.kind === 'put') {
            upsert.run(op.name, op.json);
            logChange.run(op.name);
          } else if (op.kind === 'delete') {
            del.run(op.name);
            logChange.run(op.name);
          } else {
            putMeta.run(op.name, op.json);
          }
        })();
        errors.push(null);
      } catch (err) {
        errors.push(err instanceof Error ? err.message : String(err));
      }
    }
    lastSeq = newest.get() as number;
    if (lastSeq - lastTrim >= 1000) {
      trim.run(lastSeq - CHANGE_LOG_KEEP);
      lastTrim = lastSeq;
    }
  }).immediate();
  return { id: req.id, errors, foreign, lastSeq };
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
