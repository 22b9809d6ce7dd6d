/** Messages between the metadata store (main thread) and its commit worker (src/store/commit-worker.ts). */
import type { Op } from './schema.js';

/** A batch for the worker: change sets, each committed in its own savepoint, all in one transaction. */
export interface BatchRequest {
  readonly id: number;
  readonly sets: readonly (readonly Op[])[];
}

/** Why one change set was refused: SQLite's message and code (`SQLITE_CONSTRAINT_FOREIGNKEY`). */
export interface SetError {
  readonly message: string;
  readonly code: string | undefined;
}

/** The worker's answer: per change set, null (committed) or why it was refused. */
export interface BatchReply {
  readonly id: number;
  readonly errors?: readonly (SetError | null)[];
  /** The whole batch failed (the commit itself); nothing in it is durable. */
  readonly fatal?: string;
}
