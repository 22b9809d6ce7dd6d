/**
 * Reads /proc/self/mountinfo: which paths are mountpoints. Used to refuse deleting across a mountpoint
 * and to reconcile stale mounts at start-up.
 */
import fs from 'node:fs';

/** One line of mountinfo: the mountpoint (octal escapes decoded) and the filesystem type. */
export interface MountEntry {
  readonly mountPoint: string;
  readonly fsType: string;
  readonly source: string;
}

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Returns every mount visible to this process. */
export function readMounts(): MountEntry[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const mountPoint = fields[4];
    if (mountPoint === undefined || sep < 0) continue;
    out.push({ mountPoint: unescape(mountPoint), fsType: fields[sep + 1] ?? '', source: unescape(fields[sep + 2] ?? '') });
  }
  return out;
}

/** Returns the mountpoints at `dir` or below it. */
export function mountsUnder(dir: string, mounts: readonly MountEntry[] = readMounts()): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return mounts.map((m) => m.mountPoint).filter((p) => p === dir || p.startsWith(prefix));
}

/** The per-mount options (`ro,relatime`…) of the mount whose root is at `mountPoint` (the last one stacked there), or undefined. */
export function mountOptionsAt(mountPoint: string): string[] | undefined {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  let found: string[] | undefined;
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields[4] !== undefined && unescape(fields[4]) === mountPoint) found = (fields[5] ?? '').split(',');
  }
  return found;
}
