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
import path from 'node:path';
import { llistxattr, lgetxattr } from '../../sys/libc.js';
import { Coalescer } from './coalesce.js';
import { BLOCK, encodeHeader, padding, type TarHeader } from './format.js';

const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';

/** A tar header for `p` from its stat: numeric owners, whole-second mtime, no names or times beyond it. */
export function headerOf(p: string, st: fs.Stats, type: TarHeader['type'], extra: Partial<TarHeader> = {}): TarHeader {
  return {
    path: p,
    type,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    size: 0,
    mtime: Math.floor(st.mtimeMs / 1000),
    linkname: '',
    uname: '',
    gname: '',
    devmajor: 0,
    devminor: 0,
    xattrs: new Map(),
    ...extra,
  };
}

/** A path's xattrs, sorted, without overlayfs's private ones. */
export function xattrsOf(abs: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of llistxattr(abs).sort()) {
    if (name.startsWith(OVERLAY_XATTR_PREFIX)) continue;
    const value = lgetxattr(abs, name);
    if (value !== undefined) out.set(name, value);
  }
  return out;
}

/** True for an overlayfs whiteout: a character device 0/0. */
export function isWhiteout(st: fs.Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** True if the directory carries overlayfs's opaque marker. */
export function isOpaque(abs: string): boolean {
  return lgetxattr(abs, `${OVERLAY_XATTR_PREFIX}opaque`)?.toString() === 'y';
}

/** Options of writeTree. */
export interface WriteTreeOptions {
  /** 'overlay' (default): overlayfs whiteouts and opaque directories become OCI ones. 'plain': no translation. */
  readonly whiteouts?: 'overlay' | 'plain';
}

/** Streams `root` (an overlay upper directory, or any tree) as a tar. */
export async function* writeTree(root: string, opts: WriteTreeOptions = {}): AsyncGenerator<Buffer> {
  const overlay = (opts.whiteouts ?? 'overlay') === 'overlay';
  const seen = new Map<string, string>(); // dev:ino → first path, for hardlinks
  const out = new Coalescer();
  async function* walk(rel: string): AsyncGenerator<Buffer> {
    const abs = rel === '' ? root : path.join(root, rel);
    const names = fs.readdirSync(abs).sort();
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const childAbs = path.join(abs, name);
      const st = fs.lstatSync(childAbs);
      if (overlay && isWhiteout(st)) {
        const wh = rel === '' ? `.wh.${name}` : `${rel}/.wh.${name}`;
        out.push(encodeHeader(headerOf(wh, st, 'file', { mode: 0o644, uid: 0, gid: 0 })));
        continue;
      }
      if (st.isDirectory()) {
        out.push(encodeHeader(headerOf(`${childRel}/`, st, 'dir', { xattrs: xattrsOf(childAbs) })));
        if (overlay && isOpaque(childAbs)) out.push(encodeHeader(headerOf(`${childRel}/.wh..wh..opq`, st, 'file', { mode: 0o644, uid: 0, gid: 0 })));
        for (const b of out.take()) yield b;
        yield* walk(childRel);
        continue;
      }
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? seen.get(key) : undefined;
      if (first !== undefined) {
        out.push(encodeHeader(headerOf(childRel, st, 'hardlink', { linkname: first })));
        continue;
      }
      if (st.nlink > 1) seen.set(key, childRel);
      if (st.isSymbolicLink()) {
        out.push(encodeHeader(headerOf(childRel, st, 'symlink', { linkname: fs.readlinkSync(childAbs), xattrs: xattrsOf(childAbs) })));
      } else if (st.isFile()) {
        out.push(encodeHeader(headerOf(childRel, st, 'file', { size: st.size, xattrs: xattrsOf(childAbs) })));
        const fd = fs.openSync(childAbs, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          out.file(fd, st.size, childRel);
        } finally {
          fs.closeSync(fd);
        }
        out.zeros(padding(st.size));
        for (const b of out.take()) yield b;
      } else {
        const type = st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : 'fifo';
        const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
        const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
        out.push(encodeHeader(headerOf(childRel, st, type, { devmajor: major, devminor: minor, xattrs: xattrsOf(childAbs) })));
      }
    }
  }
  yield* walk('');
  out.zeros(BLOCK * 2);
  for (const b of out.flush()) yield b;
}
