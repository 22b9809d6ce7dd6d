/**
 * VolumeService: what a volume driver does, without HTTP. Names and options are validated here, each
 * mutation runs under a per-volume lock, and the order of disk work and metadata commits is chosen so
 * that a crash at any instant leaves nothing half-made that start-up cannot repair (src/volumes/reconcile.ts):
 *
 * - Create: build the directory in tmp/, rename it into volumes/, then commit the record. A crash before
 *   the commit leaves an orphan directory and no volume; start-up deletes it.
 * - Remove: commit the deletion, then move the directory to tmp/ and delete it in the background.
 * - Mount: mount first, then commit the hold; if the commit fails, unmount again (a failed Mount leaves no
 *   hold, and dockerd never sends Unmount after one).
 * - Unmount: commit the release, then unmount; a failed unmount leaves a stale mount start-up removes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { nanoid } from 'nanoid';
import type { Config } from '../config.js';
import { InUseError, NotFoundError, describeError, errnoCode, wrapError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Layout } from '../store/layout.js';
import type { VolumeRecord, VolumeStore } from '../store/volume-store.js';
import { bindMount, unmount } from '../sys/mount.js';
import { isMountPoint, mountsUnder, readMounts } from '../sys/mountinfo.js';
import { createBindRoots, type BindRoots } from './bind-roots.js';
import { createKeyedMutex } from './keyed-mutex.js';
import { validateName } from './names.js';
import { parseOptions, toSpec } from './options.js';

/** A volume as the driver reports it. */
export interface VolumeInfo {
  readonly name: string;
  readonly mountpoint: string;
  readonly createdAt: string;
  readonly status: Readonly<Record<string, unknown>>;
}

/** The volume driver's operations. */
export interface VolumeService {
  create(name: string, opts: Readonly<Record<string, string>>): Promise<void>;
  remove(name: string): Promise<void>;
  /** Takes a hold for mount ID `id` and returns the mountpoint. */
  mount(name: string, id: string): Promise<string>;
  /** Releases one hold of `id`; an ID that holds nothing is a no-op. */
  unmount(name: string, id: string): Promise<void>;
  /** The mountpoint; cheap, never fails for a known volume. */
  path(name: string): string;
  get(name: string): VolumeInfo;
  list(): VolumeInfo[];
  /** Waits for background deletions to settle (tests, shutdown). */
  drain(): Promise<void>;
}

/** What the service needs. */
export interface VolumeServiceDeps {
  readonly config: Config;
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly log: Logger;
}

/** Total holds on a record. */
export function holdCount(rec: VolumeRecord): number {
  let n = 0;
  for (const c of Object.values(rec.holds)) n += c;
  return n;
}

/** Creates the service. Call reconcileVolumes first so that disk and records agree. */
export function createVolumeService(deps: VolumeServiceDeps): VolumeService & VolumeInternals {
  const { config, layout, store, log } = deps;
  const locks = createKeyedMutex();
  const bindRoots = createBindRoots(config.bindRoots, config.hostRoot);
  const deletions = new Set<Promise<void>>();

  function mustGet(name: string): VolumeRecord {
    store.refresh();
    const rec = store.get(name);
    if (rec === undefined) throw new NotFoundError(`volume "${name}" not found`);
    return rec;
  }

  function mountpointOf(rec: VolumeRecord): string {
    if (config.mountsRoot !== undefined) return path.join(config.mountsRoot, rec.name);
    return rec.spec.kind === 'bind' ? bindRoots.local(rec.spec.device) : layout.dataDir(rec.name);
  }

  /** Builds a named volume's directory with its owner and mode; returns the path of the finished dir. */
  function buildVolumeDir(rec: Pick<VolumeRecord, 'spec'>, target: string): void {
    const spec = rec.spec;
    const tmp = path.join(layout.tmpDir, `new-${nanoid(10)}`);
    try {
      fs.mkdirSync(tmp, { mode: 0o701 });
      const data = path.join(tmp, '_data');
      fs.mkdirSync(data);
      if (spec.kind === 'named') {
        if (spec.uid !== undefined || spec.gid !== undefined) fs.chownSync(data, spec.uid ?? 0, spec.gid ?? 0);
        // chmod after mkdir: mkdir's mode is masked by the umask.
        fs.chmodSync(data, spec.mode ?? 0o755);
      }
      fs.renameSync(tmp, target);
    } finally {
      // After a successful rename tmp no longer exists; otherwise this removes the half-built directory.
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** Makes the volume's source available at its mountpoint (first holder). */
  function establish(rec: VolumeRecord): string {
    const mp = mountpointOf(rec);
    if (rec.spec.kind === 'named') {
      const data = layout.dataDir(rec.name);
      if (!fs.existsSync(data)) {
        // Only after power loss right after Create can a record outlive its (empty) directory: rebuild it.
        log.warn({ volume: rec.name }, 'volume directory missing; recreating it empty');
        buildVolumeDir(rec, layout.volumeDir(rec.name));
      }
      if (config.mountsRoot !== undefined) {
        fs.mkdirSync(mp, { recursive: true, mode: 0o755 });
        bindMount(data, mp);
      }
      return mp;
    }
    const device = rec.spec.device;
    if (config.mountsRoot === undefined) {
      bindRoots.resolve(device); // re-check: the path may have been replaced by a symlink since Create
      return mp;
    }
    fs.mkdirSync(mp, { recursive: true, mode: 0o755 });
    bindRoots.withPinned(device, (procPath) => bindMount(procPath, mp));
    return mp;
  }

  /** Undoes establish (last holder gone). Failures are logged: start-up removes stale mounts. */
  function release(rec: VolumeRecord): void {
    if (config.mountsRoot === undefined) return;
    const mp = mountpointOf(rec);
    try {
      unmount(mp);
      fs.rmdirSync(mp);
    } catch (err) {
      log.warn({ volume: rec.name, err: describeError(err) }, 'unmount failed; start-up will retry');
    }
  }

  function deleteInBackground(dir: string, name: string): void {
    const trash = path.join(layout.tmpDir, `rm-${nanoid(10)}`);
    try {
      fs.renameSync(dir, trash);
    } catch (err) {
      // ENOENT: the directory was already gone (power loss right after Create); nothing to delete.
      if (errnoCode(err) !== 'ENOENT') log.warn({ volume: name, err: describeError(err) }, 'could not move removed volume to tmp/');
      return;
    }
    const job = fs.promises
      .rm(trash, { recursive: true, force: true })
      .catch((err: unknown) => log.warn({ volume: name, err: describeError(err) }, 'deleting removed volume failed; start-up will retry'))
      .finally(() => deletions.delete(job));
    deletions.add(job);
  }

  function info(rec: VolumeRecord): VolumeInfo {
    const holders = Object.keys(rec.holds);
    const status: Record<string, unknown> = {
      kind: rec.spec.kind,
      created: rec.createdAt,
      mounts: holdCount(rec),
      holders,
    };
    if (rec.spec.kind === 'bind') status.device = rec.spec.device;
    else status.path = layout.dataDir(rec.name);
    if (Object.keys(rec.options).length > 0) status.options = rec.options;
    return { name: rec.name, mountpoint: mountpointOf(rec), createdAt: rec.createdAt, status };
  }

  return {
    establish,
    release,
    deleteInBackground,
    async create(name, opts) {
      validateName(name);
      const parsed = parseOptions(opts);
      await locks.run(name, async () => {
        store.refresh();
        if (store.get(name) !== undefined) return; // Create of an existing volume succeeds (local driver)
        const spec = toSpec(parsed);
        if (spec.kind === 'bind') bindRoots.resolve(spec.device);
        const rec: VolumeRecord = {
          name,
          createdAt: new Date().toISOString(),
          spec,
          options: { ...opts },
          holds: {},
        };
        const dir = layout.volumeDir(name);
        if (spec.kind === 'named') {
          try {
            buildVolumeDir(rec, dir);
          } catch (err) {
            throw wrapError(`create volume "${name}"`, err);
          }
        }
        try {
          await store.put(rec, spec.kind === 'named' ? [layout.volumesDir] : []);
        } catch (err) {
          if (spec.kind === 'named') fs.rmSync(dir, { recursive: true, force: true });
          throw wrapError(`create volume "${name}"`, err);
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
          throw new InUseError(
            `volume "${name}" is in use: ${n} active mount(s) (IDs ${Object.keys(rec.holds).join(', ')}); stop the containers using it first`,
          );
        }
        const mounts = readMounts();
        if (config.mountsRoot !== undefined) {
          const mp = mountpointOf(rec);
          if (isMountPoint(mp, mounts)) unmount(mp); // stale: no holder, yet still mounted
          try {
            fs.rmdirSync(mp);
          } catch (err) {
            // ENOENT: never mounted, so there is no mountpoint directory.
            if (errnoCode(err) !== 'ENOENT') throw wrapError(`remove volume "${name}"`, err);
          }
        }
        if (rec.spec.kind === 'named') {
          const busy = mountsUnder(layout.volumeDir(name), mounts);
          if (busy.length > 0) {
            throw new InUseError(`volume "${name}" has something mounted inside it (${busy[0]}); unmount it first`);
          }
        }
        await store.delete(name);
        // A bind-style volume's host directory is never touched: only the record goes.
        if (rec.spec.kind === 'named') deleteInBackground(layout.volumeDir(name), name);
      });
    },

    async mount(name, id) {
      validateName(name);
      return locks.run(name, async () => {
        const rec = mustGet(name);
        const first = holdCount(rec) === 0;
        let mp: string;
        try {
          mp = first ? establish(rec) : mountpointOf(rec);
        } catch (err) {
          throw wrapError(`mount volume "${name}"`, err);
        }
        try {
          await store.put({ ...rec, holds: { ...rec.holds, [id]: (rec.holds[id] ?? 0) + 1 } });
        } catch (err) {
          if (first) release(rec);
          throw wrapError(`mount volume "${name}"`, err);
        }
        return mp;
      });
    },

    async unmount(name, id) {
      validateName(name);
      await locks.run(name, async () => {
        const rec = mustGet(name);
        const count = rec.holds[id];
        if (count === undefined) return; // not ours to release: no change (e.g. an ID from before a reboot)
        const holds = { ...rec.holds };
        if (count > 1) holds[id] = count - 1;
        else delete holds[id];
        const next = { ...rec, holds };
        await store.put(next);
        if (holdCount(next) === 0) release(next);
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
      const out: VolumeInfo[] = [];
      for (const rec of store.list()) out.push(info(rec));
      return out;
    },

    async drain() {
      await Promise.all([...deletions]);
    },
  };
}

/** Steps start-up reconciliation reuses. */
export interface VolumeInternals {
  establish(rec: VolumeRecord): string;
  release(rec: VolumeRecord): void;
  deleteInBackground(dir: string, name: string): void;
}
