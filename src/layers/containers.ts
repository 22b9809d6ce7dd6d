/**
 * Container layers: a writable copy-on-write layer on a chain of read-only layers, mounted with overlayfs
 * (index=off, redirect_dir=off, metacopy=off: a layer committed from the upper directory must stand on its
 * own). The record (name, the layer it sits on, driver, created, commit journal) is a row of the metadata
 * store (src/store/meta-store.ts), whose foreign key keeps its base layer from being deleted; the data
 * under TSVOL_DATA/layers, whose paths src/store/layout.ts builds (LayersLayout.containerDirs):
 *
 *   containers/<name>/{upper,work,merged}   upper, or the upper-<t> the record names after an in-place commit
 *
 * The overlay mount itself (short links, relative lowerdirs) is overlay.ts. diff and commit read only the
 * upper directory and the lower layers' directories, never the merged tree, so a commit costs what
 * changed, not the image's size.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InvalidArgumentError, NotFoundError, errnoCode } from '../errors.js';
import { digestHex, layersLayout, type ContainerDirs } from '../store/layout.js';
import type { ContainerRecord, LayerDriver } from '../store/records.js';
import { readBootId } from '../sys/boot.js';
import { crashPoint } from '../sys/crash-point.js';
import { fsyncDir } from '../sys/durable.js';
import { isMountRoot } from '../sys/libc.js';
import { unmountTarget } from '../sys/mount.js';
import { createStage } from '../sys/staging.js';
import type { LayerRecord, LayerStore } from './layer-store.js';
import { changesAsUpper, copyDiff, materialize } from './copy-driver.js';
import { discardDir } from './discard.js';
import { createOverlayMounter } from './overlay.js';
import { probeOverlay } from './probe.js';
import { isOpaque, isWhiteout, writeTree } from './tar/writer.js';
import { createKeyedMutex } from '../sys/keyed-mutex.js';

export type { ContainerRecord, LayerDriver } from '../store/records.js';

/** One change, like `docker diff`: A added, C changed, D deleted. */
export interface Change {
  readonly kind: 'A' | 'C' | 'D';
  readonly path: string;
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

/** True if process `pid` exists (signal 0 checks without sending anything). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

/** Container layers on `layers`, stored under `root` (TSVOL_DATA/layers). */
export interface ContainerStore {
  /** Makes and mounts a writable layer on `from`; returns the merged path. */
  create(name: string, from: string): Promise<string>;
  /** The changes since the container's layer, like `docker diff` (a commit that stopped midway is settled first). */
  diff(name: string): Promise<Change[]>;
  /**
   * Turns the writable layer into a new read-only layer on top of its base, and (except for an overlay
   * container in use) rebases the container on it: `diff` then lists the changes since this commit.
   */
  commit(name: string): Promise<LayerRecord>;
  remove(name: string): Promise<void>;
  list(): ContainerRecord[];
  /** The merged tree's path, mounted if it was not (a commit that stopped midway is settled first). */
  mergedPath(name: string): Promise<string>;
}

/**
 * Creates the container store. `driver` forces a driver (TSVOL_LAYER_DRIVER); otherwise overlay is probed
 * once, on the first create, and the copy driver is used where it fails.
 */
export function createContainerStore(root: string, layers: LayerStore, driver?: LayerDriver): ContainerStore {
  let chosen: LayerDriver | undefined = driver;
  const pickDriver = (): LayerDriver => (chosen ??= probeOverlay(root).ok ? 'overlay' : 'copy');
  const layout = layersLayout(root);
  fs.mkdirSync(layout.containersDir, { recursive: true, mode: 0o700 });
  const overlay = createOverlayMounter(root, layers);

  const meta = layers.meta;
  const paths = (rec: Pick<ContainerRecord, 'name' | 'upper'>): ContainerDirs => layout.containerDirs(rec.name, rec.upper);
  const save = (rec: ContainerRecord): Promise<void> => meta.commit([{ op: 'container.put', record: rec }]);

  /** The record exactly as stored, journal included. */
  function readStored(name: string): ContainerRecord {
    if (!NAME.test(name)) throw new InvalidArgumentError(`invalid container name "${name}"`);
    const rec = meta.getContainer(name);
    if (rec === undefined) throw new NotFoundError(`container layer "${name}" not found`);
    return rec;
  }

  /**
   * What a commitInPlace that stopped between its journal and its switch comes to: if the new layer was
   * published, the container moves to it and its fresh upper (the old upper's files belong to the layer
   * now, so they must never be written again); if not, the journal is dropped, and an upper the commit
   * had moved into the layer store already (next.diff) goes back first (`restore`: from there to its
   * place; its directories may have lost overlay's private xattrs but the opaque marker on the way, as a
   * layer's do: toLayerForm). `stale` is the upper directory that is then debris. A commit still running
   * in another live process is left alone (undefined), unless `force` (the committing process itself,
   * after a failure).
   */
  function outcome(rec: ContainerRecord, force: boolean): { settled: ContainerRecord; stale: string; restore?: string } | undefined {
    const next = rec.next;
    if (next === undefined) return undefined;
    if (!force && next.boot === readBootId() && processAlive(next.pid)) return undefined;
    const published = meta.getLayer(next.from) !== undefined;
    const { next: _, ...base } = rec;
    if (published) return { settled: { ...base, from: next.from, upper: next.upper }, stale: rec.upper ?? 'upper' };
    const moved = next.diff !== undefined && !fs.existsSync(paths(rec).upper) ? layout.diffDir(digestHex(next.diff)) : undefined;
    return moved === undefined ? { settled: base, stale: next.upper } : { settled: base, stale: next.upper, restore: moved };
  }

  /** The record as settle() would leave it, without writing anything (a journal found is a live process's). */
  function readNow(name: string): ContainerRecord {
    const rec = readStored(name);
    return outcome(rec, false)?.settled ?? rec;
  }

  /** The record, with a commit that crashed midway settled first, durably (settle). */
  async function read(name: string): Promise<ContainerRecord> {
    return settle(readStored(name));
  }

  /** Commits the outcome of a stopped commitInPlace (see outcome), then deletes the stale upper. */
  async function settle(rec: ContainerRecord, force = false): Promise<ContainerRecord> {
    const o = outcome(rec, force);
    if (o === undefined) return rec;
    if (o.restore !== undefined) {
      const upper = paths(rec).upper;
      fs.renameSync(o.restore, upper);
      // Durable before the journal goes: else a power cut could leave a record naming an upper that is
      // still in diffs/ with no journal claiming it, where gc deletes it.
      fsyncDir(path.dirname(upper));
      fsyncDir(path.dirname(o.restore));
    }
    // The stale upper is stale whether or not the new record is saved yet: the outcome is decided by
    // whether the layer's record exists, and a crash before the save reaches the same outcome again. So
    // it is deleted while the record is saved, not after (#13: the save's fsync, off a commit's path).
    // Moved into tmp/ and deleted there (discard.ts); a mount someone left inside stays, with its
    // directories, in tmp/: a commit is not failed over debris that gc reports.
    // Both run to the end before either's failure is thrown: a retry must not find this delete half done.
    const [saved, discarded] = await Promise.allSettled([save(o.settled), discardDir(layout, layout.containerDirs(rec.name, o.stale).upper)]);
    if (saved.status === 'rejected') throw saved.reason;
    if (discarded.status === 'rejected') throw discarded.reason;
    return o.settled;
  }

  /** Mounts an overlay container that is not mounted (after a reboot, or a commit that stopped midway). */
  function ensureMounted(rec: ContainerRecord): ContainerRecord {
    if (rec.driver === 'overlay' && rec.next === undefined && !isMountRoot(paths(rec).merged)) mount(rec);
    return rec;
  }

  /**
   * Commit without copying data, for an overlay container nobody is using: in the layer store's queue of
   * mutations, unmount it (refused if busy: then undefined, and the caller copies instead), hash its upper
   * directory, journal the switch in the record, move the upper whole into the layer store as the layer's
   * directory (one rename, #13), and commit the layer's record together with the container's move onto it,
   * with a fresh, empty upper; then mount it again. Every step is either undone or finished by settle()
   * after a crash (the moved upper goes back to the container if the record was not committed). Costs one
   * read of the changes (for the DiffID) and one syncfs, instead of a full copy.
   */
  async function commitInPlace(name: string): Promise<LayerRecord | undefined> {
    let rec = await read(name);
    const fresh = layout.newUpperName();
    let journal: ContainerRecord | undefined;
    let switched: ContainerRecord | undefined;
    let started = false;
    try {
      return await layers.adoptTree(rec.from, {
        async prepare() {
          // Settled just above and serialized with every other commit here: a journal is a live process's.
          rec = readNow(name);
          if (rec.next !== undefined) throw new ConflictError(`container layer "${name}" is being committed by process ${rec.next.pid}`);
          const p = paths(rec);
          // Upper directories the record does not name: fresh ones of commits killed before their journal
          // (empty), and old ones of commits killed after their switch but before deleting them (their files
          // belong to a layer now). No other commit can be running (the layer store runs its mutations one
          // at a time, in the one process that writes, and the record has no journal). Swept whichever way
          // this commit goes, so that a container in use, committed by copying, does not keep them either.
          for (const f of fs.readdirSync(p.base)) {
            const dirs = layout.containerDirs(rec.name, f);
            if (layout.isUpperName(f) && dirs.upper !== p.upper) await discardDir(layout, dirs.upper);
          }
          if (unmountTarget(p.merged, { ifBusy: 'report' }) === 'busy') return undefined;
          started = true;
          const st = fs.lstatSync(p.upper);
          const target = layout.containerDirs(rec.name, fresh).upper;
          fs.mkdirSync(target, { mode: st.mode & 0o7777 });
          fs.chownSync(target, st.uid, st.gid);
          return p.upper;
        },
        async beforePublish(layer, moves) {
          // Durable before the upper moves (moves): the journal is what brings it back after a crash.
          const next = { from: layer.id, upper: fresh, pid: process.pid, boot: readBootId() };
          journal = { ...rec, next: moves ? { ...next, diff: layer.diffId } : next };
          await save(journal);
          crashPoint('container-commit:after-journal');
        },
        publishWith(layer) {
          // The container's switch onto the layer, in the transaction that records the layer.
          switched = { ...rec, from: layer.id, upper: fresh };
          return [{ op: 'container.put', record: switched }];
        },
        async afterPublish() {
          crashPoint('container-commit:after-switch');
          // The old upper: moved into the layer store (nothing left here), or, when the layer's diff
          // existed already, debris whose files that layer does not use.
          const old = paths(rec).upper;
          rec = switched!;
          await discardDir(layout, old);
        },
      });
    } finally {
      if (started) {
        // Whatever happened, finish or undo what the record says, drop an unused fresh upper, mount again.
        rec = await settle(readStored(name), true);
        if (rec.upper !== fresh) await discardDir(layout, layout.containerDirs(rec.name, fresh).upper);
        ensureMounted(rec);
      }
    }
  }

  /** The lower directories, top first, for a chain. */
  function lowers(from: string): string[] {
    return layers.history(from).map((l) => layers.diffDir(l));
  }

  function mount(rec: ContainerRecord): void {
    overlay.mount(rec.from, paths(rec));
  }

  /** True if `rel` exists in the lower layers (the topmost layer that has it, or a whiteout, decides). */
  function inLower(lowerDirs: string[], rel: string): boolean {
    for (const lower of lowerDirs) {
      const st = fs.lstatSync(path.join(lower, rel), { throwIfNoEntry: false });
      if (st) return !isWhiteout(st);
    }
    return false;
  }

  const ops: ContainerStore = {
    async create(name, from) {
      if (!NAME.test(name)) throw new InvalidArgumentError(`invalid container name "${name}": use [a-zA-Z0-9_.-]`);
      if (meta.getContainer(name) !== undefined) throw new ConflictError(`container layer "${name}" already exists`);
      const base = layers.resolve(from);
      const rec: ContainerRecord = { name, from: base.id, driver: pickDriver(), createdAt: new Date().toISOString() };
      const p = paths(rec);
      fs.mkdirSync(p.upper, { recursive: true, mode: 0o755 });
      fs.mkdirSync(p.work, { mode: 0o700 });
      fs.mkdirSync(p.merged, { mode: 0o755 });
      try {
        if (rec.driver === 'overlay') mount(rec);
        else materialize(lowers(rec.from), p.merged);
        // The directories need no fsync of their own: a container lost to power loss with its record is
        // made again by the next create; the record, committed last, is the truth.
        await save(rec);
      } catch (err) {
        if (fs.existsSync(p.merged) && isMountRoot(p.merged)) unmountTarget(p.merged, { ifBusy: 'detach' });
        await discardDir(layout, p.base);
        throw err;
      }
      return p.merged;
    },

    async diff(name) {
      const rec = await read(name);
      // A commit under way in this process (the server) may have moved the upper into the layer store.
      if (rec.next !== undefined && !fs.existsSync(paths(rec).upper)) {
        throw new ConflictError(`container layer "${name}" is being committed by process ${rec.next.pid}; retry when the commit is done`);
      }
      const lowerDirs = lowers(rec.from);
      if (rec.driver === 'copy') return copyDiff(lowerDirs, paths(rec).merged);
      const upper = paths(rec).upper;
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
      const rec = await read(name);
      if (rec.driver !== 'copy') {
        const layer = await commitInPlace(name);
        if (layer !== undefined) return layer;
        // In use: copy the changes; the container keeps running on its layer and its upper.
        return layers.importLayer(writeTree(paths(await read(name)).upper), rec.from);
      }
      // Copy driver: write the changes in overlay's upper form, commit them like overlay does, and rebase
      // the container (its merged tree is already the new layer's contents).
      // A stage locked while it lives: written before the layer store's queue is entered (importLayer
      // enters it), so a gc meanwhile sees a live owner and leaves it (sys/staging.ts).
      const stage = await createStage(layout.tmpDir, `commit-${name}`);
      try {
        changesAsUpper(lowers(rec.from), paths(rec).merged, stage.dir);
        const layer = await layers.importLayer(writeTree(stage.dir), rec.from);
        await save({ ...rec, from: layer.id });
        return layer;
      } finally {
        await stage.remove();
      }
    },

    async remove(name) {
      const p = paths(await read(name));
      if (fs.existsSync(p.merged) && isMountRoot(p.merged)) unmountTarget(p.merged, { ifBusy: 'detach' });
      await meta.commit([{ op: 'container.delete', name }]);
      // Its name is free at once; the tree goes off the event loop, never across a mount (discard.ts).
      const left = await discardDir(layout, p.base);
      if (left.length > 0) throw new ConflictError(`container layer "${name}" removed, but mounts inside were left: ${left.join(', ')}; unmount them and run \`tsvol layer gc\``);
    },

    list: () => meta.containers(),

    mergedPath: async (name) => paths(ensureMounted(await read(name))).merged,
  };
  // One operation at a time per container, in arrival order (moby's per-container lock). Two operations on
  // a container that a killed commit left journaled would otherwise both settle it at once, and the second
  // meet the first's claim on the stale upper ("locked by another live process"); now the second waits,
  // finds it settled, and gets its own answer (a second rm: not found). Other containers run meanwhile.
  const turns = createKeyedMutex();
  return {
    ...ops,
    create: (name, from) => turns.run(name, () => ops.create(name, from)),
    commit: (name) => turns.run(name, () => ops.commit(name)),
    remove: (name) => turns.run(name, () => ops.remove(name)),
    // A mount or a diff never runs inside a commit that moves the upper (it would mount or walk a tree
    // that is leaving): they take their turn too.
    mergedPath: (name) => turns.run(name, () => ops.mergedPath(name)),
    diff: (name) => turns.run(name, () => ops.diff(name)),
  };
}
