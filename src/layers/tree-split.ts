/**
 * A layer made from a tree that will itself become the layer's directory (adoptTree: a container's upper
 * directory): the tree's tar is hashed for the DiffID and its split file recorded, both straight from one
 * walk of the tree (#13), without encoding a tar to parse it back. The split file holds the same records
 * unpackLayer writes when it imports that very tar, with each file's body read back from its path in the
 * layer's directory; whiteouts and opaque markers have no body there (the directory keeps them in
 * overlay's form).
 *
 * The walk runs on a worker thread and the hash on another, fed through a ring in shared memory
 * (hashTreeInWorker, hash-ring.ts): reading and hashing overlap on two cores, and the event loop never
 * waits on either.
 */
import fs from 'node:fs';
import { Worker } from 'node:worker_threads';
import { TsvolError, isErrorCode } from '../errors.js';
import { createRing, hashRingInWorker, RingWriter, SLOT, type Ring } from './hash-ring.js';
import { writeTreeTo, type WriteTreeOptions } from './tar/writer.js';
import { SplitWriter, type UnpackStats } from './unpack.js';

/** What hashTree found: the tree's DiffID and the layer's size and entry count. */
export interface TreeHash {
  readonly diffId: string;
  readonly stats: UnpackStats;
}

/**
 * Writes the tree `root` as a layer tar (writeTreeTo, overlay form) into the ring `ring`, whose hash
 * thread hashes it for the DiffID (hash-ring.ts), and its split file to `splitFile` (made here: it must not
 * exist), on the way; returns the layer's size and entry count. The ring's stream is ended whatever
 * happens, so that its hash thread ends too.
 */
export function splitTree(root: string, splitFile: string, ring: Ring): UnpackStats {
  const writer = new RingWriter(ring);
  const stats: UnpackStats = { size: 0, files: 0 };
  try {
    const fd = fs.openSync(splitFile, 'wx', 0o600);
    try {
      const split = new SplitWriter(fd);
      const noPad = Buffer.alloc(0); // the tree writer pads with zeros, which a split file leaves out
      const opts: WriteTreeOptions = {
        onEntry(raw, body) {
          split.entry(raw, body?.path, body?.size ?? 0, noPad);
          if (body !== undefined) stats.size += body.size;
          stats.files++;
        },
        onEnd: (trailer) => split.trailer(trailer),
      };
      // The tar is written straight into the ring's slots; each full one goes to the hash thread.
      writeTreeTo(root, opts, (bytes) => writer.publish(bytes.length), { size: SLOT, provide: () => writer.acquire() });
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    writer.end();
  }
  return stats;
}

/** The job a split worker (tree-split-worker.ts) is started with. */
export interface HashJob {
  readonly root: string;
  readonly splitFile: string;
  readonly ring: Ring;
}

/** A split worker's one answer. */
export type HashReply = { readonly ok: true; readonly stats: UnpackStats } | { readonly ok: false; readonly message: string; readonly code?: string };

/**
 * The DiffID and split file of the tree `root` from one walk (splitTree) on a worker thread of its own,
 * with the hash on another (hashRingInWorker): the built .js, or under tsx, in tests importing src/, a
 * bootstrap that registers tsx in the worker first, as the other workers do. trackUnmanagedFds off: the
 * walk opens its fds through FFI (sys/beneath.ts) and closes them with fs.closeSync, which Node would
 * otherwise warn about, once per file.
 */
export async function hashTreeInWorker(root: string, splitFile: string): Promise<TreeHash> {
  const ring = createRing();
  const hasher = hashRingInWorker(ring);
  const walker = splitTreeInWorker({ root, splitFile, ring });
  // Either thread failing stops the other, which could otherwise wait on the ring forever (the walk ends
  // the ring's stream when it fails, but not if its thread died first). Both have ended before this
  // returns: the walk writes into the caller's stage.
  hasher.digest.catch(() => walker.stop());
  walker.stats.catch(() => hasher.stop());
  const [hashed, walked] = await Promise.allSettled([hasher.digest, walker.stats]);
  if (walked.status === 'rejected') throw walked.reason;
  if (hashed.status === 'rejected') throw hashed.reason;
  return { diffId: `sha256:${hashed.value}`, stats: walked.value };
}

/** A split worker at work. */
interface TreeSplitter {
  readonly stats: Promise<UnpackStats>;
  stop(): void;
}

function splitTreeInWorker(workerData: HashJob): TreeSplitter {
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(
        `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./tree-split-worker.ts', import.meta.url).href)}); })`,
        { eval: true, workerData, trackUnmanagedFds: false },
      )
    : new Worker(new URL('./tree-split-worker.js', import.meta.url), { workerData, trackUnmanagedFds: false });
  const stats = new Promise<UnpackStats>((resolve, reject) => {
    let settled = false;
    worker.once('message', (msg: HashReply) => {
      settled = true;
      if (msg.ok) resolve(msg.stats);
      // A refusal of the walk's (InvalidArgument: a name no layer can carry) keeps its kind across the thread.
      else if (isErrorCode(msg.code)) reject(new TsvolError(msg.code, msg.message));
      else reject(Object.assign(new Error(msg.message), msg.code === undefined ? {} : { code: msg.code }));
    });
    worker.once('error', (err) => {
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`tree split worker exited with code ${code} before answering`));
    });
  });
  return { stats, stop: () => void worker.terminate() };
}
