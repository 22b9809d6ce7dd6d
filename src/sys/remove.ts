/**
 * Deleting trees safely: never through a symlink (links are unlinked, never followed) and never across a
 * mountpoint (a bind or loop mount inside a volume belongs to someone else). Each directory is checked
 * with one statx before it is entered, so safety costs O(tree), not O(mounts on the host).
 */
import fs from 'node:fs';
import path from 'node:path';
import { isMountRoot } from './libc.js';

/**
 * Deletes `dir` recursively on the thread pool, skipping (and reporting) every mountpoint found on the
 * way: what is mounted, and the directory holding it, stay. Returns the mountpoints it left alone.
 */
export async function removeTreeNoCross(dir: string): Promise<string[]> {
  const skipped: string[] = [];
  async function walk(d: string): Promise<boolean> {
    if (isMountRoot(d)) {
      skipped.push(d);
      return false;
    }
    let clean = true;
    for (const entry of await fs.promises.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) clean = (await walk(p)) && clean;
      else await fs.promises.unlink(p);
    }
    if (clean) await fs.promises.rmdir(d);
    return clean;
  }
  try {
    await walk(dir);
  } catch (err) {
    // ENOENT: already gone (a retry after a crash, or a concurrent GC); that is the state we want.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return skipped;
}
