/**
 * VolumeStore: the durable record of every volume, one row each in SQLite (WAL, synchronous=FULL), with an
 * in-memory map rebuilt from the rows at start-up (disk is truth, memory a cache). It knows nothing of
 * Docker's wire types and does no directory work: volumes/ does that and calls put/delete. Writes go
 * through the pipelined group committer (a worker thread); reads are served from memory.
 *
 * One process writes the volumes at a time: the server, or a `tsvol` command while it holds the server lock
 * (src/cli/client.ts, #9 §6). The change log below still lets a process pick up commits made by another
 * connection (the server's own commit worker is one; a `tsvol` command that ran before this server started
 * is another), and keeps two writers safe should they ever meet: SQLite serializes them. Every
 * write also appends the volume's name to a change log. The commit worker reports log entries it did not
 * write; `refresh()` asks SQLite whether any connection committed (`PRAGMA data_version`, a counter read,
 * no I/O) and only then reads the log past the last entry seen: O(changes), never O(volumes). The log
 * keeps its last CHANGE_LOG_KEEP entries; a reader further behind reloads everything.
 *
 * Why SQLite and not a JSON file per volume (README "Choosing the store"): a commit holds any number of
 * changes, so group commit turns N concurrent requests into one fsync; 100k rows load in a fraction of a
 * second; and changes to several records (a volume and the layer it holds) land together, which a file
 * per record cannot give without a journal of our own.
 */
import Database from 'better-sqlite3';
import { InternalError, wrapError } from '../errors.js';
import { SCHEMA } from './commit-protocol.js';
import type { Layout } from './layout.js';
import { createGroupCommitter } from './group-commit.js';
import { makePrivateDir } from '../sys/private-dir.js';

/** What a volume is, as validated at Create. Persisted as JSON: add kinds, never change old ones. */
export type VolumeSpec =
  | { readonly kind: 'named'; readonly uid?: number; readonly gid?: number; readonly mode?: number }
  | { readonly kind: 'bind'; readonly device: string }
  /**
   * A hard size limit (#6): a project quota on volumes/<name>/_data (`projectId`), or its own ext4 image
   * volumes/<name>/disk.img, loop-mounted on _data while held.
   */
  | {
      readonly kind: 'sized';
      readonly limit: number;
      readonly backing: 'quota' | 'loop';
      readonly projectId?: number;
      readonly uid?: number;
      readonly gid?: number;
      readonly mode?: number;
    }
  /** A full copy of volume `from` as it was at Create (#6); afterwards an ordinary named volume. */
  | { readonly kind: 'clone'; readonly from: string }
  /** Copy-on-write on a layer chain (ChainID), src/volumes/layered.ts. */
  | { readonly kind: 'layered'; readonly layer: string };

/** One volume's durable record. */
export interface VolumeRecord {
  readonly name: string;
  /** RFC 3339 creation time. */
  readonly createdAt: string;
  readonly spec: VolumeSpec;
  /**
   * The options exactly as the caller gave them (shown in Status). A null-prototype object: its keys came
   * from a request (#9 §4), so no key can reach Object.prototype.
   */
  readonly options: Readonly<Record<string, string>>;
  /**
   * Active holds: Docker mount ID → how many Mounts with that ID are not yet unmounted. A Map, never an
   * object: the IDs come from requests, and `rec.holds[id]` with the ID `constructor` would read
   * Object.prototype (#9 §4). Persisted as an array of [id, count] pairs (serializeRecord).
   */
  readonly holds: ReadonlyMap<string, number>;
}

/** A null-prototype copy of `entries`, for objects whose keys come from a request. */
export function nullProtoRecord<V>(entries: Iterable<readonly [string, V]>): Record<string, V> {
  const out = Object.create(null) as Record<string, V>;
  for (const [k, v] of entries) out[k] = v;
  return out;
}

/** The durable volume records. */
export interface VolumeStore {
  get(name: string): VolumeRecord | undefined;
  list(): IterableIterator<VolumeRecord>;
  readonly size: number;
  /** Inserts or replaces `record` durably; the cache changes only after the commit. */
  put(record: VolumeRecord, syncDirs?: readonly string[]): Promise<void>;
  /** Deletes the record durably. */
  delete(name: string): Promise<void>;
  /** Small persistent key/value facts about the store (boot id). */
  getMeta(key: string): string | undefined;
  putMeta(key: string, value: string): Promise<void>;
  /** Picks up records committed by another process since the last call (cheap when there are none). */
  refresh(): void;
  /** Commits anything queued and closes the database. */
  close(): Promise<void>;
}

/** A record as stored: holds as [id, count] pairs, which JSON round-trips (a Map would become `{}`). */
function serializeRecord(rec: VolumeRecord): string {
  return JSON.stringify({ ...rec, holds: [...rec.holds] });
}

/**
 * A hold count as stored. Records written before #9 §4 kept holds in an object and could hold garbage for
 * a prototype name (`(holds.constructor ?? 0) + 1` made a string): such an ID was mounted at least once,
 * so anything but a positive integer counts as one hold. Erring towards a hold keeps Remove refusing.
 */
function holdCountOf(value: unknown): number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : 1;
}

/** Holds from either stored form: [id, count] pairs, or (records before #9 §4) an object, migrated on read. */
function parseHolds(raw: unknown): Map<string, number> {
  const holds = new Map<string, number>();
  if (raw === undefined || raw === null) return holds;
  if (Array.isArray(raw)) {
    for (const pair of raw as unknown[]) {
      if (!Array.isArray(pair) || typeof pair[0] !== 'string') throw new Error('holds: want [id, count] pairs');
      holds.set(pair[0], holdCountOf(pair[1]));
    }
    return holds;
  }
  if (typeof raw !== 'object') throw new Error('holds: want [id, count] pairs');
  // JSON.parse makes every key an own property, `__proto__` included: Object.entries sees them all.
  for (const [id, count] of Object.entries(raw)) holds.set(id, holdCountOf(count));
  return holds;
}

function parseRecord(name: string, json: string): VolumeRecord {
  try {
    const rec = JSON.parse(json) as Omit<VolumeRecord, 'holds'> & { holds?: unknown };
    if (rec.name !== name || typeof rec.spec !== 'object') throw new Error('name or spec mismatch');
    return { ...rec, options: nullProtoRecord(Object.entries(rec.options ?? {})), holds: parseHolds(rec.holds) };
  } catch (err) {
    throw new InternalError(`volume record "${name}" in the database is corrupt: ${String(err)}`);
  }
}

/** Opens (creating if needed) the store in `layout.dbFile` and loads every record. */
export function createVolumeStore(layout: Layout): VolumeStore {
  // Root-only (#9 §5): whoever creates the data root (server or CLI), no other user traverses it.
  makePrivateDir(layout.root);
  let db: Database.Database;
  try {
    db = new Database(layout.dbFile);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    db.exec(SCHEMA);
  } catch (err) {
    throw wrapError(`open metadata database ${layout.dbFile}`, err);
  }
  const selectOne = db.prepare('SELECT record FROM volumes WHERE name = ?').pluck();
  const changesSince = db.prepare('SELECT seq, name FROM changes WHERE seq > ? ORDER BY seq').raw();
  const oldestChange = db.prepare('SELECT min(seq) FROM changes').pluck();
  const newestChange = db.prepare('SELECT coalesce(max(seq), 0) FROM changes').pluck();
  const dataVersion = db.prepare('PRAGMA data_version').pluck();
  const cache = new Map<string, VolumeRecord>();
  const meta = new Map<string, string>();
  let lastSeq = 0;
  let lastVersion = 0;

  function reread(name: string): void {
    const json = selectOne.get(name) as string | undefined;
    if (json === undefined) cache.delete(name);
    else cache.set(name, parseRecord(name, json));
  }

  function loadAll(): void {
    cache.clear();
    db.transaction(() => {
      for (const row of db.prepare('SELECT name, record FROM volumes').raw().iterate() as Iterable<[string, string]>) {
        cache.set(row[0], parseRecord(row[0], row[1]));
      }
      lastSeq = newestChange.get() as number;
    })();
    lastVersion = dataVersion.get() as number;
  }

  loadAll();
  for (const row of db.prepare('SELECT key, value FROM meta').raw().all() as [string, string][]) {
    meta.set(row[0], row[1]);
  }
  const committer = createGroupCommitter(layout.dbFile);
  committer.onForeign((names, seq) => {
    for (const name of names) reread(name);
    lastSeq = Math.max(lastSeq, seq);
  });

  return {
    get: (name) => cache.get(name),
    list: () => cache.values(),
    get size() {
      return cache.size;
    },
    async put(record, syncDirs) {
      await committer.commit({ kind: 'put', name: record.name, json: serializeRecord(record) }, syncDirs);
      cache.set(record.name, record);
    },
    async delete(name) {
      await committer.commit({ kind: 'delete', name });
      cache.delete(name);
    },
    refresh() {
      const version = dataVersion.get() as number;
      if (version === lastVersion) return;
      lastVersion = version;
      const oldest = oldestChange.get() as number | null;
      if (oldest !== null && oldest > lastSeq + 1) {
        loadAll(); // fell behind the trimmed log
        return;
      }
      // Our own commits show up here too (the worker is another connection); re-reading them is harmless.
      for (const [seq, name] of changesSince.iterate(lastSeq) as Iterable<[number, string]>) {
        reread(name);
        lastSeq = seq;
      }
    },
    getMeta: (key) => meta.get(key),
    async putMeta(key, value) {
      await committer.commit({ kind: 'meta', name: key, json: value });
      meta.set(key, value);
    },
    async close() {
      await committer.close();
      db.close();
    },
  };
}
