/**
 * Start-up reconciliation: make disk, mounts and records agree after a crash, a kill -9 or a reboot,
 * without losing a volume. Records are the truth (they were committed before any reply said "done").
 * In cluster mode (#14) each node repairs only what is its own: its tmp/ (nodes/<node>/tmp), its holds
 * (a record's holds are this node's), its boot id, its mountpoints; never another node's holds or stages.
 *
 * - tmp/ holds stages (volumes being built or deleted), each locked by its owner while it lives
 *   (src/sys/staging.ts): those of dead owners are debris, deleted in the background; a live one (a
 *   `tsvol volume import` or clone by the CLI, running while this server starts) is left alone (#9 §7).
 * - A directory in volumes/ with no record is a Create that crashed before its commit, or a Remove that
 *   crashed after it: deleted (never across a mountpoint). Unless it is locked: a live process renamed
 *   its stage there and is committing the record now.
 * - Holds from an earlier boot are dropped: no process of that boot can still use a mount. Holds from this
 *   boot are kept (a restarted plugin: containers may still run) and their mountpoints re-established,
 *   except holds taken for a CLI request, which never outlive the process that took them.
 * - A mountpoint under TSVOL_MOUNTS (or, without it, a bind-style volume's under binds/) with no holder
 *   is unmounted; a directory there whose volume is gone is removed; a held volume's missing mount is
 *   made again. Both directories are root-only, tightened if an older version left them open (#9 §5).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describeError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Layout } from '../store/layout.js';
import type { VolumeRecord, VolumeStore } from '../store/volume-store.js';
import { readBootId } from '../sys/boot.js';
import { mountState } from '../sys/libc.js';
import { unmountTarget } from '../sys/mount.js';
import { mountsUnder, readMounts } from '../sys/mountinfo.js';
import { makePrivateDir, reportPrivateDir } from '../sys/private-dir.js';
import { claimDir, sweepStages } from '../sys/staging.js';
import { kindOf } from './kinds/index.js';
import { CLI_HOLD_PREFIX, holdCount } from './holds.js';
import type { VolumeMechanics } from './volume-service.js';

/** What reconciliation needs. */
export interface ReconcileDeps {
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly mountsRoot: string | undefined;
  /** The service's kinds and mountpoints (VolumeService's own contract, src/volumes/kinds/kind.ts). */
  readonly service: VolumeMechanics;
  readonly log: Logger;
}

/** Repairs the data root; returns counts for the start-up log line. */
export async function reconcileVolumes(deps: ReconcileDeps): Promise<Record<string, number>> {
  const { layout, store, mountsRoot, log } = deps;
  const { kinds: ctx, mountpoints } = deps.service;
  const stats = { debris: 0, liveStages: 0, orphans: 0, droppedHolds: 0, remounted: 0, staleMounts: 0 };
  fs.mkdirSync(layout.tmpDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(layout.volumesDir, { recursive: true, mode: 0o701 });
  const mounts = readMounts();
  // Whether a path is a mountpoint is asked of the kernel (statx on the path, sys/libc.ts), never looked up
  // in mountinfo by the path as configured: TSVOL_MOUNTS or the data root reached through a symlink would
  // name no mount there, so a live mount would be thought gone (and mounted again on top) and a stale one
  // kept. A missing path has nothing mounted.
  const mounted = (p: string): boolean => mountState(p) === 'mount-root';

  const sweep = sweepStages(layout.tmpDir);
  stats.debris = sweep.dead.length;
  stats.liveStages = sweep.live.length;
  if (sweep.live.length > 0) log.info({ stages: sweep.live }, 'tmp/ stages of live processes left alone');
  sweep.done.then(
    (skipped) => {
      if (skipped.length > 0) log.warn({ mounts: skipped }, 'tmp/ leftovers had mounts inside; left them');
    },
    (err: unknown) => log.warn({ err: describeError(err) }, 'deleting tmp/ leftover failed'),
  );

  // Cluster mode (#14): a volume directory appears with its record (one rename publishes both), so
  // volumes/ holds no record-less directory of this node's to judge; another node's is not ours to touch.
  for (const name of store.scope === 'local' ? fs.readdirSync(layout.volumesDir) : []) {
    if (store.get(name) !== undefined) continue;
    const dir = layout.volumeDir(name);
    if (mountsUnder(dir, mounts).length > 0) {
      log.warn({ path: dir }, 'orphan volume directory has a mount inside; leaving it');
      continue;
    }
    // Locked by a live process: it renamed its stage here and is committing the record (sys/staging.ts).
    let claim;
    try {
      claim = await claimDir(dir);
    } catch (err) {
      // Not a directory (nothing tsvol makes there): leave it, and say so.
      log.warn({ path: dir, err: describeError(err) }, 'could not claim orphan entry in volumes/; leaving it');
      continue;
    }
    if (claim === undefined) {
      if (fs.existsSync(dir)) log.info({ volume: name }, 'volume directory is locked by a live process; leaving it');
      continue;
    }
    // Checked again under the directory's lock: a builder releases it only after its commit, so a
    // record-less directory whose lock we hold has no live builder.
    if (store.get(name) !== undefined) {
      claim.release();
      continue;
    }
    if (await ctx.deleter.delete(claim, name)) {
      stats.orphans++;
      log.info({ volume: name }, 'deleting directory of a volume that was never committed');
    }
  }

  // A hold taken for a CLI request (volume-ops.ts) lives no longer than the process that took it, and that
  // process is gone: a server's request died with it, and a CLI working alone held the lock we now hold.
  const cliHolds: Promise<void>[] = [];
  for (const rec of store.list()) {
    const ids = [...rec.holds.keys()].filter((id) => id.startsWith(CLI_HOLD_PREFIX));
    if (ids.length === 0) continue;
    const holds = new Map(rec.holds);
    for (const id of ids) {
      stats.droppedHolds += holds.get(id) ?? 0;
      holds.delete(id);
    }
    cliHolds.push(store.put({ ...rec, holds }));
  }
  await Promise.all(cliHolds);

  const bootId = readBootId();
  const previousBoot = store.getMeta('bootId');
  if (previousBoot !== bootId) {
    const writes: Promise<void>[] = [];
    for (const rec of store.list()) {
      if (holdCount(rec) === 0) continue;
      stats.droppedHolds += holdCount(rec);
      writes.push(store.put({ ...rec, holds: new Map() }));
    }
    writes.push(store.putMeta('bootId', bootId));
    await Promise.all(writes);
  }

  // A loop-backed sized volume's image and a layered volume's overlay are mounted on its _data only while
  // held (#6): one left mounted with no holder (a crash mid-Unmount or mid-clone, or holds dropped above)
  // is unmounted, which also detaches a loop device (autoclear).
  for (const rec of store.list()) {
    const kind = kindOf(rec.spec);
    if (!kind.hasOwnMount(rec.spec) || holdCount(rec) > 0) continue;
    try {
      if (await kind.release(rec, ctx)) stats.staleMounts++;
    } catch (err) {
      log.warn({ volume: rec.name, err: describeError(err) }, 'could not unmount stale volume mount');
    }
  }

  // Mountpoints tsvol makes (mountpoints.ts): every volume's under TSVOL_MOUNTS, else those of kinds with a
  // privateMountpoint (bind-style volumes) under binds/ (#9 §10a). Both roots are root-only (#9 §5); one
  // left open by an older version is closed now.
  if (mountsRoot !== undefined) {
    reportPrivateDir(log, 'mounts root', mountsRoot, makePrivateDir(mountsRoot));
    await sweepMountpoints(mountsRoot, () => true);
  }
  // binds/ is swept even under TSVOL_MOUNTS: mounts left there by a run without it are stale.
  const bindsUsed = (rec: VolumeRecord): boolean => mountsRoot === undefined && kindOf(rec.spec).privateMountpoint;
  if (mountsRoot === undefined || fs.existsSync(layout.bindsDir)) {
    reportPrivateDir(log, 'bind mountpoints', layout.bindsDir, makePrivateDir(layout.bindsDir));
    await sweepMountpoints(layout.bindsDir, bindsUsed);
  }
  return stats;

  /**
   * In `dir`, a directory per volume whose mountpoint lives there (`uses`): a mount with no holder is
   * unmounted, a directory whose volume is gone (or lives elsewhere) is removed, and a held volume whose
   * mount is missing (a restarted plugin after a crash) is mounted again.
   */
  async function sweepMountpoints(dir: string, uses: (rec: VolumeRecord) => boolean): Promise<void> {
    for (const name of fs.readdirSync(dir)) {
      const mp = path.join(dir, name);
      let found: VolumeRecord | undefined;
      try {
        found = store.get(name);
      } catch (err) {
        // Cluster mode: a record on the shared root that cannot be read (damaged, or not tsvol's) must not
        // stop this node from starting: its mountpoint here is treated as a stale one, and said so.
        log.warn({ volume: name, err: describeError(err) }, 'unreadable volume record; clearing its mountpoint here');
      }
      const rec = found !== undefined && uses(found) ? found : undefined;
      if (rec !== undefined && holdCount(rec) > 0) continue;
      try {
        // Stacked mounts (a crash between two binds) go one by one, at most a few.
        for (let n = 0; n < 16 && mounted(mp) && unmountTarget(mp, { ifBusy: 'detach' }) !== 'not-mounted'; n++) {
          stats.staleMounts++;
        }
        // A volume's mountpoint directory lives as long as the volume; others are leftovers.
        if (rec === undefined) fs.rmdirSync(mp);
      } catch (err) {
        // ENOTDIR/ENOTEMPTY: not ours (a file, or data someone wrote into the bare directory): leave it.
        // EBUSY: still mounted (the unmount failed): rmdir never reaches what is mounted there.
        log.warn({ path: mp, err: errnoCode(err) ?? describeError(err) }, 'could not clear stale mountpoint');
      }
    }
    for (const rec of store.list()) {
      if (!uses(rec) || holdCount(rec) === 0 || mounted(mountpoints.of(rec))) continue;
      try {
        await mountpoints.establish(rec);
        stats.remounted++;
      } catch (err) {
        log.error({ volume: rec.name, err: describeError(err) }, 'could not re-establish mount for held volume');
      }
    }
  }
}
