/**
 * Applies a layer tar to a directory, safely and exactly, and records what byte-exact re-export needs.
 *
 * Safety: every entry path is normalized and must stay inside the target; each parent must be a real
 * directory created by this archive (never a symlink), so `link/../` tricks and symlinked parents cannot
 * escape; a hardlink's target must be an existing non-directory inside the target. The first violation
 * throws, and the caller deletes the half-made directory.
 *
 * OCI whiteouts become overlayfs whiteouts: `.wh.NAME` → a 0/0 character device NAME, `.wh..wh..opq` →
 * trusted.overlay.opaque=y on its directory (exact names only, as the OCI spec says).
 *
 * The split file (the tar-split idea): for each entry its raw header bytes, the path whose content is its
 * body, and its padding when not all zeros; then the archive's trailer. Export replays it with bodies read
 * from the layer directory, so the tar is never stored twice.
 */
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr, lsetxattr, mknod } from '../sys/libc.js';
import { Coalescer } from './tar/coalesce.js';
import type { TarReader } from './tar/reader.js';

/** Names of OCI whiteouts. */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';
/** The overlayfs xattr that makes a directory opaque. */
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** Split-file record kinds. */
const REC_ENTRY = 1;
const REC_TRAILER = 2;

/** What an unpack produced. */
export interface UnpackStats {
  /** Bytes of regular-file content. */
  size: number;
  /** Entries applied. */
  files: number;
}

/** Normalizes a tar path: relative, no `.`/`..`/empty components; throws on escapes. */
export function safeRelative(p: string): string {
  if (p.startsWith('/')) throw new Error(`entry "${p}" has an absolute path`);
  const parts: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new Error(`entry "${p}" climbs out with ".."`);
    parts.push(part);
  }
  return parts.join('/');
}

/** Appends split records to a file descriptor, in writes of up to 1 MiB (one per entry cost ~7 µs each). */
class SplitWriter {
  private pending: Buffer[] = [];
  private bytes = 0;
  constructor(private readonly fd: number) {}
  entry(raw: Buffer, bodyPath: string | undefined, size: number, pad: Buffer): void {
    const p = Buffer.from(bodyPath ?? '');
    const nonZeroPad = pad.some((b) => b !== 0) ? pad : Buffer.alloc(0);
    const head = Buffer.alloc(1 + 4 + 4 + 8 + 4);
    let o = head.writeUInt8(REC_ENTRY, 0);
    o = head.writeUInt32LE(raw.length, o);
    o = head.writeUInt32LE(p.length, o);
    o = head.writeDoubleLE(bodyPath === undefined ? -1 : size, o);
    head.writeUInt32LE(nonZeroPad.length, o);
    this.add(head, raw, p, nonZeroPad);
  }
  /** The archive's end; flushes everything. */
  trailer(bytes: Buffer): void {
    const head = Buffer.alloc(5);
    head.writeUInt8(REC_TRAILER, 0);
    head.writeUInt32LE(bytes.length, 1);
    this.add(head, bytes);
    this.flush();
  }
  private add(...parts: Buffer[]): void {
    for (const b of parts) {
      this.pending.push(b);
      this.bytes += b.length;
    }
    if (this.bytes >= 1 << 20) this.flush();
  }
  private flush(): void {
    const all = Buffer.concat(this.pending);
    for (let off = 0; off < all.length; ) off += fs.writeSync(this.fd, all, off);
    this.pending = [];
    this.bytes = 0;
  }
}

/** Unpacks every entry of `reader` into `root` (an empty directory), writing the split file to `splitFd`. */
export async function unpackLayer(reader: TarReader, root: string, splitFd: number): Promise<UnpackStats> {
  const split = new SplitWriter(splitFd);
  const made = new Set<string>(['']); // directories this archive made (or the root)
  const dirTimes: [string, number][] = [];
  const stats: UnpackStats = { size: 0, files: 0 };

  function ensureParents(rel: string): void {
    const parts = rel.split('/');
    let cur = '';
    for (const part of parts.slice(0, -1)) {
      cur = cur === '' ? part : `${cur}/${part}`;
      if (made.has(cur)) continue;
      const abs = path.join(root, cur);
      let st: fs.Stats | undefined;
      try {
        st = fs.lstatSync(abs);
      } catch {
        st = undefined;
      }
      if (st === undefined) fs.mkdirSync(abs, { mode: 0o755 });
      else if (!st.isDirectory()) throw new Error(`entry "${rel}" goes through "${cur}", which is not a directory (a symlink?)`);
      made.add(cur);
    }
  }

  for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
    const h = entry.header;
    const rel = safeRelative(h.path);
    if (rel === '') {
      // The archive's root directory entry ("./"): only its metadata applies.
      await entry.skip();
      split.entry(entry.raw, undefined, 0, entry.padding());
      continue;
    }
    ensureParents(rel);
    const abs = path.join(root, rel);
    const base = path.basename(rel);
    let bodyPath: string | undefined;
    if (base === OPAQUE_WHITEOUT) {
      lsetxattr(path.dirname(abs), OPAQUE_XATTR, Buffer.from('y'));
    } else if (base.startsWith(WHITEOUT_PREFIX)) {
      const target = path.join(path.dirname(abs), base.slice(WHITEOUT_PREFIX.length));
      fs.rmSync(target, { recursive: true, force: true });
      mknod(target, fs.constants.S_IFCHR | 0o000, 0);
    } else {
      const existing = fs.lstatSync(abs, { throwIfNoEntry: false });
      if (existing && !(existing.isDirectory() && h.type === 'dir')) fs.rmSync(abs, { recursive: true, force: true });
      switch (h.type) {
        case 'dir':
          if (!existing?.isDirectory()) fs.mkdirSync(abs, { mode: 0o700 });
          made.add(rel);
          dirTimes.push([abs, h.mtime]);
          break;
        case 'file': {
          const fd = fs.openSync(abs, 'wx', 0o600);
          try {
            for await (const chunk of entry.body()) fs.writeSync(fd, chunk);
            // Metadata through the open fd: no second path lookup per call.
            fs.fchownSync(fd, h.uid, h.gid);
            fs.fchmodSync(fd, h.mode & 0o7777);
            fs.futimesSync(fd, h.mtime, h.mtime);
          } finally {
            fs.closeSync(fd);
          }
          for (const [name, value] of h.xattrs) lsetxattr(abs, name, value);
          bodyPath = rel;
          stats.size += h.size;
          break;
        }
        case 'symlink':
          fs.symlinkSync(h.linkname, abs);
          break;
        case 'hardlink': {
          const target = safeRelative(h.linkname);
          const targetAbs = path.join(root, target);
          const st = fs.lstatSync(targetAbs, { throwIfNoEntry: false });
          if (!st || st.isDirectory()) throw new Error(`hardlink "${rel}" points at "${h.linkname}", which is not a file in this layer`);
          ensureParents(target);
          fs.linkSync(targetAbs, abs);
          break;
        }
        case 'char':
        case 'block':
        case 'fifo': {
          const kind = h.type === 'char' ? fs.constants.S_IFCHR : h.type === 'block' ? fs.constants.S_IFBLK : fs.constants.S_IFIFO;
          mknod(abs, kind | (h.mode & 0o7777), makedev(h.devmajor, h.devminor));
          break;
        }
      }
      if (h.type !== 'hardlink' && h.type !== 'file') {
        fs.lchownSync(abs, h.uid, h.gid);
        if (h.type !== 'symlink') fs.chmodSync(abs, h.mode & 0o7777);
        for (const [name, value] of h.xattrs) lsetxattr(abs, name, value);
        if (h.type !== 'dir') fs.lutimesSync(abs, h.mtime, h.mtime);
      }
    }
    await entry.skip();
    split.entry(entry.raw, bodyPath, h.size, entry.padding());
    stats.files++;
  }
  // Directory mtimes last: creating their children changed them.
  for (const [dir, mtime] of dirTimes.reverse()) fs.utimesSync(dir, mtime, mtime);
  split.trailer(reader.trailer);
  return stats;
}

/**
 * Records the split file for a tar made from a tree that will itself become the layer's directory
 * (adoptTree): the same records unpackLayer writes, with each file's body read back from `rel` in that
 * directory, and nothing unpacked. Whiteouts and opaque markers have no body there: the directory keeps
 * them in overlay's form.
 */
export async function splitOnly(reader: TarReader, splitFd: number): Promise<UnpackStats> {
  const split = new SplitWriter(splitFd);
  const stats: UnpackStats = { size: 0, files: 0 };
  for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
    const h = entry.header;
    const rel = safeRelative(h.path);
    const base = path.basename(rel);
    const hasBody = rel !== '' && h.type === 'file' && !base.startsWith(WHITEOUT_PREFIX);
    await entry.skip();
    split.entry(entry.raw, hasBody ? rel : undefined, h.size, entry.padding());
    if (hasBody) stats.size += h.size;
    if (rel !== '') stats.files++;
  }
  split.trailer(reader.trailer);
  return stats;
}

/**
 * Makes `dst` a copy of the tree `src` that shares every non-directory with it (hard links: no data is
 * copied) and has its own directories with the same owner, mode, xattrs and times. Overlay's private
 * xattrs are dropped, except the opaque marker, which the layer needs. `src` must not change afterwards:
 * its files are the copy's.
 */
export function linkTree(src: string, dst: string): void {
  const st = fs.lstatSync(src);
  fs.mkdirSync(dst, { mode: 0o700 });
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, entry.name);
    const d = path.join(dst, entry.name);
    if (entry.isDirectory()) linkTree(s, d);
    else fs.linkSync(s, d);
  }
  fs.lchownSync(dst, st.uid, st.gid);
  fs.chmodSync(dst, st.mode & 0o7777);
  for (const name of llistxattr(src)) {
    if (name.startsWith('trusted.overlay.') && name !== OPAQUE_XATTR) continue;
    const value = lgetxattr(src, name);
    if (value !== undefined) lsetxattr(dst, name, value);
  }
  fs.utimesSync(dst, st.atime, st.mtime);
}

/** Linux makedev. */
function makedev(major: number, minor: number): number {
  return ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) << 12);
}

/** Replays a split file: raw headers, bodies from `root`, padding, trailer; yields 4 MB buffers. */
export async function* replaySplit(splitFile: string, root: string): AsyncGenerator<Buffer> {
  const data = fs.readFileSync(splitFile);
  const out = new Coalescer();
  let o = 0;
  while (o < data.length) {
    const kind = data.readUInt8(o);
    o += 1;
    if (kind === REC_TRAILER) {
      const len = data.readUInt32LE(o);
      o += 4;
      out.push(data.subarray(o, o + len));
      o += len;
      continue;
    }
    const rawLen = data.readUInt32LE(o);
    const pathLen = data.readUInt32LE(o + 4);
    const size = data.readDoubleLE(o + 8);
    const padLen = data.readUInt32LE(o + 16);
    o += 20;
    out.push(data.subarray(o, o + rawLen));
    o += rawLen;
    const bodyPath = data.toString('utf8', o, o + pathLen);
    o += pathLen;
    const pad = data.subarray(o, o + padLen);
    o += padLen;
    if (size >= 0) {
      const fd = fs.openSync(path.join(root, bodyPath), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        out.file(fd, size, bodyPath);
      } finally {
        fs.closeSync(fd);
      }
      if (padLen > 0) out.push(pad);
      else out.zeros((512 - (size % 512)) % 512);
    }
    for (const b of out.take()) yield b;
  }
  for (const b of out.flush()) yield b;
}
