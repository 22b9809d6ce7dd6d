/**
 * Named volumes (moby's local driver): a directory volumes/<name>/_data with the owner and mode the
 * options gave. Made in place, not in tmp/: the directory's entry is not fsynced on its own, so Create
 * costs one shared WAL fsync. If power loss takes an acknowledged volume's (still empty) directory, the
 * record survives and the first Mount rebuilds it with the recorded owner and mode: nothing a caller was
 * told is lost.
 */
import fs from 'node:fs';
import { dataDirVolume } from './common.js';
import type { KindContext, RecordOf, VolumeKind } from './kind.js';

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
    await fs.promises.mkdir(data, { mode: 0o755 });
    if (spec.uid !== undefined || spec.gid !== undefined) await fs.promises.chown(data, spec.uid ?? 0, spec.gid ?? 0);
    const mode = spec.mode ?? 0o755;
    // mkdir's mode is masked by the umask: chmod only when that changed the result.
    if (mode !== (0o755 & ~ctx.umask)) await fs.promises.chmod(data, mode);
  } catch (err) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** The named kind. */
export const named: VolumeKind<'named'> = {
  ...dataDirVolume,
  statusKind: 'named',
  hasOwnMount: () => false,
  async plan(_name, parsed) {
    return parsed;
  },
  async build(rec, ctx) {
    await buildVolumeDir(rec, ctx);
    return {
      release: () => undefined,
      remove: () => fs.promises.rm(ctx.layout.volumeDir(rec.name), { recursive: true, force: true }),
      usage: { bytes: 0, files: 0 }, // an empty _data: what a walk would find
    };
  },
  async establish(rec, ctx) {
    if (fs.existsSync(ctx.layout.dataDir(rec.name))) return;
    // Only power loss right after Create can leave a record without its (empty) directory: rebuild it.
    ctx.log.warn({ volume: rec.name }, 'volume directory missing; recreating it empty');
    await fs.promises.rm(ctx.layout.volumeDir(rec.name), { recursive: true, force: true });
    await buildVolumeDir(rec, ctx);
  },
};
