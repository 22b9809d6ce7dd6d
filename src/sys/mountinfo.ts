/**
 * Reads /proc/self/mountinfo: which paths are mountpoints. Used to refuse deleting across a mountpoint
 * and to reconcile stale mounts at start-up.
 *
 * mountinfo names a mount by its path as the kernel resolved it (no symlink, `..` or double slash), with
 * space, tab, newline and backslash written as octal escapes (`\040`…). So a path is never compared with it
 * as given: `kernelPath` asks the kernel where a path really is (an O_PATH fd and its /proc/self/fd link),
 * and a single path's "is something mounted here" is a statx on it (sys/libc.ts mountState), which needs
 * no comparison at all. The file is read as bytes and the escapes decoded to bytes, so a name that is not
 * UTF-8 decodes the same way the kernel's path of an fd does.
 */
import fs from 'node:fs';

/** One line of mountinfo: the mountpoint (octal escapes decoded) and the filesystem type. */
export interface MountEntry {
  /** The mount ID (field 1), the one statx's STATX_MNT_ID gives. */
  readonly id: number;
  readonly mountPoint: string;
  /** The directory of the mounted filesystem that is this mount's root (field 4): `/` or a bind's source path within it. */
  readonly root: string;
  readonly fsType: string;
  readonly source: string;
  /** Per-mount options (`ro,nosuid,relatime`…). */
  readonly options: readonly string[];
}

const BACKSLASH = 0x5c;

/** A mountinfo field (latin1: one char per byte) with its `\ooo` escapes decoded, as a UTF-8 string. */
export function decodeMountField(field: string): string {
  const raw = Buffer.from(field, 'latin1');
  const out = Buffer.allocUnsafe(raw.length);
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    const d = raw.subarray(i + 1, i + 4);
    if (c === BACKSLASH && d.length === 3 && d.every((x) => x >= 0x30 && x <= 0x37)) {
      out[n++] = ((d[0]! - 0x30) << 6) | ((d[1]! - 0x30) << 3) | (d[2]! - 0x30);
      i += 3;
    } else {
      out[n++] = c;
    }
  }
  return out.subarray(0, n).toString('utf8');
}

/** Parses mountinfo text (read as latin1); lines that are not mountinfo lines are skipped. */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    // Fields 1-6 are fixed; then optional fields up to a lone "-", then type, source, super options.
    const sep = fields.indexOf('-', 6);
    const mountPoint = fields[4];
    if (mountPoint === undefined || sep < 0) continue;
    out.push({
      id: Number(fields[0]),
      mountPoint: decodeMountField(mountPoint),
      root: decodeMountField(fields[3] ?? '/'),
      fsType: decodeMountField(fields[sep + 1] ?? ''),
      source: decodeMountField(fields[sep + 2] ?? ''),
      options: (fields[5] ?? '').split(','),
    });
  }
  return out;
}

/** Returns every mount visible to this process. */
export function readMounts(): MountEntry[] {
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'latin1'));
}

/** O_PATH (linux/fcntl.h): Node has no constant for it. */
const O_PATH = 0o10000000;

/**
 * Where `p` really is, as the kernel names it (and mountinfo does): symlinks, `..` and double slashes
 * resolved by an open, the name read back from the fd. A final symlink is followed unless `noFollow`.
 */
export function kernelPath(p: string, opts: { readonly noFollow?: boolean } = {}): string {
  const fd = fs.openSync(p, O_PATH | (opts.noFollow === true ? fs.constants.O_NOFOLLOW : 0));
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Returns the mountpoints at directory `dir` or below it (their kernel paths). `dir` is resolved by the
 * kernel first (not following a final symlink), so a path through a symlink or with `..` finds the same
 * mounts as its real path; a missing `dir` has none.
 */
export function mountsUnder(dir: string, mounts: readonly MountEntry[] = readMounts()): string[] {
  let real: string;
  try {
    real = kernelPath(dir, { noFollow: true });
  } catch (err) {
    // ENOENT: nothing there, so nothing mounted there.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const prefix = real.endsWith('/') ? real : `${real}/`;
  return mounts.map((m) => m.mountPoint).filter((p) => p === real || p.startsWith(prefix));
}

/**
 * The mount on top at `p` (resolved by the kernel, a final symlink not followed; the last one stacked
 * there), or undefined if nothing is mounted there.
 */
export function mountAt(p: string): MountEntry | undefined {
  const real = kernelPath(p, { noFollow: true });
  let found: MountEntry | undefined;
  for (const m of readMounts()) if (m.mountPoint === real) found = m;
  return found;
}

/**
 * Where the directory at kernel path `real` (kernelPath, or an fd's /proc link) lies within its own
 * filesystem: the root of the mount that holds it (the last one stacked at the longest mountpoint above
 * it) joined with the rest of the path. Two paths of one filesystem (same st_dev) name the same place
 * whatever binds and namespaces show them through, so a directory seen through a bind (a managed plugin's
 * data root) can be compared with one seen through another (its TSVOL_HOST_ROOT view of the host).
 */
export function filesystemPath(real: string, mounts: readonly MountEntry[] = readMounts()): string | undefined {
  let best: MountEntry | undefined;
  for (const m of mounts) {
    const under = m.mountPoint === '/' || real === m.mountPoint || real.startsWith(`${m.mountPoint}/`);
    if (under && (best === undefined || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  if (best === undefined) return undefined;
  const rest = best.mountPoint === '/' ? real : real.slice(best.mountPoint.length);
  return best.root === '/' ? (rest === '' ? '/' : rest) : `${best.root}${rest}`;
}
