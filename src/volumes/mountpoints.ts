/**
 * Mountpoints: where dockerd finds a volume, and the mounts that put its files there. Under TSVOL_MOUNTS,
 * every volume's mountpoint is TSVOL_MOUNTS/<name>, a bind mount made by the first Mount. Without it, a
 * volume's own _data, except for kinds with a privateMountpoint (bind-style volumes: the device path could
 * be swapped for a symlink between our check and dockerd's mount), bind-mounted from the pinned and
 * re-checked directory at binds/<name> inside the root-only data root (#9 §10a). The service and start-up
 * repair (reconcile.ts) both go through here; the kind does its own part (VolumeKind).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describeError, errnoCode } from '../errors.js';
import type { VolumeRecord } from '../store/volume-store.js';
import { mountState } from '../sys/libc.js';
import { unmountTargetAsync } from '../sys/mount.js';
import { makePrivateDir } from '../sys/private-dir.js';
import { kindOf } from './kinds/index.js';
import type { KindContext } from './kinds/kind.js';

/** A service's mountpoints. */
export interface Mountpoints {
  /** Where dockerd finds the volume (what Mount and Path return). */
  of(rec: VolumeRecord): string;
  /** True when the mountpoint is a bind mount tsvol makes while the volume is held (see the header). */
  isBound(rec: VolumeRecord): boolean;
  /** First holder: the kind's establish, then the mountpoint's bind; on failure neither stays. */
  establish(rec: VolumeRecord): Promise<string>;
  /** Last holder gone: undoes establish. Failures are logged: start-up removes stale mounts. */
  release(rec: VolumeRecord): Promise<void>;
  /** Remove: unmounts what a crash left mounted (no holder) and removes the mountpoint directory. */
  clear(rec: VolumeRecord): Promise<void>;
}

/** The mountpoints of the volumes of `ctx`. */
export function createMountpoints(ctx: KindContext): Mountpoints {
  const { config, layout, log } = ctx;
  const of = (rec: VolumeRecord): string => {
    if (config.mountsRoot !== undefined) return path.join(config.mountsRoot, rec.name);
    return kindOf(rec.spec).privateMountpoint ? layout.bindMountpoint(rec.name) : layout.dataDir(rec.name);
  };
  const isBound = (rec: VolumeRecord): boolean => config.mountsRoot !== undefined || kindOf(rec.spec).privateMountpoint;

  return {
    of,
    isBound,
    async establish(rec) {
      const kind = kindOf(rec.spec);
      const mp = of(rec);
      await kind.establish(rec, ctx);
      if (!isBound(rec)) return mp;
      try {
        // binds/ is made root-only here, not only at start-up: the CLI mounts without a server.
        if (config.mountsRoot === undefined) makePrivateDir(layout.bindsDir);
        await kind.bindTo(rec, mp, ctx);
      } catch (err) {
        await kind.release(rec, ctx);
        throw err;
      }
      return mp;
    },
    async release(rec) {
      try {
        if (isBound(rec)) await unmountTargetAsync(of(rec), { ifBusy: 'detach' });
        await kindOf(rec.spec).release(rec, ctx);
      } catch (err) {
        log.warn({ volume: rec.name, err: describeError(err) }, 'unmount failed; start-up will retry');
      }
    },
    async clear(rec) {
      if (isBound(rec)) {
        const mp = of(rec);
        // Missing (the usual case: never mounted, so there is no mountpoint directory): nothing to do.
        const state = mountState(mp);
        if (state === 'mount-root') await unmountTargetAsync(mp, { ifBusy: 'detach' }); // stale: no holder, yet still mounted
        try {
          if (state !== 'missing') await fs.promises.rmdir(mp);
        } catch (err) {
          // ENOENT: removed meanwhile, which is what we wanted.
          if (errnoCode(err) !== 'ENOENT') throw err;
        }
      }
      // A loop-backed or layered volume's own mount is up only while held; one left (a crash) goes now.
      await kindOf(rec.spec).release(rec, ctx);
    },
  };
}
