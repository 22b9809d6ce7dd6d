/**
 * Overlay mounts of layer chains, shared by container layers (containers.ts) and layered volumes
 * (src/volumes/layered.ts): index=off, redirect_dir=off, metacopy=off, so that an upper directory
 * committed as a layer stands on its own.
 *
 *   l/<4 chars> -> ../diffs/<hex>      short links, so 500 lower layers fit in one page of mount data
 *   diffs/<hex>.link                   the short link's name, made on a diff's first mount
 *
 * This module alone makes and removes the short links (their paths are src/store/layout.ts's LayersLayout):
 * the layer store calls removeShortLink when it deletes a diff.
 *
 * The mount is made from inside the layers directory with relative paths (lowerdir=l/abcd:l/efgh…), which
 * keeps the option string near 7 bytes a layer: 500 layers (the kernel's limit) take ~3.5 KB, under the
 * 4 KB page that mount(2) accepts. Node runs JavaScript on one thread, so the chdir around the synchronous
 * mount(2) cannot be observed by any other code.
 */
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, errnoCode } from '../errors.js';
import { writeFileDurable } from '../sys/durable.js';
import { overlayMount } from '../sys/mount.js';
import { digestHex, layersLayout, type LayersLayout } from '../store/layout.js';
import type { LayerRecord } from '../store/records.js';

/** A short link's name: 4 of the characters shortLink() draws from. */
const SHORT_ID = /^[a-z0-9]{4}$/;

/** Largest mount data mount(2) accepts: one page, NUL included. */
const MAX_MOUNT_DATA = 4095;

/** Where a writable layer lives: its upper and work directories, and where the merged tree appears. */
export interface OverlayDirs {
  readonly upper: string;
  readonly work: string;
  readonly merged: string;
}

/** What the mounter needs of the layer store: a chain, and where each layer's diff is. */
export interface LayerChains {
  history(top: string): LayerRecord[];
  diffDir(layer: LayerRecord): string;
}

/**
 * Removes the short link of the diff whose DiffID's hex is `hex` (in the layers directory `layout`) and
 * the file naming it, if it has one (a diff never mounted has none).
 */
export function removeShortLink(layout: LayersLayout, hex: string): void {
  const linkFile = layout.linkFile(hex);
  let id: string;
  try {
    id = fs.readFileSync(linkFile, 'utf8').trim();
  } catch (err) {
    // ENOENT: the diff was never mounted, so it has no short link.
    if (errnoCode(err) !== 'ENOENT') throw err;
    return;
  }
  // Two names, never a tree: unlinked (a missing one was unlinked before a crash). The short link only if
  // the file names one as shortLink() makes them: its content never picks a path elsewhere.
  for (const name of SHORT_ID.test(id) ? [layout.shortLink(id), linkFile] : [linkFile]) {
    try {
      fs.unlinkSync(name);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
  }
}

/** Mounts layer chains of `layers`, whose directory is `root` (TSVOL_DATA/layers). */
export interface OverlayMounter {
  /** Mounts the chain from `top` down, with `dirs.upper` on top, at `dirs.merged`. */
  mount(top: string, dirs: OverlayDirs): void;
}

/** Creates a mounter for the layer store at `root`. */
export function createOverlayMounter(root: string, layers: LayerChains): OverlayMounter {
  const layout = layersLayout(root);
  fs.mkdirSync(layout.linksDir, { recursive: true, mode: 0o700 });

  /** The short link for a layer's diff directory, made on first use. */
  function shortLink(layer: LayerRecord): string {
    const diff = layers.diffDir(layer);
    const linkFile = layout.linkFile(digestHex(layer.diffId));
    try {
      return fs.readFileSync(linkFile, 'utf8').trim();
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
    for (;;) {
      const id = Array.from({ length: 4 }, () => alphabet[Math.floor(Math.random() * alphabet.length)]).join('');
      try {
        fs.symlinkSync(path.relative(layout.linksDir, diff), layout.shortLink(id));
      } catch (err) {
        if (errnoCode(err) === 'EEXIST') continue; // taken: draw again
        throw err;
      }
      writeFileDurable(linkFile, id);
      return id;
    }
  }

  return {
    mount(top, dirs) {
      const chain = layers.history(top);
      // A diff stored once can sit at two places in one chain (two identical layers, e.g. two empty
      // commits): overlayfs refuses a lower directory given twice (ELOOP). The topmost occurrence shadows
      // everything the deeper one holds, so dropping the deeper ones leaves the same tree.
      const seen = new Set<string>();
      const lowers = chain.filter((l) => !seen.has(l.diffId) && seen.add(l.diffId) !== undefined);
      const rel = (abs: string): string => path.relative(root, abs);
      const lowerdir = lowers.map((l) => rel(layout.shortLink(shortLink(l)))).join(':');
      const data = `lowerdir=${lowerdir},upperdir=${rel(dirs.upper)},workdir=${rel(dirs.work)},index=off,redirect_dir=off,metacopy=off`;
      if (data.length > MAX_MOUNT_DATA) {
        throw new InvalidArgumentError(`a chain of ${chain.length} layers needs ${data.length} bytes of mount options; the kernel takes ${MAX_MOUNT_DATA}`);
      }
      const cwd = process.cwd();
      process.chdir(root);
      try {
        overlayMount(dirs.merged, data);
      } finally {
        process.chdir(cwd);
      }
    },
  };
}
