/**
 * Publishes: a volume bind-mounted at a path an orchestrator chose (CSI NodePublishVolume, #12). A publish
 * is a hold like a Docker Mount, so the volume service counts it with the others: Docker's `volume rm` and
 * CSI's DeleteVolume both refuse a volume either side uses, and a restarted server still knows who holds it.
 * The hold's mount ID is derived from the target path (publishMountId), so it is stable across restarts and
 * calls, and one target is one hold however often it is published.
 *
 * Order, as for a Docker Mount (volume-service.ts): the hold first (it establishes the volume's own mount),
 * then the bind at the target; a failed bind releases the hold again. Unpublish undoes it in reverse: the
 * bind, the target directory, then the hold.
 *
 * What a hostile orchestrator can make tsvol do at a path is what the spec implies: mount the volume there,
 * and undo exactly that. A publish goes onto a directory nothing is mounted on (never a symlink); only a
 * mount that shows the volume's own directory (same device and inode) is ever unmounted at a target, so a
 * host filesystem there stays mounted (a mount over a publish makes unpublish refuse, rather than unmount
 * it or leave the volume bound without a hold); a directory is removed only where this volume holds a
 * publish (or a failed publish made it), never one tsvol did not make.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InUseError, InvalidArgumentError, describeError, errnoCode, wrapError } from '../errors.js';
import type { Logger } from '../log.js';
import { isMountRoot } from '../sys/libc.js';
import { bindMountAsync, remountBindReadOnly, unmountTargetAsync } from '../sys/mount.js';
import { mountOptionsAt } from '../sys/mountinfo.js';
import { PUBLISH_HOLD_PREFIX } from './holds.js';
import { createKeyedMutex } from '../sys/keyed-mutex.js';
import type { VolumeMechanics, VolumeService } from './volume-service.js';


/** The hold's mount ID for a publish at `target` (an absolute path). */
export function publishMountId(target: string): string {
  return `${PUBLISH_HOLD_PREFIX}${createHash('sha256').update(path.resolve(target)).digest('hex').slice(0, 32)}`;
}

/** Publishing volumes at target paths. */
export interface Publisher {
  /**
   * Bind-mounts volume `name` at `target` (created if missing), read-only if asked, holding the volume.
   * Idempotent: a target already published from the same volume in the same mode is success; in the other
   * mode it is a ConflictError.
   */
  publish(name: string, target: string, readOnly: boolean): Promise<void>;
  /** Unmounts `target`, removes the directory and drops the hold. Idempotent. */
  unpublish(name: string, target: string): Promise<void>;
  /** True if the volume holds a publish at `target`. */
  isPublished(name: string, target: string): boolean;
}

function checkTarget(target: string): void {
  if (!path.isAbsolute(target)) throw new InvalidArgumentError(`target path "${target}" must be absolute`);
}

/** True if `p` is the root of a mount; false if it is not, or cannot exist. */
function mountedAt(p: string): boolean {
  try {
    return isMountRoot(p);
  } catch (err) {
    // ENOENT: no target; ENOTDIR, ENAMETOOLONG, ELOOP: a path that cannot exist. Nothing mounted either way.
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ENAMETOOLONG' || code === 'ELOOP') return false;
    throw err;
  }
}

/** Why mkdir of a target fails that is the caller's path, not a fault of the server. */
const BAD_TARGET = new Set(['ENOTDIR', 'ENAMETOOLONG', 'ELOOP', 'EEXIST']);

/** Makes the target directory and its missing parents; returns the first one it made. A path that cannot be a directory is InvalidArgument. */
function makeTarget(target: string): string | undefined {
  try {
    return fs.mkdirSync(target, { recursive: true, mode: 0o750 });
  } catch (err) {
    const code = errnoCode(err);
    if (code !== undefined && BAD_TARGET.has(code)) throw new InvalidArgumentError(`target path "${target}" cannot be a directory (${code})`, { cause: err });
    throw err;
  }
}

/** O_PATH (linux/fcntl.h): Node has no constant for it. */
const O_PATH = 0o10000000;

/**
 * Binds `mountpoint` onto the directory `target`, never through a final symlink: the target is pinned with
 * O_PATH | O_NOFOLLOW | O_DIRECTORY and the mount goes onto that fd, so a symlink at the target (to /etc,
 * say) is refused rather than mounted over its destination, where unpublish would never find it.
 */
async function bindOnto(mountpoint: string, target: string): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(target, O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ELOOP' || code === 'ENOTDIR') throw new InvalidArgumentError(`target path "${target}" is not a directory (a symlink or a file); give a directory or a path that does not exist`);
    throw err;
  }
  try {
    await bindMountAsync(mountpoint, `/proc/self/fd/${fd}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** True if the mount on top at `target` shows the volume directory `mountpoint` (its bind): same device and inode. */
function showsVolume(target: string, mountpoint: string): boolean {
  if (!mountedAt(target)) return false;
  const at = fs.lstatSync(target, { bigint: true });
  const own = fs.statSync(mountpoint, { bigint: true });
  return at.dev === own.dev && at.ino === own.ino;
}

/**
 * Unmounts the volume's binds stacked at `target` (a crash between bind and remount may leave two), and
 * nothing else; returns how many it unmounted.
 */
async function unmountOurs(target: string, mountpoint: string): Promise<number> {
  let n = 0;
  while (n < 16 && showsVolume(target, mountpoint)) {
    await unmountTargetAsync(target, { ifBusy: 'detach' });
    n++;
  }
  return n;
}

/** Removes the directories a failed publish made: `target` and its parents up to `created`, the first one mkdir made. */
function removeMade(target: string, created: string): void {
  const first = path.resolve(created);
  for (let dir = path.resolve(target); dir.startsWith(first); dir = path.dirname(dir)) {
    fs.rmdirSync(dir);
    if (dir === first) return;
  }
}

/** A publisher over `service`. */
export function createPublisher(service: VolumeService & VolumeMechanics, log: Logger): Publisher {
  // Per target: two calls for one target never interleave their mount and unmount steps.
  const locks = createKeyedMutex();

  /** True if `id` holds volume `name` (NotFound for an unknown volume). */
  const held = (name: string, id: string): boolean => service.kinds.mustGet(name).holds.has(id);

  return {
    isPublished: (name, target) => held(name, publishMountId(target)),

    async publish(name, target, readOnly) {
      checkTarget(target);
      const id = publishMountId(target);
      await locks.run(path.resolve(target), async () => {
        if (held(name, id) && showsVolume(target, service.path(name))) {
          // mountinfo names the mount by its real path: a target below a symlinked directory (a kubelet root
          // moved to another disk) is looked up by where the kernel put it, not by the path as given.
          const ro = mountOptionsAt(fs.realpathSync(target))?.includes('ro') ?? false;
          if (ro === readOnly) return;
          throw new ConflictError(
            `volume "${name}" is already published at "${target}" ${ro ? 'read-only' : 'read-write'}; unpublish it first to publish it ${readOnly ? 'read-only' : 'read-write'}`,
          );
        }
        // Never onto another mount: unpublish could not tell it from the publish, nor the publish from it.
        if (mountedAt(target)) {
          throw new InUseError(`target path "${target}" is a mount point already (not of volume "${name}"); publish onto a directory nothing is mounted on`);
        }
        // A hold without its bind (a crash between the two, or a reboot) is completed below; the hold's
        // count stays one per target.
        const mountpoint = held(name, id) ? service.path(name) : await service.mount(name, id);
        // What this call did, so that a failure undoes exactly that: its bind, the directories it made.
        let created: string | undefined;
        let bound = false;
        try {
          created = makeTarget(target);
          await bindOnto(mountpoint, target);
          bound = true;
          if (readOnly) await remountBindReadOnly(target);
        } catch (err) {
          try {
            if (bound) await unmountOurs(target, mountpoint);
            if (created !== undefined) removeMade(target, created);
            await service.unmount(name, id);
          } catch (undo) {
            log.warn({ volume: name, target, err: describeError(undo) }, 'could not undo a failed publish');
          }
          throw wrapError(`publish volume "${name}" at "${target}"`, err);
        }
      });
    },

    async unpublish(name, target) {
      checkTarget(target);
      const id = publishMountId(target);
      await locks.run(path.resolve(target), async () => {
        service.get(name); // NotFound for an unknown volume, before anything is touched
        // A target this volume does not hold is not ours: nothing there is touched (a repeated unpublish).
        if (!held(name, id)) return;
        const unmounted = await unmountOurs(target, service.path(name));
        if (mountedAt(target)) {
          // Something else is mounted there. Over the publish (nothing of ours was on top): it is not ours
          // to unmount, and dropping the hold would leave the volume bound underneath, so refuse. Under it
          // (a publish made over a mount point before they were refused): it stays, with its directory.
          if (unmounted === 0) {
            throw new InUseError(`unpublish volume "${name}": something else is mounted over its publish at "${target}"; unmount that first`);
          }
        } else {
          try {
            fs.rmdirSync(target);
          } catch (err) {
            // ENOENT: already removed (an unpublish interrupted after this step).
            if (errnoCode(err) !== 'ENOENT') throw wrapError(`unpublish volume "${name}": remove "${target}"`, err);
          }
        }
        await service.unmount(name, id);
      });
    },
  };
}
