/**
 * Where a filesystem puts the inodes of new directory trees (#11): the "top directory" hint of ext2/3/4
 * (`chattr +T`, FS_TOPDIR_FL). ext4 places a new directory near its parent (the Orlov allocator), and a
 * new file in its directory's flex group, in the lowest block group there that has a free inode. On a
 * filesystem without a journal, ext4 also skips every free inode deleted in the last minute (five, while
 * its inode table block is dirty: `recently_deleted` in fs/ext4/ialloc.c), rescanning them from the
 * group's start for each new inode. So a tree of 10,000 files made where another was just deleted costs
 * about ten times the kernel time of the same tree made elsewhere (measured on the test VM's ext4 root:
 * 2.4-3.1 s of system time against 0.21-0.33 s, see README "Images"). The layer store's stages are
 * unrelated trees, made and deleted all the time (imports, gc, a pull after an `image rm`): with the hint
 * on their parent, ext4 spreads each new stage to a flex group of its own with more free inodes and
 * fewer directories than average, instead of the one its parent and every earlier stage (and what was
 * deleted there) sit in. Nothing but placement changes: no data, no metadata of any stage, no order of
 * writes, no sync.
 */
import fs from 'node:fs';
import os from 'node:os';
import { SyscallError, ioctlBuf } from './libc.js';

/** _IOR('f', 1, long) and _IOW('f', 2, long): the inode flags (the kernel reads and writes an int). */
const FS_IOC_GETFLAGS = 0x80086601;
const FS_IOC_SETFLAGS = 0x40086602;
/** linux/fs.h: "top of directory hierarchies" (chattr's T). Not inherited by new directories. */
export const FS_TOPDIR_FL = 0x00020000;

const E = os.constants.errno;
/** What a filesystem without inode flags, or without this one, answers. */
const UNSUPPORTED = new Set([E.ENOTTY, E.EOPNOTSUPP, E.EINVAL, E.ENOSYS]);

/** The inode flags of directory `dir`, or undefined where the filesystem has none. */
export function dirFlags(dir: string): number | undefined {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  try {
    return getFlags(fd, dir);
  } finally {
    fs.closeSync(fd);
  }
}

function getFlags(fd: number, dir: string): number | undefined {
  const buf = Buffer.alloc(8);
  try {
    ioctlBuf(fd, FS_IOC_GETFLAGS, buf, dir);
  } catch (err) {
    if (err instanceof SyscallError && UNSUPPORTED.has(err.errno)) return undefined; // no inode flags here (tmpfs, overlay)
    throw err;
  }
  return buf.readInt32LE(0);
}

/**
 * Marks directory `dir` as the top of unrelated trees (see the module comment), so that each directory
 * made in it is placed apart from the others. A hint only: returns false, changing nothing, where the
 * filesystem has no such flag (anything but ext2/3/4) or refuses it.
 */
export function spreadSubdirs(dir: string): boolean {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  try {
    const flags = getFlags(fd, dir);
    if (flags === undefined) return false;
    if ((flags & FS_TOPDIR_FL) !== 0) return true;
    const buf = Buffer.alloc(8);
    buf.writeInt32LE(flags | FS_TOPDIR_FL, 0);
    try {
      ioctlBuf(fd, FS_IOC_SETFLAGS, buf, dir);
    } catch (err) {
      // A filesystem that has inode flags but not this one (xfs, btrfs) refuses it: placement stays the default.
      if (err instanceof SyscallError && (UNSUPPORTED.has(err.errno) || err.errno === E.EPERM)) return false;
      throw err;
    }
    return true;
  } finally {
    fs.closeSync(fd);
  }
}
