/** Messages between the volume store (main thread) and its commit worker, and the shared schema. */

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS volumes (name TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
`;

/** How many change-log entries are kept for other processes to catch up from. */
export const CHANGE_LOG_KEEP = 10_000;

/** One mutation: a volume record upserted or deleted, or a meta key set (`name` = key, `json` = value). */
export type Op =
  | { readonly kind: 'put'; readonly name: string; readonly json: string }
  | { readonly kind: 'delete'; readonly name: string }
  | { readonly kind: 'meta'; readonly name: string; readonly json: string };

/** A batch for the worker: directories to fsync first, then the mutations in one transaction. */
export interface BatchRequest {
  readonly id: number;
  readonly ops: readonly Op[];
  readonly syncDirs: readonly string[];
}

/** The worker's answer: per-op error (null = committed), other processes' changes, the log position. */
export interface BatchReply {
  readonly id: number;
  readonly errors?: readonly (string | null)[];
  readonly foreign?: readonly string[];
  readonly lastSeq?: number;
  /** The whole batch failed (the commit itself); nothing in it is durable. */
  readonly fatal?: string;
}
