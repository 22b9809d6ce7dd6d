/**
 * Deleting trees safely: never through a symlink and never across a mountpoint, enforced by the kernel
 * (#9). Every directory is opened beneath the tree's pinned root with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV) (src/sys/beneath.ts), and every entry is unlinked by its name
 * relative to its directory's fd. A directory swapped for a symlink while we delete (a process still inside
 * a lazily detached volume) is unlinked as a symlink, never followed; a mount inside is refused by the
 * kernel (EXDEV) and left with the directories that hold it. Costs O(tree), not O(mounts on the host).
 */
import fs from 'node:fs';
import { errnoCode } from '../errors.js';
import { Beneath } from './beneath.js';
import { isMountRoot } from './libc.js';

/** Entries handled between two yields to the event loop (each is one or two syscalls of a few µs). */
const BATCH = 256;

/**
 * Deletes `dir` recursively, yielding to the event loop as it goes, skipping (and reporting) every
 * mountpoint found on the way: what is mounted, and the directories holding it, stay. Returns the
 * mountpoints it left alone. A missing `dir` is already deleted.
 */
export async function removeTreeNoCross(dir: string): Promise<string[]> {
  const skipped: string[] = [];
  let root: Beneath;
  try {
    if (isMountRoot(dir)) return [dir];
    root = Beneath.open(dir);
  } catch (err) {
    // ENOENT: already gone (a retry after a crash, or a concurrent sweep); that is the state we want.
    if (errnoCode(err) === 'ENOENT') return skipped;
    throw err;
  }
  let work = 0;
  async function walk(b: Beneath): Promise<boolean> {
    let clean = true;
    for (const entry of b.readdir()) {
      if (++work % BATCH === 0) await new Promise((r) => setImmediate(r));
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
            subClean = await walk(sub);
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
    }
    return clean;
  }
  try {
    const clean = await walk(root);
    if (clean) fs.rmdirSync(dir);
  } catch (err) {
    // ENOENT: the tree went away under us (a concurrent sweep); that is the state we want.
    if (errnoCode(err) !== 'ENOENT') throw err;
  } finally {
    root.close();
  }
  return skipped;
}
