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
 * A target is known by where the kernel puts it (targetIdentity): its real path, resolved through an fd, so
 * two spellings of one directory (a symlinked kubelet root, a double slash) are one target and one hold,
 * and a retry finds the publish it made; two real directories are two targets. The bind goes onto the fd
 * whose real path was checked, so a rename or symlink swapped in meanwhile is refused, not followed.
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
import { BIND_MOUNT_FLAGS, bindMountAsync, bindMountWith, unmountTargetAsync } from '../sys/mount.js';
import { kernelPath, mountAt } from '../sys/mountinfo.js';
import { PUBLISH_HOLD_PREFIX } from './holds.js';
import { createKeyedMutex } from '../sys/keyed-mutex.js';
import type { VolumeMechanics, VolumeService } from './volume-service.js';


/** The hold's mount ID for a publish at the target whose identity (targetIdentity) is `identity`. */
export function publishMountId(identity: string): string {
  return `${PUBLISH_HOLD_PREFIX}${createHash('sha256').update(identity).digest('hex').slice(0, 32)}`;
}

/** The per-mount flags a publish can set (mount_setattr's: src/sys/mount.ts), besides `ro`. */
export const PUBLISH_MOUNT_FLAGS: readonly string[] = [...BIND_MOUNT_FLAGS.keys()];

/** How a publish mounts: read-only or not, and the per-mount flags asked for (keys of BIND_MOUNT_FLAGS). */
export interface PublishOptions {
  readonly readOnly: boolean;
  readonly flags?: readonly string[];
  /**
   * The filesystem type the orchestrator expects (CSI fs_type), or '' for any. A bind shows the volume's
   * own filesystem and cannot make another: a type that is not the one the publish shows is refused
   * (InvalidArgument) and undone.
   */
  readonly fsType?: string;
}

/** Publishing volumes at target paths. */
export interface Publisher {
  /**
   * Bind-mounts volume `name` at `target` (created if missing), read-only if asked and with the asked
   * per-mount flags, holding the volume. Idempotent: a target already published from the same volume in
   * the same mode is success; in the other mode it is a ConflictError.
   */
  publish(name: string, target: string, opts: PublishOptions): Promise<void>;
  /** Unmounts `target`, removes the directory and drops the hold. Idempotent. */
  unpublish(name: string, target: string): Promise<void>;
  /** True if the volume holds a publish at `target`. */
  isPublished(name: string, target: string): boolean;
}

function checkTarget(target: string): void {
  if (!path.isAbsolute(target)) throw new InvalidArgumentError(`target path "${target}" must be absolute`);
  // `..` after a directory that does not exist yet has no kernel meaning to resolve; no orchestrator sends it.
  if (target.split('/').some((c) => c === '.' || c === '..')) {
    throw new InvalidArgumentError(`target path "${target}" has a "." or ".." component; give the path itself`);
  }
  if (target.includes('\0')) throw new InvalidArgumentError(`target path "${target}" has a NUL byte`);
}

/**
 * The target's identity: its real path as the kernel resolves it (symlinks in its parents followed, a final
 * symlink not), read back from an O_PATH fd. Missing trailing components (a target not made yet) are
 * appended to the real path of the deepest one that exists. A target that cannot be a directory is
 * InvalidArgument.
 */
export function targetIdentity(target: string): string {
  const rest: string[] = [];
  let p = path.resolve(target);
  for (;;) {
    try {
      return path.join(kernelPath(p, { noFollow: rest.length === 0 }), ...rest);
    } catch (err) {
      const code = errnoCode(err);
      if (code !== 'ENOENT' || p === '/') {
        if (code !== undefined && BAD_TARGET.has(code)) throw new InvalidArgumentError(`target path "${target}" cannot be a directory (${code})`, { cause: err });
        throw err;
      }
      rest.unshift(path.basename(p));
      p = path.dirname(p);
    }
  }
}

/** The mount IDs a publish at `target` may hold: its identity's, and the one an older tsvol made from the path as given. */
function publishIds(target: string, identity: string): string[] {
  const legacy = publishMountId(path.resolve(target));
  const id = publishMountId(identity);
  return legacy === id ? [id] : [id, legacy];
}

/** Why mkdir of a target fails that is the caller's path, not a fault of the server. */
const BAD_TARGET = new Set(['ENOTDIR', 'ENAMETOOLONG', 'ELOOP', 'EEXIST']);

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
 * Binds `mountpoint` onto the directory `target` with the per-mount `flags` (keys of BIND_MOUNT_FLAGS),
 * never through a final symlink: the target is pinned with O_PATH | O_NOFOLLOW | O_DIRECTORY and the
 * mount goes onto that fd, so a symlink at the target (to /etc, say) is refused rather than mounted over
 * its destination, where unpublish would never find it. The fd's real path must be `identity` (what the
 * hold is named by): a parent renamed or swapped for a symlink since is a ConflictError, and nothing is
 * mounted. A flagged bind is attached with its flags already set (sys/mount.ts bindMountWith), so the copies
 * a shared target directory propagates to (the host side of a Bidirectional kubelet directory) are
 * read-only too, and the flags the volume's mount has (nosuid, nodev) are kept.
 */
async function bindOnto(mountpoint: string, target: string, identity: string, flags: readonly string[]): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(target, O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ELOOP' || code === 'ENOTDIR') throw new InvalidArgumentError(`target path "${target}" is not a directory (a symlink or a file); give a directory or a path that does not exist`);
    throw err;
  }
  try {
    const now = fs.readlinkSync(`/proc/self/fd/${fd}`);
    if (now !== identity) throw new ConflictError(`target path "${target}" moved while being published (now "${now}", was "${identity}"); try again`);
    if (flags.length === 0) await bindMountAsync(mountpoint, `/proc/self/fd/${fd}`);
    else bindMountWith(mountpoint, { fd, name: target }, false, flags);
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
 * Unmounts the volume's binds stacked at `target` (an older tsvol's crash between its bind and its remount may have left two), and
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

  /** The hold at `target` (its identity's, or an older tsvol's by the path as given), or undefined. */
  const heldId = (name: string, target: string, identity: string): string | undefined =>
    publishIds(target, identity).find((id) => held(name, id));

  return {
    isPublished: (name, target) => {
      checkTarget(target);
      return heldId(name, target, targetIdentity(target)) !== undefined;
    },

    async publish(name, target, opts) {
      checkTarget(target);
      const { readOnly } = opts;
      const flags = [...new Set((opts.flags ?? []).filter((f) => f !== 'ro'))];
      for (const f of flags) if (!BIND_MOUNT_FLAGS.has(f)) throw new InvalidArgumentError(`mount flag "${f}" cannot be set on a bind mount`);
      const identity = targetIdentity(target);
      await locks.run(identity, async () => {
        const id = heldId(name, target, identity) ?? publishMountId(identity);
        if (held(name, id) && showsVolume(target, service.path(name))) {
          // mountinfo names the mount by its real path: kernelPath looks the target up where the kernel put it.
          const entry = mountAt(target);
          const options = entry?.options ?? [];
          const fsType = opts.fsType ?? '';
          if (fsType !== '' && entry?.fsType !== fsType) {
            throw new InvalidArgumentError(`fs_type "${fsType}" cannot be honoured: volume "${name}" is published at "${target}" on ${entry?.fsType ?? 'nothing'}`);
          }
          const ro = options.includes('ro');
          const missing = flags.filter((f) => !options.includes(f));
          if (ro === readOnly && missing.length === 0) return;
          throw new ConflictError(
            `volume "${name}" is already published at "${target}" ${ro ? 'read-only' : 'read-write'}; unpublish it first to publish it ${readOnly ? 'read-only' : 'read-write'}${missing.length > 0 ? ` with ${missing.join(',')} (its mount has ${options.join(',')})` : ''}`,
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
          await bindOnto(mountpoint, target, identity, readOnly ? ['ro', ...flags] : flags);
          bound = true;
          const fsType = opts.fsType ?? '';
          const shown = fsType === '' ? undefined : mountAt(target)?.fsType;
          if (shown !== undefined && shown !== fsType) {
            throw new InvalidArgumentError(`fs_type "${fsType}" cannot be honoured: volume "${name}" is a directory on ${shown} (a bind mount cannot change it); leave fs_type empty or give "${shown}"`);
          }
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
      const identity = targetIdentity(target);
      await locks.run(identity, async () => {
        service.get(name); // NotFound for an unknown volume, before anything is touched
        // A target this volume does not hold is not ours: nothing there is touched (a repeated unpublish).
        const id = heldId(name, target, identity);
        if (id === undefined) return;
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
            // Only the directory the hold is named by: a parent swapped for a symlink since is not followed.
            if (targetIdentity(target) === identity) fs.rmdirSync(target);
            else log.warn({ volume: name, target, identity }, 'unpublish target moved; its directory is left');
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
