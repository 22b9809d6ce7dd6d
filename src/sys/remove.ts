/**
 * Deleting trees safely: never through a symlink and never across a mountpoint, enforced by the kernel
 * (#9). Every directory is opened beneath the tree's pinned root with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV) (src/sys/beneath.ts), and every entry is unlinked by its name
 * relative to its directory's fd. A directory swapped for a symlink while we delete (a process still inside
 * a lazily detached volume) is unlinked as a symlink, never followed; a mount inside is refused by the
 * kernel (EXDEV) and left with the directories that hold it. Costs O(tree), not O(mounts on the host).
 *
 * The walk runs synchronously on one worker thread for the whole process (src/sys/remove-worker.ts), one
 * tree after another from a queue: tens of thousands of unlinkat/openat2 calls, and the final close that
 * frees a deleted directory's inode, took a third of the server's main thread under the Docker benchmark
 * when they ran on the event loop (#13). A worker thread shares the process's fd table, so a stage's
 * locked fd is handed to the worker, which deletes the tree below that very inode and closes the fd (the
 * flock goes with it) only once the tree is gone. The worker is unreferenced while idle, so it never
 * keeps a process alive.
 */
import fs from 'node:fs';
import { Worker } from 'node:worker_threads';
import { errnoCode } from '../errors.js';
import { Beneath } from './beneath.js';
import { crashPoint } from './crash-point.js';
import { isMountRoot } from './libc.js';

/** The crash point in the middle of a tree delete (tests: TSVOL_CRASH_AT), reached after this many entries. */
export const MID_TREE_CRASH = 'remove:mid-tree';
const MID_TREE_ENTRIES = 100;

/** How removeTreeNoCross is to delete a tree. */
export interface RemoveOptions {
  /**
   * An fd of the tree's root directory (a stage's locked fd), handed over: the walk deletes the tree below
   * this inode, and the fd is closed after the delete, whatever happens, which drops its flock only once
   * the tree is gone. The caller must not use or close it afterwards.
   */
  readonly lockFd?: number;
  /**
   * Nobody waits for it (a removed volume's data): it runs after every queued deletion someone awaits (a
   * failed build's stage, a container's layer), so a large background delete never delays those more
   * than the tree in progress does.
   */
  readonly background?: boolean;
}

/**
 * Deletes `dir` recursively, synchronously, skipping (and reporting) every mountpoint found on the way:
 * what is mounted, and the directories holding it, stay. Returns the mountpoints it left alone. A missing
 * `dir` is already deleted. With `rootFd` (an fd of the directory `dir` names), the walk starts from that
 * inode rather than from whatever the name means by now. Runs on the deleter worker (removeTreeNoCross).
 */
export function removeTreeSync(dir: string, rootFd?: number): string[] {
  const skipped: string[] = [];
  let root: Beneath;
  try {
    if (isMountRoot(dir)) return [dir];
    root = rootFd === undefined ? Beneath.open(dir) : Beneath.fromFd(rootFd, dir);
  } catch (err) {
    // ENOENT: already gone (a retry after a crash, or a concurrent sweep); that is the state we want.
    if (errnoCode(err) === 'ENOENT') return skipped;
    throw err;
  }
  // Looked up once per tree, not per entry: this loop is the deleter's whole cost.
  let untilCrash = process.env.TSVOL_CRASH_AT === MID_TREE_CRASH ? MID_TREE_ENTRIES : -1;
  function walk(b: Beneath): boolean {
    let clean = true;
    for (const entry of b.readdir()) {
      if (entry.isDirectory()) {
        let sub: Beneath | undefined;
        try {
          sub = b.sub(entry.name);
        } catch (err) {
          const code = errnoCode(err);
          if (code === 'EXDEV') {
            skipped.push(`${b.where}/${entry.name}`);
            clean = false;
            continue;
          }
          // ENOENT: gone meanwhile; ELOOP/ENOTDIR: replaced by a symlink or a file meanwhile, unlinked below.
          if (code !== 'ENOENT' && code !== 'ELOOP' && code !== 'ENOTDIR') throw err;
        }
        if (sub !== undefined) {
          let subClean: boolean;
          try {
            subClean = walk(sub);
          } finally {
            sub.close();
          }
          if (!subClean) {
            clean = false;
            continue;
          }
        }
      }
      b.remove(entry.name);
      if (untilCrash > 0 && --untilCrash === 0) crashPoint(MID_TREE_CRASH);
    }
    return clean;
  }
  try {
    const clean = walk(root);
    if (clean) fs.rmdirSync(dir);
  } catch (err) {
    // ENOENT: the tree went away under us (a concurrent sweep); that is the state we want.
    if (errnoCode(err) !== 'ENOENT') throw err;
  } finally {
    root.close();
  }
  return skipped;
}

/**
 * Deletes `p`, a file, a symlink (never followed) or a tree, synchronously on the calling thread: a tree
 * by removeTreeSync, so never through a symlink and never across a mountpoint. For the few small trees a
 * synchronous caller deletes (0.1's record directories at start-up, a stray entry among image blobs); a
 * tree of user data goes to the worker (removeTreeNoCross). Returns the mountpoints it left in place; a
 * missing `p` is already deleted.
 */
export function removePathSync(p: string): string[] {
  let isDir: boolean;
  try {
    isDir = fs.lstatSync(p).isDirectory();
  } catch (err) {
    // ENOENT: already gone; that is the state we want.
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
  if (isDir) return removeTreeSync(p);
  try {
    fs.unlinkSync(p);
  } catch (err) {
    // ENOENT: gone meanwhile. (EISDIR: replaced by a directory meanwhile: thrown, nothing crossed.)
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  return [];
}

/** A deletion for the worker (src/sys/remove-worker.ts). */
export interface RemoveJob {
  readonly id: number;
  readonly dir: string;
  readonly lockFd?: number;
}

/** The worker's answer to a RemoveJob. */
export type RemoveReply =
  | { readonly id: number; readonly ok: true; readonly skipped: string[] }
  | { readonly id: number; readonly ok: false; readonly message: string; readonly code?: string };

interface Queued {
  readonly job: RemoveJob;
  readonly resolve: (skipped: string[]) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Starts the worker: the built .js, or under tsx (tests importing src/) a bootstrap that registers tsx
 * inside the worker first, as the commit worker does. trackUnmanagedFds off: the fds the worker is handed
 * belong to the process, and their fate is decided here, never by the worker's exit.
 */
function startWorker(): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./remove-worker.js', import.meta.url), { trackUnmanagedFds: false });
  const entry = JSON.stringify(new URL('./remove-worker.ts', import.meta.url).href);
  return new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${entry}); })`, { eval: true, trackUnmanagedFds: false });
}

// The one deleter worker of this process and its queues: one tree at a time is in the worker, so a
// deletion someone awaits can overtake the background ones still queued.
let worker: Worker | undefined;
let inFlight: Queued | undefined;
const urgent: Queued[] = [];
const background: Queued[] = [];
let nextId = 1;

function dispatch(): void {
  if (inFlight !== undefined) return;
  const next = urgent.shift() ?? background.shift();
  if (next === undefined) {
    worker?.unref(); // idle: never keeps the process alive
    return;
  }
  if (worker === undefined) {
    const w = startWorker();
    w.on('message', (reply: RemoveReply) => {
      const done = inFlight;
      inFlight = undefined;
      if (done !== undefined && done.job.id === reply.id) {
        if (reply.ok) done.resolve(reply.skipped);
        else done.reject(Object.assign(new Error(reply.message), { code: reply.code }));
      }
      dispatch();
    });
    const fail = (why: string): void => {
      if (worker !== w) return; // 'error' then 'exit': handled once
      worker = undefined;
      // The job's fd is deliberately not closed: the worker may have closed it already, and its number may
      // belong to another file by now. It stays open, and its lock held, until this process exits; then the
      // stage is debris that start-up deletes.
      const lost = inFlight;
      inFlight = undefined;
      lost?.reject(new Error(`tree delete worker failed (${why}); ${lost.job.dir} is left for start-up to delete`));
      dispatch(); // the queued ones, on a fresh worker
    };
    w.on('error', (err) => fail(err.message));
    w.on('exit', (code) => fail(`exit code ${code}`));
    worker = w;
  }
  inFlight = next;
  worker.ref(); // a deletion under way keeps the process alive, as its promise's I/O would
  worker.postMessage(next.job);
}

/**
 * Deletes `dir` recursively on the deleter worker (removeTreeSync there), never across a mountpoint, and
 * resolves to the mountpoints it left in place. The main thread only queues the job and reads the reply.
 */
export function removeTreeNoCross(dir: string, opts: RemoveOptions = {}): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const job: RemoveJob = opts.lockFd === undefined ? { id: nextId++, dir } : { id: nextId++, dir, lockFd: opts.lockFd };
    (opts.background === true ? background : urgent).push({ job, resolve, reject });
    dispatch();
  });
}
