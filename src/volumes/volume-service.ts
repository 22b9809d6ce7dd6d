/**
 * VolumeService: what a volume driver does, without HTTP, for every kind alike (the kinds' own disk work is
 * in src/volumes/kinds/). Names and options are validated here, each mutation runs under a per-volume
 * lock, and the order of disk work and metadata commits is chosen so that a crash at any instant leaves
 * nothing half-made that start-up cannot repair (src/volumes/reconcile.ts):
 *
 * - Create: the kind builds the volume's files, then the record is committed (with its linked changes,
 *   in one transaction). The record is the truth: files without one (a crash before the commit) are an
 *   orphan that start-up deletes.
 * - Remove: commit the deletion, then the kind destroys its files (a background delete from tmp/).
 * - Mount: establish first, then commit the hold; if the commit fails, release again (a failed Mount
 *   leaves no hold, and dockerd never sends Unmount after one).
 * - Unmount: commit the release, then release; a failed unmount leaves a stale mount start-up removes.
 *
 * Cluster mode (#14, store.scope 'global'): the same order on the shared root (store/cluster-store.ts), which
 * refuses a Remove while another live node holds the volume and a Mount while another node removes it;
 * Create refuses the kinds that cannot work there (VolumeKind.clusterRefusal).
 */
import type { Config } from '../config.js';
import { holdChange, releaseChange } from '../layers/layer-store.js';
import { ConflictError, InvalidArgumentError, NotFoundError, describeError, wrapError } from '../errors.js';
import { nanoid } from 'nanoid';
import type { LayerRecord } from '../layers/layer-store.js';
import type { Logger } from '../log.js';
import type { Layout } from '../store/layout.js';
import { nullProtoRecord, type VolumeRecord, type VolumeStore } from '../store/volume-store.js';
import type { Beneath } from '../sys/beneath.js';
import { CLI_HOLD_PREFIX, holdCount, inUseError } from './holds.js';
import { createKeyedMutex } from '../sys/keyed-mutex.js';
import { createKindContext } from './kinds/context.js';
import { hasOwnMount, kindOf } from './kinds/index.js';
import type { Built, KindContext } from './kinds/kind.js';
import type { LayeredVolumes } from './layered.js';
import { createMountpoints, type Mountpoints } from './mountpoints.js';
import { validateMountId, validateName } from './names.js';
import { parseOptions } from './options.js';
import type { SizeBacking } from './size-limit.js';
import { createUsageCache, type Usage } from './usage.js';
import { createVolumeInfos, withNodes, type VolumeInfo, type VolumeSummary } from './volume-info.js';

export type { VolumeInfo, VolumeSummary };

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

/** What start-up repair (reconcile.ts) and the CLI's operations use besides VolumeService: the kinds' context and the mountpoints. */
export interface VolumeMechanics {
  readonly kinds: KindContext;
  readonly mountpoints: Mountpoints;
}

/** What the service needs. */
export interface VolumeServiceDeps {
  readonly config: Config;
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly log: Logger;
  /** How sized volumes are made here; probed from the data root when not given. */
  readonly sizeBacking?: SizeBacking;
  /** The layer manager for layer= volumes. */
  readonly layered: LayeredVolumes;
  /** Cluster mode (#14): the shared data root pinned by an fd (ClusterStore.root). */
  readonly sharedRoot?: Beneath;
}

/** Creates the service. Call reconcileVolumes first so that disk and records agree. */
export function createVolumeService(deps: VolumeServiceDeps): VolumeService & VolumeMechanics {
  const { store, log } = deps;
  const locks = createKeyedMutex();
  const usage = createUsageCache((name, err) => log.warn({ volume: name, err: describeError(err) }, 'measuring volume usage failed'));

  /** The record, from memory: one process writes the store at a time, so Get and Path never touch the disk. */
  function mustGet(name: string): VolumeRecord {
    const rec = store.get(name);
    if (rec === undefined) throw new NotFoundError(`volume "${name}" not found`);
    return rec;
  }

  const ctx = createKindContext({
    ...deps,
    mustGet,
    withLock: (name, work) => locks.run(name, work),
    holdDuring,
    sharedRoot: deps.sharedRoot,
    stageRecord: store.stageRecord,
  });
  const mountpoints = createMountpoints(ctx);

  /** Last holder gone: undoes establish, and measures again off the request path (what it wrote is final). */
  async function release(rec: VolumeRecord): Promise<void> {
    await mountpoints.release(rec);
    const kind = kindOf(rec.spec);
    if (kind.usageInStatus) usage.refresh(rec.name, kind.measure(rec, ctx));
  }

  const info = createVolumeInfos(ctx, mountpoints, usage);

  /** Takes a hold for mount ID `id` and returns the mountpoint (VolumeService.mount). */
  async function mountVolume(name: string, id: string): Promise<string> {
    validateName(name);
    validateMountId(id);
    return locks.run(name, async () => {
      const rec = mustGet(name);
      const first = holdCount(rec) === 0;
      let mp: string;
      try {
        mp = first ? await mountpoints.establish(rec) : mountpoints.of(rec);
      } catch (err) {
        throw wrapError(`mount volume "${name}"`, err);
      }
      const holds = new Map(rec.holds);
      holds.set(id, (holds.get(id) ?? 0) + 1);
      try {
        // Cluster mode: refused while another node removes the volume, or while this node's lease lapsed.
        await store.put({ ...rec, holds });
      } catch (err) {
        if (first) await release(rec);
        throw wrapError(`mount volume "${name}"`, err);
      }
      return mp;
    });
  }

  /** Releases one hold of `id` (VolumeService.unmount). */
  async function unmountVolume(name: string, id: string): Promise<void> {
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
  }

  /** KindContext.holdDuring: a hold under a mount ID of its own (dropped by start-up after a crash). */
  async function holdDuring<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const id = `${CLI_HOLD_PREFIX}hold-${nanoid(10)}`;
    await mountVolume(name, id);
    try {
      return await fn();
    } finally {
      await unmountVolume(name, id);
    }
  }

  return {
    kinds: ctx,
    mountpoints,

    async create(name, opts) {
      validateName(name);
      const parsed = parseOptions(opts);
      const kind = kindOf(parsed);
      if (store.scope === 'global' && kind.clusterRefusal !== undefined) {
        throw new InvalidArgumentError(`create volume "${name}": not offered in cluster mode (TSVOL_SCOPE=global): ${kind.clusterRefusal}`);
      }
      await locks.run(name, async () => {
        if (store.get(name) !== undefined) return; // Create of an existing volume succeeds (local driver)
        let rec: VolumeRecord;
        let built: Built;
        try {
          const spec = await kind.plan(name, parsed, ctx);
          rec = { name, createdAt: new Date().toISOString(), spec, options: nullProtoRecord(opts), holds: new Map() };
          // Cluster mode: tells this volume from one of the same name created after a removal elsewhere.
          if (store.scope === 'global') rec = { ...rec, incarnation: nanoid(16) };
          built = await kind.build(rec, ctx);
        } catch (err) {
          // Cluster mode: another node published the name first (its rename won): it exists, as Create wants.
          if (store.scope === 'global' && err instanceof ConflictError && store.get(name) !== undefined) return;
          throw wrapError(`create volume "${name}"`, err);
        }
        try {
          // One transaction: the record with its linked changes (a layered volume's layer hold, #10).
          await store.put(rec, [], kind.linked(rec, ctx).map((c) => holdChange(c.layer, c.holder)));
        } catch (err) {
          await built.remove();
          throw wrapError(`create volume "${name}"`, err);
        } finally {
          built.release(); // built in tmp/: locked until its record is committed (kinds/common.ts buildInTmp)
        }
        if (built.usage !== undefined) usage.seed(name, built.usage); // its first Get walks nothing (#13)
        log.debug({ volume: name, kind: rec.spec.kind }, 'volume created');
      });
    },

    async remove(name) {
      validateName(name);
      await locks.run(name, async () => {
        const rec = mustGet(name);
        if (holdCount(rec) > 0) throw inUseError(rec, store.scope === 'global' ? deps.config.nodeId : undefined);
        const kind = kindOf(rec.spec);
        try {
          await mountpoints.clear(rec);
        } catch (err) {
          throw wrapError(`remove volume "${name}"`, err);
        }
        kind.checkRemovable(rec, ctx);
        // Cluster mode: refused while another live node holds it; else the directory moved to our tmp/.
        const moved = await store.delete(name, kind.linked(rec, ctx).map((c) => releaseChange(c.layer, c.holder)));
        usage.forget(name);
        if (moved !== undefined) await ctx.deleter.delete(moved, name);
        else if (store.scope === 'local') await kind.destroy(rec, ctx);
      });
    },

    mount: mountVolume,
    unmount: unmountVolume,

    path: (name) => mountpoints.of(mustGet(name)),
    get(name) {
      const base = info(mustGet(name));
      // Cluster mode: Status says who else holds it (mounts and holders are this node's).
      return store.scope === 'local' ? base : withNodes(base, store.holdsElsewhere(name));
    },

    list: () => Array.from(store.list(), (rec) => ({ name: rec.name, mountpoint: mountpoints.of(rec), createdAt: rec.createdAt })),

    drain: () => ctx.deleter.drain(),

    async measureUsage(name) {
      const rec = mustGet(name);
      return usage.measure(name, kindOf(rec.spec).measure(rec, ctx));
    },
  };
}
