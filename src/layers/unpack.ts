/**
 * Applies a layer tar (or a volume archive) to a directory, safely and exactly, and records what byte-exact
 * re-export needs.
 *
 * Safety (#9): every create, remove, link, mknod, symlink, chown, chmod, xattr and utimes goes through a
 * `Beneath` pinned on the target root (src/sys/beneath.ts): each entry's parent directory is opened by the
 * kernel with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | ...) and the entry is made by its final name
 * relative to that fd, never following it. No path string reaches the filesystem and nothing remembers
 * which directories this archive made (node-tar's CVE-2021-32803 was such a cache): a parent that a later
 * entry replaced by a symlink or a file is refused by the kernel (ELOOP/ENOTDIR), whatever came before.
 * (Consecutive entries of one directory share its pinned fd, dropped on any removal: see ParentDir.)
 * Entry paths are normalized first (absolute paths and `..` are refused). Parent directories that the
 * archive does not list are made (mode 0755, owned by root), as tar does; their metadata comes from a
 * later entry naming them, if any. A hardlink's target must be an existing non-directory below the root.
 * The first violation throws, and the caller deletes the half-made directory.
 *
 * Whiteouts (`whiteouts: 'overlay'`, layers): OCI whiteouts become overlayfs whiteouts: `.wh.NAME` → NAME
 * removed, then a 0/0 character device NAME; `.wh..wh..opq` → trusted.overlay.opaque=y on its directory
 * (exact names only, as the OCI spec says). With `'plain'` (volume archives: plain file trees) names are
 * just names: a regular file `.wh.x` stays one. In both modes the archive cannot set trusted.overlay.*
 * xattrs itself: overlayfs reads them (redirects, metacopy), and only the opaque marker may make them.
 *
 * The split file (the tar-split idea): for each entry its raw header bytes, the path whose content is its
 * body, and its padding when not all zeros; then the archive's trailer. tree-split.ts records the same
 * for a tree it walks. Export replays it with bodies read
 * from the layer directory, so the tar is never stored twice.
 *
 * Byte-exact or refused (#11): a layer is stored only if its export reproduces every byte the reader
 * consumed, so its DiffID. The reader hands back headers, padding and trailer raw; a body is reproduced
 * only from the file it was written to, as long as that file keeps those bytes. So, with a split file,
 * an entry whose body has no file to live in (a whiteout or opaque marker carrying data, a root entry
 * `./` read as a file with data) is refused, and so is any entry that would remove a file an earlier
 * entry of the same tar wrote its body to, or a directory holding one (the same path listed twice, a
 * whiteout of its own file, a directory later replaced): the BodyLedger below. Docker and containerd
 * apply both kinds and drop those bytes (moby's pkg/archive skips a whiteout's data; the last entry for a
 * path wins); refusing at import is what keeps every stored layer exportable. Empty bodies need no file
 * (replay writes nothing for them), so empty files may be replaced.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describeError } from '../errors.js';
import { Beneath, makedev, splitRelative } from '../sys/beneath.js';
import { applyMetaFd, createDefaults, dropXattrsFd, exactCreateMode, keptXattrs, metaOf, OPAQUE_XATTR, processUmask, XATTRS, type CreateDefaults, type EntryMeta } from '../sys/file-meta.js';
import { SyscallError } from '../sys/libc.js';
import { Coalescer } from './tar/coalesce.js';
import { mtimeNsOf, type TarHeader } from './tar/format.js';
import type { EntrySource } from './tar/reader.js';

/** Names of OCI whiteouts. */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';
/**
 * An archive's xattrs are file metadata only: overlayfs's private ones (trusted.overlay.*: redirect and
 * metacopy steer overlay's lookups) are never taken from it (#9); only a `.wh..wh..opq` makes the opaque one.
 */
const ARCHIVE_XATTRS = XATTRS.fileOnly;
/** A layer directory shared by links keeps overlay's opaque marker, which is part of its form. */
const LAYER_DIR_XATTRS = XATTRS.layerForm;

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

/**
 * How `.wh.` names are read: 'overlay' for layers (OCI whiteouts become overlayfs whiteouts), 'plain' for
 * volume archives (a plain file tree: every name is just a name, a 0/0 character device just a device).
 */
export type WhiteoutMode = 'overlay' | 'plain';

/** Options of unpackLayer. */
export interface UnpackOptions {
  /** Default 'overlay'. */
  readonly whiteouts?: WhiteoutMode;
}

/**
 * The bodies written so far by the tar being unpacked, for byte-exact export (see the module comment):
 * the files holding a recorded non-empty body, and every directory above one. Removing any of them would
 * lose bytes the split file points at, so it is refused. Marking stops at the first directory marked
 * already (its parents are marked too): each body costs O(1) amortized, and memory is one string per
 * file and directory of the layer, which the unpacker holds references to anyway (dirTimes).
 */
class BodyLedger {
  private readonly files = new Set<string>();
  private readonly dirs = new Set<string>();

  /** `rel` now holds the body of an entry: `size` bytes of it. */
  record(rel: string, size: number): void {
    if (size === 0) return;
    this.files.add(rel);
    for (let p = parentOf(rel); p !== '' && !this.dirs.has(p); p = parentOf(p)) this.dirs.add(p);
  }

  /** Throws unless removing `victim` (for entry `rel`) keeps every recorded body. */
  assertRemovable(victim: string, rel: string): void {
    const which = this.files.has(victim) ? `"${victim}", whose bytes` : this.dirs.has(victim) ? `directory "${victim}", which holds files whose bytes` : undefined;
    if (which === undefined) return;
    throw new Error(`entry "${rel}" replaces ${which} an earlier entry of this tar wrote; the layer's export could not reproduce them, so it is refused (a layer lists each path once)`);
  }
}

/** Normalizes a tar path: relative, no `.`/`..`/empty components; throws on escapes (splitRelative). */
export function safeRelative(p: string): string {
  return splitRelative(p).join('/');
}

/**
 * Appends split records to a file descriptor, in writes of up to 1 MiB (one per entry cost ~7 µs each).
 * unpackLayer writes them for a tar it reads; tree-split.ts for a tree it walks.
 */
export class SplitWriter {
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

/** The header's mtime in nanoseconds, exactly as the archive wrote it (tar/format.ts: mtimeNsOf). */
function nsOf(h: TarHeader, what: string): bigint {
  if (!Number.isFinite(h.mtime)) throw new Error(`${what} has an invalid mtime`);
  return mtimeNsOf(h);
}

/** A uid or gid from a header: an integer Linux can store (0xffffffff means "unchanged" to chown). */
function idOf(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 0 || n >= 0xffffffff) throw new Error(`${what} has an invalid owner id ${n}`);
  return n;
}

/**
 * The metadata an entry's header gives it (sys/file-meta.ts applies it): owner, mode, the xattrs
 * ARCHIVE_XATTRS keeps (trusted.overlay.* never: see the module comment) and, with `withTimes`, its mtime
 * in nanoseconds (atime = mtime: tar carries no atime). Throws on ids or times Linux cannot store; `what`
 * names the entry in that error.
 */
export function entryMeta(h: TarHeader, what: string, withTimes = true): EntryMeta {
  return {
    uid: idOf(h.uid, what),
    gid: idOf(h.gid, what),
    mode: h.mode & 0o7777,
    xattrs: keptXattrs(h.xattrs, ARCHIVE_XATTRS),
    ...(withTimes ? { mtimeNs: nsOf(h, what) } : {}),
  };
}

/** `rel`'s parent, '' for an entry at the root. */
function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

/**
 * For an error message: the first directory on the way to `rel` that is not one (a symlink, a file),
 * or undefined. Runs only when the kernel has refused a lookup.
 */
function blockerOn(tree: Beneath, rel: string): string | undefined {
  const parts = rel.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const prefix = parts.slice(0, i).join('/');
    let st;
    try {
      st = tree.lstat(prefix);
    } catch (err) {
      // Only explaining an error already being thrown: the caller reports the kernel's own answer.
      if (err instanceof SyscallError) return undefined;
      throw err;
    }
    if (st === undefined) return undefined;
    if (!st.isDirectory()) return prefix;
  }
  return undefined;
}

/** The error for entry `rel`: the kernel's refusal, explained when a parent is not a directory. */
function entryError(tree: Beneath, rel: string, paths: string[], err: unknown): Error {
  if (err instanceof SyscallError && (err.code === 'ELOOP' || err.code === 'ENOTDIR')) {
    for (const p of paths) {
      const blocker = blockerOn(tree, p);
      if (blocker !== undefined) return new Error(`entry "${rel}" goes through "${blocker}", which is not a directory (a symlink?)`, { cause: err });
    }
  }
  if (err instanceof SyscallError) return new Error(`entry "${rel}": ${describeError(err)}`, { cause: err });
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * The parent directory of the entry being unpacked, pinned by an fd and reused while consecutive entries
 * share it (tars list a directory's files together): each entry then costs its own *at calls only, not a
 * fresh openat2 of its parent. This is no "directories I made" cache: it holds an fd, not a path, so
 * nothing is looked up by a string it remembers; the fd was resolved beneath the root by the kernel and
 * pins that very directory. It is dropped on any removal, so a directory that a later entry removes or
 * replaces (by a symlink, say) never receives another entry: the next entry resolves its parent afresh,
 * and the kernel refuses a symlink or a file on the way.
 */
class ParentDir {
  private rel: string | undefined;
  private dir: Beneath | undefined;
  private dirDefaults: CreateDefaults | undefined;
  private rootDefaults: CreateDefaults | undefined;
  private readonly umask = processUmask();
  constructor(private readonly tree: Beneath) {}

  /**
   * What a file created in the directory get() pinned last (`rel`) is given unasked (sys/file-meta.ts),
   * read once per pin. It stays true while the pin lasts: only an entry for the directory itself changes
   * its mode or xattrs, and that entry pins the directory's parent, dropping this pin; the root has no
   * entry (unpackLayer skips "./").
   */
  defaults(rel: string): CreateDefaults {
    if (rel === '') return (this.rootDefaults ??= createDefaults(this.tree.fd, this.umask));
    if (this.rel !== rel || this.dir === undefined) throw new Error(`internal: defaults of "${rel}" asked while "${this.rel}" is pinned`);
    return (this.dirDefaults ??= createDefaults(this.dir.fd, this.umask));
  }

  /** Directory `rel` below the root, pinned; made (with its parents, mode 0755) if missing. */
  get(rel: string): Beneath {
    if (rel === '') return this.tree;
    if (this.dir !== undefined && this.rel === rel) return this.dir;
    this.drop();
    let dir: Beneath;
    try {
      dir = this.tree.sub(rel);
    } catch (err) {
      if (!(err instanceof SyscallError && err.code === 'ENOENT')) throw err;
      // Missing from the archive (tar makes such parents too): made one name at a time beneath the root.
      this.tree.mkdir(rel, 0o755, true);
      dir = this.tree.sub(rel);
    }
    this.rel = rel;
    this.dir = dir;
    return dir;
  }

  /** Closes and forgets the pinned directory: called after anything is removed. */
  drop(): void {
    this.dir?.close();
    this.dir = undefined;
    this.rel = undefined;
    this.dirDefaults = undefined;
  }
}

/**
 * Unpacks every entry of `reader` into `root` (an empty directory), writing the split file to `splitFd`.
 * `whiteouts` says whether `.wh.` names are overlay whiteouts (layers, the default) or plain names
 * (volume archives). With a split file, a tar whose export could not reproduce it is refused (the module
 * comment: byte-exact or refused); without one (`undefined`: a volume archive, never re-exported byte for
 * byte), the last entry for a path wins, as tar does.
 */
export async function unpackLayer(reader: EntrySource, root: string, splitFd: number | undefined, opts: UnpackOptions = {}): Promise<UnpackStats> {
  const overlay = (opts.whiteouts ?? 'overlay') === 'overlay';
  const split = splitFd === undefined ? undefined : new SplitWriter(splitFd);
  const ledger = splitFd === undefined ? undefined : new BodyLedger();
  const tree = Beneath.open(root);
  const parents = new ParentDir(tree);
  // Directory mtimes, applied last (creating their children changes them); the last entry for a path wins.
  const dirTimes = new Map<string, bigint>();
  const stats: UnpackStats = { size: 0, files: 0 };
  try {
    for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
      const h = entry.header;
      const rel = safeRelative(h.path);
      const base = path.posix.basename(rel);
      // Entries whose body bytes would have no file to be exported from: refused before anything is made.
      if (ledger !== undefined && entry.bodySize > 0) {
        if (rel === '') throw new Error(`entry "${h.path}" is the archive's root, read as a file with ${entry.bodySize} bytes of data; the layer's export could not reproduce them, so it is refused`);
        if (overlay && base.startsWith(WHITEOUT_PREFIX)) {
          throw new Error(`entry "${rel}" is a whiteout carrying ${entry.bodySize} bytes of data (OCI whiteouts are empty files); the layer's export could not reproduce them, so it is refused`);
        }
      }
      if (rel === '') {
        // The archive's root directory entry ("./"): only its metadata applies (importVolume does that).
        await entry.skip();
        split?.entry(entry.raw, undefined, 0, entry.padding());
        continue;
      }
      let bodyPath: string | undefined;
      const touched = [rel];
      try {
        if (overlay && base === OPAQUE_WHITEOUT) {
          // The marker's directory, made if missing, pinned by its fd: the xattr lands on exactly that inode.
          applyMetaFd(parents.get(parentOf(rel)).fd, { xattrs: [[OPAQUE_XATTR, Buffer.from('y')]] });
        } else if (overlay && base.startsWith(WHITEOUT_PREFIX)) {
          const name = base.slice(WHITEOUT_PREFIX.length);
          if (name === '' || name === '.' || name === '..') throw new Error(`entry "${rel}" is a whiteout of no name`);
          touched.push(parentOf(rel) === '' ? name : `${parentOf(rel)}/${name}`);
          const dir = parents.get(parentOf(rel));
          if (dir.lstat(name) !== undefined) {
            ledger?.assertRemovable(touched[1]!, rel);
            dir.remove(name);
            parents.drop();
          }
          parents.get(parentOf(rel)).mknod(name, fs.constants.S_IFCHR | 0o000, 0);
        } else {
          bodyPath = await applyEntry(tree, parents, rel, h, () => entry.body(), dirTimes, touched, ledger);
          if (bodyPath !== undefined) stats.size += h.size;
        }
      } catch (err) {
        throw entryError(tree, rel, touched, err);
      }
      await entry.skip();
      // Every body byte the reader consumed has a file to be exported from (checked above for the rest).
      if (bodyPath === undefined && entry.bodySize > 0 && ledger !== undefined) throw new Error(`entry "${rel}": its ${entry.bodySize} bytes of data were not kept`);
      if (bodyPath !== undefined) ledger?.record(bodyPath, entry.bodySize);
      split?.entry(entry.raw, bodyPath, entry.bodySize, entry.padding());
      stats.files++;
    }
    parents.drop();
    for (const [rel, mtimeNs] of [...dirTimes].reverse()) setDirTime(tree, rel, mtimeNs);
  } finally {
    parents.drop();
    tree.close();
  }
  split?.trailer(reader.trailer);
  return stats;
}

/**
 * Makes one entry (not a whiteout) at `rel` below `tree`, replacing what is there unless both are
 * directories. Returns the path whose content is the entry's body (regular files), for the split file.
 */
async function applyEntry(
  tree: Beneath,
  parents: ParentDir,
  rel: string,
  h: TarHeader,
  body: () => AsyncGenerator<Buffer>,
  dirTimes: Map<string, bigint>,
  touched: string[],
  ledger: BodyLedger | undefined,
): Promise<string | undefined> {
  const what = `entry "${rel}"`;
  // A hardlink's target is checked before anything at `rel` is removed: a refused entry changes nothing.
  let target: string | undefined;
  if (h.type === 'hardlink') {
    target = safeRelative(h.linkname);
    touched.push(target);
    const st = target === '' ? undefined : tree.lstat(target);
    if (st === undefined || st.isDirectory()) throw new Error(`hardlink "${rel}" points at "${h.linkname}", which is not a file in this layer`);
    if (target === rel) return undefined; // a hardlink to itself: it is there already
  }
  const name = path.posix.basename(rel);
  let dir = parents.get(parentOf(rel));
  if (h.type === 'file') {
    // Most entries are new files: created outright (O_EXCL, never following a name that is there), and
    // only when something is there already looked at and replaced below: one statx less per file (#11).
    // Created with their mode when the kernel gives exactly that, and left with the owner the kernel gave
    // when it is the header's: a chmod and a chown less per file for most of an image's (#11).
    const meta = entryMeta(h, what);
    const defaults = parents.defaults(parentOf(rel));
    const mode = exactCreateMode(meta.mode!, defaults);
    const fd = createIfAbsent(dir, name, mode ?? 0o600);
    if (fd !== undefined) {
      const owned = defaults.rootOwned && meta.uid === 0 && meta.gid === 0;
      const rest: EntryMeta = { ...(owned ? {} : { uid: meta.uid, gid: meta.gid }), ...(mode !== undefined ? {} : { mode: meta.mode }), xattrs: meta.xattrs, mtimeNs: meta.mtimeNs };
      return writeFile(fd, rest, body, rel);
    }
  }
  const existing = dir.lstat(name);
  if (existing !== undefined && !(existing.isDirectory() && h.type === 'dir')) {
    ledger?.assertRemovable(rel, rel);
    dir.remove(name);
    // `dir` itself stayed (only its child went), but nothing pinned survives a removal: resolved afresh.
    parents.drop();
    dir = parents.get(parentOf(rel));
  }
  switch (h.type) {
    case 'dir':
      if (existing === undefined || !existing.isDirectory()) dir.mkdir(name, 0o700);
      dir.applyMeta(name, entryMeta(h, what, false));
      dirTimes.set(rel, nsOf(h, what));
      return undefined;
    case 'file':
      return writeFile(dir.createFile(name, 0o600), entryMeta(h, what), body, rel);
    case 'symlink':
      dir.symlink(h.linkname, name);
      break;
    case 'hardlink':
      dir.linkFrom(tree, target!, name);
      return undefined; // a second name: the inode keeps its first entry's metadata
    case 'char':
    case 'block':
    case 'fifo': {
      const kind = h.type === 'char' ? fs.constants.S_IFCHR : h.type === 'block' ? fs.constants.S_IFBLK : fs.constants.S_IFIFO;
      dir.mknod(name, kind | (h.mode & 0o7777), makedev(h.devmajor, h.devminor));
      break;
    }
  }
  dir.applyMeta(name, entryMeta(h, what));
  return undefined;
}

/** A new regular file `name` in `dir`, open for writing; undefined if the name exists (of any kind). */
function createIfAbsent(dir: Beneath, name: string, mode: number): number | undefined {
  try {
    return dir.createFile(name, mode);
  } catch (err) {
    if (err instanceof SyscallError && err.code === 'EEXIST') return undefined; // replaced by applyEntry's slow path
    throw err;
  }
}

/** Writes a file entry's body into `fd` (a file just created), gives it `meta`, closes it; returns `rel`. */
async function writeFile(fd: number, meta: EntryMeta, body: () => AsyncGenerator<Buffer>, rel: string): Promise<string> {
  try {
    for await (const chunk of body()) for (let off = 0; off < chunk.length; ) off += fs.writeSync(fd, chunk, off);
    // Metadata through the open fd: the inode just written, no second lookup.
    applyMetaFd(fd, meta);
  } finally {
    fs.closeSync(fd);
  }
  return rel;
}

/**
 * Gives directory `rel` its mtime, resolved afresh beneath the root. A later entry may have replaced it
 * (by a file, a symlink, or a symlink on its way): then its time went with it, and nothing is done.
 */
function setDirTime(tree: Beneath, rel: string, mtimeNs: bigint): void {
  let st;
  try {
    st = tree.lstat(rel);
  } catch (err) {
    // ELOOP/ENOTDIR: a directory on its way was replaced by a later entry, and this one with it.
    if (err instanceof SyscallError && (err.code === 'ELOOP' || err.code === 'ENOTDIR')) return;
    throw err;
  }
  if (st?.isDirectory()) tree.applyMeta(rel, { mtimeNs });
}

/**
 * Makes the tree `dir` (an overlay upper directory, moved whole into the layer store) a layer directory in
 * overlay's form: every directory loses overlay's private xattrs but the opaque marker (XATTRS.layerForm),
 * keeping its times. Files stay as they are (the layer shares them with nothing else now). Walked through `Beneath`s pinned on the root (#9).
 */
export function toLayerForm(dir: string): void {
  const root = Beneath.open(dir);
  try {
    layerFormDir(root);
  } finally {
    root.close();
  }
}

function layerFormDir(tree: Beneath): void {
  const st = tree.lstat('');
  if (st === undefined) throw new Error(`${tree.where} vanished while being made a layer`);
  dropXattrsFd(tree.fd, st, XATTRS.layerForm, tree.where);
  for (const entry of tree.readdir()) {
    if (!entry.isDirectory()) continue;
    const sub = tree.sub(entry.name);
    try {
      layerFormDir(sub);
    } finally {
      sub.close();
    }
  }
}

/**
 * Replays a split file: raw headers, bodies from `root`, padding, trailer; yields 4 MB buffers. Bodies are
 * opened through a `Beneath` on `root` (#9): a recorded path whose parent a later entry of the same tar
 * replaced by a symlink is refused by the kernel (ELOOP) instead of reading the file it points at.
 */
export async function* replaySplit(splitFile: string, root: string): AsyncGenerator<Buffer> {
  const data = fs.readFileSync(splitFile);
  const tree = Beneath.open(root);
  try {
    yield* replayRecords(data, tree);
  } finally {
    tree.close();
  }
}

async function* replayRecords(data: Buffer, tree: Beneath): AsyncGenerator<Buffer> {
  const out = new Coalescer();
  // The directory of the last body, pinned: a tar lists a directory's files together, so most bodies are
  // opened by one *at call in it instead of a walk from the root (an fd pins the directory, not a path).
  let dir: { rel: string; at: Beneath } | undefined;
  const openBody = (bodyPath: string): number => {
    const slash = bodyPath.lastIndexOf('/');
    if (slash < 0) return tree.openRead(bodyPath);
    const parent = bodyPath.slice(0, slash);
    if (dir?.rel !== parent) {
      dir?.at.close();
      dir = undefined;
      dir = { rel: parent, at: tree.sub(parent) };
    }
    return dir.at.openRead(bodyPath.slice(slash + 1));
  };
  try {
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
      // An empty body (and its padding) is no bytes at all: no file is opened for it, which lets a later
      // entry of the tar replace an empty file (unpackLayer's BodyLedger).
      if (size > 0) {
        let fd: number;
        try {
          fd = openBody(bodyPath);
        } catch (err) {
          throw new Error(`the body of "${bodyPath}" is no longer a file below the layer (a later entry of its tar replaced it or a directory on its way): ${describeError(err)}`, { cause: err });
        }
        try {
          // Handed over at each full buffer: a body of any size streams through, never held whole.
          for (const _ of out.file(fd, size, bodyPath)) for (const b of out.take()) yield b;
        } finally {
          fs.closeSync(fd);
        }
        if (padLen > 0) out.push(pad);
        else out.zeros((512 - (size % 512)) % 512);
      }
      for (const b of out.take()) yield b;
    }
  } finally {
    dir?.at.close();
  }
  for (const b of out.flush()) yield b;
}
