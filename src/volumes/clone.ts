/**
 * Full, independent copies of a volume's tree (`-o from=`, `tsvol volume clone`, #6): owners, modes,
 * xattrs (security.capability and ACLs included), hardlinks, symlinks, devices, fifos, sparse files and
 * nanosecond atimes/mtimes. File data is shared by reflink (FICLONE) where the filesystem can (XFS, btrfs:
 * near-instant, no space until written); elsewhere copied in the kernel with copy_file_range, extent by
 * extent (SEEK_DATA/SEEK_HOLE), so holes stay holes.
 *
 * The source is a tree a container may be changing while we copy, and a bind-style source is a host
 * directory (#9 §3). So the source is read only through a `Beneath` on its pinned root (src/sys/beneath.ts):
 * one pinned directory fd per directory, every entry reached by its single name with *at calls that never
 * follow a symlink, each subdirectory opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_XDEV). A directory swapped for a symlink to /etc mid-copy is refused by the kernel (and skipped
 * like an entry that vanished), never followed. Symlinks inside the tree are copied as symlinks; the root of
 * the copy is always a new real directory. The destination is written only through a `Beneath` too.
 *
 * The copy runs synchronously on a worker thread (copyTreeInWorker): tens of thousands of small syscalls
 * cost far less there than as promises, and the server's event loop keeps serving meanwhile. The caller
 * copies into tmp/new-* and renames into place, so a crash leaves the whole clone or debris start-up deletes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { errnoCode } from '../errors.js';
import { Beneath, statFd, type EntryStat } from '../sys/beneath.js';
import { copyFileData, newCopyDataState } from '../sys/copy-data.js';
import { crashPoint } from '../sys/crash-point.js';
import { applyMetaFd, fdXattrs, metaOf, XATTRS } from '../sys/file-meta.js';

/** What a copy did. */
export interface CopyStats {
  files: number;
  bytes: number;
  /** Regular files whose data is shared by reflink. */
  reflinked: number;
  /** Sockets are not copied (a socket is only meaningful to the process that bound it). */
  skippedSockets: number;
}

/**
 * True for the errors a source entry gives when it changed between readdir and its use: gone (ENOENT), or
 * replaced by something of another type — a symlink where a directory or file was (ELOOP: the kernel
 * refused to follow it), a file where a directory was (ENOTDIR), a directory or device where a file was
 * (EINVAL from openRead), a non-symlink where a symlink was (EINVAL from readlink) — or a mount on a
 * directory (EXDEV: another filesystem inside the source is never copied).
 */
function changedUnderUs(err: unknown): boolean {
  const code = errnoCode(err);
  return code === 'ENOENT' || code === 'ELOOP' || code === 'ENOTDIR' || code === 'EINVAL' || code === 'EXDEV';
}

/** A source entry changed while we copied it (changedUnderUs): skipped, like one that vanished. */
class SourceChanged extends Error {}

/**
 * A clone is a plain copy of a volume: every xattr travels (XATTRS.verbatim), trusted.overlay.* included
 * (a volume may hold Docker-in-Docker's overlay2 uppers), with atime and mtime in nanoseconds.
 */
const CLONE_XATTRS = XATTRS.verbatim;

/** Pins a source root given as a path: it must be a real directory (a final symlink is refused). */
function openSource(src: string | number): Beneath {
  try {
    return typeof src === 'number' ? Beneath.fromFd(src, `fd ${src}`) : Beneath.open(src);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ELOOP' || code === 'ENOTDIR') {
      throw Object.assign(new Error(`clone source ${typeof src === 'number' ? `fd ${src}` : `"${src}"`} is not a directory (${code}): the root of a copy is always a real directory`), { code });
    }
    throw err;
  }
}

/**
 * Copies the directory tree `src` to `dst` (which must not exist; its parent must), synchronously. `src` is
 * a path to a real directory (a symlink is refused) or an fd already pinning one (a bind-style device
 * re-checked against TSVOL_BIND_ROOTS, #9): everything below it is read through that pinned directory only.
 * `dst` is always made as a new directory with the source root's owner, mode, xattrs and times. Entries
 * that vanish or change type while the copy runs (a volume in use) are skipped: the clone is what was
 * there at that moment.
 */
/** Where the crash point `clone:mid-copy` is: after this many entries are copied (crash tests). */
const CRASH_MID_COPY_AT = 1000;

export function copyTree(src: string | number, dst: string): CopyStats {
  const stats: CopyStats = { files: 0, bytes: 0, reflinked: 0, skippedSockets: 0 };
  const state = newCopyDataState();
  const links = new Map<bigint, string>(); // source inode → its first copy (relative to dst), for hardlinks
  let dstRoot: Beneath | undefined; // the copy's root, for hard links across directories
  let rootDev = 0; // the source's filesystem: entries on any other are mounts inside, never copied

  const source = openSource(src);
  try {
    const rootSt = statFd(source.fd); // before the walk: reading the directory changes its atime
    rootDev = rootSt.dev;
    const parent = Beneath.open(path.dirname(dst));
    try {
      const rootName = path.basename(dst);
      parent.mkdir(rootName, 0o700);
      dstRoot = parent.sub(rootName);
      try {
        copyDir(source, dstRoot, '');
        parent.applyMeta(rootName, metaOf(rootSt, source.xattrs(''), CLONE_XATTRS));
      } finally {
        dstRoot.close();
      }
      stats.files++;
    } finally {
      parent.close();
    }
  } finally {
    source.close();
  }
  return stats;

  /** Copies the entries of pinned directory `from` into pinned directory `to` (`rel` below dst's root). */
  function copyDir(from: Beneath, to: Beneath, rel: string): void {
    let names: fs.Dirent[];
    try {
      names = from.readdir();
    } catch (err) {
      // ENOENT: the directory went away after we pinned it.
      if (errnoCode(err) !== 'ENOENT') throw err;
      names = [];
    }
    for (const entry of names) {
      if (stats.files === CRASH_MID_COPY_AT) crashPoint('clone:mid-copy');
      const name = entry.name;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      try {
        // A regular file (by readdir's d_type) is opened straight away: openReadStat refuses anything else
        // and its fstat is what copyFile uses, so no lstat is needed first. If the name means something
        // else by now, it is looked at again below.
        if (entry.isFile()) {
          try {
            copyFile(from, to, name, childRel);
            continue;
          } catch (err) {
            if (!(err instanceof SourceChanged)) throw err;
          }
        }
        const st = from.lstat(name);
        if (st === undefined) continue; // vanished meanwhile
        // Never copy what another filesystem mounted inside the source holds.
        if (st.dev !== rootDev) continue;
        copyEntry(from, to, name, childRel, st);
      } catch (err) {
        if (err instanceof SourceChanged) continue; // see changedUnderUs
        throw err;
      }
    }
  }

  /** Reads from the source, turning "it changed under us" into SourceChanged (skipped by copyDir). */
  function read<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (changedUnderUs(err)) throw new SourceChanged();
      throw err;
    }
  }

  function copyEntry(from: Beneath, to: Beneath, name: string, childRel: string, st: EntryStat): void {
    if (st.isDirectory()) {
      // openat2 beneath `from`, no symlinks, no mounts: what we read is what we pinned.
      const sub = read(() => from.sub(name));
      try {
        const dirSt = statFd(sub.fd);
        const xattrs = read(() => sub.xattrs(''));
        to.mkdir(name, 0o700);
        const made = to.sub(name);
        try {
          copyDir(sub, made, childRel);
        } finally {
          made.close();
        }
        // After the entries: creating them changed the directory's times.
        to.applyMeta(name, metaOf(dirSt, xattrs, CLONE_XATTRS));
      } finally {
        sub.close();
      }
      stats.files++;
      return;
    }
    if (st.isSocket()) {
      stats.skippedSockets++;
      return;
    }
    if (st.isFile()) {
      copyFile(from, to, name, childRel);
      return;
    }
    if (linkToFirst(to, name, st)) return;
    if (st.isSymbolicLink()) {
      const linkTarget = read(() => from.readlink(name));
      const xattrs = read(() => from.xattrs(name));
      to.symlink(linkTarget, name);
      to.applyMeta(name, metaOf(st, xattrs, CLONE_XATTRS));
    } else {
      const type = st.isCharacterDevice() ? fs.constants.S_IFCHR : st.isBlockDevice() ? fs.constants.S_IFBLK : fs.constants.S_IFIFO;
      const xattrs = read(() => from.xattrs(name));
      to.mknod(name, type | (st.mode & 0o7777), st.rdev);
      to.applyMeta(name, metaOf(st, xattrs, CLONE_XATTRS));
    }
    if (st.nlink > 1) links.set(st.ino, childRel);
    stats.files++;
  }

  /** A hard link to the copy of an inode already copied under another name; false if there is none yet. */
  function linkToFirst(to: Beneath, name: string, st: EntryStat): boolean {
    const first = st.nlink > 1 ? links.get(st.ino) : undefined;
    if (first === undefined || dstRoot === undefined) return false;
    to.linkFrom(dstRoot, first, name);
    stats.files++;
    return true;
  }

  function copyFile(from: Beneath, to: Beneath, name: string, childRel: string): void {
    // O_NOFOLLOW, and refused unless a regular file; st is the inode we read, whatever the name means by now.
    const { fd: sfd, st } = read(() => from.openReadStat(name));
    try {
      if (st.dev !== rootDev) return; // a file of another filesystem mounted inside the source
      if (linkToFirst(to, name, st)) return;
      const dfd = to.createFile(name, 0o600);
      try {
        if (copyFileData(sfd, dfd, st, state)) stats.reflinked++;
        // Through the new file's own fd (sys/file-meta.ts: chown, chmod, xattrs, times, in that order).
        applyMetaFd(dfd, metaOf(st, fdXattrs(sfd), CLONE_XATTRS));
      } finally {
        fs.closeSync(dfd);
      }
      if (st.nlink > 1) links.set(st.ino, childRel);
      stats.bytes += st.size;
      stats.files++;
    } finally {
      fs.closeSync(sfd);
    }
  }
}

/**
 * copyTree on a worker thread. Loads the built .js, or under tsx (tests importing src/) registers tsx in
 * the worker first, as the commit worker does.
 */
export function copyTreeInWorker(src: string | number, dst: string): Promise<CopyStats> {
  const workerData = { src, dst };
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(
        `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./clone-worker.ts', import.meta.url).href)}); })`,
        { eval: true, workerData, trackUnmanagedFds: false },
      )
    : new Worker(new URL('./clone-worker.js', import.meta.url), { workerData, trackUnmanagedFds: false });
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
