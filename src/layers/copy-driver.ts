/**
 * The copy driver: container layers without overlayfs (like Docker's vfs), for filesystems where the
 * overlay probe fails, or when TSVOL_LAYER_DRIVER=copy. A container's merged directory is a full copy of
 * its chain (reflinked where the filesystem can); diff compares it with the chain's view; commit writes
 * the changes in overlay's upper-directory form and reuses the same tar writer, so both drivers produce
 * the same layers.
 */
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr, lsetxattr, mknod } from '../sys/libc.js';
import { isOpaque, isWhiteout } from './tar/writer.js';

/** A path visible in a chain: the layer directory that provides it, and its stat. */
interface LowerEntry {
  readonly dir: string;
  readonly st: fs.Stats;
}

function copyMeta(src: string, dst: string, st: fs.Stats): void {
  fs.lchownSync(dst, st.uid, st.gid);
  if (!st.isSymbolicLink()) fs.chmodSync(dst, st.mode & 0o7777);
  for (const name of llistxattr(src)) {
    if (name.startsWith('trusted.overlay.')) continue;
    const v = lgetxattr(src, name);
    if (v !== undefined) lsetxattr(dst, name, v);
  }
  if (!st.isDirectory()) fs.lutimesSync(dst, st.atime, st.mtime);
}

/** Copies one non-directory entry (regular files reflinked when possible). */
function copyEntry(src: string, dst: string, st: fs.Stats): void {
  if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(src), dst);
  else if (st.isFile()) fs.copyFileSync(src, dst, fs.constants.COPYFILE_FICLONE);
  else mknod(dst, st.mode, st.rdev);
  copyMeta(src, dst, st);
}

/** Applies one layer directory (overlay form: whiteout devices, opaque dirs) onto `merged`. */
function applyLayer(layer: string, merged: string, rel = ''): void {
  for (const name of fs.readdirSync(path.join(layer, rel)).sort()) {
    const r = rel === '' ? name : `${rel}/${name}`;
    const src = path.join(layer, r);
    const dst = path.join(merged, r);
    const st = fs.lstatSync(src);
    const existing = fs.lstatSync(dst, { throwIfNoEntry: false });
    if (isWhiteout(st)) {
      if (existing) fs.rmSync(dst, { recursive: true, force: true });
      continue;
    }
    if (st.isDirectory()) {
      if (existing && (!existing.isDirectory() || isOpaque(src))) fs.rmSync(dst, { recursive: true, force: true });
      if (!fs.lstatSync(dst, { throwIfNoEntry: false })) fs.mkdirSync(dst);
      applyLayer(layer, merged, r);
      copyMeta(src, dst, st);
      fs.utimesSync(dst, st.atime, st.mtime);
      continue;
    }
    if (existing) fs.rmSync(dst, { recursive: true, force: true });
    copyEntry(src, dst, st);
  }
}

/** Materializes a chain (top first, as LayerStore.history gives it) into the empty directory `merged`. */
export function materialize(lowerDirsTopFirst: readonly string[], merged: string): void {
  for (const layer of [...lowerDirsTopFirst].reverse()) applyLayer(layer, merged);
}

/** Every path visible through a chain, with the layer that provides it. */
function lowerView(lowerDirsTopFirst: readonly string[]): Map<string, LowerEntry> {
  const view = new Map<string, LowerEntry>();
  // Drops what a lower layer had below `r`. Only a directory there can have entries below it, so the
  // scan of the view runs only then (a whiteout of a directory, a directory replaced or made opaque),
  // not for every file.
  const dropBelow = (r: string): void => {
    if (!view.get(r)?.st.isDirectory()) return;
    for (const k of [...view.keys()]) if (k.startsWith(`${r}/`)) view.delete(k);
  };
  const visit = (layer: string, rel: string): void => {
    for (const name of fs.readdirSync(path.join(layer, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = fs.lstatSync(path.join(layer, r));
      if (isWhiteout(st)) {
        dropBelow(r);
        view.delete(r);
        continue;
      }
      if (!st.isDirectory() || isOpaque(path.join(layer, r))) dropBelow(r);
      view.set(r, { dir: layer, st });
      if (st.isDirectory()) visit(layer, r);
    }
  };
  for (const layer of [...lowerDirsTopFirst].reverse()) visit(layer, '');
  return view;
}

function differs(a: fs.Stats, b: fs.Stats, pa: string, pb: string): boolean {
  if ((a.mode & 0o170000) !== (b.mode & 0o170000)) return true;
  if ((a.mode & 0o7777) !== (b.mode & 0o7777) || a.uid !== b.uid || a.gid !== b.gid) return true;
  if (a.isDirectory()) return false; // a directory changes when its entries do: reported through them
  if (a.isSymbolicLink()) return fs.readlinkSync(pa) !== fs.readlinkSync(pb);
  if (a.size !== b.size || Math.floor(a.mtimeMs) !== Math.floor(b.mtimeMs)) return true;
  return false;
}

/** Changes of `merged` against its chain: A added, C changed, D deleted (ancestors of changes are C). */
export function copyDiff(lowerDirsTopFirst: readonly string[], merged: string): { kind: 'A' | 'C' | 'D'; path: string }[] {
  const view = lowerView(lowerDirsTopFirst);
  const changes = new Map<string, 'A' | 'C' | 'D'>();
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(merged, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = fs.lstatSync(path.join(merged, r));
      const lower = view.get(r);
      if (!lower) changes.set(r, 'A');
      else if (differs(st, lower.st, path.join(merged, r), path.join(lower.dir, r))) changes.set(r, 'C');
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  for (const r of view.keys()) {
    if (fs.lstatSync(path.join(merged, r), { throwIfNoEntry: false })) continue;
    const parent = path.dirname(r);
    // Report only the top of a deleted subtree, as overlay's whiteouts do.
    if (parent !== '.' && !fs.lstatSync(path.join(merged, parent), { throwIfNoEntry: false })) continue;
    changes.set(r, 'D');
  }
  for (const r of [...changes.keys()]) {
    for (let p = path.dirname(r); p !== '.'; p = path.dirname(p)) {
      if (!changes.has(p) && view.has(p)) changes.set(p, 'C');
    }
  }
  return [...changes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([p, kind]) => ({ kind, path: `/${p}` }));
}

/** Writes the changes of `merged` into `upper` in overlay form (whiteouts for deletions). */
export function changesAsUpper(lowerDirsTopFirst: readonly string[], merged: string, upper: string): void {
  for (const { kind, path: p } of copyDiff(lowerDirsTopFirst, merged)) {
    const rel = p.slice(1);
    const dst = path.join(upper, rel);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    if (kind === 'D') {
      mknod(dst, fs.constants.S_IFCHR, 0);
      continue;
    }
    const src = path.join(merged, rel);
    const st = fs.lstatSync(src);
    if (st.isDirectory()) {
      if (!fs.existsSync(dst)) fs.mkdirSync(dst);
      copyMeta(src, dst, st);
    } else copyEntry(src, dst, st);
  }
  // Directory times last: creating their entries changed them.
  const fix = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(upper, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = fs.lstatSync(path.join(merged, r), { throwIfNoEntry: false });
      if (st?.isDirectory()) {
        fix(r);
        fs.utimesSync(path.join(upper, r), st.atime, st.mtime);
      }
    }
  };
  fix('');
}
