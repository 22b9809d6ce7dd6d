/**
 * Clones (`from=SRC`, #6): a full copy of another volume as it was at Create, afterwards an ordinary
 * volume of its own. The copy runs on a worker thread into a directory built whole in tmp/. The clone's
 * _data is always a new real directory holding copies (#9 §3): copyTree reads the source only through its
 * pinned root and never follows a symlink, so nothing here can make _data a link to a host path.
 */
import { InvalidArgumentError } from '../../errors.js';
import { copyTreeInWorker } from '../clone.js';
import { holdCount } from '../holds.js';
import { validateName } from '../names.js';
import { buildInTmp, dataDirVolume } from './common.js';
import type { Built, KindContext, RecordOf, VolumeKind } from './kind.js';

/**
 * Copies volume `rec.spec.from` into a new volume directory for `rec`. A source whose files are only visible
 * through its own mount (hasOwnMount) that nobody holds is mounted for the copy under its own lock (two
 * mounts of one ext4 image would corrupt it); any other source is read without its lock, so a long copy
 * never holds up the source's Mount. A bind-style source is read below its pinned device (Contents).
 */
async function copyVolume(rec: RecordOf<'clone'>, ctx: KindContext): Promise<Built> {
  const from = rec.spec.from;
  const src = ctx.mustGet(from);
  const kind = ctx.kindOf(src.spec);
  const copy = async (): Promise<Built> => {
    const contents = kind.contents(src, ctx);
    try {
      // A pinned tree goes to the worker as its fd: the copy reads below it only.
      const source = typeof contents.tree === 'string' ? contents.tree : contents.tree.fd;
      return await buildInTmp(rec, ctx, async (files) => void (await copyTreeInWorker(source, files.data)));
    } finally {
      contents.close();
    }
  };
  // Cluster mode (#14): the source is held by this node for the copy, so no other node removes it midway.
  if (ctx.sharedRoot !== undefined) return ctx.holdDuring(from, copy);
  if (!kind.hasOwnMount(src.spec)) return copy();
  return ctx.withLock(from, async () => {
    const now = ctx.mustGet(from);
    if (holdCount(now) > 0) return copy();
    await kind.establish(now, ctx);
    try {
      return await copy();
    } finally {
      await kind.release(now, ctx);
    }
  });
}

/** The clone kind. */
export const clone: VolumeKind<'clone'> = {
  ...dataDirVolume,
  statusKind: 'clone-of',
  clusterRefusal: undefined,
  hasOwnMount: () => false,
  async plan(name, parsed) {
    validateName(parsed.from);
    if (parsed.from === name) throw new InvalidArgumentError(`volume "${name}" cannot be a clone of itself`);
    return parsed;
  },
  build: (rec, ctx) => copyVolume(rec, ctx),
  describe: (rec, ctx) => ({ path: ctx.layout.dataDir(rec.name), from: rec.spec.from }),
};
