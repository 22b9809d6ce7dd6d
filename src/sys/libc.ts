/**
 * In-process bindings to the few Linux syscalls Node lacks (mount, umount2, mknod, xattrs, syncfs, statx), through
 * koffi. Node has no mount(2); spawning mount(8) costs milliseconds and a process per call (#3). This file and
 * sys/beneath.ts (the *at calls for paths below a root, #9) are the only ones that touch koffi: everything
 * else calls the typed wrappers in sys/.
 */
import fs from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';

/** The C library, for the bindings here and in sys/beneath.ts (the only other file that declares syscalls). */
export const libc = koffi.load('libc.so.6');

const errnoNames = new Map<number, string>(
  Object.entries(os.constants.errno).map(([name, num]) => [num, name]),
);

/** A failed syscall, shaped like Node's own system errors (`code`, `errno`, `syscall`, `path`). */
export class SyscallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string | undefined;
  constructor(syscall: string, errno: number, path?: string) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${syscall}${path === undefined ? '' : ` "${path}"`}: ${code} (${errno})`);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
  }
}

const cMount = libc.func(
  'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)',
);
const cUmount2 = libc.func('int umount2(const char *target, int flags)');
const cMknod = libc.func('int mknod(const char *path, uint32_t mode, uint64_t dev)');
const cLsetxattr = libc.func(
  'int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)',
);
const cLgetxattr = libc.func('long lgetxattr(const char *path, const char *name, _Out_ void *value, size_t size)');
const cLlistxattr = libc.func('long llistxattr(const char *path, _Out_ void *list, size_t size)');
const cSyncfs = libc.func('int syncfs(int fd)');
const cFlock = libc.func('int flock(int fd, int op)');

/** A syscall's result, or its errno thrown as a SyscallError. */
export function check(ret: number | bigint, syscall: string, path?: string): number {
  const n = Number(ret);
  if (n < 0) throw new SyscallError(syscall, koffi.errno(), path);
  return n;
}

/** mount(2). `data` is the filesystem-specific option string (overlay's lowerdir=...). */
export function mount(
  source: string | null,
  target: string,
  fstype: string | null,
  flags: number,
  data: string | null,
): void {
  check(cMount(source, target, fstype, flags, data), 'mount', target);
}

/** umount2(2). */
export function umount2(target: string, flags: number): void {
  check(cUmount2(target, flags), 'umount2', target);
}

/** mknod(2); `dev` is makedev(major, minor). A char device 0/0 is an overlayfs whiteout. */
export function mknod(path: string, mode: number, dev: number): void {
  check(cMknod(path, mode, dev), 'mknod', path);
}

/** lsetxattr(2) with a binary value; does not follow a final symlink. */
export function lsetxattr(path: string, name: string, value: Buffer, flags = 0): void {
  check(cLsetxattr(path, name, value, value.length, flags), 'lsetxattr', path);
}

/** lgetxattr(2); returns undefined when the attribute is absent (ENODATA). */
export function lgetxattr(path: string, name: string): Buffer | undefined {
  let size = 256;
  for (;;) {
    const buf = Buffer.alloc(size);
    const n = Number(cLgetxattr(path, name, buf, buf.length));
    if (n >= 0) return buf.subarray(0, n);
    const errno = koffi.errno();
    if (errno === os.constants.errno.ENODATA) return undefined;
    if (errno !== os.constants.errno.ERANGE || size >= 1 << 20) throw new SyscallError('lgetxattr', errno, path);
    size *= 16;
  }
}

/** llistxattr(2): the attribute names on `path` (not following a final symlink). */
export function llistxattr(path: string): string[] {
  let size = 1024;
  for (;;) {
    const buf = Buffer.alloc(size);
    const n = Number(cLlistxattr(path, buf, buf.length));
    if (n >= 0) {
      return buf
        .subarray(0, n)
        .toString('latin1')
        .split('\0')
        .filter((s) => s !== '')
        .map((s) => Buffer.from(s, 'latin1').toString('utf8'));
    }
    const errno = koffi.errno();
    // ENOTSUP: the filesystem keeps no xattrs, so there are none to list.
    if (errno === os.constants.errno.ENOTSUP) return [];
    if (errno !== os.constants.errno.ERANGE || size >= 1 << 20) throw new SyscallError('llistxattr', errno, path);
    size *= 16;
  }
}

/** syncfs(2): flush the filesystem holding `fd`. */
export function syncfs(fd: number): void {
  check(cSyncfs(fd), 'syncfs');
}

/**
 * syncfs(2) on the libuv thread pool, so the event loop goes on while the kernel writes. True if it
 * succeeded; its errno is not carried back from a pool thread, and repeating it would not tell (a
 * writeback error is reported once per fd), so a failure is only false.
 */
export async function syncfsAsync(fd: number): Promise<boolean> {
  return (await callAsync(cSyncfs as never, [fd])) >= 0;
}

/** flock(2) operations. */
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/**
 * flock(2) with LOCK_NB added: never blocks the event loop. Returns true if the lock was taken, false if
 * another open file description holds it (EWOULDBLOCK); other failures throw.
 */
export function tryFlock(fd: number, op: number = LOCK_EX): boolean {
  if (Number(cFlock(fd, op | LOCK_NB)) === 0) return true;
  const errno = koffi.errno();
  if (errno === os.constants.errno.EWOULDBLOCK) return false;
  throw new SyscallError('flock', errno);
}

type AsyncCallback = (err: unknown, ret: number) => void;

function callAsync(fn: { async: (...args: unknown[]) => void }, args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    fn.async(...args, ((err, ret) => (err ? reject(err) : resolve(Number(ret)))) as AsyncCallback);
  });
}

/**
 * mount(2) on the libuv thread pool, so the event loop keeps serving while the kernel works. errno is not
 * carried back from a pool thread, so a failure is repeated synchronously to learn its errno: a mount that
 * failed once fails the same way again (and if it now succeeds, the mount is what we wanted anyway).
 */
export async function mountAsync(
  source: string | null,
  target: string,
  fstype: string | null,
  flags: number,
  data: string | null,
): Promise<void> {
  if ((await callAsync(cMount as never, [source, target, fstype, flags, data])) < 0) mount(source, target, fstype, flags, data);
}

/** umount2(2) on the thread pool; a failure is repeated synchronously for its errno (see mountAsync). */
export async function umount2Async(target: string, flags: number): Promise<void> {
  if ((await callAsync(cUmount2 as never, [target, flags])) < 0) umount2(target, flags);
}

const cStatx = libc.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ uint8_t *buf)');
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
/** stx_attributes bit: the path is the root of a mount (bind mounts of the same filesystem included). */
const STATX_ATTR_MOUNT_ROOT = 0x2000;

/** This thread's statx buffer for mountState: read at once, before the next call. */
const mountStatxBuf = Buffer.allocUnsafe(256);

/**
 * What `path` is (not following a final symlink): the root of a mount, anything else, or missing. One
 * statx(2), so the cost does not depend on how many mounts exist (reading /proc/self/mountinfo does); a
 * missing path is an answer, not an exception (Remove asks about a mountpoint that usually is not there:
 * building the error cost more than the syscall, #13).
 */
export function mountState(path: string): 'mount-root' | 'other' | 'missing' {
  if (Number(cStatx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, 0, mountStatxBuf)) < 0) {
    const errno = koffi.errno();
    if (errno === os.constants.errno.ENOENT) return 'missing';
    throw new SyscallError('statx', errno, path);
  }
  const attributes = mountStatxBuf.readBigUInt64LE(8); // stx_attributes
  const mask = mountStatxBuf.readBigUInt64LE(0x38); // stx_attributes_mask
  if ((mask & BigInt(STATX_ATTR_MOUNT_ROOT)) === 0n) {
    throw new SyscallError('statx', os.constants.errno.ENOTSUP, path);
  }
  return (attributes & BigInt(STATX_ATTR_MOUNT_ROOT)) !== 0n ? 'mount-root' : 'other';
}

/** True if `path` (not following a final symlink) is the root of a mount; a missing path throws ENOENT. */
export function isMountRoot(path: string): boolean {
  const state = mountState(path);
  if (state === 'missing') throw new SyscallError('statx', os.constants.errno.ENOENT, path);
  return state === 'mount-root';
}

// Issue #6 (volumes beyond the local driver): reflinks, sparse copies, exact times, project quotas.

const cIoctlPtr = libc.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)');
const cIoctlInt = libc.func('ioctl', 'int', ['int', 'unsigned long', 'long']);
const cIoctlIn = libc.func('ioctl', 'int', ['int', 'unsigned long', 'const uint8_t *']);
const cLseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const cCopyFileRange = libc.func(
  'intptr_t copy_file_range(int fdIn, _Inout_ int64_t *offIn, int fdOut, _Inout_ int64_t *offOut, size_t len, unsigned int flags)',
);
const cUtimensat = libc.func('int utimensat(int dirfd, const char *path, const uint8_t *times, int flags)');
const cSyscall = libc.func('long syscall(long number, ...)');

/** ioctl(2) whose argument is an integer (FICLONE takes the source fd); returns what the ioctl returns. */
export function ioctlInt(fd: number, request: number, arg: number, path?: string): number {
  return check(cIoctlInt(fd, request, arg), 'ioctl', path);
}

/** ioctl(2) whose argument is a struct, read and written in place in `buf`. */
export function ioctlBuf(fd: number, request: number, buf: Buffer, path?: string): void {
  check(cIoctlPtr(fd, request, buf), 'ioctl', path);
}

/**
 * ioctl(2) on the thread pool, whose argument is a struct the kernel only reads (an online resize takes a
 * while). A failure is repeated synchronously to learn its errno (see mountAsync): only for requests whose
 * repetition is harmless, such as a resize to the same size.
 */
export async function ioctlInAsync(fd: number, request: number, buf: Buffer, path?: string): Promise<void> {
  if ((await callAsync(cIoctlIn as never, [fd, request, buf])) < 0) check(cIoctlIn(fd, request, buf), 'ioctl', path);
}

/** lseek whence values for sparse files (SEEK_DATA/SEEK_HOLE, Linux). */
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** lseek(2); returns -1 instead of throwing on ENXIO (no data/hole past `offset`: the end of the file). */
export function lseek(fd: number, offset: number, whence: number): number {
  const n = Number(cLseek(fd, offset, whence));
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === os.constants.errno.ENXIO) return -1;
  throw new SyscallError('lseek', errno);
}

/** copy_file_range(2) from `offIn` to `offOut`; returns bytes copied (0 at end of input). */
export function copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number {
  return check(cCopyFileRange(fdIn, [offIn], fdOut, [offOut], len, 0), 'copy_file_range');
}

const AT_SYMLINK_NOFOLLOW_FLAG = 0x100;

/** utimensat(2) with nanosecond atime/mtime, never following a final symlink. */
export function lutimesNs(path: string, atimeNs: bigint, mtimeNs: bigint): void {
  const buf = Buffer.alloc(32);
  buf.writeBigInt64LE(atimeNs / 1_000_000_000n, 0);
  buf.writeBigInt64LE(atimeNs % 1_000_000_000n, 8);
  buf.writeBigInt64LE(mtimeNs / 1_000_000_000n, 16);
  buf.writeBigInt64LE(mtimeNs % 1_000_000_000n, 24);
  check(cUtimensat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW_FLAG), 'utimensat', path);
}

/** quotactl_fd(2) (Linux 5.14+, x86-64 syscall 443): a quota command on the filesystem holding `fd`. */
export function quotactlFd(fd: number, cmd: number, id: number, buf: Buffer): void {
  check(cSyscall(443, 'int', fd, 'uint', cmd, 'int', id, 'uint8_t *', buf), 'quotactl_fd');
}

/** mount_setattr(2)'s and open_tree(2)'s AT_RECURSIVE: the whole tree of mounts at the path. */
export const AT_RECURSIVE = 0x8000;
const AT_EMPTY_PATH = 0x1000;
const OPEN_TREE_CLONE = 1;
const OPEN_TREE_CLOEXEC = 0o2000000;
const MOVE_MOUNT_F_EMPTY_PATH = 0x4;

/** move_mount(2)'s MOVE_MOUNT_T_EMPTY_PATH: the target is the fd itself (an O_PATH fd of the directory). */
const MOVE_MOUNT_T_EMPTY_PATH = 0x40;

/** Where bindMountDetached attaches: a path (a final symlink is not followed), or the directory an fd pins. */
export type MountTarget = string | { readonly fd: number; readonly name: string };

/**
 * A bind mount made whole before anyone can see it (open_tree(2), mount_setattr(2), move_mount(2): Linux
 * 5.12+, syscalls 428, 442 and 429 on every architecture): a detached copy of the mount at `source` (its
 * submounts too when `recursive`) gets the per-mount attributes `attrSet` (MOUNT_ATTR_* bits) on every
 * mount of the copy, after clearing `attrClr` (an atime policy must clear MOUNT_ATTR__ATIME), and only
 * then is attached at `target` (a path, or the directory an fd pins). A mount set after it is attached
 * would not do: where `target` propagates (a managed plugin's propagatedMount, a Bidirectional kubelet
 * directory), the peers' copies are made at the attach, and later changes to this mount never reach
 * them. Attributes are only added: a flag the source mount had (nosuid) stays. On failure nothing is
 * attached (closing the fd of a detached copy unmounts it).
 */
export function bindMountDetached(source: string, target: MountTarget, recursive: boolean, attrSet: number, attrClr = 0): void {
  const fd = check(
    cSyscall(428, 'int', AT_FDCWD, 'const char *', source, 'uint', OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0)),
    'open_tree',
    source,
  );
  try {
    const attr = Buffer.alloc(32); // struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd }
    attr.writeBigUInt64LE(BigInt(attrSet), 0);
    attr.writeBigUInt64LE(BigInt(attrClr), 8);
    check(cSyscall(442, 'int', fd, 'const char *', '', 'uint', AT_EMPTY_PATH | AT_RECURSIVE, 'uint8_t *', attr, 'size_t', 32), 'mount_setattr', source);
    const [toFd, toPath, toFlags, name] = typeof target === 'string' ? [AT_FDCWD, target, 0, target] : [target.fd, '', MOVE_MOUNT_T_EMPTY_PATH, target.name];
    check(
      cSyscall(429, 'int', fd, 'const char *', '', 'int', toFd, 'const char *', toPath, 'uint', MOVE_MOUNT_F_EMPTY_PATH | toFlags),
      'move_mount',
      name,
    );
  } finally {
    fs.closeSync(fd);
  }
}
