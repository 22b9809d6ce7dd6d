/**
 * The copy driver: container layers without overlayfs (like Docker's vfs), for filesystems where the
 * overlay probe fails, or when TSVOL_LAYER_DRIVER=copy. A container's merged directory is a full copy of
 * its chain (reflinked where the filesystem can); diff compares it with the chain's view; commit writes
 * the changes in overlay's upper-directory form and reuses the same tar writer, so both drivers produce
 * the same layers. A 0/0 character device made in merged (overlayfs refuses to make one, EPERM; a plain
 * directory does not) cannot be committed: in that form it is a whiteout, so commit refuses it by path.
 *
 * Layer directories hold what tars from anywhere said, and a container changes its merged directory
 * while it runs, so every read from a layer or from merged and every write into merged or upper goes
 * through a `Beneath` (src/sys/beneath.ts, #9): each tree pinned by a directory fd, each name resolved by
 * the kernel below it without following any symlink, each entry made, chowned, chmodded, xattr'd and
 * timed by its final name. A symlink in a layer or in merged is copied or compared as a symlink, never
 * followed out of its tree.
 */
import fs from 'node:fs';
import { errnoCode } from '../errors.js';
import { Beneath, type EntryStat } from '../sys/beneath.js';
import { copyFileData, newCopyDataState, type CopyDataState } from '../sys/copy-data.js';
import { applyMetaFd, fdXattrs, metaOf, OPAQUE_XATTR, XATTRS } from '../sys/file-meta.js';
import { isWhiteout, whiteoutDevice } from './tar/writer.js';

/**
 * overlayfs's own xattrs are markers of a layer's form (whiteouts and opaque directories are read as such
 * below), never metadata of the files: entries carry the rest (XATTRS.fileOnly), times in nanoseconds.
 */
const FILE_XATTRS = XATTRS.fileOnly;

/** A path visible in a chain: the layer tree that provides it, and its stat. */
interface LowerEntry {
  readonly layer: Beneath;
  readonly st: EntryStat;
}

/** True if xattrs `x` (of a directory) carry overlayfs's opaque marker. */
function isOpaque(x: ReadonlyMap<string, Buffer>): boolean {
  return x.get(OPAQUE_XATTR)?.toString() === 'y';
}

/** Runs `fn` with each of `dirs` pinned as a Beneath, closing them all afterwards. */
function withTrees<T>(dirs: readonly string[], fn: (trees: Beneath[]) => T): T {
  const trees: Beneath[] = [];
  try {
    for (const dir of dirs) trees.push(Beneath.open(dir));
    return fn(trees);
  } finally {
    for (const tree of trees) tree.close();
  }
}

/** Runs `fn` with directory `rel` of `tree` pinned as its own Beneath. */
function inSub<T>(tree: Beneath, rel: string, fn: (sub: Beneath) => T): T {
  const sub = tree.sub(rel);
  try {
    return fn(sub);
  } finally {
    sub.close();
  }
}

/**
 * Copies the non-directory `fromRel` of `from` (stat `st`) to the new entry `toRel` of `to`, with its
 * owner, mode, xattrs and times (regular files reflinked when possible); `parents` makes missing parents.
 */
function copyEntry(from: Beneath, fromRel: string, to: Beneath, toRel: string, st: EntryStat, state: CopyDataState, parents = false): void {
  if (st.isFile()) {
    const { fd: sfd, st: fst } = from.openReadStat(fromRel);
    try {
      const dfd = to.createFile(toRel, 0o600, parents);
      try {
        copyFileData(sfd, dfd, fst, state);
        applyMetaFd(dfd, metaOf(fst, fdXattrs(sfd), FILE_XATTRS));
      } finally {
        fs.closeSync(dfd);
      }
    } finally {
      fs.closeSync(sfd);
    }
    return;
  }
  const meta = metaOf(st, from.xattrs(fromRel), FILE_XATTRS);
  if (st.isSymbolicLink()) to.symlink(from.readlink(fromRel), toRel, parents);
  else to.mknod(toRel, st.mode, st.rdev, parents);
  to.applyMeta(toRel, meta);
}

/** Applies one layer directory (overlay form: whiteout devices, opaque dirs) onto `merged`. */
function applyLayer(layer: Beneath, merged: Beneath, state: CopyDataState): void {
  for (const name of layer.readdir().map((e) => e.name).sort()) {
    const st = layer.lstat(name);
    if (st === undefined) throw new Error(`layer ${layer.where}: "${name}" vanished (layers never change)`);
    const existing = merged.lstat(name);
    if (isWhiteout(st)) {
      if (existing) merged.remove(name);
      continue;
    }
    if (st.isDirectory()) {
      inSub(layer, name, (sub) => {
        const xattrs = sub.xattrs('');
        if (existing && (!existing.isDirectory() || isOpaque(xattrs))) merged.remove(name);
        if (!merged.lstat(name)) merged.mkdir(name);
        inSub(merged, name, (into) => applyLayer(sub, into, state));
        // After the entries: making them changed the directory's times.
        merged.applyMeta(name, metaOf(st, xattrs, FILE_XATTRS));
      });
      continue;
    }
    if (existing) merged.remove(name);
    copyEntry(layer, name, merged, name, st, state);
  }
}

/** Materializes a chain (top first, as LayerStore.history gives it) into the empty directory `merged`. */
export function materialize(lowerDirsTopFirst: readonly string[], merged: string): void {
  const state = newCopyDataState();
  withTrees([merged, ...[...lowerDirsTopFirst].reverse()], ([into, ...bottomFirst]) => {
    for (const layer of bottomFirst) applyLayer(layer, into!, state);
  });
}

/** Every path visible through a chain (its layers pinned, bottom first), with the layer that provides it. */
function lowerView(bottomFirst: readonly Beneath[]): Map<string, LowerEntry> {
  const view = new Map<string, LowerEntry>();
  // Drops what a lower layer had below `r`. Only a directory there can have entries below it, so the
  // scan of the view runs only then (a whiteout of a directory, a directory replaced or made opaque),
  // not for every file.
  const dropBelow = (r: string): void => {
    if (!view.get(r)?.st.isDirectory()) return;
    for (const k of [...view.keys()]) if (k.startsWith(`${r}/`)) view.delete(k);
  };
  const visit = (top: Beneath, dir: Beneath, rel: string): void => {
    for (const { name } of dir.readdir()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = dir.lstat(name);
      if (st === undefined) throw new Error(`layer ${top.where}: "${r}" vanished (layers never change)`);
      if (isWhiteout(st)) {
        dropBelow(r);
        view.delete(r);
        continue;
      }
      if (!st.isDirectory()) {
        dropBelow(r);
        view.set(r, { layer: top, st });
        continue;
      }
      inSub(dir, name, (sub) => {
        if (isOpaque(sub.xattrs(''))) dropBelow(r);
        view.set(r, { layer: top, st });
        visit(top, sub, r);
      });
    }
  };
  for (const layer of bottomFirst) visit(layer, layer, '');
  return view;
}

/** Milliseconds of a nanosecond time, floored (what the comparison has always used). */
function ms(ns: bigint): bigint {
  const q = ns / 1_000_000n;
  return ns < 0n && q * 1_000_000n !== ns ? q - 1n : q;
}

function differs(a: EntryStat, b: EntryStat, linkA: () => string, linkB: () => string): boolean {
  if ((a.mode & 0o170000) !== (b.mode & 0o170000)) return true;
  if ((a.mode & 0o7777) !== (b.mode & 0o7777) || a.uid !== b.uid || a.gid !== b.gid) return true;
  if (a.isDirectory()) return false; // a directory changes when its entries do: reported through them
  if (a.isSymbolicLink()) return linkA() !== linkB();
  if (a.size !== b.size || ms(a.mtimeNs) !== ms(b.mtimeNs)) return true;
  return false;
}

type ChangeKind = 'A' | 'C' | 'D';

/** copyDiff on pinned trees: `merged` against the chain `bottomFirst`. */
function diffTrees(bottomFirst: readonly Beneath[], merged: Beneath): { kind: ChangeKind; path: string }[] {
  const view = lowerView(bottomFirst);
  const changes = new Map<string, ChangeKind>();
  const present = new Set<string>(); // every path in merged, for the deletions below
  const walk = (dir: Beneath, rel: string): void => {
    for (const { name } of dir.readdir()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = dir.lstat(name);
      if (st === undefined) continue; // deleted while we looked: absent, as if the walk had come later
      present.add(r);
      const lower = view.get(r);
      if (!lower) changes.set(r, 'A');
      else if (differs(st, lower.st, () => dir.readlink(name), () => lower.layer.readlink(r))) changes.set(r, 'C');
      if (st.isDirectory()) {
        let sub: Beneath;
        try {
          sub = dir.sub(name);
        } catch (err) {
          // The container replaced the directory meanwhile (ENOENT, ELOOP: now a symlink, ENOTDIR), or
          // something is mounted on it (EXDEV): nothing below it is read, and never through a symlink.
          if (['ENOENT', 'ELOOP', 'ENOTDIR', 'EXDEV'].includes(errnoCode(err) ?? '')) continue;
          throw err;
        }
        try {
          walk(sub, r);
        } finally {
          sub.close();
        }
      }
    }
  };
  walk(merged, '');
  for (const r of view.keys()) {
    if (present.has(r)) continue;
    const slash = r.lastIndexOf('/');
    // Report only the top of a deleted subtree, as overlay's whiteouts do.
    if (slash >= 0 && !present.has(r.slice(0, slash))) continue;
    changes.set(r, 'D');
  }
  for (const r of [...changes.keys()]) {
    for (let slash = r.lastIndexOf('/'); slash >= 0; slash = r.lastIndexOf('/', slash - 1)) {
      const p = r.slice(0, slash);
      if (!changes.has(p) && view.has(p)) changes.set(p, 'C');
    }
  }
  return [...changes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([p, kind]) => ({ kind, path: `/${p}` }));
}

/** Changes of `merged` against its chain: A added, C changed, D deleted (ancestors of changes are C). */
export function copyDiff(lowerDirsTopFirst: readonly string[], merged: string): { kind: ChangeKind; path: string }[] {
  return withTrees([merged, ...[...lowerDirsTopFirst].reverse()], ([m, ...bottomFirst]) => diffTrees(bottomFirst, m!));
}

/** Writes the changes of `merged` into `upper` in overlay form (whiteouts for deletions). */
export function changesAsUpper(lowerDirsTopFirst: readonly string[], merged: string, upper: string): void {
  const state = newCopyDataState();
  withTrees([merged, upper, ...[...lowerDirsTopFirst].reverse()], ([m, u, ...bottomFirst]) => {
    const from = m!;
    const into = u!;
    for (const { kind, path: p } of diffTrees(bottomFirst, from)) {
      const rel = p.slice(1);
      if (kind === 'D') {
        into.mknod(rel, fs.constants.S_IFCHR, 0, true);
        continue;
      }
      const st = from.lstat(rel);
      if (st === undefined) throw new Error(`commit: "${p}" was deleted while the commit ran; commit again`);
      // A 0/0 device the container made (merged is a plain tree: nothing refuses it, as overlayfs does)
      // would be a whiteout in the upper form: the file would become a deletion.
      if (isWhiteout(st)) throw whiteoutDevice(rel);
      if (st.isDirectory()) {
        if (!into.lstat(rel)) into.mkdir(rel, 0o755, true);
        into.applyMeta(rel, metaOf(st, from.xattrs(rel), FILE_XATTRS, { times: false }));
      } else copyEntry(from, rel, into, rel, st, state, true);
    }
    // Directory times last: creating their entries changed them.
    const fix = (dir: Beneath, rel: string): void => {
      for (const { name } of dir.readdir()) {
        const r = rel === '' ? name : `${rel}/${name}`;
        const st = from.lstat(r);
        if (st?.isDirectory() && dir.lstat(name)?.isDirectory()) {
          inSub(dir, name, (sub) => fix(sub, r));
          dir.applyMeta(name, { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
        }
      }
    };
    fix(into, '');
  });
}
