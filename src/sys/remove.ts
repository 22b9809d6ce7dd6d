/**
 * Deleting trees safely: never through a symlink (fs.rm removes links, it does not follow them) and never
 * across a mountpoint (a bind or loop mount inside a volume belongs to someone else).
 */
import fs from 'node:fs';
import { InUseError } from '../errors.js';
import { mountsUnder, type MountEntry } from './mountinfo.js';

/**
 * Removes `dir` and everything below it. Refuses, deleting nothing, when anything is mounted at or below
 * `dir`. A missing `dir` is success (removal is idempotent so that start-up GC can retry it).
 */
export function removeTree(dir: string, mounts?: readonly MountEntry[]): void {
  const busy = mountsUnder(dir, mounts);
  if (busy.length > 0) {
    throw new InUseError(`refusing to delete "${dir}": ${busy.length} mount(s) below it (${busy[0]})`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
