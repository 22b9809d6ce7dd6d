/**
 * Writes a directory as a layer tar, deterministically (sorted names, numeric owners, no atime/ctime), so
 * committing the same changes twice yields the same DiffID. Overlayfs whiteouts become OCI whiteouts: a
 * 0/0 character device NAME → an empty `.wh.NAME`, an opaque directory → a `.wh..wh..opq` entry inside
 * it. Overlay-private xattrs (trusted.overlay.*) are never written. A second name of an inode becomes a
 * hardlink entry; a whiteout (nlink may be 2 on some kernels) is never mistaken for one.
 *
 * A tree entry whose own name starts with `.wh.` (a container wrote `/etc/.wh.passwd`) is refused in the
 * overlay form: in a layer tar that name IS a whiteout (OCI image-spec layer.md), so the layer would delete
 * `/etc/passwd` wherever it is applied, by Docker as by tsvol's import. The format has no escape for it
 * (moby's pkg/archive writes such a file as it is, and its overlay converter reads it back as a deletion),
 * so no layer can carry it: the walk stops with InvalidArgument naming the path, before anything is stored.
 *
 * With `whiteouts: 'plain'` (volume archives, #9) the tree is a plain file tree: a 0/0 character device is
 * written as the device it is and no opaque markers are emitted, so that import (unpackLayer's plain mode)
 * gives back the same tree.
 *
 * With `whiteouts: 'none'` (a plain tree committed as a layer: `tsvol volume commit` of a named, sized or
 * bind-style volume) nothing in the tree is a whiteout, and nothing may become one: a `.wh.` name is
 * refused as in the overlay form, and so is a 0/0 character device. A layer's tar could carry that device,
 * but wherever the layer is unpacked for overlayfs (tsvol's store, Docker's overlay2) it lands on disk as
 * a 0/0 device, which overlayfs reads as a deletion: the file would vanish from every view of the layer.
 * No opaque markers are emitted either (overlayfs's xattrs on a plain tree mark nothing).
 */
import fs from 'node:fs';
import { InvalidArgumentError, errnoCode } from '../../errors.js';
import { Beneath, type EntryStat } from '../../sys/beneath.js';
import { fdXattrs, keptXattrs, OPAQUE_XATTR, XATTRS } from '../../sys/file-meta.js';
import { lgetxattr } from '../../sys/libc.js';
import { Coalescer } from './coalesce.js';
import { BLOCK, blankHeader, encodeHeader, padding, type TarHeader } from './format.js';


/** A tar header for `p` from its stat: numeric owners, whole-second mtime, no names or times beyond it. */
function headerOf(p: string, st: EntryStat, type: TarHeader['type'], extra: Partial<TarHeader> = {}): TarHeader {
  // Whole seconds, floored (a negative time with a fraction rounds down).
  const mtime = Number(st.mtimeNs / 1_000_000_000n) - (st.mtimeNs < 0n && st.mtimeNs % 1_000_000_000n !== 0n ? 1 : 0);
  return blankHeader(p, type, { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime, ...extra });
}

/** The prefix of OCI whiteout names (`.wh.NAME`, `.wh..wh..opq`). */
const WHITEOUT_PREFIX = '.wh.';

/**
 * The refusal of a 0/0 character device in a plain tree going into a layer (see the header); the copy
 * driver's commit refuses one a container made in its merged tree with it too (copy-driver.ts).
 */
export function whiteoutDevice(rel: string): InvalidArgumentError {
  return new InvalidArgumentError(
    `"/${rel}" cannot go into a layer: it is a character device 0/0, which overlayfs reads as a deleted file, so it would vanish wherever the layer is used; delete it, then commit again`,
  );
}

/** The refusal of a tree entry named like a whiteout (see the header). */
function whiteoutNamed(rel: string): InvalidArgumentError {
  const slash = rel.lastIndexOf('/');
  const base = rel.slice(slash + 1);
  const meant = base === '.wh..wh..opq' ? `make ${slash < 0 ? '/' : `/${rel.slice(0, slash)}`} opaque (hide everything below it)` : `delete /${rel.slice(0, slash + 1)}${base.slice(WHITEOUT_PREFIX.length)}`;
  return new InvalidArgumentError(
    `"/${rel}" cannot go into a layer: a name starting with ${WHITEOUT_PREFIX} is a whiteout in the layer tar format, which would ${meant} wherever the layer is applied; rename or delete it, then commit again`,
  );
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
  /**
   * 'overlay' (default): overlayfs whiteouts and opaque directories become OCI ones. 'plain': no translation
   * (volume archives). 'none': a plain tree going into a layer; what would read as a whiteout is refused.
   */
  readonly whiteouts?: 'overlay' | 'plain' | 'none';
  /** Emit a `./` entry first, with the root's own owner, mode, xattrs and mtime (volume archives). */
  readonly rootEntry?: boolean;
  /**
   * Told of every entry as it is written, in order: its header bytes exactly as they appear in the stream
   * (pax records included), and for a regular file with content the entry's path and size (its body is
   * that file's content, then zero padding). Then `onEnd` with the archive's trailer. A layer's split file
   * is recorded from these, straight from the walk (#13), instead of parsing the stream back.
   */
  readonly onEntry?: (raw: Buffer, body: { readonly path: string; readonly size: number } | undefined) => void;
  readonly onEnd?: (trailer: Buffer) => void;
}

/** An entry's xattrs as a tar carries them: sorted, without overlayfs's private ones (XATTRS.fileOnly). */
function tarXattrs(all: ReadonlyMap<string, Buffer>): Map<string, Buffer> {
  return keptXattrs(all, XATTRS.fileOnly);
}

/** Errors of an entry that changed or went away while we walked a tree in use: it is left out. */
const VANISHED = new Set(['ENOENT', 'ENOTDIR', 'ELOOP']);

/**
 * Streams `root` (an overlay upper directory, or any tree; a path or an already pinned tree) as a tar. The
 * tree is read only through directory fds beneath its pinned root (src/sys/beneath.ts, #9): a volume in use
 * whose container swaps a directory for a symlink to a host path meanwhile can never put that path's files
 * into the tar, and another filesystem mounted inside is not entered (the kernel refuses: EXDEV). An entry
 * that vanishes or changes type while we read is left out.
 */
export async function* writeTree(root: string | Beneath, opts: WriteTreeOptions = {}): AsyncGenerator<Buffer> {
  const out = new Coalescer();
  for (const _ of emitTree(root, opts, out)) for (const b of out.take()) yield b;
  for (const b of out.flush()) yield b;
}

/**
 * writeTree for a consumer that takes the tar synchronously (a hash): each piece goes to `consume` and is
 * reused once it returns, and nothing is yielded, so the walk makes no garbage per megabyte (#13). With
 * `buffers`, each piece is written into a buffer `buffers.provide()` gives (of `buffers.size` bytes: a
 * slot of a ring another thread hashes, hash-ring.ts) and is the consumer's once handed over. The same
 * bytes as writeTree, by the same walk.
 */
export function writeTreeTo(
  root: string | Beneath,
  opts: WriteTreeOptions,
  consume: (bytes: Buffer) => void,
  buffers?: { readonly size: number; provide(): Buffer },
): void {
  const out = new Coalescer(consume, buffers?.size ?? 1 << 20, buffers?.provide);
  for (const _ of emitTree(root, opts, out)) {
    // Nothing to hand over between entries: full buffers went to `consume` as they filled.
  }
  out.flush();
}

/**
 * The walk of writeTree: writes the tar into `out`, pausing (a yield) after each file's body, each
 * directory's header and each full buffer within a body, where a streaming caller hands over what is
 * ready: what the walk holds is a buffer or two, whatever the files' sizes.
 */
function* emitTree(root: string | Beneath, opts: WriteTreeOptions, out: Coalescer): Generator<void> {
  const mode = opts.whiteouts ?? 'overlay';
  const overlay = mode === 'overlay';
  /** Names and devices the layer format reads as whiteouts are refused ('none') or translated ('overlay'). */
  const layerNames = mode !== 'plain';
  const seen = new Map<string, string>(); // dev:ino → first path, for hardlinks
  const onEntry = opts.onEntry;
  /** Writes an entry's header (a body, if any, follows at once) and tells onEntry. */
  const header = (h: TarHeader, body?: { readonly path: string; readonly size: number }): void => {
    const raw = encodeHeader(h);
    out.push(raw);
    onEntry?.(raw, body);
  };
  function* walk(dir: Beneath, rel: string): Generator<void> {
    const entries = dir.readdir().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const name = entry.name;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      let st: EntryStat | undefined;
      let fd: number | undefined;
      try {
        if (entry.isFile()) {
          // Most entries are files: one lookup pins the entry, stats it and opens it if it still is one.
          const got = dir.openIfFile(name);
          st = got?.st;
          fd = got?.fd;
        } else st = dir.lstat(name);
      } catch (err) {
        if (VANISHED.has(errnoCode(err) ?? '')) continue; // replaced meanwhile by something we cannot reach
        throw err;
      }
      if (st === undefined) continue; // deleted meanwhile (a volume in use)
      try {
        yield* entryOf(dir, name, rel, childRel, st, fd);
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
    }
  }
  /** One entry of `dir` (`fd`: the file, opened by walk if it is one). */
  function* entryOf(dir: Beneath, name: string, rel: string, childRel: string, st: EntryStat, fd: number | undefined): Generator<void> {
    if (layerNames && name.startsWith(WHITEOUT_PREFIX)) throw whiteoutNamed(childRel);
    if (mode === 'none' && isWhiteout(st)) throw whiteoutDevice(childRel);
    if (overlay && isWhiteout(st)) {
      const wh = rel === '' ? `.wh.${name}` : `${rel}/.wh.${name}`;
      header(headerOf(wh, st, 'file', { mode: 0o644, uid: 0, gid: 0 }));
      return;
    }
    try {
      if (st.isDirectory()) {
        let sub: Beneath;
        try {
          sub = dir.sub(name);
        } catch (err) {
          // A filesystem mounted here is not ours to read: the directory, but none of its contents.
          if (errnoCode(err) !== 'EXDEV') throw err;
          header(headerOf(`${childRel}/`, st, 'dir'));
          return;
        }
        try {
          const all = sub.xattrs('');
          header(headerOf(`${childRel}/`, st, 'dir', { xattrs: tarXattrs(all) }));
          if (overlay && all.get(OPAQUE_XATTR)?.toString() === 'y') {
            header(headerOf(`${childRel}/.wh..wh..opq`, st, 'file', { mode: 0o644, uid: 0, gid: 0 }));
          }
          yield;
          yield* walk(sub, childRel);
        } finally {
          sub.close();
        }
        return;
      }
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? seen.get(key) : undefined;
      if (first !== undefined) {
        header(headerOf(childRel, st, 'hardlink', { linkname: first }));
        return;
      }
      if (st.isSymbolicLink()) {
        header(headerOf(childRel, st, 'symlink', { linkname: dir.readlink(name), xattrs: tarXattrs(dir.xattrs(name)) }));
      } else if (st.isFile()) {
        // The file itself (walk opened it, or its listing said otherwise and it became one meanwhile).
        const own = fd ?? dir.openRead(name);
        try {
          // Through the open fd: the very inode read below, without another lookup of its name.
          const xattrs = tarXattrs(fdXattrs(own));
          header(headerOf(childRel, st, 'file', { size: st.size, xattrs }), { path: childRel, size: st.size });
          yield* out.file(own, st.size, childRel); // a pause per full buffer: a huge file streams through
        } finally {
          if (own !== fd) fs.closeSync(own);
        }
        out.zeros(padding(st.size));
        yield;
      } else if (st.isSocket()) {
        return; // a socket means something only to the process that bound it; tar has no type for it
      } else {
        const type = st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : 'fifo';
        const major = Math.floor(st.rdev / 0x100) & 0xfff;
        const minor = (st.rdev & 0xff) | (Math.floor(st.rdev / 0x1000) & 0xfff00);
        header(headerOf(childRel, st, type, { devmajor: major, devminor: minor, xattrs: tarXattrs(dir.xattrs(name)) }));
      }
      if (st.nlink > 1) seen.set(key, childRel);
    } catch (err) {
      // Changed or deleted between the listing and now (a volume in use): what is no longer there is left
      // out. Only before its header is written: a body cut short still fails the archive (coalesce.ts).
      if (!VANISHED.has(errnoCode(err) ?? '')) throw err;
    }
  }
  // A Beneath given by the caller (a pinned bind-style device) stays the caller's to close.
  const top = typeof root === 'string' ? Beneath.open(root) : root;
  try {
    if (opts.rootEntry === true) {
      const st = top.lstat('')!;
      header(headerOf('./', st, 'dir', { xattrs: tarXattrs(top.xattrs('')) }));
    }
    yield* walk(top, '');
  } finally {
    if (top !== root) top.close();
  }
  const trailer = Buffer.alloc(BLOCK * 2);
  out.push(trailer);
  opts.onEnd?.(trailer);
}
