/**
 * Sized volumes (`size=`, #6): a hard limit, by a project quota on _data where the data root's filesystem
 * enforces them, else by an ext4 image of its own (disk.img), loop-mounted on _data while held. The
 * backing is probed on the first sized Create, not at start-up (most servers and every CLI command never
 * need it), and recorded in the spec: a volume keeps its backing whatever later probes say.
 *
 * Growing (#12, `grow`): the new limit is committed before it takes effect, so a crash never leaves more
 * room in effect than the record says. A quota: commit, then raise the project limit. An image: the
 * `growing` marker (durable), commit, grow the filesystem, drop the marker. The filesystem grows online
 * where this process holds CAP_SYS_RESOURCE (the file is extended durably before the commit, which has no
 * effect yet; then the loop device takes the file's size and the kernel grows the ext4 in journaled
 * steps; a volume not in use is mounted for it and unmounted again). Else it grows offline, and only when
 * not in use (in use: refused before anything changes): resize2fs on a copy in tmp/ that replaces the
 * image by a rename (size-limit.ts growImageOffline), so the image is never written in place and a crash
 * before the rename leaves it as it was. A grow cut short is finished by the next grow, whatever it asks,
 * or by the next establish (the first Mount), which sees the marker; a quota's limit is set from the
 * record at each establish.
 */
import fs from 'node:fs';
import { InUseError, OutOfRangeError, describeError } from '../../errors.js';
import { mayResizeOnline } from '../../sys/ext4.js';
import { crashPoint } from '../../sys/crash-point.js';
import type { VolumeFiles } from '../../store/layout.js';
import { nullProtoRecord } from '../../store/volume-store.js';
import { parseSize } from '../options.js';
import {
  checkImageLength,
  applyProjectQuota,
  clearGrowing,
  clearProjectQuota,
  extendImage,
  growImageOffline,
  growMountedImage,
  ImageCheckError,
  imageBelowLimit,
  lockImage,
  markGrowing,
  imageUsage,
  makeImage,
  mountImage,
  mountedUsage,
  newProjectId,
  projectUsage,
  syncProjectLimit,
} from '../size-limit.js';
import { buildInTmp, dataDirVolume, isMountRootOrMissing, unmountData } from './common.js';
import type { KindContext, RecordOf, VolumeKind } from './kind.js';

/**
 * Grows the filesystem of a volume's image that is not mounted here to fill `limit`: online on a mount of
 * its own where this process may (journaled, see sys/ext4.ts), else offline (resize2fs on a copy renamed
 * over the image). Under the image's lock from start to end, so no Mount comes meanwhile. Nothing to do
 * if the filesystem has that size already.
 */
async function growUnmounted(rec: RecordOf<'sized'>, files: VolumeFiles, limit: number, ctx: KindContext): Promise<void> {
  const lock = await lockImage(files.image);
  try {
    if (!mayResizeOnline()) {
      await growImageOffline(files.image, limit, ctx.layout.tmpDir, files.growing);
      return;
    }
    if (!imageBelowLimit(files.image, limit)) return;
    extendImage(files.image, limit); // done before the commit, unless an offline grow was tried first
    // The caller holds the volume's lock (or is establishing it): no Mount comes meanwhile; a crash
    // leaves a mount with no holder, which start-up removes.
    await mountImage(files.image, files.data, ctx.devDir);
    try {
      crashPoint('grow:resizing');
      await growMountedImage(files.image, files.data, limit, ctx.devDir);
    } finally {
      await unmountData(rec, ctx);
    }
  } finally {
    fs.closeSync(lock);
  }
}

/**
 * Establish of an image whose grow a crash cut short (its `growing` marker is there): finishes it to the
 * recorded limit before mounting. Fails the Mount only when the image needs a manual check (an offline
 * resize killed mid-way, ImageCheckError): never mount a damaged filesystem. Else the volume works at its
 * old size, and the next grow says why it cannot finish.
 */
async function finishGrow(rec: RecordOf<'sized'>, files: VolumeFiles, ctx: KindContext): Promise<void> {
  try {
    await growUnmounted(rec, files, rec.spec.limit, ctx);
    clearGrowing(files.growing);
    ctx.log.info({ volume: rec.name, limit: rec.spec.limit }, 'finished growing volume filesystem');
  } catch (err) {
    if (err instanceof ImageCheckError) throw err;
    ctx.log.warn({ volume: rec.name, limit: rec.spec.limit, err: describeError(err) }, 'could not finish growing volume filesystem');
  }
}

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
    const { spec } = rec;
    const files = ctx.layout.filesOf(rec.name);
    if (spec.backing !== 'loop') {
      // A quota: the directory is there. Its limit is the record's (a grow a crash cut short, #12); a
      // failure to say so again leaves the quota as it was, and does not fail the Mount.
      try {
        syncProjectLimit(files.data, spec.projectId ?? 0, spec.limit);
      } catch (err) {
        ctx.log.warn({ volume: rec.name, err: describeError(err) }, 'could not set project quota limit');
      }
      return;
    }
    if (isMountRootOrMissing(files.data)) return; // still mounted (a restarted server keeps its held volumes' mounts)
    if (fs.existsSync(files.growing)) await finishGrow(rec, files, ctx);
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
  async grow(rec, range, ctx, commit) {
    const { spec } = rec;
    if (range.limit > 0 && spec.limit > range.limit) {
      throw new OutOfRangeError(`volume "${rec.name}" is ${spec.limit} bytes, more than the ${range.limit} asked for: a sized volume grows, it never shrinks`);
    }
    const limit = Math.max(spec.limit, range.required);
    const grows = limit > spec.limit;
    const files = ctx.layout.filesOf(rec.name);
    if (spec.backing === 'quota') {
      if (grows) await commit({ ...spec, limit });
      crashPoint('grow:after-commit');
      syncProjectLimit(files.data, spec.projectId ?? 0, limit);
      return limit;
    }
    const mounted = isMountRootOrMissing(files.data);
    if (grows) {
      if (mounted && !mayResizeOnline()) {
        // Refused before anything changes: the CSI spec's FAILED_PRECONDITION for a volume in use (#12).
        throw new InUseError(
          `volume "${rec.name}" is in use, and growing its mounted filesystem needs CAP_SYS_RESOURCE, which this server lacks; stop the containers and pods using it and retry, or grant the capability`,
        );
      }
      await checkImageLength(ctx.layout.tmpDir, limit); // before anything changes
      markGrowing(files.growing);
      // Online, the loop device takes the file's size. Offline, the image is never written: its grown
      // copy is extended instead (growImageOffline).
      if (mayResizeOnline()) extendImage(files.image, limit);
      crashPoint('grow:after-image');
      await commit({ ...spec, limit });
      crashPoint('grow:after-commit');
    } else if (!fs.existsSync(files.growing)) {
      return limit; // no grow of this volume is unfinished
    }
    if (!mounted) await growUnmounted(rec, files, limit, ctx);
    else if (mayResizeOnline()) {
      extendImage(files.image, limit); // done before the commit, unless an offline grow was tried first
      await growMountedImage(files.image, files.data, limit, ctx.devDir);
    }
    else return limit; // in use here: finished when it is next established (unmounted), or by a grow with the capability
    clearGrowing(files.growing);
    return limit;
  },
  describe: (rec, ctx) => ({ path: ctx.layout.dataDir(rec.name), limit: rec.spec.limit, sizeBacking: rec.spec.backing }),
  statusOptions(rec) {
    // Grown (resize, ControllerExpandVolume): size= says the limit now, in bytes; as created, as it was given.
    const given = rec.options.size;
    if (given !== undefined && parseSize(given) === rec.spec.limit) return undefined;
    return nullProtoRecord([...Object.entries(rec.options), ['size', String(rec.spec.limit)]]);
  },
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
