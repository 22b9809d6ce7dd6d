/**
 * Durable file-system primitives: the only code that writes state files. A state file is written to a
 * temp name in the same directory, fsynced, renamed over the target, and the directory fsynced, so that a
 * crash at any instant leaves either the old or the new content, and an acknowledged write survives power
 * loss (moby atomicwriter, containerd syncDir; cacache and write-file-atomic skip the directory fsync).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { syncfs } from './libc.js';

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

/** Writes `data` to `file` atomically and durably (temp, fsync, rename, fsync dir). */
export function writeFileDurable(file: string, data: string | Uint8Array, mode = 0o600): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}${TEMP_MARKER}${randomBytes(6).toString('hex')}`);
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
