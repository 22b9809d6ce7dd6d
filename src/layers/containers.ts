/**
 * Container layers: a writable copy-on-write layer on a chain of read-only layers, mounted with overlayfs
 * (index=off, redirect_dir=off, metacopy=off: a layer committed from the upper directory must stand on its
 * own). Layout under TSVOL_DATA/layers:
 *
 *   containers/<name>.json             the record (name, the layer it sits on, created)
 *   containers/<name>/{upper,work,merged}
 *
 * The overlay mount itself (short links, relative lowerdirs) is overlay.ts. diff and commit read only the upper directory and the
 * lower layers' directories, never the merged tree, so a commit costs what changed, not the image's size.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InvalidArgumentError, NotFoundError, describeError, errnoCode } from '../errors.js';
import { writeFileDurable } from '../sys/durable.js';
import { isMountRoot } from '../sys/libc.js';
import { unmount } from '../sys/mount.js';
import { removeTreeNoCross } from '../sys/remove.js';
import type { LayerRecord, LayerStore } from './layer-store.js';
import { changesAsUpper, copyDiff, materialize } from './copy-driver.js';
import { createOverlayMounter } from './overlay.js';
import { probeOverlay } from './probe.js';
import { isOpaque, isWhiteout, writeTree } from './tar/writer.js';

/** A container layer. */
export interface ContainerRecord {
  readonly name: string;
  /** The read-only layer it sits on (ChainID). */
  readonly from: string;
  /** How it is stored: an overlay mount, or a full copy (copy-driver.ts). */
  readonly driver: LayerDriver;
  readonly createdAt: string;
}

/** Storage drivers for container layers. */
export type LayerDriver = 'overlay' | 'copy';

/** One change, like `docker diff`: A added, C changed, D deleted. */
export interface Change {
  readonly kind: 'A' | 'C' | 'D';
  readonly path: string;
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

/** Container layers on `layers`, stored under `root` (TSVOL_DATA/layers). */
export interface ContainerStore {
  /** Makes and mounts a writable layer on `from`; returns the merged path. */
  create(name: string, from: string): Promise<string>;
  diff(name: string): Change[];
  /** Turns the writable layer into a new read-only layer on top of its base. */
  commit(name: string): Promise<LayerRecord>;
  remove(name: string): Promise<void>;
  list(): ContainerRecord[];
  mergedPath(name: string): string;
}

/**
 * Creates the container store. `driver` forces a driver (TSVOL_LAYER_DRIVER); otherwise overlay is probed
 * once, on the first create, and the copy driver is used where it fails.
 */
export function createContainerStore(root: string, layers: LayerStore, driver?: LayerDriver): ContainerStore {
  let chosen: LayerDriver | undefined = driver;
  const pickDriver = (): LayerDriver => (chosen ??= probeOverlay(root).ok ? 'overlay' : 'copy');
  const dir = path.join(root, 'containers');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const overlay = createOverlayMounter(root, layers);

  const recordFile = (name: string): string => path.join(dir, `${name}.json`);
  const paths = (name: string) => ({
    base: path.join(dir, name),
    upper: path.join(dir, name, 'upper'),
    work: path.join(dir, name, 'work'),
    merged: path.join(dir, name, 'merged'),
  });

  function read(name: string): ContainerRecord {
    if (!NAME.test(name)) throw new InvalidArgumentError(`invalid container name "${name}"`);
    try {
      const rec = JSON.parse(fs.readFileSync(recordFile(name), 'utf8')) as ContainerRecord;
      return { ...rec, driver: rec.driver ?? 'overlay' };
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new NotFoundError(`container layer "${name}" not found`);
      throw err;
    }
  }

  /** The lower directories, top first, for a chain. */
  function lowers(from: string): string[] {
    return layers.history(from).map((l) => layers.diffDir(l));
  }

  function mount(rec: ContainerRecord): void {
    overlay.mount(rec.from, paths(rec.name));
  }

  /** True if `rel` exists in the lower layers (the topmost layer that has it, or a whiteout, decides). */
  function inLower(lowerDirs: string[], rel: string): boolean {
    for (const lower of lowerDirs) {
      const st = fs.lstatSync(path.join(lower, rel), { throwIfNoEntry: false });
      if (st) return !isWhiteout(st);
    }
    return false;
  }

  return {
    async create(name, from) {
      if (!NAME.test(name)) throw new InvalidArgumentError(`invalid container name "${name}": use [a-zA-Z0-9_.-]`);
      if (fs.existsSync(recordFile(name))) throw new ConflictError(`container layer "${name}" already exists`);
      const base = layers.resolve(from);
      const p = paths(name);
      const rec: ContainerRecord = { name, from: base.id, driver: pickDriver(), createdAt: new Date().toISOString() };
      fs.mkdirSync(p.upper, { recursive: true, mode: 0o755 });
      fs.mkdirSync(p.work, { mode: 0o700 });
      fs.mkdirSync(p.merged, { mode: 0o755 });
      try {
        if (rec.driver === 'overlay') mount(rec);
        else materialize(lowers(rec.from), p.merged);
        writeFileDurable(recordFile(name), JSON.stringify(rec));
      } catch (err) {
        if (fs.existsSync(p.merged) && isMountRoot(p.merged)) unmount(p.merged);
        fs.rmSync(p.base, { recursive: true, force: true });
        throw err;
      }
      return p.merged;
    },

    diff(name) {
      const rec = read(name);
      const lowerDirs = lowers(rec.from);
      if (rec.driver === 'copy') return copyDiff(lowerDirs, paths(name).merged);
      const upper = paths(name).upper;
      const out: Change[] = [];
      const walk = (rel: string, underOpaque: boolean): void => {
        for (const entry of fs.readdirSync(path.join(upper, rel)).sort()) {
          const childRel = rel === '' ? entry : `${rel}/${entry}`;
          const abs = path.join(upper, childRel);
          const st = fs.lstatSync(abs);
          if (isWhiteout(st)) {
            out.push({ kind: 'D', path: `/${childRel}` });
            continue;
          }
          const existed = !underOpaque && inLower(lowerDirs, childRel);
          out.push({ kind: existed ? 'C' : 'A', path: `/${childRel}` });
          if (st.isDirectory()) walk(childRel, underOpaque || isOpaque(abs));
        }
      };
      walk('', false);
      return out;
    },

    async commit(name) {
      const rec = read(name);
      if (rec.driver !== 'copy') return layers.importLayer(writeTree(paths(name).upper), rec.from);
      // Copy driver: write the changes in overlay's upper form, then commit them like overlay does.
      const upper = fs.mkdtempSync(path.join(root, 'tmp', `commit-${name}-`));
      try {
        changesAsUpper(lowers(rec.from), paths(name).merged, upper);
        return await layers.importLayer(writeTree(upper), rec.from);
      } finally {
        fs.rmSync(upper, { recursive: true, force: true });
      }
    },

    async remove(name) {
      read(name);
      const p = paths(name);
      if (fs.existsSync(p.merged) && isMountRoot(p.merged)) unmount(p.merged);
      fs.rmSync(recordFile(name));
      const left = await removeTreeNoCross(p.base);
      if (left.length > 0) throw new ConflictError(`container layer "${name}" removed, but mounts inside were left: ${left.join(', ')}`);
    },

    list() {
      return fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .map((f) => {
          try {
            return JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as ContainerRecord;
          } catch (err) {
            throw new Error(`container record ${f} is unreadable: ${describeError(err)}`);
          }
        });
    },

    mergedPath: (name) => paths(read(name).name).merged,
  };
}
