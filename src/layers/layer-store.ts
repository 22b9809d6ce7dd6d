/**
 * LayerStore: content-addressed read-only layers (issue #5). Layout under TSVOL_DATA/layers:
 *
 *   diffs/<diffid-hex>/         a diff's unpacked contents, stored once whatever its parent
 *   diffs/<diffid-hex>.split    raw tar headers for byte-exact export (the tar-split idea)
 *   chains/<chainid-hex>.json   one layer: ChainID, DiffID, parent, size, file count (durable JSON)
 *   tags/<name>                 a name for a layer (contains the ChainID)
 *   holds/<chainid-hex>/<holder> other users of a layer (volumes built on it), one file each
 *   tmp/<kind>-<id>/            stages (imports, commits), each locked by its live owner (sys/staging.ts);
 *                               gc sweeps those whose owner died
 *   store                       flock(2): one mutation at a time, across the CLI and the server
 *
 * Names starting with '.' are never records: they are writeFileDurable's temp files (`.<name>.tmp-<hex>`),
 * left by a crash mid-write. Every listing skips them, tags cannot start with '.', and a holder's file name
 * never does (holderFile), so a torn write never counts as a tag or a hold (#9 §10c); gc deletes them.
 *
 * A layer is held by its child layers, by container layers on it (containers.ts) and by tags.
 *
 * A layer's DiffID is the sha256 of its uncompressed tar; its ChainID is the DiffID for a base layer, else
 * sha256("<parent ChainID> <DiffID>") (OCI image spec). An import is staged in tmp/ and published by one
 * rename, then made durable with syncfs before its record is written: the record is the truth, so a crash
 * at any instant leaves either the whole layer or none visible.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { nanoid } from 'nanoid';
import { InUseError, InvalidArgumentError, NotFoundError, describeError } from '../errors.js';
import { fsyncDir, isTempName, syncFilesystem, writeFileDurable } from '../sys/durable.js';
import { acquireLock } from '../sys/lock.js';
import { createStage, sweepStages } from '../sys/staging.js';
import { decompressed } from './tar/gzip.js';
import { TarReader } from './tar/reader.js';
import { linkTree, replaySplit, splitOnly, unpackLayer, type UnpackStats } from './unpack.js';
import { writeTree } from './tar/writer.js';

/** One read-only layer. */
export interface LayerRecord {
  /** ChainID, `sha256:<hex>`. */
  readonly id: string;
  readonly diffId: string;
  readonly parent: string | undefined;
  /** Bytes of regular-file content in this layer's own diff. */
  readonly size: number;
  readonly files: number;
  readonly createdAt: string;
}

/** What adoptTree's caller does around publishing (see LayerStore.adoptTree). */
export interface AdoptHooks {
  prepare(): string | undefined;
  beforePublish(layer: LayerRecord): void;
  afterPublish(layer: LayerRecord): void;
}

/** The layer store. */
export interface LayerStore {
  /** Imports a layer tar (plain or gzip) on top of `parent`; returns the layer (existing if identical). */
  importLayer(input: AsyncIterable<Buffer> | NodeJS.ReadableStream, parent?: string): Promise<LayerRecord>;
  /**
   * A layer on `parent` made from a tree (an overlay upper directory) without copying file data: its
   * DiffID is hashed from the tree's tar, and the layer's directory hard-links the tree's files, so the
   * tree must never change again. Under the store lock: `hooks.prepare` returns the tree (or undefined to
   * give up: adoptTree then returns undefined); `hooks.beforePublish` runs once the layer is known and
   * before it becomes visible; `hooks.afterPublish` once it is durable. Both run when the layer already
   * existed too. containers.ts journals its switch to the new layer in them.
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
   * Removes every layer held by nothing (no child, no tag), repeatedly from the top down, then staging
   * debris and diff directories no layer uses. Returns what it removed.
   */
  gc(): Promise<{ removed: string[] }>;
  /** The directory holding a layer's unpacked diff. */
  diffDir(layer: LayerRecord): string;
  /**
   * Records that `holder` (e.g. `volume "db"`) uses the layer: rm refuses and gc skips it, naming the
   * holder, until releaseLayer. Idempotent.
   */
  holdLayer(idOrName: string, holder: string): Promise<LayerRecord>;
  /** Drops a hold; releasing a hold that does not exist is a no-op. */
  releaseLayer(idOrName: string, holder: string): Promise<void>;
  /** Every hold from holdLayer: O(holds), for start-up repair of holds whose holder is gone. */
  listHolds(): { layer: string; holder: string }[];
}

const HEX = /^[0-9a-f]{64}$/;
const TAG = /^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,127}$/;

/** Record names in a listing: writeFileDurable's temp files (dot-names) are not records. */
function records(names: string[]): string[] {
  return names.filter((n) => !isTempName(n));
}

/**
 * The file name of a holder in holds/<hex>/: URI-encoded, with a leading '.' encoded too, so that no
 * holder's file ever looks like a temp file (or is `.` or `..`).
 */
export function holderFile(holder: string): string {
  return encodeURIComponent(holder).replace(/^\./, '%2E');
}

function hexOf(digest: string): string {
  return digest.slice('sha256:'.length);
}

/** OCI ChainID. */
export function chainId(parent: string | undefined, diffId: string): string {
  if (parent === undefined) return diffId;
  return `sha256:${createHash('sha256').update(`${parent} ${diffId}`).digest('hex')}`;
}

async function* hashed(input: AsyncIterable<Buffer>, hash: ReturnType<typeof createHash>): AsyncGenerator<Buffer> {
  for await (const chunk of input) {
    hash.update(chunk);
    yield chunk;
  }
}

/** Opens the layer store under `root` (TSVOL_DATA/layers). */
export function createLayerStore(root: string): LayerStore {
  const dirs = {
    diffs: path.join(root, 'diffs'),
    chains: path.join(root, 'chains'),
    tags: path.join(root, 'tags'),
    tmp: path.join(root, 'tmp'),
    holds: path.join(root, 'holds'),
  };
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  const lockFile = path.join(root, 'store');

  /**
   * Runs `work` under the store's flock. Long synchronous work inside (syncfs, rmSync on a slow disk) is
   * fine: a flock has no heartbeat to starve and cannot be lost while this process lives (sys/lock.ts).
   */
  async function locked<T>(work: () => Promise<T>): Promise<T> {
    const release = await acquireLock(lockFile, 'tsvol layer operation', 30_000);
    try {
      return await work();
    } finally {
      await release();
    }
  }

  function readRecord(hex: string): LayerRecord | undefined {
    try {
      return JSON.parse(fs.readFileSync(path.join(dirs.chains, `${hex}.json`), 'utf8')) as LayerRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  function list(): LayerRecord[] {
    return records(fs.readdirSync(dirs.chains))
      .filter((f) => f.endsWith('.json'))
      .map((f) => readRecord(f.slice(0, -5)))
      .filter((r): r is LayerRecord => r !== undefined);
  }

  function resolve(idOrName: string): LayerRecord {
    const hex = idOrName.startsWith('sha256:') ? idOrName.slice(7) : idOrName;
    if (HEX.test(hex)) {
      const rec = readRecord(hex);
      if (rec) return rec;
    } else if (/^[0-9a-f]{12,63}$/.test(hex)) {
      const matches = fs.readdirSync(dirs.chains).filter((f) => f.startsWith(hex) && f.endsWith('.json'));
      if (matches.length === 1) return readRecord(matches[0]!.slice(0, -5))!;
      if (matches.length > 1) throw new InvalidArgumentError(`layer prefix "${idOrName}" is ambiguous (${matches.length} layers)`);
    }
    if (TAG.test(idOrName)) {
      try {
        const id = fs.readFileSync(path.join(dirs.tags, idOrName), 'utf8').trim();
        const rec = readRecord(hexOf(id));
        if (rec) return rec;
      } catch (err) {
        // ENOENT: no such tag; fall through to "not found".
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    throw new NotFoundError(`layer "${idOrName}" not found; \`tsvol layer ls\` lists layers`);
  }

  function diffDir(layer: LayerRecord): string {
    return path.join(dirs.diffs, hexOf(layer.diffId));
  }

  /** Runs `fn` with a fresh stage in tmp/ (locked while it lives), deleted afterwards whatever happens. */
  async function withStage<T>(kind: string, fn: (stage: string) => Promise<T>): Promise<T> {
    const stage = await createStage(dirs.tmp, kind);
    try {
      return await fn(stage.dir);
    } finally {
      await stage.remove();
    }
  }

  /**
   * Reads a layer tar through `consume` (which writes the split file to the fd it is given), hashing it
   * for the DiffID on the way; returns the record the layer would have on `parent`.
   */
  async function readTar(
    stage: string,
    tar: AsyncIterable<Buffer>,
    parent: LayerRecord | undefined,
    consume: (reader: TarReader, splitFd: number) => Promise<UnpackStats>,
  ): Promise<LayerRecord> {
    const hash = createHash('sha256');
    const splitFd = fs.openSync(path.join(stage, 'split'), 'wx', 0o600);
    let stats: UnpackStats;
    const reader = new TarReader(hashed(tar, hash));
    try {
      stats = await consume(reader, splitFd);
    } finally {
      fs.closeSync(splitFd);
      await reader.close(); // a refused entry leaves the input half read: close it (a no-op at the end)
    }
    const diffId = `sha256:${hash.digest('hex')}`;
    return { id: chainId(parent?.id, diffId), diffId, parent: parent?.id, size: stats.size, files: stats.files, createdAt: new Date().toISOString() };
  }

  /**
   * Makes a staged layer visible. The diff directory is stored once per DiffID: only a new one is made
   * (`makeDiff` fills stage/diff) and renamed into diffs/ with its split file. Then one syncfs makes the
   * files and the renames durable, and only then is the record written: the record is the truth.
   */
  function publish(stage: string, rec: LayerRecord, makeDiff: (dir: string) => void): void {
    const target = path.join(dirs.diffs, hexOf(rec.diffId));
    if (!fs.existsSync(target)) {
      makeDiff(path.join(stage, 'diff'));
      fs.renameSync(path.join(stage, 'split'), `${target}.split`);
      fs.renameSync(path.join(stage, 'diff'), target);
    }
    syncFilesystem(dirs.diffs);
    writeFileDurable(path.join(dirs.chains, `${hexOf(rec.id)}.json`), JSON.stringify(rec));
  }

  async function importLayer(input: AsyncIterable<Buffer> | NodeJS.ReadableStream, parentRef?: string): Promise<LayerRecord> {
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      return withStage('import', async (stage) => {
        const stageDiff = path.join(stage, 'diff');
        fs.mkdirSync(stageDiff, { mode: 0o755 });
        const rec = await readTar(stage, decompressed(input as AsyncIterable<Buffer>), parent, (reader, splitFd) =>
          unpackLayer(reader, stageDiff, splitFd).catch((err: unknown) => {
            throw new InvalidArgumentError(`layer tar refused: ${describeError(err)}`, { cause: err });
          }),
        );
        const existing = readRecord(hexOf(rec.id));
        if (existing) return existing;
        publish(stage, rec, () => undefined); // unpacked into stage/diff already
        return rec;
      });
    });
  }

  async function adoptTree(parentRef: string | undefined, hooks: AdoptHooks): Promise<LayerRecord | undefined> {
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      const dir = hooks.prepare();
      if (dir === undefined) return undefined;
      return withStage('adopt', async (stage) => {
        const made = await readTar(stage, writeTree(dir), parent, splitOnly);
        const existing = readRecord(hexOf(made.id));
        const rec = existing ?? made;
        hooks.beforePublish(rec);
        // The syncfs in publish also flushes the files' data, written by the container and never synced.
        if (!existing) publish(stage, rec, (diff) => linkTree(dir, diff));
        hooks.afterPublish(rec);
        return rec;
      });
    });
  }

  async function* exportLayer(idOrName: string): AsyncGenerator<Buffer> {
    const rec = resolve(idOrName);
    const dir = diffDir(rec);
    yield* replaySplit(`${dir}.split`, dir);
  }

  function history(idOrName: string): LayerRecord[] {
    const out: LayerRecord[] = [];
    for (let rec: LayerRecord | undefined = resolve(idOrName); rec; rec = rec.parent ? resolve(rec.parent) : undefined) out.push(rec);
    return out;
  }

  /** Container layers and the layer each sits on (containers.ts records; read here to find holders). */
  function containerBases(): { name: string; from: string }[] {
    const containers = path.join(root, 'containers');
    const out: { name: string; from: string }[] = [];
    for (const f of fs.existsSync(containers) ? records(fs.readdirSync(containers)) : []) {
      if (!f.endsWith('.json')) continue;
      const c = JSON.parse(fs.readFileSync(path.join(containers, f), 'utf8')) as { from: string };
      out.push({ name: f.slice(0, -5), from: c.from });
    }
    return out;
  }

  /** Every tag and the layer it names. */
  function tagTargets(): { tag: string; id: string }[] {
    return records(fs.readdirSync(dirs.tags)).map((tag) => ({ tag, id: fs.readFileSync(path.join(dirs.tags, tag), 'utf8').trim() }));
  }

  /** What holds `rec`, named for an error message: children, container layers, tags, holdLayer holders. */
  function holders(rec: LayerRecord): string[] {
    const out = list()
      .filter((l) => l.parent === rec.id)
      .map((l) => `child layer ${l.id.slice(7, 19)}`);
    for (const c of containerBases()) if (c.from === rec.id) out.push(`container layer "${c.name}"`);
    for (const t of tagTargets()) if (t.id === rec.id) out.push(`tag "${t.tag}"`);
    const held = path.join(dirs.holds, hexOf(rec.id));
    for (const h of fs.existsSync(held) ? records(fs.readdirSync(held)).sort() : []) out.push(decodeURIComponent(h));
    return out;
  }

  /** Removes a diff's short link (containers.ts: l/<4 chars>), if it has one. */
  function removeShortLink(linkFile: string): void {
    try {
      fs.rmSync(path.join(root, 'l', fs.readFileSync(linkFile, 'utf8').trim()), { force: true });
      fs.rmSync(linkFile);
    } catch (err) {
      // ENOENT: the diff was never mounted, so it has no short link.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /**
   * Deletes a layer's record and, unless another layer still uses its DiffID (the diff directory is
   * shared by every chain with that DiffID), its diff directory, split file and short link.
   */
  function deleteLayer(rec: LayerRecord, diffStillUsed: boolean): void {
    fs.rmSync(path.join(dirs.chains, `${hexOf(rec.id)}.json`));
    fsyncDir(dirs.chains);
    if (diffStillUsed) return;
    const trash = path.join(dirs.tmp, `rm-${nanoid(10)}`);
    fs.renameSync(diffDir(rec), trash);
    fs.rmSync(`${diffDir(rec)}.split`, { force: true });
    removeShortLink(`${diffDir(rec)}.link`);
    fs.rmSync(trash, { recursive: true, force: true });
  }

  function removeUnlocked(rec: LayerRecord): void {
    const held = holders(rec);
    if (held.length > 0) throw new InUseError(`layer ${rec.id} is held by ${held.join(', ')}; remove those first`);
    deleteLayer(rec, list().some((l) => l.id !== rec.id && l.diffId === rec.diffId));
  }

  return {
    importLayer,
    adoptTree,
    exportLayer,
    resolve,
    list,
    history,
    diffDir,
    async holdLayer(idOrName, holder) {
      if (holder === '' || holder.length > 200) throw new InvalidArgumentError('a layer holder needs a name of 1 to 200 characters');
      return locked(async () => {
        const rec = resolve(idOrName);
        const dir = path.join(dirs.holds, hexOf(rec.id));
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
        writeFileDurable(path.join(dir, holderFile(holder)), holder);
        return rec;
      });
    },
    async releaseLayer(idOrName, holder) {
      await locked(async () => {
        const rec = resolve(idOrName);
        // force: releasing what is not held changes nothing.
        fs.rmSync(path.join(dirs.holds, hexOf(rec.id), holderFile(holder)), { force: true });
      });
    },
    listHolds() {
      const out: { layer: string; holder: string }[] = [];
      for (const hex of records(fs.readdirSync(dirs.holds))) {
        for (const h of records(fs.readdirSync(path.join(dirs.holds, hex)))) out.push({ layer: `sha256:${hex}`, holder: decodeURIComponent(h) });
      }
      return out;
    },
    async tag(idOrName, name) {
      if (!TAG.test(name) || HEX.test(name)) throw new InvalidArgumentError(`invalid tag "${name}": use letters, digits and _.:- (not a bare digest)`);
      await locked(async () => {
        const rec = resolve(idOrName);
        writeFileDurable(path.join(dirs.tags, name), rec.id);
      });
    },
    async remove(idOrName) {
      return locked(async () => {
        const tagFile = path.join(dirs.tags, idOrName);
        if (TAG.test(idOrName) && !HEX.test(idOrName) && fs.existsSync(tagFile)) {
          // A tag: untag, and delete the layer too when that tag was all that held it (like docker rmi).
          const rec = resolve(idOrName);
          fs.rmSync(tagFile);
          fsyncDir(dirs.tags);
          if (holders(rec).length > 0) return { untagged: [idOrName], deleted: [] };
          removeUnlocked(rec);
          return { untagged: [idOrName], deleted: [rec.id] };
        }
        const rec = resolve(idOrName);
        removeUnlocked(rec);
        return { untagged: [], deleted: [rec.id] };
      });
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
        for (const c of containerBases()) hold(c.from);
        for (const t of tagTargets()) hold(t.id);
        for (const hex of records(fs.readdirSync(dirs.holds))) {
          if (records(fs.readdirSync(path.join(dirs.holds, hex))).length > 0) hold(`sha256:${hex}`);
        }
        const diffUsers = new Map<string, number>();
        for (const l of layers) diffUsers.set(l.diffId, (diffUsers.get(l.diffId) ?? 0) + 1);

        const removed: string[] = [];
        const unheld = layers.filter((l) => !holdCount.has(l.id));
        for (let rec = unheld.pop(); rec !== undefined; rec = unheld.pop()) {
          const users = diffUsers.get(rec.diffId)! - 1;
          diffUsers.set(rec.diffId, users);
          deleteLayer(rec, users > 0);
          removed.push(rec.id);
          if (rec.parent === undefined) continue;
          const left = holdCount.get(rec.parent)! - 1;
          if (left > 0) holdCount.set(rec.parent, left);
          else {
            holdCount.delete(rec.parent);
            const parent = byId.get(rec.parent);
            if (parent) unheld.push(parent);
          }
        }
        // Stages whose owner died; a live one (a copy-driver commit writing its changes before it takes
        // this lock) is left alone.
        const sweep = sweepStages(dirs.tmp);
        await sweep.done;
        removed.push(...sweep.dead.map((e) => `tmp/${e}`));
        // Temp files of writeFileDurable torn by a crash: under this lock, no write of ours is in flight.
        for (const d of [dirs.chains, dirs.tags, ...records(fs.readdirSync(dirs.holds)).map((h) => path.join(dirs.holds, h))]) {
          for (const e of fs.readdirSync(d)) {
            if (!isTempName(e)) continue;
            fs.rmSync(path.join(d, e), { recursive: true, force: true });
            removed.push(`${path.relative(root, d)}/${e}`);
          }
        }
        for (const e of fs.readdirSync(dirs.diffs)) {
          const hex = e.replace(/\.(split|link)$/, '');
          if (!diffUsers.get(`sha256:${hex}`)) {
            if (e.endsWith('.link')) removeShortLink(path.join(dirs.diffs, e));
            fs.rmSync(path.join(dirs.diffs, e), { recursive: true, force: true });
            removed.push(`diffs/${e}`);
          }
        }
        return { removed };
      });
    },
  };
}
