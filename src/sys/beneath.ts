/**
 * Paths below a root, resolved by the kernel (#9). Every write that tsvol makes inside a tree it builds from
 * outside input (layer and volume tars, clones of volumes that containers can change, the copy driver) goes
 * through a `Beneath`: the tree's root is pinned by a directory fd, a parent directory is opened with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), and the entry is
 * then made, linked, chowned, chmodded, xattr'd or timed by its single final name relative to that parent
 * fd (the *at calls), never following a final symlink. So no `..`, symlink, absolute path or rename race
 * can take an operation outside the root: the kernel refuses the lookup (EXDEV/ELOOP), whatever any cache
 * or string check believed (runc's filepath-securejoin/libpathrs, containerd's continuity). There is no
 * cache of "directories I made": each operation resolves its parent afresh (node-tar's CVE-2021-32803).
 *
 * Reading follows the same rule (`readdir`, `openRead`, `readlink`, `lstat`), so a clone of a volume that a
 * container is changing meanwhile reads only what is inside the volume.
 *
 * Metadata (owner, mode, xattrs, times) is given by sys/file-meta.ts, the one module for it, through the
 * parent directory this module pins (applyMeta) or the entry's own fd.
 */
import fs from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';
import { applyMetaAt, applyMetaFd, listXattrs, type EntryMeta } from './file-meta.js';
import { SyscallError, check, libc } from './libc.js';

const E = os.constants.errno;

// Open flags (asm-generic, the same on x86-64 and arm64 except where fs.constants has them).
const O_PATH = 0o10000000;
const O_CLOEXEC = 0o2000000;
const O_DIRECTORY = fs.constants.O_DIRECTORY;
const O_NOFOLLOW = fs.constants.O_NOFOLLOW;
const O_NONBLOCK = fs.constants.O_NONBLOCK;
// openat2 resolve flags (linux/openat2.h).
const RESOLVE_NO_XDEV = 0x01;
const RESOLVE_NO_MAGICLINKS = 0x02;
const RESOLVE_NO_SYMLINKS = 0x04;
const RESOLVE_BENEATH = 0x08;
const RESOLVE_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
// *at flags.
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_REMOVEDIR = 0x200;
const AT_EMPTY_PATH = 0x1000;
/** openat2 is syscall 437 on every architecture (the unified table, Linux 5.6+). */
const SYS_OPENAT2 = 437;

const cOpenat2 = libc.func('syscall', 'long', ['long', 'int', 'str', 'uint8_t *', 'size_t']);
const cOpenat = libc.func('int openat(int dirfd, const char *path, int flags, uint32_t mode)');
const cMkdirat = libc.func('int mkdirat(int dirfd, const char *path, uint32_t mode)');
const cSymlinkat = libc.func('int symlinkat(const char *target, int dirfd, const char *path)');
const cLinkat = libc.func('int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)');
const cMknodat = libc.func('int mknodat(int dirfd, const char *path, uint32_t mode, uint64_t dev)');
const cUnlinkat = libc.func('int unlinkat(int dirfd, const char *path, int flags)');
const cReadlinkat = libc.func('long readlinkat(int dirfd, const char *path, _Out_ uint8_t *buf, size_t size)');
const cRenameat = libc.func('int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)');
const cStatx = libc.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ uint8_t *buf)');

/** Linux makedev. */
export function makedev(major: number, minor: number): number {
  // Arithmetic, not shifts: JavaScript's bit operators are 32-bit signed, and a minor of 0x80000 or more
  // shifted by 12 would turn negative.
  return (major & 0xfff) * 0x100 + (minor & 0xff) + (minor & 0xfff00) * 0x1000;
}

const STATX_BASIC_STATS = 0x7ff;
const S_IFMT = 0o170000;

/**
 * What an entry is, decoded from a statx buffer (no final symlink followed; times in nanoseconds). A class:
 * its methods live on the prototype, and a tree walk makes one per entry.
 */
export class EntryStat {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  readonly size: number;
  readonly blocks: number;
  readonly ino: bigint;
  /** makedev(major, minor) of the filesystem holding the entry. */
  readonly dev: number;
  /** makedev(major, minor) for device nodes. */
  readonly rdev: number;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  constructor(buf: Buffer) {
    const ts = (off: number): bigint => buf.readBigInt64LE(off) * 1_000_000_000n + BigInt(buf.readUInt32LE(off + 8));
    this.mode = buf.readUInt16LE(28);
    this.uid = buf.readUInt32LE(20);
    this.gid = buf.readUInt32LE(24);
    this.nlink = buf.readUInt32LE(16);
    this.ino = buf.readBigUInt64LE(32);
    this.size = Number(buf.readBigUInt64LE(40));
    this.blocks = Number(buf.readBigUInt64LE(48));
    this.atimeNs = ts(64);
    this.mtimeNs = ts(112);
    this.rdev = makedev(buf.readUInt32LE(128), buf.readUInt32LE(132));
    this.dev = makedev(buf.readUInt32LE(136), buf.readUInt32LE(140));
  }
  isDirectory(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFDIR;
  }
  isFile(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFREG;
  }
  isSymbolicLink(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFLNK;
  }
  isCharacterDevice(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFCHR;
  }
  isBlockDevice(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFBLK;
  }
  isFIFO(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFIFO;
  }
  isSocket(): boolean {
    return (this.mode & S_IFMT) === fs.constants.S_IFSOCK;
  }
}

/**
 * The buffer every statx of this thread writes into: EntryStat copies what it needs out of it at once, and
 * JavaScript runs one call at a time per thread, so one will do (a tree walk stats every entry: a fresh
 * zeroed buffer each time was a tenth of a commit's walk, #13).
 */
const statxBuf = Buffer.allocUnsafe(256);

/** fstat-like statx of an fd itself (AT_EMPTY_PATH). */
export function statFd(fd: number): EntryStat {
  check(cStatx(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statxBuf), 'statx');
  return new EntryStat(statxBuf);
}

/** A relative path from an archive or a tree walk, split into names; throws on `..`, absolute paths, NUL. */
export function splitRelative(rel: string): string[] {
  if (rel.startsWith('/')) throw new Error(`"${rel}" is an absolute path`);
  if (rel.includes('\0')) throw new Error(`"${rel.replace(/\0/g, '\\0')}" contains a NUL byte`);
  const parts: string[] = [];
  for (const part of rel.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new Error(`"${rel}" climbs out with ".."`);
    parts.push(part);
  }
  return parts;
}

/**
 * A directory tree whose root is pinned by an fd; every path given to it is relative to that root and is
 * resolved by the kernel beneath it. Close it when done.
 */
export class Beneath {
  /** O_PATH fd of the root. */
  readonly fd: number;
  /** The root's path, for messages only: never used to reach anything. */
  readonly where: string;

  private constructor(fd: number, where: string) {
    this.fd = fd;
    this.where = where;
  }

  /** Pins the directory at `dir` (a final symlink is refused: the root must be a real directory). */
  static open(dir: string): Beneath {
    const fd = check(cOpenat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0), 'open', dir);
    return new Beneath(fd, dir);
  }

  /** Pins the directory `fd` refers to (an fd pinned and checked elsewhere, e.g. a bind-style device). */
  static fromFd(fd: number, where: string): Beneath {
    const own = check(cOpenat(fd, '.', O_PATH | O_DIRECTORY | O_CLOEXEC, 0), 'open', where);
    return new Beneath(own, where);
  }

  /** Runs `fn` with the tree at `dir`, closing it afterwards. */
  static with<T>(dir: string, fn: (root: Beneath) => T): T {
    const root = Beneath.open(dir);
    try {
      return fn(root);
    } finally {
      root.close();
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private describe(rel: string): string {
    return rel === '' ? this.where : `${this.where}/${rel}`;
  }

  /**
   * Opens directory `rel` below the root: O_PATH unless `flags` says otherwise. Symlinks, `..` and other
   * filesystems on the way are refused by the kernel (ELOOP, EXDEV): a clear error names the path.
   */
  openDirFd(rel: string, flags = O_PATH): number {
    const parts = splitRelative(rel);
    const how = Buffer.alloc(24);
    how.writeBigUInt64LE(BigInt(flags | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0);
    how.writeBigUInt64LE(BigInt(RESOLVE_STRICT), 16);
    const ret = Number(cOpenat2(SYS_OPENAT2, this.fd, parts.length === 0 ? '.' : parts.join('/'), how, 24));
    if (ret >= 0) return ret;
    const errno = koffi.errno();
    const where = this.describe(parts.join('/'));
    if (errno === E.ELOOP) throw new SyscallError('openat2', errno, `${where} (goes through a symlink)`);
    if (errno === E.EXDEV) throw new SyscallError('openat2', errno, `${where} (leaves ${this.where})`);
    if (errno === E.ENOTDIR) throw new SyscallError('openat2', errno, `${where} (goes through something that is not a directory)`);
    throw new SyscallError('openat2', errno, where);
  }

  /**
   * Runs `fn` with an O_PATH fd of `rel`'s parent directory and `rel`'s final name. With `create`, missing
   * parent directories are made (mode 0755 before the umask), one name at a time below the root.
   */
  inParent<T>(rel: string, fn: (dirfd: number, name: string) => T, create = false): T {
    const parts = splitRelative(rel);
    const name = parts.pop();
    if (name === undefined) throw new Error(`"${rel}" names the root of ${this.where} itself`);
    // A name directly below the root: the root's own pinned fd is the parent (no open, no close), which
    // makes a walk that holds one Beneath per directory cost one *at call per operation.
    if (parts.length === 0) return fn(this.fd, name);
    let dirfd: number;
    try {
      dirfd = this.openDirFd(parts.join('/'));
    } catch (err) {
      if (!create || !(err instanceof SyscallError) || err.code !== 'ENOENT') throw err;
      dirfd = this.makeDirs(parts);
    }
    try {
      return fn(dirfd, name);
    } finally {
      fs.closeSync(dirfd);
    }
  }

  /** Makes each missing directory of `parts`, one name at a time, each opened beneath the root. */
  private makeDirs(parts: string[]): number {
    let cur = check(cOpenat(this.fd, '.', O_PATH | O_DIRECTORY | O_CLOEXEC, 0), 'open', this.where);
    try {
      for (let i = 0; i < parts.length; i++) {
        const r = cMkdirat(cur, parts[i]!, 0o755);
        if (r < 0 && koffi.errno() !== E.EEXIST) check(r, 'mkdirat', this.describe(parts.slice(0, i + 1).join('/')));
        const next = this.openDirFd(parts.slice(0, i + 1).join('/'));
        fs.closeSync(cur);
        cur = next;
      }
      return cur;
    } catch (err) {
      fs.closeSync(cur);
      throw err;
    }
  }

  /** statx of `rel` without following a final symlink; undefined if it does not exist. */
  lstat(rel: string): EntryStat | undefined {
    const parts = splitRelative(rel);
    if (parts.length === 0) return statFd(this.fd);
    try {
      return this.inParent(rel, (dirfd, name) => {
        // A missing final name is the common answer (an unpacker asks before each create): no exception.
        if (Number(cStatx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statxBuf)) === 0) return new EntryStat(statxBuf);
        const errno = koffi.errno();
        if (errno === E.ENOENT) return undefined;
        throw new SyscallError('statx', errno, this.describe(rel));
      });
    } catch (err) {
      if (err instanceof SyscallError && err.code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** mkdir `rel`; parents are made with `parents`. */
  mkdir(rel: string, mode = 0o755, parents = false): void {
    this.inParent(rel, (dirfd, name) => check(cMkdirat(dirfd, name, mode), 'mkdirat', this.describe(rel)), parents);
  }

  /** Creates the regular file `rel` (it must not exist) and returns an fd open for writing. */
  createFile(rel: string, mode = 0o600, parents = false): number {
    return this.inParent(
      rel,
      (dirfd, name) => check(cOpenat(dirfd, name, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode), 'openat', this.describe(rel)),
      parents,
    );
  }

  /** Opens the regular file `rel` for reading (refusing a symlink or anything but a regular file). */
  openRead(rel: string): number {
    return this.openReadStat(rel).fd;
  }

  /**
   * openRead, with the statx of the inode opened (what is read, whatever the name means by now). The entry
   * is pinned with O_PATH first and opened for reading only once it is known to be a regular file: a
   * device node swapped in under the name is never opened (opening some devices acts: a watchdog arms).
   */
  openReadStat(rel: string): { fd: number; st: EntryStat } {
    const got = this.openIfFile(rel);
    if (got === undefined) throw new SyscallError('openat', E.ENOENT, this.describe(rel));
    if (got.fd === undefined) throw new SyscallError('openat', E.EINVAL, `${this.describe(rel)} (not a regular file)`);
    return { fd: got.fd, st: got.st };
  }

  /**
   * One lookup of `rel` for a tree walk: the statx of the entry (never following it) and, if it is a
   * regular file, an fd open for reading on that very inode (the caller closes it); undefined if there is
   * no such entry. Pinned with O_PATH first, as openReadStat: anything but a regular file is never opened
   * for I/O. Cheaper than lstat then openReadStat, which look the name up twice (#13).
   */
  openIfFile(rel: string): { st: EntryStat; fd?: number } | undefined {
    const pinned = this.inParent(rel, (dirfd, name) => {
      const fd = Number(cOpenat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0));
      if (fd >= 0) return fd;
      const errno = koffi.errno();
      if (errno === E.ENOENT) return undefined;
      throw new SyscallError('openat', errno, this.describe(rel));
    });
    if (pinned === undefined) return undefined;
    try {
      const st = statFd(pinned);
      if (!st.isFile()) return { st };
      // Reopening the pinned inode through its magic link: the same inode, now open for I/O.
      const fd = check(cOpenat(AT_FDCWD, `/proc/self/fd/${pinned}`, fs.constants.O_RDONLY | O_CLOEXEC, 0), 'open', this.describe(rel));
      return { st, fd };
    } finally {
      fs.closeSync(pinned);
    }
  }

  /** A subtree: the directory `rel` pinned as a new root. */
  sub(rel: string): Beneath {
    return new Beneath(this.openDirFd(rel), this.describe(splitRelative(rel).join('/')));
  }

  /** The names in directory `rel` (read through the pinned fd, never by path). */
  readdir(rel = ''): fs.Dirent[] {
    if (splitRelative(rel).length === 0) return fs.readdirSync(`/proc/self/fd/${this.fd}`, { withFileTypes: true });
    const fd = this.openDirFd(rel);
    try {
      return fs.readdirSync(`/proc/self/fd/${fd}`, { withFileTypes: true });
    } finally {
      fs.closeSync(fd);
    }
  }

  /** symlink `rel` → `target` (the target is stored as given; it is never followed by this module). */
  symlink(target: string, rel: string, parents = false): void {
    this.inParent(rel, (dirfd, name) => check(cSymlinkat(target, dirfd, name), 'symlinkat', this.describe(rel)), parents);
  }

  /** readlink of `rel`. */
  readlink(rel: string): string {
    return this.inParent(rel, (dirfd, name) => {
      const buf = Buffer.alloc(4096);
      const n = check(cReadlinkat(dirfd, name, buf, buf.length), 'readlinkat', this.describe(rel));
      return buf.toString('utf8', 0, n);
    });
  }

  /** A hard link `rel` to the existing non-directory `existing`, both below this root (never followed). */
  link(existing: string, rel: string, parents = false): void {
    const st = this.lstat(existing);
    if (st === undefined || st.isDirectory()) {
      throw new SyscallError('linkat', st === undefined ? E.ENOENT : E.EPERM, `${this.describe(existing)} (a hard link needs an existing file below the root)`);
    }
    this.inParent(existing, (odir, oname) =>
      this.inParent(rel, (ndir, nname) => check(cLinkat(odir, oname, ndir, nname, 0), 'linkat', this.describe(rel)), parents),
    );
  }

  /** A hard link `rel` in this tree to `existing` in tree `from` (same filesystem; never followed). */
  linkFrom(from: Beneath, existing: string, rel: string, parents = false): void {
    from.inParent(existing, (odir, oname) =>
      this.inParent(rel, (ndir, nname) => check(cLinkat(odir, oname, ndir, nname, 0), 'linkat', this.describe(rel)), parents),
    );
  }

  /** mknod `rel` (`mode` includes the file type: S_IFCHR, S_IFBLK, S_IFIFO). */
  mknod(rel: string, mode: number, dev: number, parents = false): void {
    this.inParent(rel, (dirfd, name) => check(cMknodat(dirfd, name, mode, dev), 'mknodat', this.describe(rel)), parents);
  }

  /** Renames `from` to `to`, both below this root (renameat: never follows either). */
  rename(from: string, to: string): void {
    this.inParent(from, (odir, oname) =>
      this.inParent(to, (ndir, nname) => check(cRenameat(odir, oname, ndir, nname), 'renameat', this.describe(to))),
    );
  }

  /**
   * Removes `rel` and, if it is a directory, everything below it, without following any symlink and
   * without crossing into another filesystem (a mount inside is an error, and stays). Missing is fine.
   */
  remove(rel: string): void {
    if (splitRelative(rel).length === 0) throw new Error(`refusing to remove the root of ${this.where}`);
    this.inParent(rel, (dirfd, name) => removeAt(dirfd, name, this.describe(rel)));
  }

  /**
   * Gives `rel` its owner, mode, xattrs and times (sys/file-meta.ts: one order, nanosecond times), through
   * its pinned parent; the root itself through its own fd. Nothing follows a final symlink.
   */
  applyMeta(rel: string, meta: EntryMeta): void {
    const parts = splitRelative(rel);
    if (parts.length === 0) {
      applyMetaFd(this.fd, meta);
      return;
    }
    this.inParent(rel, (dirfd, name) => applyMetaAt(dirfd, name, meta, this.describe(rel)));
  }

  /** The xattrs of `rel` (a final symlink's own), read through its pinned parent. */
  xattrs(rel: string): Map<string, Buffer> {
    const parts = splitRelative(rel);
    if (parts.length === 0) return listXattrs(`/proc/self/fd/${this.fd}`, true); // the magic link, followed: the root's own inode
    return this.inParent(rel, (dirfd, name) => listXattrs(`/proc/self/fd/${dirfd}/${name}`));
  }
}

function removeAt(dirfd: number, name: string, where: string): void {
  if (Number(cUnlinkat(dirfd, name, 0)) === 0) return;
  const errno = koffi.errno();
  if (errno === E.ENOENT) return; // already gone: the state we want
  if (errno !== E.EISDIR && errno !== E.EPERM) throw new SyscallError('unlinkat', errno, where);
  const how = Buffer.alloc(24);
  how.writeBigUInt64LE(BigInt(O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0);
  how.writeBigUInt64LE(BigInt(RESOLVE_STRICT), 16);
  const sub = check(cOpenat2(SYS_OPENAT2, dirfd, name, how, 24), 'openat2', where);
  try {
    for (const child of fs.readdirSync(`/proc/self/fd/${sub}`)) removeAt(sub, child, `${where}/${child}`);
  } finally {
    fs.closeSync(sub);
  }
  check(cUnlinkat(dirfd, name, AT_REMOVEDIR), 'unlinkat', where);
}
