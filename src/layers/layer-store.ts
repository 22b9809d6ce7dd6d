/**
 * LayerStore: content-addressed read-only layers (issue #5). The records (layers, tags, holds) live in
 * the metadata store (src/store/meta-store.ts, tsvol.db); the data under TSVOL_DATA/layers, whose paths
 * src/store/layout.ts builds (LayersLayout):
 *
 *   diffs/<diffid-hex>/         a diff's unpacked contents, stored once whatever its parent
 *   diffs/<diffid-hex>.split    raw tar headers for byte-exact export (the tar-split idea)
 *   tmp/<kind>-<id>/            stages (imports, commits), each locked by its live owner (sys/staging.ts);
 *                               start-up and gc sweep those whose owner died
 *   tmp/rm-<id>/                a directory being deleted (discard.ts), locked the same way
 *
 * A layer is held by its child layers, by container layers on it (containers.ts), by tags, by images (their
 * top layer, src/images/) and by holds (holdLayer: volumes built on it). The database's foreign keys refuse deleting a held layer whatever the
 * code does; the code asks first, to name the holders in the error.
 *
 * One process writes at a time (the server, or a `tsvol` command holding the server lock), so mutations
 * are serialized in-process only (0.1's `layers/store` flock is gone; src/store/migrate.ts deletes it).
 * A stage in tmp/ is still flocked by its owner, so a gc never sweeps a live one.
 *
 * A layer's DiffID is the sha256 of its uncompressed tar; its ChainID is the DiffID for a base layer, else
 * sha256("<parent ChainID> <DiffID>") (OCI image spec). An import is staged in tmp/ and published by one
 * rename, then made durable with syncfs before its record is committed: the record is the truth, so a
 * crash at any instant leaves either the whole layer or none visible (gc deletes a diff with no record).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InUseError, InternalError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { crashPoint } from '../sys/crash-point.js';
import { spreadSubdirs } from '../sys/dir-placement.js';
import { digestHex, layerStageFiles, layersLayout, type LayerStageFiles } from '../store/layout.js';
import type { Change, MetaStore } from '../store/meta-store.js';
import type { LayerRecord } from '../store/records.js';
import { syncFilesystem } from '../sys/durable.js';
import { createStage } from '../sys/staging.js';
import { discardDir, discardFile, stageForDelete, sweepLayerStages } from './discard.js';
import { removeShortLink } from './overlay.js';
import { hashTreeInWorker } from './tree-split.js';
import { replaySplit, toLayerForm } from './unpack.js';
import { unpackIntoStageOffThread, type UnpackInput, type UnpackStart } from './unpack-thread.js';

export type { LayerRecord } from '../store/records.js';

/** What adoptTree's caller does around publishing (see LayerStore.adoptTree). */
export interface AdoptHooks {
  prepare(): string | undefined | Promise<string | undefined>;
  /**
   * `moves`: the tree itself is about to become the layer's directory (diffs/<hex of layer.diffId>), moved
   * there by one rename once this returns. The caller must have recorded that durably by then (a journal
   * naming the DiffID, ContainerRecord.next.diff): until the layer's record is committed, the moved tree
   * is still the caller's, which moves it back if the record never is (containers.ts settle). gc and
   * publish leave a diff directory so journaled alone (journaledDiffs).
   */
  beforePublish(layer: LayerRecord, moves: boolean): void | Promise<void>;
  /**
   * Changes committed in the same transaction as the layer's record (the container's switch onto it), so
   * the layer is never recorded without them; committed alone when the layer existed already.
   */
  publishWith(layer: LayerRecord): Change[];
  afterPublish(layer: LayerRecord): void | Promise<void>;
}

/**
 * A layer's diff made ready to publish (LayerStore.stageLayer): unpacked into a stage of its own in
 * layers/tmp/, locked by this process while it lives, and not visible to anyone. Or, from reuseDiff, a
 * diff the store already has. Either way publishLayer makes layers of it, on any parent, any number of
 * times; discard() deletes the stage (a no-op for a reused diff, and safe after publishing).
 */
export interface StagedLayer {
  readonly diffId: string;
  /** Bytes of regular-file content. */
  readonly size: number;
  readonly files: number;
  /** Bytes of the uncompressed tar, when it was read (stageLayer). */
  readonly tarSize?: number;
  discard(): Promise<void>;
}

/** The layer store. */
export interface LayerStore {
  /** Imports a layer tar (plain or gzip) on top of `parent`; returns the layer (existing if identical). */
  importLayer(input: AsyncIterable<Buffer> | NodeJS.ReadableStream, parent?: string): Promise<LayerRecord>;
  /**
   * Unpacks a layer tar (plain or gzip) into a fresh stage, hashing its DiffID on the way: the expensive
   * half of an import, outside the store's queue, so any number run at once (an image's layers, two
   * loads). Hostile entries are refused here (InvalidArgument) and the stage is deleted. The unpack runs on
   * a worker thread (unpack-thread.ts); a GrowingFile input (a blob being kept) is read there from the
   * file, and may wait for a turn; so may a byte stream, unless `start.now` (unpack-thread.ts).
   */
  stageLayer(input: UnpackInput, start?: UnpackStart): Promise<StagedLayer>;
  /** The diff `diffId` as a StagedLayer if the store has it (no unpack needed), else undefined. */
  reuseDiff(diffId: string): StagedLayer | undefined;
  /**
   * Makes the layer `staged` on `parent` visible: the one place a layer is published. In the store's queue;
   * idempotent: if that ChainID exists already (another load published it meanwhile), returns it with
   * `created: false`, and the stage stays for the caller to discard. See publish() for the crash story.
   */
  publishLayer(staged: StagedLayer, parent?: string): Promise<{ layer: LayerRecord; created: boolean }>;
  /**
   * A layer on `parent` made from a tree (an overlay upper directory) without copying file data: its
   * DiffID is hashed from the tree's tar, and the tree itself is renamed into the store as the layer's
   * directory (unless a layer has that DiffID already: then the tree is left where it is, for the caller
   * to delete). The tree must never change again. Serialized with the store's other mutations: `hooks.prepare` returns
   * the tree (or undefined to give up: adoptTree then returns undefined); `hooks.beforePublish` runs once
   * the layer is known and before it becomes visible (and before the tree moves: see AdoptHooks);
   * `hooks.afterPublish` once it is durable. Both run when the layer already existed too. containers.ts
   * journals its switch to the new layer in them.
   */
  adoptTree(parent: string | undefined, hooks: AdoptHooks): Promise<LayerRecord | undefined>;
  /** The layer's own diff as a tar, byte-identical to what was imported. */
  exportLayer(idOrName: string): AsyncGenerator<Buffer>;
  /** Resolves an ID (`sha256:…`, or a unique hex prefix of 12+ characters) or a tag to a layer. */
  resolve(idOrName: string): LayerRecord;
  list(): LayerRecord[];
  /** The chain from `idOrName` down to its base, top first. */
  history(idOrName: string): LayerRecord[];
  tag(idOrName: string, name: string): Promise<void>;
  /**
   * Removes a layer nothing holds (children, tags, containers, volumes); the error names the holders.
   * Given a tag, removes the tag, and the layer too if nothing else holds it (like `docker rmi`).
   */
  remove(idOrName: string): Promise<{ untagged: string[]; deleted: string[] }>;
  /**
   * Removes every layer held by nothing (no child, no tag, no container, no hold), repeatedly from the top
   * down, then staging debris and diff directories no layer uses. Returns what it removed.
   */
  gc(): Promise<{ removed: string[] }>;
  /**
   * Start-up's repair (src/server.ts): deletes diff directories, split files and short links no layer
   * record uses, which only a process killed while it published or deleted a diff leaves; in the queue.
   * Returns the diffs/ names removed and the mountpoints left in place.
   */
  sweepUnusedDiffs(): Promise<{ removed: string[]; left: string[] }>;
  /** The directory holding a layer's unpacked diff. */
  diffDir(layer: LayerRecord): string;
  /**
   * Records that `holder` (e.g. `volume "db"`) uses the layer: rm refuses and gc skips it, naming the
   * holder, until releaseLayer. Idempotent.
   */
  holdLayer(idOrName: string, holder: string): Promise<LayerRecord>;
  /** Drops a hold; releasing a hold that does not exist is a no-op. */
  releaseLayer(idOrName: string, holder: string): Promise<void>;
  /** Every hold from holdLayer, for start-up repair of holds whose holder is gone. */
  listHolds(): { layer: string; holder: string }[];
  /** The metadata store the records live in (for changes that span a layer and something else). */
  readonly meta: MetaStore;
}

const HEX = /^[0-9a-f]{64}$/;
const TAG = /^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,127}$/;

/** Checks a holder's name (holdLayer, holdChange). */
function checkHolder(holder: string): void {
  if (holder === '' || holder.length > 200) throw new InvalidArgumentError('a layer holder needs a name of 1 to 200 characters');
}

/**
 * The change that records `holder`'s hold on `layer` (a ChainID), to commit together with the holder's
 * own record (a layered volume and its hold in one transaction). The layer must exist: the foreign key
 * refuses the whole change set otherwise.
 */
export function holdChange(layer: string, holder: string): Change {
  checkHolder(holder);
  return { op: 'layerHold.put', layer, holder };
}

/** The change that drops `holder`'s hold on `layer` (a ChainID); a no-op if there is none. */
export function releaseChange(layer: string, holder: string): Change {
  return { op: 'layerHold.delete', layer, holder };
}

/** OCI ChainID. */
export function chainId(parent: string | undefined, diffId: string): string {
  if (parent === undefined) return diffId;
  return `sha256:${createHash('sha256').update(`${parent} ${diffId}`).digest('hex')}`;
}

/** Opens the layer store under `root` (TSVOL_DATA/layers) with its records in `store`, the data root's one metadata store. */
export function createLayerStore(root: string, store: MetaStore): LayerStore {
  const layout = layersLayout(root);
  for (const d of [layout.diffsDir, layout.tmpDir]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  // Each stage is an unrelated tree: ext4 places each in a flex group of its own, away from what was just
  // deleted (an earlier stage, a removed layer), whose inodes it would rescan per new file (#11).
  spreadSubdirs(layout.tmpDir);

  /**
   * Mutations one at a time within the process (the only writer: see the module comment). Long synchronous
   * work inside (syncfs, a delete on a slow disk) only delays the next mutation.
   */
  let tail: Promise<unknown> = Promise.resolve();
  async function locked<T>(work: () => Promise<T>): Promise<T> {
    const run = tail.then(work, work);
    tail = run.catch(() => undefined);
    return run;
  }

  function list(): LayerRecord[] {
    return store.layers();
  }

  function resolve(idOrName: string): LayerRecord {
    const hex = idOrName.startsWith('sha256:') ? idOrName.slice(7) : idOrName;
    if (HEX.test(hex)) {
      const rec = store.getLayer(`sha256:${hex}`);
      if (rec) return rec;
    } else if (/^[0-9a-f]{12,63}$/.test(hex)) {
      const matches = store.layersByPrefix(hex, 2);
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) {
        const n = store.layersByPrefix(hex, Number.MAX_SAFE_INTEGER).length;
        throw new InvalidArgumentError(`layer prefix "${idOrName}" is ambiguous (${n} layers)`);
      }
    }
    if (TAG.test(idOrName)) {
      const id = store.getTag(idOrName);
      const rec = id === undefined ? undefined : store.getLayer(id);
      if (rec) return rec;
    }
    throw new NotFoundError(`layer "${idOrName}" not found; \`tsvol layer ls\` lists layers`);
  }

  function diffDir(layer: LayerRecord): string {
    return layout.diffDir(digestHex(layer.diffId));
  }

  /** Runs `fn` with a fresh stage in tmp/ (locked while it lives), deleted afterwards whatever happens. */
  async function withStage<T>(kind: string, fn: (stage: string) => Promise<T>): Promise<T> {
    const stage = await createStage(layout.tmpDir, kind);
    try {
      return await fn(stage.dir);
    } finally {
      await stage.remove();
    }
  }

  const recordOf = (parent: LayerRecord | undefined, d: StagedLayer | { diffId: string; size: number; files: number }): LayerRecord => ({
    id: chainId(parent?.id, d.diffId),
    diffId: d.diffId,
    parent: parent?.id,
    size: d.size,
    files: d.files,
    createdAt: new Date().toISOString(),
  });

  /**
   * Container layers whose unfinished commit moved, or is about to move, their upper directory to
   * diffs/<hex> (ContainerRecord.next.diff): hex → container name. Such a directory has no layer record
   * yet, but it is no debris: it is the container's until its journal is settled (containers.ts).
   */
  function journaledDiffs(): Map<string, string> {
    const out = new Map<string, string>();
    for (const c of store.containers()) if (c.next?.diff !== undefined) out.set(digestHex(c.next.diff), c.name);
    return out;
  }

  /**
   * Makes a layer visible; in the queue. The diff directory is stored once per DiffID. When no layer uses
   * the DiffID yet, the split file `split` is renamed into diffs/ and `placeDiff` puts the directory at
   * its name (a stage's diff renamed, or a container's upper moved whole: adoptTree); whatever was at that
   * name is debris of an import killed before its record (possibly torn: its rename may have reached the
   * disk before its files), and is replaced, unless a container's journal names it (journaledDiffs). Then
   * one syncfs makes the files and the renames durable, and only then is the record committed: the record
   * is the truth. A kill -9 at any instant leaves the layer whole with its record, or no record (gc deletes
   * the diff, and the next publish of that DiffID replaces it; a moved upper goes back to its container).
   */
  async function publish(split: string | undefined, rec: LayerRecord, placeDiff: (target: string) => void, alsoCommit: readonly Change[] = []): Promise<void> {
    if (store.diffUsers(rec.diffId) === 0) {
      if (split === undefined || !fs.existsSync(split)) {
        throw new InternalError(`layer ${rec.id}: its diff ${rec.diffId} is no longer stored (removed while it was being published); retry`);
      }
      const hex = digestHex(rec.diffId);
      const target = layout.diffDir(hex);
      if (fs.existsSync(target)) {
        // Only when something is there (a crash left it): the journals are read only then.
        const owner = journaledDiffs().get(hex);
        if (owner !== undefined) {
          throw new ConflictError(`layer ${rec.id}: its directory is container layer "${owner}"'s upper, moved there by a commit that stopped midway; run \`tsvol container mount ${owner}\` (which finishes it), then retry`);
        }
      }
      // Debris at the name goes through the deleter (never across a mount); a mount found in it stays in tmp/.
      const left = await discardDir(layout, target);
      if (left.length > 0) throw new ConflictError(`layer ${rec.id}: mounts were found inside the debris of an earlier publish: ${left.join(', ')}; unmount them and retry`);
      fs.renameSync(split, layout.splitFile(hex));
      placeDiff(target);
      crashPoint('layer-publish:after-rename');
    }
    syncFilesystem(layout.diffsDir);
    await store.commit([{ op: 'layer.put', layer: rec }, ...alsoCommit]);
  }

  /** A StagedLayer's own parts, by the object the store handed out. */
  const stagedParts = new WeakMap<StagedLayer, LayerStageFiles | undefined>();

  async function stageLayer(input: UnpackInput, start: UnpackStart = {}): Promise<StagedLayer> {
    const stage = await createStage(layout.tmpDir, 'import');
    try {
      const files = layerStageFiles(stage.dir);
      fs.mkdirSync(files.diff, { mode: 0o755 });
      // The unpack itself runs on a worker thread (#11); the stage, its lock and the publish stay here. The
      // worker has stopped writing into the stage by the time this settles, failed or not.
      const d = await unpackIntoStageOffThread({ dir: stage.dir, diff: files.diff, split: files.split }, input, start);
      const staged: StagedLayer = { ...d, discard: async () => void (await stage.remove()) };
      stagedParts.set(staged, files);
      return staged;
    } catch (err) {
      await stage.remove();
      throw err;
    }
  }

  function reuseDiff(diffId: string): StagedLayer | undefined {
    const l = store.layerWithDiff(diffId);
    if (l === undefined) return undefined;
    const staged: StagedLayer = { diffId, size: l.size, files: l.files, discard: async () => undefined };
    stagedParts.set(staged, undefined);
    return staged;
  }

  async function publishLayer(staged: StagedLayer, parentRef?: string): Promise<{ layer: LayerRecord; created: boolean }> {
    if (!stagedParts.has(staged)) throw new InternalError('publishLayer: not a layer this store staged');
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      const rec = recordOf(parent, staged);
      const existing = store.getLayer(rec.id);
      if (existing) return { layer: existing, created: false };
      const parts = stagedParts.get(staged);
      await publish(parts?.split, rec, (target) => fs.renameSync(parts!.diff, target)); // unpacked into the stage's diff already
      return { layer: rec, created: true };
    });
  }

  async function importLayer(input: AsyncIterable<Buffer> | NodeJS.ReadableStream, parentRef?: string): Promise<LayerRecord> {
    if (parentRef !== undefined) resolve(parentRef); // an unknown parent fails before anything is read
    const staged = await stageLayer(input as AsyncIterable<Buffer>);
    try {
      return (await publishLayer(staged, parentRef)).layer;
    } finally {
      await staged.discard();
    }
  }

  async function adoptTree(parentRef: string | undefined, hooks: AdoptHooks): Promise<LayerRecord | undefined> {
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      const dir = await hooks.prepare();
      if (dir === undefined) return undefined;
      return withStage('adopt', async (stage) => {
        // The DiffID and the split file straight from one walk of the tree, on a worker thread (#13).
        const split = layerStageFiles(stage).split;
        const { diffId, stats } = await hashTreeInWorker(dir, split);
        const made = recordOf(parent, { diffId, size: stats.size, files: stats.files });
        const existing = store.getLayer(made.id);
        const rec = existing ?? made;
        // The tree becomes the layer's directory, by one rename (#13: no link per file, and no name per
        // file to delete afterwards), when no layer has this diff yet; else it stays for the caller.
        const moves = existing === undefined && store.diffUsers(rec.diffId) === 0;
        await hooks.beforePublish(rec, moves);
        if (existing) await store.commit(hooks.publishWith(rec));
        else {
          // The syncfs in publish also flushes the files' data, written by the container and never synced.
          const place = (target: string): void => {
            fs.renameSync(dir, target);
            crashPoint('adopt:after-move');
            toLayerForm(target);
          };
          await publish(split, rec, place, hooks.publishWith(rec));
        }
        await hooks.afterPublish(rec);
        return rec;
      });
    });
  }

  /**
   * Deletes what is in diffs/ and no layer record uses (call in the queue): diff directories, split files
   * and short links of the layers just deleted, and those a kill -9 left: a diff published by an import or
   * commit killed before its record was committed, or the split file and short link of a diff whose
   * directory had just been moved into tmp/ to be deleted (discard.ts: STAGED_CRASH). Returns the names
   * removed and the mountpoints left in place. One readdir of diffs/ and one query.
   */
  async function discardUnusedDiffs(): Promise<{ removed: string[]; left: string[] }> {
    const used = store.diffIds();
    // A diff directory a container's journal names is that container's upper, moved by a commit that
    // stopped before its record (publish): its files are the container's, never debris.
    const journaled = journaledDiffs();
    const removed: string[] = [];
    const left: string[] = [];
    for (const e of fs.readdirSync(layout.diffsDir, { withFileTypes: true })) {
      const hex = e.name.replace(/\.(split|link)$/, '');
      if (used.has(`sha256:${hex}`) || journaled.has(hex)) continue;
      if (e.name.endsWith('.link')) removeShortLink(layout, hex);
      // Anything else that is not a directory (a split file; a short link's temporary file, left by a
      // kill while it was written) is a file: only a directory can have a mount inside.
      else if (!e.isDirectory()) discardFile(path.join(layout.diffsDir, e.name));
      else left.push(...(await discardDir(layout, layout.diffDir(hex))));
      removed.push(e.name);
    }
    return { removed, left };
  }

  async function* exportLayer(idOrName: string): AsyncGenerator<Buffer> {
    const rec = resolve(idOrName);
    const hex = digestHex(rec.diffId);
    yield* replaySplit(layout.splitFile(hex), layout.diffDir(hex));
  }

  function history(idOrName: string): LayerRecord[] {
    const out: LayerRecord[] = [];
    for (let rec: LayerRecord | undefined = resolve(idOrName); rec; rec = rec.parent ? store.getLayer(rec.parent) : undefined) out.push(rec);
    return out;
  }

  /** What holds `rec`, named for an error message: children, container layers, tags, holdLayer holders. */
  function holders(rec: LayerRecord): string[] {
    const out = store.childrenOf(rec.id).map((id) => `child layer ${id.slice(7, 19)}`);
    for (const c of store.containersOn(rec.id)) out.push(`container layer "${c}"`);
    for (const t of store.tagsOf(rec.id)) out.push(`tag "${t}"`);
    for (const i of store.imagesOn(rec.id)) out.push(`image "${i}"`);
    out.push(...store.holdsOf(rec.id).sort());
    return out;
  }

  /**
   * Deletes a deleted layer's diff directory, split file and short link (call once its record is gone and
   * no other layer uses its DiffID: the diff directory is shared by every chain with that DiffID). The
   * directory is moved into tmp/ first (discard.ts), so no half-deleted diff is ever visible under its
   * name, then deleted off the event loop, never across a mountpoint; returns the mountpoints left.
   */
  async function deleteDiff(rec: LayerRecord): Promise<string[]> {
    const hex = digestHex(rec.diffId);
    const staged = await stageForDelete(layout, layout.diffDir(hex));
    discardFile(layout.splitFile(hex));
    removeShortLink(layout, hex);
    return staged === undefined ? [] : staged.remove();
  }

  /**
   * Commits `changes` (the layer's deletion among them), then deletes its diff unless another layer uses
   * it. A mount found inside the diff is left in place (in tmp/), and said: the layer is deleted anyway.
   */
  async function deleteLayer(rec: LayerRecord, changes: readonly Change[]): Promise<void> {
    await store.commit(changes);
    if (store.diffUsers(rec.diffId) > 0) return;
    const left = await deleteDiff(rec);
    if (left.length > 0) throw new ConflictError(`layer ${rec.id} deleted, but mounts inside its directory were left: ${left.join(', ')}; unmount them and run \`tsvol layer gc\``);
  }

  function refuseIfHeld(rec: LayerRecord): void {
    const held = holders(rec);
    if (held.length > 0) throw new InUseError(`layer ${rec.id} is held by ${held.join(', ')}; remove those first`);
  }

  return {
    importLayer,
    stageLayer,
    reuseDiff,
    publishLayer,
    adoptTree,
    exportLayer,
    resolve,
    list,
    history,
    diffDir,
    meta: store,
    async holdLayer(idOrName, holder) {
      checkHolder(holder);
      return locked(async () => {
        const rec = resolve(idOrName);
        await store.commit([holdChange(rec.id, holder)]);
        return rec;
      });
    },
    async releaseLayer(idOrName, holder) {
      await locked(async () => {
        const rec = resolve(idOrName);
        await store.commit([releaseChange(rec.id, holder)]);
      });
    },
    listHolds() {
      return store.holds().map((h) => ({ layer: h.layer, holder: h.holder }));
    },
    async tag(idOrName, name) {
      if (!TAG.test(name) || HEX.test(name)) throw new InvalidArgumentError(`invalid tag "${name}": use letters, digits and _.:- (not a bare digest)`);
      await locked(async () => {
        const rec = resolve(idOrName);
        await store.commit([{ op: 'tag.put', name, layer: rec.id }]);
      });
    },
    async remove(idOrName) {
      return locked(async () => {
        if (TAG.test(idOrName) && !HEX.test(idOrName) && store.getTag(idOrName) !== undefined) {
          // A tag: untag, and delete the layer too when that tag was all that held it (like docker rmi),
          // in one commit.
          const rec = resolve(idOrName);
          const untag: Change = { op: 'tag.delete', name: idOrName };
          const others = holders(rec).filter((h) => h !== `tag "${idOrName}"`);
          if (others.length > 0) {
            await store.commit([untag]);
            return { untagged: [idOrName], deleted: [] };
          }
          await deleteLayer(rec, [untag, { op: 'layer.delete', id: rec.id }]);
          return { untagged: [idOrName], deleted: [rec.id] };
        }
        const rec = resolve(idOrName);
        refuseIfHeld(rec);
        await deleteLayer(rec, [{ op: 'layer.delete', id: rec.id }]);
        return { untagged: [], deleted: [rec.id] };
      });
    },
    sweepUnusedDiffs() {
      return locked(discardUnusedDiffs);
    },
    async gc() {
      return locked(async () => {
        // One pass over the store builds how many things hold each layer; removing a layer releases its
        // parent, which is removed in turn once nothing else holds it. O(layers), not a scan per layer.
        const layers = list();
        const byId = new Map(layers.map((l) => [l.id, l]));
        const holdCount = new Map<string, number>();
        const hold = (id: string): void => void holdCount.set(id, (holdCount.get(id) ?? 0) + 1);
        for (const l of layers) if (l.parent !== undefined) hold(l.parent);
        for (const c of store.containers()) {
          hold(c.from);
          if (c.next !== undefined) hold(c.next.from); // a journal's layer stays until the journal is settled
        }
        for (const t of store.tags()) hold(t.layer);
        for (const h of store.holds()) hold(h.layer);
        for (const i of store.images()) hold(i.top);

        const doomed: LayerRecord[] = [];
        const unheld = layers.filter((l) => !holdCount.has(l.id));
        for (let rec = unheld.pop(); rec !== undefined; rec = unheld.pop()) {
          doomed.push(rec);
          if (rec.parent === undefined) continue;
          const left = holdCount.get(rec.parent)! - 1;
          if (left > 0) holdCount.set(rec.parent, left);
          else {
            holdCount.delete(rec.parent);
            const parent = byId.get(rec.parent);
            if (parent) unheld.push(parent);
          }
        }
        // Children come before their parents in `doomed`: one commit deletes them all, in that order.
        await store.commit(doomed.map((rec) => ({ op: 'layer.delete', id: rec.id }) as const));
        const removed = doomed.map((rec) => rec.id);
        // Stages whose owner died (and directories being deleted when a process died); a live one (a
        // copy-driver commit writing its changes before it enters this store's queue) is left alone.
        const sweep = sweepLayerStages(layout);
        const left = await sweep.done;
        removed.push(...sweep.dead.map((e) => `tmp/${e}`));
        // Diffs no layer uses: those of the layers just deleted, and any left by a process killed.
        const ofDoomed = new Set(doomed.map((l) => digestHex(l.diffId)));
        const unused = await discardUnusedDiffs();
        left.push(...unused.left);
        removed.push(...unused.removed.filter((name) => !ofDoomed.has(name.replace(/\.(split|link)$/, ''))).map((name) => `diffs/${name}`));
        if (left.length > 0) throw new ConflictError(`gc removed ${removed.length} entries, but left mounts it found inside them: ${left.join(', ')}; unmount them and run gc again`);
        return { removed };
      });
    },
  };
}
