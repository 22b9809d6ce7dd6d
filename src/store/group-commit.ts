/**
 * Group commit, pipelined: change sets are queued; whenever no batch is in flight, everything queued goes
 * to the commit worker (src/store/commit-worker.ts) as one transaction. While the worker commits and
 * fsyncs, new sets queue up and form the next batch, so under load N concurrent requests share one fsync
 * and the event loop never waits on the disk. Durability is never skipped: a promise settles only after
 * the transaction holding its set has committed.
 */
import { Worker } from 'node:worker_threads';
import { InternalError } from '../errors.js';
import type { BatchReply, BatchRequest, SetError } from './commit-protocol.js';
import type { Op } from './schema.js';

interface Pending {
  readonly set: readonly Op[];
  readonly resolve: (refused: SetError | null) => void;
  readonly reject: (err: unknown) => void;
}

/** Batches change sets into durable transactions on a worker thread. */
export interface GroupCommitter {
  /**
   * Commits `set` atomically and durably; resolves to null once committed, or to why SQLite refused the
   * set (nothing of it is kept). Rejects if the batch's commit itself failed.
   */
  commit(set: readonly Op[]): Promise<SetError | null>;
  /** Commits what is queued, then stops the worker. */
  close(): Promise<void>;
}

/**
 * Starts the commit worker: the built .js, or, when running from source under tsx (tests importing src/),
 * a bootstrap that registers tsx inside the worker first (Node 20 does not pass a worker's .ts entry
 * through the parent's loader).
 */
function startWorker(dbFile: string): Worker {
  if (!import.meta.url.endsWith('.ts')) {
    return new Worker(new URL('./commit-worker.js', import.meta.url), { workerData: { dbFile } });
  }
  const entry = JSON.stringify(new URL('./commit-worker.ts', import.meta.url).href);
  const boot = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${entry}); })`;
  return new Worker(boot, { eval: true, workerData: { dbFile } });
}

/** Starts the commit worker on `dbFile`. */
export function createGroupCommitter(dbFile: string): GroupCommitter {
  const worker = startWorker(dbFile);
  worker.unref();
  let queue: Pending[] = [];
  let inFlight: Pending[] | undefined;
  let nextId = 1;
  let scheduled = false;
  let closed = false;
  let failure: Error | undefined;

  function send(): void {
    scheduled = false;
    if (inFlight !== undefined || queue.length === 0) return;
    inFlight = queue;
    const req: BatchRequest = { id: nextId++, sets: inFlight.map((p) => p.set) };
    queue = [];
    worker.ref(); // keep the process alive while a commit is pending
    worker.postMessage(req);
  }

  worker.on('message', (reply: BatchReply | 'closed') => {
    if (reply === 'closed') return;
    const batch = inFlight ?? [];
    inFlight = undefined;
    worker.unref();
    if (reply.fatal !== undefined) {
      const err = new InternalError(`metadata commit failed: ${reply.fatal}`);
      for (const p of batch) p.reject(err);
    } else {
      batch.forEach((p, i) => p.resolve(reply.errors?.[i] ?? null));
    }
    if (queue.length > 0) send();
  });
  worker.on('error', (err) => {
    failure = new InternalError(`metadata commit worker failed: ${err.message}`, { cause: err });
    for (const p of [...(inFlight ?? []), ...queue]) p.reject(failure);
    inFlight = undefined;
    queue = [];
  });

  return {
    commit(set) {
      if (failure !== undefined) return Promise.reject(failure);
      if (closed) return Promise.reject(new InternalError('metadata store is closed'));
      return new Promise<SetError | null>((resolve, reject) => {
        queue.push({ set, resolve, reject });
        // Gather what this turn of the event loop queues, then send if the worker is idle.
        if (!scheduled && inFlight === undefined) {
          scheduled = true;
          setImmediate(send);
        }
      });
    },
    async close() {
      closed = true;
      while (inFlight !== undefined || queue.length > 0) {
        send();
        await new Promise((r) => setTimeout(r, 5));
      }
      if (failure === undefined) {
        // Referenced while its reply is awaited: an unreferenced worker lets a process with nothing else
        // pending exit mid-close (exit code 13, an unsettled top-level await in the CLI), and whatever the
        // caller does after close() (a CLI printing its result) would never run.
        worker.ref();
        const done = new Promise((r) => worker.once('message', r));
        worker.postMessage('close');
        await done;
      }
      await worker.terminate();
    },
  };
}
