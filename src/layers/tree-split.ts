/**
 * A layer made from a tree that will itself become the layer's directory (adoptTree: a container's upper
 * directory): the tree's tar is hashed for the DiffID and its split file recorded, both straight from one
 * walk of the tree (#13), without encoding a tar to parse it back. The split file holds the same records
 * unpackLayer writes when it imports that very tar, with each file's body read back from its path in the
 * layer's directory; whiteouts and opaque markers have no body there (the directory keeps them in
 * overlay's form).
 *
 * The walk runs on a worker thread (hashTreeInWorker), so a commit's caller can link the tree into the
 * layer store meanwhile, and the event loop never waits on the walk.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Worker } from 'node:worker_threads';
import { writeTreeTo, type WriteTreeOptions } from './tar/writer.js';
import { SplitWriter, type UnpackStats } from './unpack.js';

/** What hashTree found: the tree's DiffID and the layer's size and entry count. */
export interface TreeHash {
  readonly diffId: string;
  readonly stats: UnpackStats;
}

/**
 * Writes the tree `root` as a layer tar (writeTreeTo, overlay form) into a sha256 for the DiffID, and its
 * split file to `splitFile` (made here: it must not exist), on the way.
 */
export function hashTree(root: string, splitFile: string): TreeHash {
  const hash = createHash('sha256');
  const fd = fs.openSync(splitFile, 'wx', 0o600);
  const stats: UnpackStats = { size: 0, files: 0 };
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
    // Each piece is hashed before the writer reuses its buffer.
    writeTreeTo(root, opts, (bytes) => hash.update(bytes));
  } finally {
    fs.closeSync(fd);
  }
  return { diffId: `sha256:${hash.digest('hex')}`, stats };
}

/** The job a hash worker (tree-split-worker.ts) is started with. */
export interface HashJob {
  readonly root: string;
  readonly splitFile: string;
}

/** A hash worker's one answer. */
export type HashReply = { readonly ok: true; readonly result: TreeHash } | { readonly ok: false; readonly message: string; readonly code?: string };

/**
 * hashTree on a worker thread of its own (the built .js, or under tsx, in tests importing src/, a
 * bootstrap that registers tsx in the worker first, as the other workers do). trackUnmanagedFds off: the
 * walk opens its fds through FFI (sys/beneath.ts) and closes them with fs.closeSync, which Node would
 * otherwise warn about, once per file.
 */
export function hashTreeInWorker(root: string, splitFile: string): Promise<TreeHash> {
  const workerData: HashJob = { root, splitFile };
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(
        `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./tree-split-worker.ts', import.meta.url).href)}); })`,
        { eval: true, workerData, trackUnmanagedFds: false },
      )
    : new Worker(new URL('./tree-split-worker.js', import.meta.url), { workerData, trackUnmanagedFds: false });
  return new Promise((resolve, reject) => {
    let settled = false;
    worker.once('message', (msg: HashReply) => {
      settled = true;
      if (msg.ok) resolve(msg.result);
      else reject(Object.assign(new Error(msg.message), msg.code === undefined ? {} : { code: msg.code }));
    });
    worker.once('error', (err) => {
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`tree hash worker exited with code ${code} before answering`));
    });
  });
}
