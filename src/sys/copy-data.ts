/**
 * Copies one regular file's data between two open fds, the cheapest way the filesystems allow: a reflink
 * (FICLONE: shared extents, near-instant, no space until written), else copy_file_range in the kernel,
 * else through a buffer (EXDEV between two filesystems on older kernels). Only extents with data are
 * copied (SEEK_DATA/SEEK_HOLE), so holes stay holes. Used by clones (volumes/clone.ts) and the copy layer
 * driver (layers/copy-driver.ts); both open the files through a `Beneath` (sys/beneath.ts).
 */
import fs from 'node:fs';
import { errnoCode } from '../errors.js';
import { copyFileRange, ioctlInt, lseek, SEEK_DATA, SEEK_HOLE } from './libc.js';

/** linux/fs.h FICLONE: _IOW(0x94, 9, int). */
const FICLONE = 0x40049409;
/** Largest single copy_file_range request. */
const CHUNK = 1 << 30;

/** What a run of copies learned: the methods that failed once are not tried again for the rest of it. */
export interface CopyDataState {
  reflink: boolean;
  copyFileRange: boolean;
  buf?: Buffer;
}

/** A fresh state: every method is worth trying. */
export function newCopyDataState(): CopyDataState {
  return { reflink: true, copyFileRange: true };
}

/**
 * Copies up to `len` bytes at `pos`: copy_file_range in the kernel, or, where it cannot (EXDEV between
 * two filesystems, e.g. from a volume's loop image), through a buffer.
 */
function copyRange(sfd: number, dfd: number, pos: number, len: number, state: CopyDataState): number {
  if (state.copyFileRange) {
    try {
      return copyFileRange(sfd, pos, dfd, pos, len);
    } catch (err) {
      if (!['EXDEV', 'EOPNOTSUPP', 'ENOSYS', 'EINVAL'].includes(errnoCode(err) ?? '')) throw err;
      state.copyFileRange = false;
    }
  }
  const buf = (state.buf ??= Buffer.allocUnsafe(1 << 20));
  const n = fs.readSync(sfd, buf, 0, Math.min(len, buf.length), pos);
  for (let w = 0; w < n; ) w += fs.writeSync(dfd, buf, w, n - w, pos + w);
  return n;
}

/**
 * Copies the data of the regular file `sfd` (of `st.size` bytes, `st.blocks` 512-byte blocks allocated)
 * into the empty file `dfd`; true if by reflink.
 */
export function copyFileData(sfd: number, dfd: number, st: { readonly size: number; readonly blocks: number }, state: CopyDataState): boolean {
  const size = st.size;
  if (size === 0) return false;
  if (state.reflink) {
    try {
      ioctlInt(dfd, FICLONE, sfd);
      return true;
    } catch (err) {
      // No reflinks on this filesystem (or across these two): stop trying for the rest of the run.
      if (!['EOPNOTSUPP', 'ENOTSUP', 'EXDEV', 'EINVAL', 'ENOTTY'].includes(errnoCode(err) ?? '')) throw err;
      state.reflink = false;
    }
  }
  const dense = st.blocks * 512 >= size;
  for (let off = 0; off < size; ) {
    const data = dense ? off : lseek(sfd, off, SEEK_DATA);
    if (data < 0 || data >= size) break; // only a hole is left
    const end = dense ? size : Math.min(size, lseek(sfd, data, SEEK_HOLE));
    for (let pos = data; pos < end; ) {
      const n = copyRange(sfd, dfd, pos, Math.min(CHUNK, end - pos), state);
      if (n === 0) break; // the source shrank under us: copy what is there
      pos += n;
    }
    off = end;
  }
  fs.ftruncateSync(dfd, size); // a trailing hole is a length, not an extent
  return false;
}
