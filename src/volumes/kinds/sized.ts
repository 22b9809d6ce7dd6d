/**
 * Sized volumes (`size=`, #6): a hard limit, by a project quota on _data where the data root's filesystem
 * enforces them, else by an ext4 image of its own (disk.img), loop-mounted on _data while held. The
 * backing is probed on the first sized Create, not at start-up (most servers and every CLI command never
 * need it), and recorded in the spec: a volume keeps its backing whatever later probes say.
 */
import fs from 'node:fs';
import { describeError } from '../../errors.js';
import {
  applyProjectQuota,
  clearProjectQuota,
  imageUsage,
  makeImage,
  mountImage,
  mountedUsage,
  newProjectId,
  projectUsage,
} from '../size-limit.js';
import { buildInTmp, dataDirVolume, isMountRootOrMissing, unmountData } from './common.js';
import type { VolumeKind } from './kind.js';

/** The sized kind. */
export const sized: VolumeKind<'sized'> = {
  ...dataDirVolume,
  statusKind: 'sized',
  // A loop-backed ext4 image mounted by two nodes at once is corrupted at once, and a project quota is a
  // property of one host's local filesystem: neither is offered until an image lease (a single writer,
  // checked before mounting) exists.
  clusterRefusal:
    'size= is refused: a loop-mounted ext4 image on a shared filesystem would be mounted by every node running a task on it, which corrupts it, and project quotas belong to one host\'s filesystem; use a quota of the shared filesystem itself',
  hasOwnMount: (spec) => spec.backing === 'loop',
  async plan(_name, parsed, ctx) {
    const { backing } = ctx.sizeBacking();
    return { ...parsed, backing, ...(backing === 'quota' ? { projectId: newProjectId() } : {}) };
  },
  async build(rec, ctx) {
    const { spec } = rec;
    return buildInTmp(rec, ctx, async (files) => {
      await fs.promises.mkdir(files.data, { mode: 0o755 });
      if (spec.backing === 'loop') {
        await makeImage(files.image, spec.limit, spec);
        return;
      }
      if (spec.uid !== undefined || spec.gid !== undefined) await fs.promises.chown(files.data, spec.uid ?? 0, spec.gid ?? 0);
      if (spec.mode !== undefined) await fs.promises.chmod(files.data, spec.mode);
      applyProjectQuota(files.data, spec.projectId ?? 0, spec.limit);
    });
  },
  async establish(rec, ctx) {
    if (rec.spec.backing !== 'loop') return; // a quota: the directory is there
    const files = ctx.layout.filesOf(rec.name);
    await mountImage(files.image, files.data, ctx.devDir);
  },
  async release(rec, ctx) {
    // The image's mount goes with the last holder; autoclear detaches its loop device.
    return rec.spec.backing === 'loop' ? unmountData(rec, ctx) : false;
  },
  measure(rec, ctx) {
    const { spec } = rec;
    if (spec.backing === 'quota') return async () => projectUsage(ctx.layout.root, spec.projectId ?? 0);
    const files = ctx.layout.filesOf(rec.name);
    return async () => (isMountRootOrMissing(files.data) ? mountedUsage(files.data) : imageUsage(files.image));
  },
  describe: (rec, ctx) => ({ path: ctx.layout.dataDir(rec.name), limit: rec.spec.limit, sizeBacking: rec.spec.backing }),
  async destroy(rec, ctx) {
    await dataDirVolume.destroy(rec, ctx);
    if (rec.spec.projectId === undefined) return;
    try {
      clearProjectQuota(ctx.layout.root, rec.spec.projectId);
    } catch (err) {
      ctx.log.warn({ volume: rec.name, err: describeError(err) }, 'could not clear project quota limit');
    }
  },
};
