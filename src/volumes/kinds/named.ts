/**
 * Named volumes (moby's local driver): a directory volumes/<name>/_data with the owner and mode the
 * options gave. Made in place, not in tmp/: the directory's entry is not fsynced on its own, so Create
 * costs one shared WAL fsync. If power loss takes an acknowledged volume's (still empty) directory, the
 * record survives and the first Mount rebuilds it with the recorded owner and mode: nothing a caller was
 * told is lost.
 *
 * Every deletion here is the deleter's walk (src/sys/remove.ts), never a recursive rm: a volume's
 * directory may hold a mount (a bind someone made inside _data), and what is mounted is never deleted
 * through it: the walk leaves it, and the directories holding it, and says so.
 */
import fs from 'node:fs';
import { InUseError, describeError } from '../../errors.js';
import { pausePoint } from '../../sys/crash-point.js';
import { removeTreeNoCross } from '../../sys/remove.js';
import { buildInTmp, dataDirVolume, removeEmptyVolumeDir } from './common.js';
import type { KindContext, RecordOf, VolumeKind } from './kind.js';

/** The pause point between a named volume's directory and its _data (tests: TSVOL_PAUSE_AT). */
export const NAMED_BEFORE_FILL_PAUSE = 'named:before-fill';

/** Makes `data`, a named volume's _data, with its owner and mode. */
async function fillData(rec: RecordOf<'named'>, data: string, ctx: KindContext): Promise<void> {
  const { spec } = rec;
  await fs.promises.mkdir(data, { mode: 0o755 });
  if (spec.uid !== undefined || spec.gid !== undefined) await fs.promises.chown(data, spec.uid ?? 0, spec.gid ?? 0);
  const mode = spec.mode ?? 0o755;
  // mkdir's mode is masked by the umask: chmod only when that changed the result.
  if (mode !== (0o755 & ~ctx.umask)) await fs.promises.chmod(data, mode);
}

/**
 * Makes a named volume's directory with its owner and mode, on the thread pool (mkdir costs ~150 µs on
 * ext4: the event loop keeps serving meanwhile). On failure nothing is left behind.
 */
async function buildVolumeDir(rec: RecordOf<'named'>, ctx: KindContext): Promise<void> {
  const { spec } = rec;
  const dir = ctx.layout.volumeDir(rec.name);
  const data = ctx.layout.dataDir(rec.name);
  await fs.promises.mkdir(dir, { mode: 0o701 });
  pausePoint(NAMED_BEFORE_FILL_PAUSE);
  try {
    await fillData(rec, data, ctx);
  } catch (err) {
    const left = await removeTreeNoCross(dir);
    if (left.length > 0) {
      throw new InUseError(`${describeError(err)}; ${dir} was left in place, with the mounts inside it: ${left.join(', ')}; unmount them and delete it`, { cause: err });
    }
    throw err;
  }
}

/** The named kind. */
export const named: VolumeKind<'named'> = {
  ...dataDirVolume,
  statusKind: 'named',
  clusterRefusal: undefined,
  hasOwnMount: () => false,
  async plan(_name, parsed) {
    return parsed;
  },
  async build(rec, ctx) {
    // Cluster mode (#14): built whole in tmp/ with its record, published by one rename (buildInTmp).
    if (ctx.stageRecord !== undefined) return buildInTmp(rec, ctx, (files) => fillData(rec, files.data, ctx));
    await buildVolumeDir(rec, ctx);
    return {
      release: () => undefined,
      async remove() {
        // Its record was not committed: the directory goes, but never a mount found inside it.
        const left = await removeTreeNoCross(ctx.layout.volumeDir(rec.name));
        if (left.length > 0) ctx.log.warn({ volume: rec.name, mounts: left }, 'uncommitted volume had mounts inside; left them and their directories');
      },
      usage: { bytes: 0, files: 0 }, // an empty _data: what a walk would find
    };
  },
  async destroy(rec, ctx) {
    // Empty (the usual case): two rmdirs in place; else the deleter moves it to tmp/ and deletes it in the
    // background. Failures are logged, never returned (VolumeKind.destroy): start-up collects the rest.
    try {
      if (await removeEmptyVolumeDir(ctx.layout.volumeDir(rec.name), ctx.layout.dataDir(rec.name))) return;
    } catch (err) {
      ctx.log.warn({ volume: rec.name, err: describeError(err) }, 'removing empty volume directory failed; handing it to the deleter');
    }
    await dataDirVolume.destroy(rec, ctx);
  },
  async establish(rec, ctx) {
    // Cluster mode: published whole with its record, so there is nothing to rebuild (and a path on the
    // shared root is never trusted: bindTo pins _data).
    if (ctx.sharedRoot !== undefined || fs.existsSync(ctx.layout.dataDir(rec.name))) return;
    // Only power loss right after Create can leave a record without its (empty) directory: rebuild it.
    ctx.log.warn({ volume: rec.name }, 'volume directory missing; recreating it empty');
    const dir = ctx.layout.volumeDir(rec.name);
    const left = await removeTreeNoCross(dir);
    if (left.length > 0) {
      throw new InUseError(`volume "${rec.name}" lost its _data and ${dir} holds mounts: ${left.join(', ')}; unmount them, then mount the volume again`);
    }
    await buildVolumeDir(rec, ctx);
  },
};
