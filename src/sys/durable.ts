/**
 * Durable file-system primitives: the only code that writes state files. A state file is written to a
 * temp name in the same directory, fsynced, renamed over the target, and the directory fsynced, so that a
 * crash at any instant leaves either the old or the new content, and an acknowledged write survives power
 * loss (moby atomicwriter, containerd syncDir; cacache and write-file-atomic skip the directory fsync).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { describeError, errnoCode } from '../errors.js';
import type { Beneath } from './beneath.js';
import { syncfs, syncfsAsync } from './libc.js';

/**
 * Marker of writeFileDurable's temp files: `.<name>.tmp-<hex>`. The leading dot keeps a temp file left by
 * a crash from ever being read as a record: stores that list a directory of records (layer tags and
 * holds) skip dot-names, and never give a record a name starting with '.' (#9 §10c).
 */
export const TEMP_MARKER = '.tmp-';

/** True if `name` is a temp file of writeFileDurable (or any dot-name: never a record). */
export function isTempName(name: string): boolean {
  return name.startsWith('.');
}

/** fsyncs a directory so that entries created, renamed or removed in it are durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Flushes the whole filesystem holding `dir` (one syncfs: every file of a freshly built tree at once,
 * instead of an fsync per file).
 */
export function syncFilesystem(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    syncfs(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Bytes written between two early writebacks (startWriteback): a few per layer of a large image. */
export const WRITEBACK_BYTES = 32 << 20;

/** A large write's early writeback (startWriteback). */
export interface EarlyWriteback {
  /** `bytes` more were written below the directory; starts a writeback every `every` bytes. */
  wrote(bytes: number): void;
  /** Writebacks started so far. */
  readonly started: number;
  /**
   * Waits for the writeback in flight, closes the directory, and returns the failure of any of them
   * (undefined if none failed). Call it once, whatever happened to the write.
   */
  settle(): Promise<Error | undefined>;
}

/**
 * Starts writing a large write's data out while it is still being made (#11: a layer's unpack): every
 * `every` bytes, a syncfs of the filesystem holding `dir` on the thread pool (one at a time; the bytes
 * written meanwhile count towards the next). The kernel keeps a fresh write in memory for up to 30 s, so
 * the syncfs that makes the result durable (syncFilesystem, before its record) would otherwise write it
 * all at once, with the caller waiting. This is no durability step: that syncfs still runs, and finds
 * little left to do. A failed early syncfs is returned by settle(): the error it saw would not be
 * reported again to a syncfs on another fd (Linux reports a writeback error once per open file), so it
 * must fail the write instead. `sync` is the pool call (a test gives one that fails).
 */
export function startWriteback(dir: string, every = WRITEBACK_BYTES, sync: (fd: number) => Promise<boolean> = syncfsAsync): EarlyWriteback {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  let pending = 0;
  let started = 0;
  let inFlight: Promise<void> | undefined;
  let failure: Error | undefined;
  let settled = false;
  const kick = (): void => {
    started++;
    inFlight = sync(fd).then(
      (ok) => {
        if (!ok) failure ??= new Error(`the early writeback of ${dir} failed (syncfs)`);
      },
      (err: unknown) => {
        failure ??= new Error(`the early writeback of ${dir} failed: ${describeError(err)}`, { cause: err });
      },
    ).finally(() => {
      inFlight = undefined;
    });
  };
  return {
    wrote(bytes) {
      if (settled) return;
      pending += bytes;
      if (pending < every || inFlight !== undefined) return;
      pending = 0;
      kick();
    },
    get started() {
      return started;
    },
    async settle() {
      if (!settled) {
        settled = true;
        await inFlight; // never rejects: a failure is kept in `failure`
        fs.closeSync(fd);
      }
      return failure;
    },
  };
}

/** Writes `data` to `file` atomically and durably (temp, fsync, rename, fsync dir). */
export function writeFileDurable(file: string, data: string | Uint8Array, mode = 0o600): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, tempNameFor(path.basename(file)));
  const fd = fs.openSync(tmp, 'wx', mode);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  fsyncDir(dir);
}

/** The name of a new temp file beside `name` (see TEMP_MARKER). */
function tempNameFor(name: string): string {
  return `.${name}${TEMP_MARKER}${randomBytes(6).toString('hex')}`;
}

/** fsyncs the directory `rel` below `root` (resolved beneath it, never through a symlink). */
export function fsyncDirAt(root: Beneath, rel: string): void {
  const fd = root.openDirFd(rel, fs.constants.O_RDONLY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * writeFileDurable below a pinned root (#14: a shared root other nodes write too): the temp file is
 * created O_EXCL|O_NOFOLLOW in the parent resolved beneath `root`, fsynced, renamed over `rel` (renameat:
 * neither name is followed), and the parent fsynced. A symlink or `..` planted anywhere on the path is
 * refused by the kernel, so the write never lands outside `root`.
 */
export function writeFileDurableAt(root: Beneath, rel: string, data: string | Uint8Array, mode = 0o600): void {
  const dir = path.posix.dirname(rel);
  const tmp = path.posix.join(dir, tempNameFor(path.posix.basename(rel)));
  const fd = root.createFile(tmp, mode);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    throw removeTempAt(root, tmp, err);
  }
  fs.closeSync(fd);
  try {
    root.rename(tmp, rel);
  } catch (err) {
    throw removeTempAt(root, tmp, err);
  }
  fsyncDirAt(root, dir);
}

/**
 * Removes a temp file of writeFileDurableAt after `failure`; returns the error to throw: `failure`, or,
 * if the temp file could not be removed either, an error that says both.
 */
function removeTempAt(root: Beneath, tmp: string, failure: unknown): unknown {
  try {
    root.remove(tmp);
    return failure;
  } catch (err) {
    // ENOENT: its directory went away meanwhile (a volume removed by another node), and the file with it.
    if (errnoCode(err) === 'ENOENT') return failure;
    return new Error(`${describeError(failure)}; and its temp file ${tmp} could not be removed: ${describeError(err)}`, { cause: failure });
  }
}

/** Per directory: the fsync running now, and the one queued to start after it. */
interface DirSyncs {
  running: Promise<void> | undefined;
  queued: Promise<void> | undefined;
}
const dirSyncs = new Map<string, DirSyncs>();

/** One fsync of `dir` on the thread pool. */
async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * fsyncs `dir` on the thread pool, sharing the work with concurrent callers: N renames into one directory
 * cost one or two fsyncs, not N. A sync that is already running when this is called may have started
 * before the caller's rename, so it never counts: the caller joins the next sync, which starts once the
 * running one ends (and which every caller arriving meanwhile shares). Resolves once an fsync that
 * started after this call has completed.
 */
export function fsyncDirShared(dir: string): Promise<void> {
  let s = dirSyncs.get(dir);
  if (s === undefined) {
    s = { running: undefined, queued: undefined };
    dirSyncs.set(dir, s);
  }
  const state = s;
  const start = (): Promise<void> => {
    const p = fsyncDirAsync(dir).finally(() => {
      state.running = undefined;
      if (state.queued === undefined) dirSyncs.delete(dir);
    });
    state.running = p;
    return p;
  };
  if (state.running === undefined) return start();
  // A queued sync has not started yet, so it starts after this call: join it.
  state.queued ??= state.running
    .catch(() => undefined) // the running sync's failure is its callers'; ours is a new attempt
    .then(() => {
      state.queued = undefined;
      return start();
    });
  return state.queued;
}
