/**
 * Named volumes (moby's local driver): a directory volumes/<name>/_data with the owner and mode the
 * options gave. Made in place, not in tmp/: the directory's entry is not fsynced on its own, so Create
 * costs one shared WAL fsync. If power loss takes an acknowledged volume's (still empty) directory, the
 * record survives and the first Mount rebuilds it with the recorded owner and mode: nothing a caller was
 * told is lost.
 */
import fs from 'node:fs';
import { describeError } from '../../errors.js';
import { buildInTmp, dataDirVolume, removeEmptyVolumeDir } from './common.js';
import type { KindContext, RecordOf, VolumeKind } from './kind.js';

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
  try {
    await fillData(rec, data, ctx);
  } catch (err) {
    await fs.promises.rm(dir, { recursive: true, force: true });
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
      remove: () => fs.promises.rm(ctx.layout.volumeDir(rec.name), { recursive: true, force: true }),
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
    await fs.promises.rm(ctx.layout.volumeDir(rec.name), { recursive: true, force: true });
    await buildVolumeDir(rec, ctx);
  },
};
