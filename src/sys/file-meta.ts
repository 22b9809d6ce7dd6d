/**
 * File metadata, one mechanism (#10): what owner, mode, xattrs and times a created entry gets, and the one
 * place that gives them. Every writer of a tree (clones, the copy layer driver, the tar unpacker, layer
 * directories shared by links, volume archive import) builds an `EntryMeta` here (metaOf, keptXattrs) and
 * applies it here (applyMetaAt through a pinned parent, applyMetaFd through the entry's own fd), so the
 * order, the xattr rule and the time precision are the same on every path:
 *
 * - Order: chown first (the kernel clears set-id bits and security.capability on chown), then chmod (set-id
 *   bits survive; never on a symlink: Linux has no symlink modes), then xattrs (security.capability lands
 *   after the chown that would drop it), then times (every change above touched ctime, and xattrs on some
 *   filesystems touch mtime). Nothing follows a final symlink.
 * - Times: nanoseconds end to end (statx in, utimensat out; a tar's pax mtime is parsed exactly, never
 *   through a double). An entry given an mtime but no atime gets atime = mtime (tar has no atime).
 * - Xattrs: one policy (XattrPolicy). Every namespace the kernel lets root set is copied as it is —
 *   user.*, security.* (capability, SELinux labels), system.posix_acl_*, trusted.* — except overlayfs's own
 *   trusted.overlay.*, which steer overlay's lookups (opaque, redirect, metacopy, origin): a named policy
 *   says per kind of tree whether they are data (a plain copy), only the opaque marker (a layer in overlay's
 *   form) or never (tar input and output, #9: an archive must not steer overlay).
 *
 * Operations that Linux offers only on paths (chmod of a non-symlink, xattrs of an entry by name) go through
 * /proc/self/fd/<fd>: for chmod the entry is first pinned with O_PATH|O_NOFOLLOW; for xattrs the parent is
 * pinned and the final name is looked up without following (lsetxattr). Both reach exactly the pinned inode.
 */
import fs from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';
import { SyscallError, check, libc } from './libc.js';

const E = os.constants.errno;

const O_PATH = 0o10000000;
const O_CLOEXEC = 0o2000000;
const O_NOFOLLOW = fs.constants.O_NOFOLLOW;
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
/** (uid_t)-1: "leave unchanged" to chown(2). */
const UNCHANGED_ID = 0xffffffff;

const cOpenat = libc.func('int openat(int dirfd, const char *path, int flags, uint32_t mode)');
const cFchownat = libc.func('int fchownat(int dirfd, const char *path, uint32_t uid, uint32_t gid, int flags)');
const cFchmod = libc.func('int fchmod(int fd, uint32_t mode)');
const cChmod = libc.func('int chmod(const char *path, uint32_t mode)');
const cUtimensat = libc.func('int utimensat(int dirfd, const char *path, const uint8_t *times, int flags)');
const cLsetxattr = libc.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)');
const cLgetxattr = libc.func('long lgetxattr(const char *path, const char *name, _Out_ void *value, size_t size)');
const cLlistxattr = libc.func('long llistxattr(const char *path, _Out_ void *list, size_t size)');
// The following variants, only ever given /proc/self/fd/<fd>: following that magic link reaches exactly the
// pinned inode (the l-variants would read the magic link itself, which has no xattrs).
const cSetxattr = libc.func('int setxattr(const char *path, const char *name, const void *value, size_t size, int flags)');
const cGetxattr = libc.func('long getxattr(const char *path, const char *name, _Out_ void *value, size_t size)');
const cListxattr = libc.func('long listxattr(const char *path, _Out_ void *list, size_t size)');
const cFsetxattr = libc.func('int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)');
const cFlistxattr = libc.func('long flistxattr(int fd, _Out_ void *list, size_t size)');
const cFgetxattr = libc.func('long fgetxattr(int fd, const char *name, _Out_ void *value, size_t size)');
const cRemovexattr = libc.func('int removexattr(const char *path, const char *name)');

/** overlayfs's private xattrs (opaque, redirect, metacopy, origin, ...): markers of a layer's form. */
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** The overlayfs xattr that makes a directory opaque (value `y`). */
export const OPAQUE_XATTR = `${OVERLAY_XATTR_PREFIX}opaque`;

/**
 * The one xattr policy: every xattr is kept, except overlayfs's own (trusted.overlay.*), kept per `overlay`:
 * - 'all': they are data of a plain tree (a clone of a volume that holds, say, Docker-in-Docker's overlay2
 *   uppers must keep them);
 * - 'opaque': only the opaque marker (a layer directory in overlay's form: the marker is part of it);
 * - 'none': never (tar input and output, #9, and file metadata the copy driver carries between trees,
 *   where whiteouts and opaque directories are handled as such, not as xattrs).
 */
export interface XattrPolicy {
  readonly overlay: 'all' | 'opaque' | 'none';
}

/** The named policies; every writer of a tree uses one of these. */
export const XATTRS = {
  /** A plain copy of a tree (volume clones): everything, trusted.overlay.* included. */
  verbatim: Object.freeze({ overlay: 'all' }),
  /** A layer directory in overlay's form (linkTree): no overlay xattr but the opaque marker. */
  layerForm: Object.freeze({ overlay: 'opaque' }),
  /** File metadata only (tar in and out, the copy driver): no overlay xattr at all. */
  fileOnly: Object.freeze({ overlay: 'none' }),
} as const satisfies Record<string, XattrPolicy>;

/** True if `policy` keeps the xattr `name`. */
export function keepsXattr(policy: XattrPolicy, name: string): boolean {
  if (!name.startsWith(OVERLAY_XATTR_PREFIX)) return true;
  return policy.overlay === 'all' || (policy.overlay === 'opaque' && name === OPAQUE_XATTR);
}

/** The xattrs of `all` that `policy` keeps, sorted by name (a tar writer needs a stable order). */
export function keptXattrs(all: Iterable<readonly [string, Buffer]>, policy: XattrPolicy): Map<string, Buffer> {
  // On every entry of every tree copy: most entries have no xattrs, so no spread, filter or sort for them.
  const kept: [string, Buffer][] = [];
  for (const [name, value] of all) if (keepsXattr(policy, name)) kept.push([name, value]);
  if (kept.length > 1) kept.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return new Map(kept);
}

/** Metadata to give an entry (applyMetaAt, applyMetaFd): each field is optional. */
export interface EntryMeta {
  readonly uid?: number;
  readonly gid?: number;
  /** Permission bits (0o7777, set-id bits included); ignored for symlinks. */
  readonly mode?: number;
  readonly xattrs?: Iterable<readonly [string, Buffer]>;
  /** Defaults to mtimeNs when only that is given. */
  readonly atimeNs?: bigint;
  readonly mtimeNs?: bigint;
}

/** What metaOf reads from a stat (sys/beneath's EntryStat has it: statx, times in ns). */
export interface StatMeta {
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  isSymbolicLink(): boolean;
}

/** Options of metaOf. */
export interface MetaOptions {
  /**
   * Copy atime and mtime (default true). False where the caller sets the times later: a directory, after
   * its entries are made (making them changes its times).
   */
  readonly times?: boolean;
}

/**
 * The metadata that makes a new entry like the one `st` describes: owner, mode (not for a symlink), the
 * xattrs `policy` keeps, and (unless `times: false`) atime and mtime in nanoseconds.
 */
export function metaOf(st: StatMeta, xattrs: Iterable<readonly [string, Buffer]>, policy: XattrPolicy, opts: MetaOptions = {}): EntryMeta {
  const kept = keptXattrs(xattrs, policy);
  return {
    uid: st.uid,
    gid: st.gid,
    ...(st.isSymbolicLink() ? {} : { mode: st.mode & 0o7777 }),
    ...(kept.size > 0 ? { xattrs: kept } : {}),
    ...(opts.times === false ? {} : { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs }),
  };
}

/** A struct timespec[2] for utimensat: atime, mtime (a negative time floors to the second before). */
function timesBuf(atimeNs: bigint, mtimeNs: bigint): Buffer {
  const buf = Buffer.alloc(32);
  const split = (ns: bigint, off: number): void => {
    let s = ns / 1_000_000_000n;
    let n = ns % 1_000_000_000n;
    if (n < 0n) {
      s -= 1n;
      n += 1_000_000_000n;
    }
    buf.writeBigInt64LE(s, off);
    buf.writeBigInt64LE(n, off + 8);
  };
  split(atimeNs, 0);
  split(mtimeNs, 16);
  return buf;
}

/**
 * Gives the entry `name` of the pinned directory `dirfd` its metadata, in the order of the module comment,
 * never following a final symlink. `where` names the entry in errors. Callers resolve `dirfd` beneath
 * their root (sys/beneath.ts: Beneath.applyMeta).
 */
export function applyMetaAt(dirfd: number, name: string, meta: EntryMeta, where: string): void {
  if (meta.uid !== undefined || meta.gid !== undefined) {
    check(cFchownat(dirfd, name, meta.uid ?? UNCHANGED_ID, meta.gid ?? UNCHANGED_ID, AT_SYMLINK_NOFOLLOW), 'fchownat', where);
  }
  if (meta.mode !== undefined) {
    // Pin the entry itself, then chmod the pinned inode: a symlink is skipped (no modes), never followed.
    const fd = check(cOpenat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0), 'openat', where);
    try {
      if (!fs.fstatSync(fd).isSymbolicLink()) check(cChmod(`/proc/self/fd/${fd}`, meta.mode & 0o7777), 'chmod', where);
    } finally {
      fs.closeSync(fd);
    }
  }
  if (meta.xattrs !== undefined) {
    const p = `/proc/self/fd/${dirfd}/${name}`;
    for (const [k, v] of meta.xattrs) check(cLsetxattr(p, k, v, v.length, 0), 'lsetxattr', `${where} (${k})`);
  }
  if (meta.mtimeNs !== undefined) {
    check(cUtimensat(dirfd, name, timesBuf(meta.atimeNs ?? meta.mtimeNs, meta.mtimeNs), AT_SYMLINK_NOFOLLOW), 'utimensat', where);
  }
}

/**
 * applyMetaAt on an fd that is the entry itself (a file just created, or a root): f-calls, or for an O_PATH
 * fd (which refuses fchmod and fsetxattr with EBADF) the same inode through its /proc magic link, followed.
 */
export function applyMetaFd(fd: number, meta: EntryMeta): void {
  if (meta.uid !== undefined || meta.gid !== undefined) {
    // fchownat(fd, "", AT_EMPTY_PATH): the fd's own inode, O_PATH fds included (fchown refuses those).
    check(cFchownat(fd, '', meta.uid ?? UNCHANGED_ID, meta.gid ?? UNCHANGED_ID, AT_EMPTY_PATH), 'fchownat');
  }
  if (meta.mode !== undefined) {
    if (Number(cFchmod(fd, meta.mode & 0o7777)) < 0) check(cChmod(`/proc/self/fd/${fd}`, meta.mode & 0o7777), 'chmod');
  }
  if (meta.xattrs !== undefined) {
    for (const [k, v] of meta.xattrs) {
      if (Number(cFsetxattr(fd, k, v, v.length, 0)) < 0) check(cSetxattr(`/proc/self/fd/${fd}`, k, v, v.length, 0), 'setxattr', k);
    }
  }
  if (meta.mtimeNs !== undefined) {
    // utimensat(fd, NULL): the fd's own inode; an O_PATH fd refuses it (EBADF) but works through /proc.
    const times = timesBuf(meta.atimeNs ?? meta.mtimeNs, meta.mtimeNs);
    if (Number(cUtimensat(fd, null, times, 0)) < 0) check(cUtimensat(AT_FDCWD, `/proc/self/fd/${fd}`, times, 0), 'utimensat');
  }
}

/**
 * What the kernel gives a regular file created in a directory, unasked (#11): the metadata an unpack then
 * need not set again, one syscall less each. Owner: the creator's fsuid and fsgid, unless the directory
 * is set-group-ID (then its group). Mode: the open's mode less the umask, unless the directory has a
 * default ACL (then the ACL decides, and the file gets an ACL of its own). Read once per directory.
 */
export interface CreateDefaults {
  /** A new file is owned by 0:0 (this process is root and the directory is not set-group-ID). */
  readonly rootOwned: boolean;
  /** The umask masks a new file's mode (undefined: something else may: a default ACL, an unknown umask). */
  readonly umask: number | undefined;
}

/** The process umask, from /proc/self/status (reading it with umask(2) would change it for a moment). */
export function processUmask(): number | undefined {
  const m = /^Umask:\s*([0-7]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? parseInt(m[1]!, 8) : undefined;
}

/** The xattr of a directory's default ACL (new entries' modes then come from it, not the umask). */
const DEFAULT_ACL = 'system.posix_acl_default';

/** The set-group-ID bit of a mode (a directory with it gives new entries its group). */
const S_ISGID = 0o2000;

/** CreateDefaults of the directory `dirfd` pins (O_PATH will do), given the process umask. */
export function createDefaults(dirfd: number, umask: number | undefined): CreateDefaults {
  const st = fs.fstatSync(dirfd);
  const root = process.geteuid?.() === 0 && process.getegid?.() === 0;
  // One getxattr of the size only (not a listing: a directory may carry a thousand xattrs, and this runs
  // each time an unpack moves to another directory).
  const n = Number(cGetxattr(`/proc/self/fd/${dirfd}`, DEFAULT_ACL, null, 0));
  let acl = n >= 0;
  if (n < 0) {
    const errno = koffi.errno();
    if (errno !== E.ENODATA && errno !== E.ENOTSUP) throw new SyscallError('getxattr', errno, `${DEFAULT_ACL} of fd ${dirfd}`);
    acl = false;
  }
  return { rootOwned: root && (st.mode & S_ISGID) === 0, umask: acl ? undefined : umask };
}

/**
 * The mode to create a regular file with so that it needs no chmod afterwards, or undefined when the
 * kernel would not give exactly `mode` (special bits, which chown may clear; bits the umask or an ACL takes).
 */
export function exactCreateMode(mode: number, d: CreateDefaults): number | undefined {
  if (d.umask === undefined || (mode & 0o7000) !== 0 || (mode & d.umask) !== 0) return undefined;
  return mode;
}

/**
 * Removes from the inode `fd` pins (an O_PATH fd will do: through /proc/self/fd/<fd>, which reaches exactly
 * that inode) every xattr `policy` does not keep, keeping its times as they were (an xattr change touches
 * mtime on some filesystems). `st`: the inode's stat, taken before. Returns how many were removed.
 */
export function dropXattrsFd(fd: number, st: StatMeta, policy: XattrPolicy, where: string): number {
  const p = `/proc/self/fd/${fd}`;
  let removed = 0;
  for (const name of listXattrs(p, true).keys()) {
    if (keepsXattr(policy, name)) continue;
    if (Number(cRemovexattr(p, name)) < 0) {
      const errno = koffi.errno();
      if (errno !== E.ENODATA) throw new SyscallError('removexattr', errno, `${where}: ${name}`); // ENODATA: gone already
    }
    removed++;
  }
  if (removed > 0) applyMetaFd(fd, { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
  return removed;
}

/** Every xattr of the file open as `fd` (flistxattr/fgetxattr: an fd open for I/O, not an O_PATH fd). */
export function fdXattrs(fd: number): Map<string, Buffer> {
  return readXattrs(
    (buf) => Number(cFlistxattr(fd, buf, buf.length)),
    (name, buf) => Number(cFgetxattr(fd, name, buf, buf.length)),
    `fd ${fd}`,
  );
}

/** Reads every xattr of `p`: not following a final symlink, unless `follow` (for /proc/self/fd/N only). */
export function listXattrs(p: string, follow = false): Map<string, Buffer> {
  const cList = follow ? cListxattr : cLlistxattr;
  const cGet = follow ? cGetxattr : cLgetxattr;
  return readXattrs(
    (buf) => Number(cList(p, buf, buf.length)),
    (name, buf) => Number(cGet(p, name, buf, buf.length)),
    p,
  );
}

/**
 * The first buffer every xattr listing of this thread tries (most entries have no xattrs, and a tree walk
 * lists every entry's: a fresh zeroed buffer each time showed in a commit's profile, #13). Only read before
 * the next call: names are decoded out of it at once.
 */
const listBuf = Buffer.allocUnsafe(1024);

/** The list-then-get loop of every xattr reader; `list` and `get` return the syscall's result (errno set). */
function readXattrs(list: (buf: Buffer) => number, get: (name: string, buf: Buffer) => number, where: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let size = listBuf.length;
  let names: Buffer;
  for (;;) {
    const buf = size === listBuf.length ? listBuf : Buffer.alloc(size);
    const n = list(buf);
    if (n >= 0) {
      names = buf.subarray(0, n);
      break;
    }
    const errno = koffi.errno();
    if (errno === E.ENOTSUP) return out;
    if (errno !== E.ERANGE || size >= 1 << 20) throw new SyscallError('listxattr', errno, where);
    size *= 16;
  }
  if (names.length === 0) return out;
  for (const raw of names.toString('latin1').split('\0')) {
    if (raw === '') continue;
    const name = Buffer.from(raw, 'latin1').toString('utf8');
    let vsize = 256;
    for (;;) {
      const vbuf = Buffer.alloc(vsize);
      const n = get(name, vbuf);
      if (n >= 0) {
        out.set(name, vbuf.subarray(0, n));
        break;
      }
      const errno = koffi.errno();
      if (errno === E.ENODATA) break; // removed meanwhile
      if (errno !== E.ERANGE || vsize >= 1 << 20) throw new SyscallError('getxattr', errno, `${where} (${name})`);
      vsize *= 16;
    }
  }
  return out;
}
