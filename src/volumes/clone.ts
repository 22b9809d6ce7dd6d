/**
 * Full, independent copies of a volume's tree (`-o from=`, `tsvol volume clone`, #6): owners, modes,
 * xattrs (security.capability and ACLs included), hardlinks, symlinks, devices, fifos, sparse files and
 * nanosecond atimes/mtimes. File data is shared by reflink (FICLONE) where the filesystem can (XFS, btrfs:
 * near-instant, no space until written); elsewhere copied in the kernel with copy_file_range, extent by
 * extent (SEEK_DATA/SEEK_HOLE), so holes stay holes.
 *
 * The copy runs synchronously on a worker thread (copyTreeInWorker): tens of thousands of small syscalls
 * cost far less there than as promises, and the server's event loop keeps serving meanwhile. The caller
 * copies into tmp/new-* and renames into place, so a crash leaves the whole clone or debris start-up deletes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { errnoCode } from '../errors.js';
import { copyFileRange, ioctlInt, lgetxattr, llistxattr, lsetxattr, lseek, lutimesNs, mknod, SEEK_DATA, SEEK_HOLE } from '../sys/libc.js';

/** linux/fs.h FICLONE: _IOW(0x94, 9, int). */
const FICLONE = 0x40049409;
/** Largest single copy_file_range request. */
const CHUNK = 1 << 30;

/** What a copy did. */
export interface CopyStats {
  files: number;
  bytes: number;
  /** Regular files whose data is shared by reflink. */
  reflinked: number;
  /** Sockets are not copied (a socket is only meaningful to the process that bound it). */
  skippedSockets: number;
}

function copyXattrs(src: string, dst: string): void {
  for (const name of llistxattr(src)) {
    const value = lgetxattr(src, name);
    if (value !== undefined) lsetxattr(dst, name, value);
  }
}

/**
 * Copies up to `len` bytes at `pos`: copy_file_range in the kernel, or, where it cannot (EXDEV between
 * two filesystems, e.g. from a volume's loop image), through a buffer.
 */
function copyRange(sfd: number, dfd: number, pos: number, len: number, state: { copyFileRange: boolean; buf?: Buffer }): number {
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

/** Copies the data of one regular file from `sfd` to `dfd`; true if by reflink. */
function copyData(sfd: number, dfd: number, st: fs.BigIntStats, state: { reflink: boolean; copyFileRange: boolean; buf?: Buffer }): boolean {
  const size = Number(st.size);
  if (size === 0) return false;
  if (state.reflink) {
    try {
      ioctlInt(dfd, FICLONE, sfd);
      return true;
    } catch (err) {
      // No reflinks on this filesystem (or across these two): stop trying for the rest of the tree.
      if (!['EOPNOTSUPP', 'ENOTSUP', 'EXDEV', 'EINVAL', 'ENOTTY'].includes(errnoCode(err) ?? '')) throw err;
      state.reflink = false;
    }
  }
  const dense = Number(st.blocks) * 512 >= size;
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

/**
 * Copies the tree at `src` to `dst` (which must not exist), synchronously. Files that vanish while the
 * copy runs (a volume in use) are skipped: the clone is what was there at that moment.
 */
export function copyTree(src: string, dst: string): CopyStats {
  const stats: CopyStats = { files: 0, bytes: 0, reflinked: 0, skippedSockets: 0 };
  const state: { reflink: boolean; copyFileRange: boolean; buf?: Buffer } = { reflink: true, copyFileRange: true };
  const links = new Map<bigint, string>(); // source inode → first copy, for hardlinks
  const rootDev = fs.lstatSync(src, { bigint: true }).dev;

  function finish(s: string, d: string, st: fs.BigIntStats, symlink: boolean): void {
    fs.lchownSync(d, Number(st.uid), Number(st.gid)); // before chmod: chown clears set-id bits
    if (!symlink) fs.chmodSync(d, Number(st.mode) & 0o7777);
    copyXattrs(s, d); // after chown, which drops security.capability
    lutimesNs(d, st.atimeNs, st.mtimeNs);
  }

  function copyEntry(s: string, d: string, st: fs.BigIntStats): void {
    if (st.isDirectory()) {
      fs.mkdirSync(d, { mode: 0o700 });
      let names: string[];
      try {
        names = fs.readdirSync(s);
      } catch (err) {
        // ENOENT: the directory went away after we saw it.
        if (errnoCode(err) !== 'ENOENT') throw err;
        names = [];
      }
      for (const name of names) {
        const cs = path.join(s, name);
        const cst = fs.lstatSync(cs, { bigint: true, throwIfNoEntry: false });
        if (cst === undefined) continue; // vanished meanwhile
        // Never copy what another filesystem mounted inside the source holds.
        if (cst.dev !== rootDev) continue;
        copyEntry(cs, path.join(d, name), cst);
      }
      finish(s, d, st, false);
      stats.files++;
      return;
    }
    if (st.nlink > 1n) {
      const first = links.get(st.ino);
      if (first !== undefined) {
        fs.linkSync(first, d);
        stats.files++;
        return;
      }
      links.set(st.ino, d);
    }
    if (st.isFile()) {
      let sfd: number;
      try {
        sfd = fs.openSync(s, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return; // vanished meanwhile
        throw err;
      }
      try {
        const dfd = fs.openSync(d, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
        try {
          if (copyData(sfd, dfd, st, state)) stats.reflinked++;
        } finally {
          fs.closeSync(dfd);
        }
      } finally {
        fs.closeSync(sfd);
      }
      stats.bytes += Number(st.size);
    } else if (st.isSymbolicLink()) {
      fs.symlinkSync(fs.readlinkSync(s), d);
    } else if (st.isSocket()) {
      stats.skippedSockets++;
      return;
    } else {
      const type = st.isCharacterDevice() ? fs.constants.S_IFCHR : st.isBlockDevice() ? fs.constants.S_IFBLK : fs.constants.S_IFIFO;
      mknod(d, type | (Number(st.mode) & 0o7777), Number(st.rdev));
    }
    finish(s, d, st, st.isSymbolicLink());
    stats.files++;
  }

  copyEntry(src, dst, fs.lstatSync(src, { bigint: true }));
  return stats;
}

/**
 * copyTree on a worker thread. Loads the built .js, or under tsx (tests importing src/) registers tsx in
 * the worker first, as the commit worker does.
 */
export function copyTreeInWorker(src: string, dst: string): Promise<CopyStats> {
  const workerData = { src, dst };
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(
        `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./clone-worker.ts', import.meta.url).href)}); })`,
        { eval: true, workerData },
      )
    : new Worker(new URL('./clone-worker.js', import.meta.url), { workerData });
  return new Promise((resolve, reject) => {
    let settled = false;
    worker.once('message', (msg: { ok: true; stats: CopyStats } | { ok: false; message: string; code?: string }) => {
      settled = true;
      if (msg.ok) resolve(msg.stats);
      else reject(Object.assign(new Error(msg.message), { code: msg.code }));
    });
    worker.once('error', (err) => {
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`copy worker exited with code ${code}`));
    });
  });
}
