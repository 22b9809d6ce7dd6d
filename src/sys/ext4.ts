/**
 * Growing a mounted ext4 filesystem (#12, volume expansion) without resize2fs: EXT4_IOC_RESIZE_FS, the
 * ioctl resize2fs itself uses for an online resize. The kernel grows the filesystem group by group in
 * journaled transactions, so a kill -9 or a power cut mid-resize leaves a filesystem the next mount's
 * journal replay makes consistent, at the old size, the new one, or in between. An offline resize2fs
 * rewrites metadata in place without a journal and needs a forced e2fsck first: a crash in the middle of
 * it can leave the filesystem it works on unmountable. So where this process may resize online it grows a
 * mounted image; where it may not, resize2fs runs on a copy of the image that replaces it by a rename
 * (src/volumes/size-limit.ts growImageOffline), never on the image itself.
 *
 * Also: an ext4 image's size from its superblock, read with one pread (no dumpe2fs), and whether this
 * process may resize online at all (the kernel asks for CAP_SYS_RESOURCE; the managed plugin's config does
 * not ask for it, see README).
 */
import fs from 'node:fs';
import { InternalError } from '../errors.js';
import { ioctlInAsync } from './libc.js';

/** _IOW('f', 16, __u64): grow the filesystem of the open file to the given block count. */
const EXT4_IOC_RESIZE_FS = 0x40086610;
/** linux/capability.h: the capability ext4_resize_begin checks. */
const CAP_SYS_RESOURCE = 24;
/** The primary superblock's offset, and the fields read (struct ext4_super_block). */
const SUPERBLOCK_OFFSET = 1024;
const S_BLOCKS_COUNT_LO = 0x04;
const S_LOG_BLOCK_SIZE = 0x18;
const S_MAGIC = 0x38;
const S_FEATURE_INCOMPAT = 0x60;
const S_BLOCKS_COUNT_HI = 0x150;
const EXT4_MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;

/** An ext4 filesystem's size: its block count and block size. */
export interface Ext4Size {
  readonly blocks: number;
  readonly blockSize: number;
}

/**
 * The size an ext4 superblock records, read at `fd` (an image file or the block device it is mounted
 * from: either way the same page cache the filesystem writes its superblock through). `what` names the
 * file for errors.
 */
export function readExt4Size(fd: number, what: string): Ext4Size {
  const sb = Buffer.alloc(1024);
  const n = fs.readSync(fd, sb, 0, sb.length, SUPERBLOCK_OFFSET);
  if (n < sb.length || sb.readUInt16LE(S_MAGIC) !== EXT4_MAGIC) throw new InternalError(`${what} holds no ext4 superblock`);
  const hi = (sb.readUInt32LE(S_FEATURE_INCOMPAT) & INCOMPAT_64BIT) !== 0 ? sb.readUInt32LE(S_BLOCKS_COUNT_HI) : 0;
  return { blocks: hi * 2 ** 32 + sb.readUInt32LE(S_BLOCKS_COUNT_LO), blockSize: 1024 * 2 ** sb.readUInt32LE(S_LOG_BLOCK_SIZE) };
}

/** readExt4Size of the image file at `image`. */
export function readImageSize(image: string): Ext4Size {
  const fd = fs.openSync(image, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    return readExt4Size(fd, image);
  } finally {
    fs.closeSync(fd);
  }
}

/** True if this process holds CAP_SYS_RESOURCE (CapEff in /proc/self/status), which an online resize needs. */
export function mayResizeOnline(): boolean {
  const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return line?.[1] !== undefined && (BigInt(`0x${line[1]}`) & (1n << BigInt(CAP_SYS_RESOURCE))) !== 0n;
}

/**
 * Grows the ext4 filesystem mounted at `mountRoot` to `blocks` blocks, online (see the header). The block
 * device under it must already be that large (sys/loop.ts refreshLoopCapacity). A count at or below the
 * current one changes nothing (the kernel answers at once for an equal one; tsvol never asks for less).
 * Runs on the thread pool: growing by many groups takes the kernel a while.
 */
export async function growMountedExt4(mountRoot: string, blocks: number): Promise<void> {
  const fd = fs.openSync(mountRoot, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  try {
    const arg = Buffer.alloc(8);
    arg.writeBigUInt64LE(BigInt(blocks));
    await ioctlInAsync(fd, EXT4_IOC_RESIZE_FS, arg, mountRoot);
  } finally {
    fs.closeSync(fd);
  }
}
