/**
 * VolumeService: what a volume driver does, without HTTP. Names and options are validated here, each
 * mutation runs under a per-volume lock, and the order of disk work and metadata commits is chosen so
 * that a crash at any instant leaves nothing half-made that start-up cannot repair (src/volumes/reconcile.ts):
 *
 * - Create: make volumes/<name>/_data, then commit the record. The record is the truth: a directory
 *   without one (a crash before the commit) is an orphan that start-up deletes. The directory's entry is
 *   not fsynced on its own: if power loss takes an acknowledged volume's (still empty) directory, the
 *   record survives and the first Mount rebuilds it with the recorded owner and mode, so nothing a caller
 *   was told is lost, and Create costs one shared WAL fsync instead of two.
 * - Remove: commit the deletion, then move the directory to tmp/ and delete it in the background.
 * - Mount: mount first, then commit the hold; if the commit fails, unmount again (a failed Mount leaves no
 *   hold, and dockerd never sends Unmount after one).
 * - Unmount: commit the release, then unmount; a failed unmount leaves a stale mount start-up removes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { nanoid } from 'nanoid';
import type { Config } from '../config.js';
import { InUseError, InvalidArgumentError, NotFoundError, describeError, errnoCode, wrapError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Layout } from '../store/layout.js';
import { nullProtoRecord, type VolumeRecord, type VolumeSpec, type VolumeStore } from '../store/volume-store.js';
import { syncFilesystem } from '../sys/durable.js';
import { bindMount as bindMountSync, bindMountAsync, unmountAsync } from '../sys/mount.js';
import { isMountRoot } from '../sys/libc.js';
import { makePrivateDir } from '../sys/private-dir.js';
import { claimDir, createStage, type Stage } from '../sys/staging.js';
import { createBindRoots, type BindRoots } from './bind-roots.js';
import { createKeyedMutex } from './keyed-mutex.js';
import { validateMountId, validateName } from './names.js';
import { copyTreeInWorker } from './clone.js';
import { createLayeredVolumes, type LayeredVolumes } from './layered.js';
import { parseOptions, toSpec } from './options.js';
import {
  applyProjectQuota,
  clearProjectQuota,
  imageUsage,
  makeImage,
  mountImage,
  mountedUsage,
  newProjectId,
  probeSizeBacking,
  projectUsage,
  type SizeBacking,
} from './size-limit.js';
import { createUsageCache, measureTree, type Usage } from './usage.js';

/** A volume as the driver reports it. */
export interface VolumeInfo {
  readonly name: string;
  readonly mountpoint: string;
  readonly createdAt: string;
  readonly status: Readonly<Record<string, unknown>>;
}

/** A volume in a listing: what List needs, without the Status that only Get shows. */
export interface VolumeSummary {
  readonly name: string;
  readonly mountpoint: string;
  readonly createdAt: string;
}

/** The volume driver's operations. */
export interface VolumeService {
  /** Creates volume `name`; `opts` is a Map because its keys come from the caller (#9 §4). */
  create(name: string, opts: ReadonlyMap<string, string>): Promise<void>;
  remove(name: string): Promise<void>;
  /** Takes a hold for mount ID `id` (validateMountId) and returns the mountpoint. */
  mount(name: string, id: string): Promise<string>;
  /** Releases one hold of `id`; an ID that holds nothing is a no-op. */
  unmount(name: string, id: string): Promise<void>;
  /** The mountpoint; cheap, never fails for a known volume. */
  path(name: string): string;
  get(name: string): VolumeInfo;
  list(): VolumeSummary[];
  /** Waits for background deletions to settle (tests, shutdown). */
  drain(): Promise<void>;
  /** Measures a volume's usage now (the CLI; Get shows the cached figure instead). */
  measureUsage(name: string): Promise<Usage>;
}

/** What the service needs. */
export interface VolumeServiceDeps {
  readonly config: Config;
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly log: Logger;
  /** How sized volumes are made here; probed from the data root when not given. */
  readonly sizeBacking?: SizeBacking;
  /** The layer manager for layer= volumes; opened on the data root when not given. */
  readonly layered?: LayeredVolumes;
}

/** Status kinds (#6): what `docker volume inspect` shows for each spec kind. */
const STATUS_KIND = { named: 'named', bind: 'bind', sized: 'sized', clone: 'clone-of', layered: 'layered' } as const;

/**
 * True for volumes whose files are only visible while a mount of their own is up: a loop-backed sized
 * volume (its ext4 image) and a layered volume (its overlay). That mount exists while the volume is held.
 */
export function hasOwnMount(spec: VolumeSpec): boolean {
  return (spec.kind === 'sized' && spec.backing === 'loop') || spec.kind === 'layered';
}

/** Total holds on a record. */
export function holdCount(rec: VolumeRecord): number {
  let n = 0;
  for (const c of rec.holds.values()) n += c;
  return n;
}

/**
 * How long Remove waits for the builder of a volume (another process: a CLI import or clone) to release
 * the directory's lock after committing its record: only the few instructions between that commit and
 * the release.
 */
const RELEASE_WAIT_MS = 5000;

/** Creates the service. Call reconcileVolumes first so that disk and records agree. */
export function createVolumeService(deps: VolumeServiceDeps): VolumeService & VolumeInternals {
  const { config, layout, store, log } = deps;
  const locks = createKeyedMutex();
  const bindRoots = createBindRoots(config.bindRoots, config.hostRoot);
  const deletions = new Set<Promise<void>>();
  const umask = process.umask();
  // Probed on the first sized Create, not at start-up: most servers and every CLI command never need it.
  let sizing = deps.sizeBacking;
  const sizeBacking = (): SizeBacking => (sizing ??= probeSizeBacking(layout.root));
  const layered = deps.layered ?? createLayeredVolumes(layout);
  // Loop devices: the host's devtmpfs (the managed plugin's own /dev has no loop nodes; src/sys/loop.ts).
  const devDir = path.join(config.hostRoot ?? '/', 'dev');
  const usage = createUsageCache((name, err) => log.warn({ volume: name, err: describeError(err) }, 'measuring volume usage failed'));

  /**
   * The record of `name`. Only a miss asks the database for other processes' commits: the CLI adds
   * volumes but never changes or removes existing ones, so a cached record is current, and Get and Path
   * stay memory-only.
   */
  function mustGet(name: string): VolumeRecord {
    let rec = store.get(name);
    if (rec === undefined) {
      store.refresh();
      rec = store.get(name);
    }
    if (rec === undefined) throw new NotFoundError(`volume "${name}" not found`);
    return rec;
  }

  /**
   * Where dockerd finds the volume. Under TSVOL_MOUNTS, a bind mount made by the first Mount. Without it, a
   * volume's own directory, except for bind-style volumes: the device path could be swapped for a symlink
   * between our check and dockerd's mount, so they too are bind-mounted, from the pinned and re-checked
   * directory, at binds/<name> inside the root-only data root (#9 §10a).
   */
  function mountpointOf(rec: VolumeRecord): string {
    if (config.mountsRoot !== undefined) return path.join(config.mountsRoot, rec.name);
    return rec.spec.kind === 'bind' ? layout.bindMountpoint(rec.name) : layout.dataDir(rec.name);
  }

  /** True when the mountpoint is a bind mount tsvol makes while the volume is held (see mountpointOf). */
  function hasMountpointMount(rec: VolumeRecord): boolean {
    return config.mountsRoot !== undefined || rec.spec.kind === 'bind';
  }

  /**
   * Makes a named volume's directory with its owner and mode, on the thread pool (mkdir costs ~150 µs on
   * ext4: the event loop keeps serving meanwhile). On failure nothing is left behind.
   */
  async function buildVolumeDir(rec: Pick<VolumeRecord, 'name' | 'spec'>): Promise<void> {
    const spec = rec.spec;
    const dir = layout.volumeDir(rec.name);
    const data = layout.dataDir(rec.name);
    await fs.promises.mkdir(dir, { mode: 0o701 });
    try {
      await fs.promises.mkdir(data, { mode: 0o755 });
      if (spec.kind === 'named') {
        if (spec.uid !== undefined || spec.gid !== undefined) await fs.promises.chown(data, spec.uid ?? 0, spec.gid ?? 0);
        const mode = spec.mode ?? 0o755;
        // mkdir's mode is masked by the umask: chmod only when that changed the result.
        if (mode !== (0o755 & ~umask)) await fs.promises.chmod(data, mode);
      }
    } catch (err) {
      await fs.promises.rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * The mountpoint directory lives as long as the volume (made on first Mount, removed by Remove), so a
   * Mount/Unmount cycle costs a bind and an unmount, not also a mkdir and an rmdir (~150 µs each here).
   */
  async function ensureMountpointDir(mp: string): Promise<void> {
    await fs.promises.mkdir(mp, { mode: 0o755 }).catch((err: unknown) => {
      // EEXIST: made by an earlier Mount, the usual case.
      if (errnoCode(err) !== 'EEXIST') throw err;
    });
  }

  /** Bind-mounts `source` at `mp`, making the mountpoint directory the first time. */
  async function bindAt(source: string, mp: string): Promise<void> {
    try {
      await bindMountAsync(source, mp);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT' || !fs.existsSync(source)) throw err; // ENOENT with a source: no mountpoint dir yet
      await ensureMountpointDir(mp);
      await bindMountAsync(source, mp);
    }
  }

  /** Mounts a volume's own filesystem (hasOwnMount) on its _data; no-op when already mounted. */
  async function mountOwn(rec: VolumeRecord): Promise<void> {
    if (rec.spec.kind === 'layered') layered.mount(rec.name, rec.spec.layer);
    else await mountImage(layout.volumeDir(rec.name), layout.dataDir(rec.name), devDir);
  }

  /**
   * Undoes mountOwn: both kinds mount on _data (an image's unmount also detaches its loop device, by
   * autoclear); false if nothing was mounted.
   */
  async function unmountOwn(rec: VolumeRecord): Promise<boolean> {
    return unmountAsync(layout.dataDir(rec.name));
  }

  /** Makes the volume's source available at its mountpoint (first holder). */
  async function establish(rec: VolumeRecord): Promise<string> {
    const mp = mountpointOf(rec);
    if (hasOwnMount(rec.spec)) {
      await mountOwn(rec);
      if (config.mountsRoot !== undefined) {
        try {
          await bindAt(layout.dataDir(rec.name), mp);
        } catch (err) {
          await unmountOwn(rec);
          throw err;
        }
      }
      return mp;
    }
    if (rec.spec.kind === 'sized' || rec.spec.kind === 'clone') {
      // Built whole in tmp/ and made durable before its record: the directory is there.
      if (config.mountsRoot !== undefined) await bindAt(layout.dataDir(rec.name), mp);
      return mp;
    }
    if (rec.spec.kind === 'named') {
      const data = layout.dataDir(rec.name);
      if (!fs.existsSync(data)) {
        // Only power loss right after Create can leave a record without its (empty) directory: rebuild it.
        log.warn({ volume: rec.name }, 'volume directory missing; recreating it empty');
        await fs.promises.rm(layout.volumeDir(rec.name), { recursive: true, force: true });
        await buildVolumeDir(rec);
      }
      if (config.mountsRoot !== undefined) await bindAt(data, mp);
      return mp;
    }
    if (rec.spec.kind !== 'bind') throw new Error(`establish: unhandled volume kind ${rec.spec.kind}`);
    const device = rec.spec.device;
    // binds/ is made root-only here, not only at start-up: the CLI mounts without a server.
    if (config.mountsRoot === undefined) makePrivateDir(layout.bindsDir);
    await ensureMountpointDir(mp);
    // Synchronous on purpose: the O_PATH fd must pin the checked inode until the mount has used it.
    bindRoots.withPinned(device, (procPath) => bindMountSync(procPath, mp));
    return mp;
  }

  /** Undoes establish (last holder gone). Failures are logged: start-up removes stale mounts. */
  async function release(rec: VolumeRecord): Promise<void> {
    try {
      if (hasMountpointMount(rec)) await unmountAsync(mountpointOf(rec));
      // The image's or overlay's mount goes with the last holder; autoclear detaches a loop device.
      if (hasOwnMount(rec.spec)) await unmountOwn(rec);
    } catch (err) {
      log.warn({ volume: rec.name, err: describeError(err) }, 'unmount failed; start-up will retry');
    }
    // The last user is gone, so what it wrote is final: measure again, off the request path.
    if (rec.spec.kind !== 'bind') usage.refresh(rec.name, measure(rec));
  }

  /**
   * Builds a sized, cloned or layered volume's directory whole in a stage tmp/new-*, flushes it, and
   * renames it to volumes/<name>. A crash at any instant leaves either that directory or debris start-up
   * deletes. The stage stays locked after the rename: the caller releases it once the record is committed,
   * so a server starting meanwhile (this may be the CLI) never deletes it as record-less (sys/staging.ts).
   */
  async function buildInTmp(name: string, fill: (dir: string) => Promise<void>): Promise<Stage> {
    const stage = await createStage(layout.tmpDir, 'new', 0o701);
    try {
      await fill(stage.dir);
      syncFilesystem(stage.dir);
      stage.rename(layout.volumeDir(name));
      return stage;
    } catch (err) {
      await stage.remove();
      throw err;
    }
  }

  /** A sized volume: quota on its _data, or its own ext4 image. */
  async function buildSized(name: string, spec: Extract<VolumeSpec, { kind: 'sized' }>): Promise<Stage> {
    return buildInTmp(name, async (dir) => {
      const data = path.join(dir, '_data');
      await fs.promises.mkdir(data, { mode: 0o755 });
      if (spec.backing === 'loop') {
        await makeImage(dir, spec.limit, spec);
        return;
      }
      if (spec.uid !== undefined || spec.gid !== undefined) await fs.promises.chown(data, spec.uid ?? 0, spec.gid ?? 0);
      if (spec.mode !== undefined) await fs.promises.chmod(data, spec.mode);
      applyProjectQuota(data, spec.projectId ?? 0, spec.limit);
    });
  }

  /**
   * A clone of `from`: what is there at this moment. A loop-backed or layered source not in use is mounted
   * for the copy under its own lock (two mounts of one ext4 image would corrupt it); any other source is
   * read without its lock, so a long copy never holds up the source's Mount. The clone's _data is always a
   * new real directory holding copies (#9 §3): copyTree reads the source only through its pinned root and
   * never follows a symlink, so nothing here can make _data a link to a host path.
   */
  async function buildClone(name: string, from: string): Promise<Stage> {
    validateName(from);
    if (from === name) throw new InvalidArgumentError(`volume "${name}" cannot be a clone of itself`);
    const copy = (source: string | number) => buildInTmp(name, async (dir) => void (await copyTreeInWorker(source, path.join(dir, '_data'))));
    const src = mustGet(from);
    if (src.spec.kind === 'bind') {
      // The device's directory pinned by an fd and re-checked against TSVOL_BIND_ROOTS (a symlink swapped
      // in since Create is resolved and refused), held open for the whole copy: the worker reads below that
      // fd only, so a later swap of the device path changes nothing.
      const pinned = bindRoots.pin(src.spec.device);
      try {
        return await copy(pinned.fd);
      } finally {
        pinned.close();
      }
    }
    if (!hasOwnMount(src.spec)) return copy(layout.dataDir(from));
    return locks.run(from, async () => {
      const now = mustGet(from);
      if (holdCount(now) > 0) return copy(layout.dataDir(from));
      await mountOwn(now);
      try {
        return await copy(layout.dataDir(from));
      } finally {
        await unmountOwn(now);
      }
    });
  }

  /** How much a volume uses: the quota's or the image's own accounting where there is one, else a walk. */
  function measure(rec: VolumeRecord): () => Promise<{ bytes: number; files: number }> {
    const spec = rec.spec;
    const data = layout.dataDir(rec.name);
    if (spec.kind === 'sized' && spec.backing === 'quota') return async () => projectUsage(layout.root, spec.projectId ?? 0);
    if (spec.kind === 'sized') {
      return async () => (isMountRootOrMissing(data) ? mountedUsage(data) : imageUsage(layout.volumeDir(rec.name)));
    }
    // A layered volume costs what was written to it: its upper directory, not the layer's files.
    if (spec.kind === 'layered') return () => measureTree(layered.upperDir(rec.name));
    if (spec.kind !== 'bind') return () => measureTree(data);
    // A host directory: walked below the device pinned and re-checked against TSVOL_BIND_ROOTS, never by its
    // path, which a symlink swapped in since Create could send elsewhere (#9).
    return () => bindRoots.withTree(spec.device, measureTree);
  }

  /**
   * Moves `dir` into tmp/ (so the name is free as soon as this resolves) and deletes it in the background,
   * holding its lock (a stage tmp/rm-*: a crash mid-delete leaves debris that the next sweep deletes).
   * Returns false, leaving it in place, if a live process holds the directory's lock for more than `waitMs`:
   * a volume built or imported by another process that has not released it since its record was
   * committed, or (at start-up) has not committed its record yet (sys/staging.ts).
   */
  async function deleteInBackground(target: string | Stage, name: string, waitMs = 0): Promise<boolean> {
    const dir = typeof target === 'string' ? target : target.dir;
    let claim: Stage | undefined;
    try {
      claim = typeof target === 'string' ? await claimDir(dir, waitMs) : target;
    } catch (err) {
      // Not a directory we can open (nothing tsvol makes): leave it, and say so.
      log.warn({ volume: name, err: describeError(err) }, 'could not claim removed volume directory; left in place');
      return false;
    }
    if (claim === undefined) {
      // Gone (power loss right after Create: nothing to delete), or owned by a live builder.
      if (fs.existsSync(dir)) log.info({ volume: name }, 'volume directory is locked by a live process; leaving it');
      return false;
    }
    try {
      claim.rename(path.join(layout.tmpDir, `rm-${nanoid(10)}`));
    } catch (err) {
      claim.release();
      // ENOENT: the directory was already gone; nothing to delete.
      if (errnoCode(err) !== 'ENOENT') log.warn({ volume: name, err: describeError(err) }, 'could not move removed volume to tmp/');
      return false;
    }
    const job = claim
      .remove()
      .then((skipped) => {
        if (skipped.length > 0) log.warn({ volume: name, mounts: skipped }, 'removed volume had mounts inside; left them and their directories in tmp/');
      })
      .catch((err: unknown) => log.warn({ volume: name, err: describeError(err) }, 'deleting removed volume failed; start-up will retry'))
      .finally(() => deletions.delete(job));
    deletions.add(job);
    return true;
  }

  /** isMountRoot, with a missing path counted as not mounted. */
  function isMountRootOrMissing(p: string): boolean {
    try {
      return isMountRoot(p);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return false;
      throw err;
    }
  }

  /** Records are immutable (every change stores a new one), so each one's info is built once. */
  const infos = new WeakMap<VolumeRecord, VolumeInfo>();

  /** Latest info per record with the usage figure it shows (figures are immutable objects, see usage.ts). */
  const withUsage = new WeakMap<VolumeRecord, { usage: Usage; info: VolumeInfo }>();

  function info(rec: VolumeRecord): VolumeInfo {
    const base = baseInfo(rec);
    if (rec.spec.kind === 'bind') return base; // a host directory: not ours to walk
    const figure = usage.peek(rec.name, measure(rec));
    if (figure === undefined) return base;
    const memo = withUsage.get(rec);
    if (memo !== undefined && memo.usage === figure) return memo.info;
    const built = { ...base, status: { ...base.status, usage: { bytes: figure.bytes, files: figure.files, measured: figure.measured } } };
    withUsage.set(rec, { usage: figure, info: built });
    return built;
  }

  function baseInfo(rec: VolumeRecord): VolumeInfo {
    const cached = infos.get(rec);
    if (cached !== undefined) return cached;
    const holders = [...rec.holds.keys()];
    const status: Record<string, unknown> = {
      kind: STATUS_KIND[rec.spec.kind],
      created: rec.createdAt,
      mounts: holdCount(rec),
      holders,
    };
    if (rec.spec.kind === 'bind') status.device = rec.spec.device;
    else status.path = layout.dataDir(rec.name);
    if (rec.spec.kind === 'sized') {
      status.limit = rec.spec.limit;
      status.sizeBacking = rec.spec.backing;
    }
    if (rec.spec.kind === 'clone') status.from = rec.spec.from;
    if (rec.spec.kind === 'layered') status.layer = rec.spec.layer;
    if (Object.keys(rec.options).length > 0) status.options = rec.options;
    const built = { name: rec.name, mountpoint: mountpointOf(rec), createdAt: rec.createdAt, status };
    infos.set(rec, built);
    return built;
  }

  /** Drops volume `name`'s hold on `layer`; a failure is logged (start-up releases holds with no volume). */
  async function releaseLayerOf(name: string, layer: string): Promise<void> {
    try {
      await layered.layers.releaseLayer(layer, layered.holderOf(name));
    } catch (err) {
      log.warn({ volume: name, layer, err: describeError(err) }, 'could not release layer hold; start-up will');
    }
  }

  /** Resolves a layer= option and holds the layer for volume `name`; the spec names its ChainID. */
  async function holdLayerFor(name: string, ref: string): Promise<VolumeSpec> {
    const layer = await layered.layers.holdLayer(ref, layered.holderOf(name));
    return { kind: 'layered', layer: layer.id };
  }

  return {
    establish,
    release,
    unmountOwn,
    layered,
    deleteInBackground,
    async create(name, opts) {
      validateName(name);
      const parsed = parseOptions(opts);
      await locks.run(name, async () => {
        store.refresh();
        if (store.get(name) !== undefined) return; // Create of an existing volume succeeds (local driver)
        const spec: VolumeSpec =
          parsed.kind === 'sized'
            ? { ...parsed, backing: sizeBacking().backing, ...(sizeBacking().backing === 'quota' ? { projectId: newProjectId() } : {}) }
            : parsed.kind === 'layered'
              ? await holdLayerFor(name, parsed.layer).catch((err: unknown) => {
                  throw wrapError(`create volume "${name}"`, err);
                })
              : toSpec(parsed);
        if (spec.kind === 'bind') bindRoots.resolve(spec.device);
        const rec: VolumeRecord = {
          name,
          createdAt: new Date().toISOString(),
          spec,
          options: nullProtoRecord(opts),
          holds: new Map(),
        };
        // A volume built in tmp/ stays locked (built) until its record is committed (buildInTmp).
        let built: Stage | undefined;
        try {
          try {
            if (spec.kind === 'named') await buildVolumeDir(rec);
            else if (spec.kind === 'sized') built = await buildSized(name, spec);
            else if (spec.kind === 'clone') built = await buildClone(name, spec.from);
            else if (spec.kind === 'layered') built = await buildInTmp(name, (dir) => layered.build(dir));
          } catch (err) {
            throw wrapError(`create volume "${name}"`, err);
          }
          try {
            // Volumes built in tmp/ were renamed into volumes/: that rename is made durable with the record.
            await store.put(rec, built !== undefined ? [layout.volumesDir] : undefined);
          } catch (err) {
            if (built !== undefined) await built.remove();
            else if (spec.kind !== 'bind') await fs.promises.rm(layout.volumeDir(name), { recursive: true, force: true });
            throw wrapError(`create volume "${name}"`, err);
          }
        } catch (err) {
          if (spec.kind === 'layered') await releaseLayerOf(name, spec.layer);
          throw err;
        } finally {
          built?.release();
        }
        log.debug({ volume: name, kind: spec.kind }, 'volume created');
      });
    },

    async remove(name) {
      validateName(name);
      await locks.run(name, async () => {
        const rec = mustGet(name);
        const n = holdCount(rec);
        if (n > 0) {
          const ids = [...rec.holds.keys()].map((id) => (id === '' ? '(none)' : id)).join(', ');
          throw new InUseError(`volume "${name}" is in use: ${n} active mount(s) (IDs ${ids}); stop the containers using it first`);
        }
        if (hasMountpointMount(rec)) {
          const mp = mountpointOf(rec);
          if (isMountRootOrMissing(mp)) await unmountAsync(mp); // stale: no holder, yet still mounted
          try {
            await fs.promises.rmdir(mp);
          } catch (err) {
            // ENOENT: never mounted, so there is no mountpoint directory.
            if (errnoCode(err) !== 'ENOENT') throw wrapError(`remove volume "${name}"`, err);
          }
        }
        // A loop-backed or layered volume's own mount is up only while held; one left (a crash) goes now.
        if (hasOwnMount(rec.spec)) await unmountOwn(rec);
        if (rec.spec.kind !== 'bind') {
          // O(1) checks (statx), not a scan of every mount on the host. Mounts deeper inside are never
          // crossed either: the background deleter leaves them and what holds them (src/sys/remove.ts).
          for (const p of [layout.volumeDir(name), layout.dataDir(name)]) {
            if (isMountRootOrMissing(p)) {
              throw new InUseError(`volume "${name}" has something mounted on ${p}; unmount it first`);
            }
          }
        }
        await store.delete(name);
        // A bind-style volume's host directory is never touched: only the record goes.
        usage.forget(name);
        // The record existed, so whoever built the directory has committed it and is releasing its lock now.
        if (rec.spec.kind !== 'bind') await deleteInBackground(layout.volumeDir(name), name, RELEASE_WAIT_MS);
        if (rec.spec.kind === 'layered') await releaseLayerOf(name, rec.spec.layer);
        if (rec.spec.kind === 'sized' && rec.spec.projectId !== undefined) {
          try {
            clearProjectQuota(layout.root, rec.spec.projectId);
          } catch (err) {
            log.warn({ volume: name, err: describeError(err) }, 'could not clear project quota limit');
          }
        }
      });
    },

    async mount(name, id) {
      validateName(name);
      validateMountId(id);
      return locks.run(name, async () => {
        const rec = mustGet(name);
        const first = holdCount(rec) === 0;
        let mp: string;
        try {
          mp = first ? await establish(rec) : mountpointOf(rec);
        } catch (err) {
          throw wrapError(`mount volume "${name}"`, err);
        }
        const holds = new Map(rec.holds);
        holds.set(id, (holds.get(id) ?? 0) + 1);
        try {
          await store.put({ ...rec, holds });
        } catch (err) {
          if (first) await release(rec);
          throw wrapError(`mount volume "${name}"`, err);
        }
        return mp;
      });
    },

    async unmount(name, id) {
      validateName(name);
      validateMountId(id);
      await locks.run(name, async () => {
        const rec = mustGet(name);
        const count = rec.holds.get(id);
        if (count === undefined) return; // not ours to release: no change (e.g. an ID from before a reboot)
        const holds = new Map(rec.holds);
        if (count > 1) holds.set(id, count - 1);
        else holds.delete(id);
        const next = { ...rec, holds };
        await store.put(next);
        if (holdCount(next) === 0) await release(next);
      });
    },

    path(name) {
      return mountpointOf(mustGet(name));
    },

    get(name) {
      return info(mustGet(name));
    },

    list() {
      store.refresh();
      const out: VolumeSummary[] = [];
      for (const rec of store.list()) out.push({ name: rec.name, mountpoint: mountpointOf(rec), createdAt: rec.createdAt });
      return out;
    },

    async drain() {
      await Promise.all([...deletions]);
    },

    async measureUsage(name) {
      const rec = mustGet(name);
      return usage.measure(name, measure(rec));
    },
  };
}

/** Steps start-up reconciliation reuses. */
export interface VolumeInternals {
  establish(rec: VolumeRecord): Promise<string>;
  release(rec: VolumeRecord): Promise<void>;
  /** Unmounts a volume's own mount (hasOwnMount); false if it was not mounted. */
  unmountOwn(rec: VolumeRecord): Promise<boolean>;
  readonly layered: LayeredVolumes;
  /**
   * Moves a directory (or one already claimed) to tmp/ and deletes it; false if a live process holds its
   * lock (left in place).
   */
  deleteInBackground(target: string | Stage, name: string, waitMs?: number): Promise<boolean>;
}
