/**
 * Writes a directory as a layer tar, deterministically (sorted names, numeric owners, no atime/ctime), so
 * committing the same changes twice yields the same DiffID. Overlayfs whiteouts become OCI whiteouts: a
 * 0/0 character device NAME → an empty `.wh.NAME`, an opaque directory → a `.wh..wh..opq` entry inside
 * it. Overlay-private xattrs (trusted.overlay.*) are never written. A second name of an inode becomes a
 * hardlink entry; a whiteout (nlink may be 2 on some kernels) is never mistaken for one.
 *
 * With `whiteouts: 'plain'` (volume archives, #9) the tree is a plain file tree: a 0/0 character device is
 * written as the device it is and no opaque markers are emitted, so that import (unpackLayer's plain mode)
 * gives back the same tree.
 */
import fs from 'node:fs';
import { errnoCode } from '../../errors.js';
import { Beneath, type EntryStat } from '../../sys/beneath.js';
import { keptXattrs, OPAQUE_XATTR, XATTRS } from '../../sys/file-meta.js';
import { lgetxattr } from '../../sys/libc.js';
import { Coalescer } from './coalesce.js';
import { BLOCK, blankHeader, encodeHeader, padding, type TarHeader } from './format.js';


/** A tar header for `p` from its stat: numeric owners, whole-second mtime, no names or times beyond it. */
function headerOf(p: string, st: EntryStat, type: TarHeader['type'], extra: Partial<TarHeader> = {}): TarHeader {
  // Whole seconds, floored (a negative time with a fraction rounds down).
  const mtime = Number(st.mtimeNs / 1_000_000_000n) - (st.mtimeNs < 0n && st.mtimeNs % 1_000_000_000n !== 0n ? 1 : 0);
  return blankHeader(p, type, { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime, ...extra });
}

/** True for an overlayfs whiteout: a character device 0/0. */
export function isWhiteout(st: { isCharacterDevice(): boolean; readonly rdev: number }): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** True if the directory carries overlayfs's opaque marker. */
export function isOpaque(abs: string): boolean {
  return lgetxattr(abs, OPAQUE_XATTR)?.toString() === 'y';
}

/** Options of writeTree. */
export interface WriteTreeOptions {
  /** 'overlay' (default): overlayfs whiteouts and opaque directories become OCI ones. 'plain': no translation. */
  readonly whiteouts?: 'overlay' | 'plain';
  /** Emit a `./` entry first, with the root's own owner, mode, xattrs and mtime (volume archives). */
  readonly rootEntry?: boolean;
}

/** An entry's xattrs as a tar carries them: sorted, without overlayfs's private ones (XATTRS.fileOnly). */
function tarXattrs(all: ReadonlyMap<string, Buffer>): Map<string, Buffer> {
  return keptXattrs(all, XATTRS.fileOnly);
}

/** Errors of an entry that changed or went away while we walked a tree in use: it is left out. */
const VANISHED = new Set(['ENOENT', 'ENOTDIR', 'ELOOP']);

/**
 * Streams `root` (an overlay upper directory, or any tree; a path or an already pinned tree) as a tar. The tree is read only through
 * directory fds beneath its pinned root (src/sys/beneath.ts, #9): a volume in use whose container swaps a
 * directory for a symlink to a host path meanwhile can never put that path's files into the tar, and
 * another filesystem mounted inside is not entered (the kernel refuses: EXDEV). An entry that vanishes or
 * changes type while we read is left out.
 */
export async function* writeTree(root: string | Beneath, opts: WriteTreeOptions = {}): AsyncGenerator<Buffer> {
  const overlay = (opts.whiteouts ?? 'overlay') === 'overlay';
  const seen = new Map<string, string>(); // dev:ino → first path, for hardlinks
  const out = new Coalescer();
  async function* walk(dir: Beneath, rel: string): AsyncGenerator<Buffer> {
    const names = dir.readdir().map((d) => d.name).sort();
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const st = dir.lstat(name);
      if (st === undefined) continue; // deleted meanwhile (a volume in use)
      if (overlay && isWhiteout(st)) {
        const wh = rel === '' ? `.wh.${name}` : `${rel}/.wh.${name}`;
        out.push(encodeHeader(headerOf(wh, st, 'file', { mode: 0o644, uid: 0, gid: 0 })));
        continue;
      }
      try {
        if (st.isDirectory()) {
          let sub: Beneath;
          try {
            sub = dir.sub(name);
          } catch (err) {
            // A filesystem mounted here is not ours to read: the directory, but none of its contents.
            if (errnoCode(err) !== 'EXDEV') throw err;
            out.push(encodeHeader(headerOf(`${childRel}/`, st, 'dir')));
            continue;
          }
          try {
            const all = sub.xattrs('');
            out.push(encodeHeader(headerOf(`${childRel}/`, st, 'dir', { xattrs: tarXattrs(all) })));
            if (overlay && all.get(OPAQUE_XATTR)?.toString() === 'y') {
              out.push(encodeHeader(headerOf(`${childRel}/.wh..wh..opq`, st, 'file', { mode: 0o644, uid: 0, gid: 0 })));
            }
            for (const b of out.take()) yield b;
            yield* walk(sub, childRel);
          } finally {
            sub.close();
          }
          continue;
        }
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? seen.get(key) : undefined;
        if (first !== undefined) {
          out.push(encodeHeader(headerOf(childRel, st, 'hardlink', { linkname: first })));
          continue;
        }
        if (st.isSymbolicLink()) {
          out.push(encodeHeader(headerOf(childRel, st, 'symlink', { linkname: dir.readlink(name), xattrs: tarXattrs(dir.xattrs(name)) })));
        } else if (st.isFile()) {
          const xattrs = tarXattrs(dir.xattrs(name));
          const fd = dir.openRead(name);
          try {
            out.push(encodeHeader(headerOf(childRel, st, 'file', { size: st.size, xattrs })));
            out.file(fd, st.size, childRel);
          } finally {
            fs.closeSync(fd);
          }
          out.zeros(padding(st.size));
          for (const b of out.take()) yield b;
        } else if (st.isSocket()) {
          continue; // a socket means something only to the process that bound it; tar has no type for it
        } else {
          const type = st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : 'fifo';
          const major = Math.floor(st.rdev / 0x100) & 0xfff;
          const minor = (st.rdev & 0xff) | (Math.floor(st.rdev / 0x1000) & 0xfff00);
          out.push(encodeHeader(headerOf(childRel, st, type, { devmajor: major, devminor: minor, xattrs: tarXattrs(dir.xattrs(name)) })));
        }
        if (st.nlink > 1) seen.set(key, childRel);
      } catch (err) {
        // Changed or deleted between the listing and now (a volume in use): what is no longer there is left
        // out. Only before its header is written: a body cut short still fails the archive (coalesce.ts).
        if (!VANISHED.has(errnoCode(err) ?? '')) throw err;
      }
    }
  }
  // A Beneath given by the caller (a pinned bind-style device) stays the caller's to close.
  const top = typeof root === 'string' ? Beneath.open(root) : root;
  try {
    if (opts.rootEntry === true) {
      const st = top.lstat('')!;
      out.push(encodeHeader(headerOf('./', st, 'dir', { xattrs: tarXattrs(top.xattrs('')) })));
    }
    yield* walk(top, '');
  } finally {
    if (top !== root) top.close();
  }
  out.zeros(BLOCK * 2);
  for (const b of out.flush()) yield b;
}
