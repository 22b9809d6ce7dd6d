/**
 * LayerStore: content-addressed read-only layers (issue #5). Layout under TSVOL_DATA/layers:
 *
 *   diffs/<diffid-hex>/         a diff's unpacked contents, stored once whatever its parent
 *   diffs/<diffid-hex>.split    raw tar headers for byte-exact export (the tar-split idea)
 *   chains/<chainid-hex>.json   one layer: ChainID, DiffID, parent, size, file count (durable JSON)
 *   tags/<name>                 a name for a layer (contains the ChainID)
 *   holds/<chainid-hex>/<holder> other users of a layer (volumes built on it), one file each
 *   tmp/                        imports being staged; debris after a crash, swept by gc
 *   store.lock                  proper-lockfile: one mutation at a time, across the CLI and the server
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
import { fsyncDir, writeFileDurable } from '../sys/durable.js';
import { syncfs } from '../sys/libc.js';
import { acquireLock } from '../sys/lock.js';
import { decompressed } from './tar/gzip.js';
import { TarReader } from './tar/reader.js';
import { linkTree, replaySplit, splitOnly, unpackLayer } from './unpack.js';
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

  async function locked<T>(work: () => Promise<T>): Promise<T> {
    const release = await acquireLock(lockFile, 'tsvol layer operation', 30_000, () => undefined);
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
    return fs
      .readdirSync(dirs.chains)
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

  async function importLayer(input: AsyncIterable<Buffer> | NodeJS.ReadableStream, parentRef?: string): Promise<LayerRecord> {
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      const stage = path.join(dirs.tmp, `import-${nanoid(10)}`);
      const stageDiff = path.join(stage, 'diff');
      fs.mkdirSync(stageDiff, { recursive: true, mode: 0o755 });
      try {
        const hash = createHash('sha256');
        const reader = new TarReader(hashed(decompressed(input as AsyncIterable<Buffer>), hash));
        const splitFd = fs.openSync(path.join(stage, 'split'), 'wx', 0o600);
        let stats;
        try {
          stats = await unpackLayer(reader, stageDiff, splitFd);
        } catch (err) {
          throw new InvalidArgumentError(`layer tar refused: ${describeError(err)}`, { cause: err });
        } finally {
          fs.closeSync(splitFd);
        }
        const diffId = `sha256:${hash.digest('hex')}`;
        const id = chainId(parent?.id, diffId);
        const existing = readRecord(hexOf(id));
        if (existing) return existing;
        const target = path.join(dirs.diffs, hexOf(diffId));
        if (!fs.existsSync(target)) {
          // The same diff on another parent is stored once: only publish it if new.
          fs.renameSync(path.join(stage, 'split'), `${target}.split`);
          fs.renameSync(stageDiff, target);
        }
        // One syncfs makes the unpacked files and the renames durable before the record says they exist.
        const fd = fs.openSync(dirs.diffs, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
        try {
          syncfs(fd);
        } finally {
          fs.closeSync(fd);
        }
        const rec: LayerRecord = { id, diffId, parent: parent?.id, size: stats.size, files: stats.files, createdAt: new Date().toISOString() };
        writeFileDurable(path.join(dirs.chains, `${hexOf(id)}.json`), JSON.stringify(rec));
        return rec;
      } finally {
        fs.rmSync(stage, { recursive: true, force: true });
      }
    });
  }

  async function adoptTree(parentRef: string | undefined, hooks: AdoptHooks): Promise<LayerRecord | undefined> {
    return locked(async () => {
      const parent = parentRef === undefined ? undefined : resolve(parentRef);
      const dir = hooks.prepare();
      if (dir === undefined) return undefined;
      const stage = path.join(dirs.tmp, `adopt-${nanoid(10)}`);
      fs.mkdirSync(stage, { mode: 0o700 });
      try {
        const hash = createHash('sha256');
        const splitFd = fs.openSync(path.join(stage, 'split'), 'wx', 0o600);
        let stats;
        try {
          stats = await splitOnly(new TarReader(hashed(writeTree(dir), hash)), splitFd);
        } finally {
          fs.closeSync(splitFd);
        }
        const diffId = `sha256:${hash.digest('hex')}`;
        const id = chainId(parent?.id, diffId);
        const existing = readRecord(hexOf(id));
        const rec: LayerRecord = existing ?? { id, diffId, parent: parent?.id, size: stats.size, files: stats.files, createdAt: new Date().toISOString() };
        hooks.beforePublish(rec);
        if (!existing) {
          const target = path.join(dirs.diffs, hexOf(diffId));
          if (!fs.existsSync(target)) {
            // The same diff on another parent is stored once: only publish it if new.
            linkTree(dir, path.join(stage, 'diff'));
            fs.renameSync(path.join(stage, 'split'), `${target}.split`);
            fs.renameSync(path.join(stage, 'diff'), target);
          }
          // One syncfs makes the files' data (written by the container, never synced) and the renames
          // durable before the record says the layer exists.
          const fd = fs.openSync(dirs.diffs, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
          try {
            syncfs(fd);
          } finally {
            fs.closeSync(fd);
          }
          writeFileDurable(path.join(dirs.chains, `${hexOf(id)}.json`), JSON.stringify(rec));
        }
        hooks.afterPublish(rec);
        return rec;
      } finally {
        fs.rmSync(stage, { recursive: true, force: true });
      }
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

  function holders(rec: LayerRecord): string[] {
    const out = list()
      .filter((l) => l.parent === rec.id)
      .map((l) => `child layer ${l.id.slice(7, 19)}`);
    const containers = path.join(root, 'containers');
    for (const f of fs.existsSync(containers) ? fs.readdirSync(containers) : []) {
      if (!f.endsWith('.json')) continue;
      const c = JSON.parse(fs.readFileSync(path.join(containers, f), 'utf8')) as { from: string };
      if (c.from === rec.id) out.push(`container layer "${f.slice(0, -5)}"`);
    }
    for (const t of fs.readdirSync(dirs.tags)) {
      if (fs.readFileSync(path.join(dirs.tags, t), 'utf8').trim() === rec.id) out.push(`tag "${t}"`);
    }
    const held = path.join(dirs.holds, hexOf(rec.id));
    for (const h of fs.existsSync(held) ? fs.readdirSync(held).sort() : []) out.push(decodeURIComponent(h));
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

  function removeUnlocked(rec: LayerRecord): void {
    const held = holders(rec);
    if (held.length > 0) throw new InUseError(`layer ${rec.id} is held by ${held.join(', ')}; remove those first`);
    fs.rmSync(path.join(dirs.chains, `${hexOf(rec.id)}.json`));
    fsyncDir(dirs.chains);
    // The diff directory is shared by every chain with this DiffID: delete it only when none is left.
    if (!list().some((l) => l.diffId === rec.diffId)) {
      const trash = path.join(dirs.tmp, `rm-${nanoid(10)}`);
      fs.renameSync(diffDir(rec), trash);
      fs.rmSync(`${diffDir(rec)}.split`, { force: true });
      removeShortLink(`${diffDir(rec)}.link`);
      fs.rmSync(trash, { recursive: true, force: true });
    }
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
        writeFileDurable(path.join(dir, encodeURIComponent(holder)), holder);
        return rec;
      });
    },
    async releaseLayer(idOrName, holder) {
      await locked(async () => {
        const rec = resolve(idOrName);
        // force: releasing what is not held changes nothing.
        fs.rmSync(path.join(dirs.holds, hexOf(rec.id), encodeURIComponent(holder)), { force: true });
      });
    },
    listHolds() {
      const out: { layer: string; holder: string }[] = [];
      for (const hex of fs.readdirSync(dirs.holds)) {
        for (const h of fs.readdirSync(path.join(dirs.holds, hex))) out.push({ layer: `sha256:${hex}`, holder: decodeURIComponent(h) });
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
        const removed: string[] = [];
        for (let found = true; found; ) {
          found = false;
          for (const rec of list()) {
            if (holders(rec).length === 0) {
              removeUnlocked(rec);
              removed.push(rec.id);
              found = true;
            }
          }
        }
        for (const e of fs.readdirSync(dirs.tmp)) {
          fs.rmSync(path.join(dirs.tmp, e), { recursive: true, force: true });
          removed.push(`tmp/${e}`);
        }
        const used = new Set(list().map((l) => hexOf(l.diffId)));
        for (const e of fs.readdirSync(dirs.diffs)) {
          const hex = e.replace(/\.(split|link)$/, '');
          if (!used.has(hex)) {
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
