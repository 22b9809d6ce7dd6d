/**
 * The allowlist for bind-style volumes (TSVOL_BIND_ROOTS). A device is accepted only if its real path
 * (every symlink and `..` resolved) is a directory at or below the real path of an allowed root, and that
 * root is reached only through directories that only root can change (changeableBy): a root whose path
 * another user could swap for a symlink would move the allowlist where that user likes. The check is
 * repeated at every Mount, so a symlink swapped in after Create cannot redirect a volume outside.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Beneath } from '../sys/beneath.js';
import { mountState } from '../sys/libc.js';
import { filesystemPath, kernelPath, readMounts } from '../sys/mountinfo.js';
import { InvalidArgumentError, NotFoundError, errnoCode } from '../errors.js';

/** Linux O_PATH: an fd that pins an inode without opening it for I/O (not in fs.constants). */
const O_PATH = 0o10000000;
/** The sticky bit (sys/stat.h): in such a directory only an entry's owner (or root) may rename it. */
const S_ISVTX = 0o1000;

/** Checks device paths against the allowlist. All paths in and out are host paths. */
export interface BindRoots {
  /** Returns the device's real host path, or throws an error naming the device and the fix. */
  resolve(device: string): string;
  /**
   * Pins the device's directory with an O_PATH fd, checks where the fd really points, and calls `use`
   * with `/proc/self/fd/N`: a bind mount from there binds exactly the checked inode, even if the path is
   * swapped between the check and the mount.
   */
  withPinned<T>(device: string, use: (procPath: string, hostPath: string) => T): T;
  /**
   * withPinned for work that outlives a synchronous call (a clone's copy on a worker thread): the checked
   * O_PATH fd stays open, pinning the same inode, until `close`. Read below it only through that fd
   * (`Beneath.fromFd`): its path may be swapped for a symlink at any moment.
   */
  pin(device: string): PinnedDevice;
  /** Runs `use` on the device's tree, pinned and checked as by `pin`, read only below that fd (#9). */
  withTree<T>(device: string, use: (root: Beneath) => Promise<T>): Promise<T>;
  /** The path through which this process reaches a host path (adds TSVOL_HOST_ROOT). */
  local(hostPath: string): string;
}

/** A bind-style device's directory, pinned by an O_PATH fd whose real path was checked (BindRoots.pin). */
export interface PinnedDevice {
  /** O_PATH|O_DIRECTORY fd of the checked directory. */
  readonly fd: number;
  /** `/proc/self/fd/<fd>`. */
  readonly procPath: string;
  /** Where the fd pointed when it was checked (a host path, for messages). */
  readonly hostPath: string;
  close(): void;
}

/**
 * Who other than root could change what `dir` (a root as configured, or its real path) resolves to: the
 * first directory on the way whose entry for the next step another user may rename or replace (owned by
 * another user, or group/other-writable without the sticky bit protecting a root-owned entry), or
 * undefined. Such a user could swap the root for a symlink to /etc, and every bind-style volume below it
 * (existing ones at their next Mount too) would follow: a root is trusted only through directories only
 * root can change.
 */
function changeableBy(dir: string): string | undefined {
  const parts = dir.split('/').filter((c) => c !== '');
  for (let i = 0; i < parts.length; i++) {
    const parent = `/${parts.slice(0, i).join('/')}`;
    const child = path.join(parent, parts[i]!);
    let p: fs.Stats;
    let c: fs.Stats;
    try {
      p = fs.statSync(parent);
      c = fs.lstatSync(child);
    } catch (err) {
      // ENOENT/ENOTDIR: the root is not there (yet); it allows nothing, which the caller finds out itself.
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
      throw err;
    }
    const othersWrite = p.uid !== 0 || (p.mode & 0o022) !== 0;
    const sticky = (p.mode & S_ISVTX) !== 0;
    if (othersWrite && !(sticky && p.uid === 0 && c.uid === 0)) {
      return `${parent} (owner uid ${p.uid}, mode ${(p.mode & 0o7777).toString(8)})`;
    }
  }
  return undefined;
}

function within(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith('/') ? parent : `${parent}/`);
}

/** A directory's identity: device and inode, which no path spelling, bind or namespace changes. */
function idOf(st: fs.Stats): string {
  return `${st.dev}:${st.ino}`;
}

/** The identities of `dir` and of every directory above it, up to `/` (by its real path, resolved now). */
function lineage(dir: string): Set<string> {
  const ids = new Set<string>();
  for (let p = dir; ; p = path.dirname(p)) {
    ids.add(idOf(fs.statSync(p)));
    if (p === '/' || p === '.') return ids;
  }
}

/**
 * True if the device (kernel path `realLocal`, stats `dev`) holds `dir` (stats `res`) within their common
 * filesystem. The ancestors of `dir` that this process sees are not always the host's: a managed plugin's
 * data root is a bind whose parents are the plugin's rootfs, while devices are reached through
 * TSVOL_HOST_ROOT. Both are placed in their filesystem (filesystemPath) and compared there.
 */
function holdsByFilesystem(realLocal: string, dev: fs.Stats, dir: string, res: fs.Stats): boolean {
  if (dev.dev !== res.dev) return false;
  // Seen through no mount but `/`, the ancestors of `dir` are its filesystem's, which lineage compared
  // already; only a bind on the way needs mountinfo (whose size grows with the mounts, so not read always).
  const real = kernelPath(dir);
  let viaMount = false;
  for (let p = real; p !== '/' && !viaMount; p = path.dirname(p)) viaMount = mountState(p) === 'mount-root';
  if (!viaMount) return false;
  const mounts = readMounts();
  const outer = filesystemPath(realLocal, mounts);
  const inner = filesystemPath(real, mounts);
  if (outer === undefined || inner === undefined) return false;
  return inner === outer || outer === '/' || inner.startsWith(`${outer}/`);
}

/**
 * Creates the allowlist from `roots` (host paths), reached through `hostRoot` when set. `reserved` are
 * tsvol's own directories (this process's paths: the data root, TSVOL_MOUNTS): a device that is one of
 * them, lies inside one, or holds one is refused whatever the roots say, since a container given it would
 * reach every volume, the layers and the control socket (root's API). Compared by device and inode of the
 * pinned directory and its ancestors, so no bind of the data root elsewhere, symlink or host-root prefix
 * hides the overlap.
 */
export function createBindRoots(roots: readonly string[], hostRoot: string | undefined, reserved: readonly string[] = []): BindRoots {
  const prefix = hostRoot === undefined || hostRoot === '/' ? '' : hostRoot;
  const local = (hostPath: string): string => (prefix === '' ? hostPath : path.join(prefix, hostPath));
  const toHost = (localPath: string): string | undefined => {
    if (prefix === '') return localPath;
    if (!within(localPath, prefix)) return undefined;
    return localPath === prefix ? '/' : localPath.slice(prefix.length);
  };

  function check(device: string, realLocal: string): string {
    const hostPath = toHost(realLocal);
    const allowed = roots.some((root) => {
      let realRoot: string;
      try {
        realRoot = fs.realpathSync(local(root));
      } catch {
        return false; // a root that does not exist (yet) allows nothing
      }
      if (hostPath === undefined || !within(realLocal, realRoot)) return false;
      const by = changeableBy(local(root)) ?? changeableBy(realRoot);
      if (by !== undefined) {
        throw new InvalidArgumentError(
          `device "${device}" refused: its TSVOL_BIND_ROOTS entry "${root}" is reached through ${by}, which a user other than root can change (and so point the root anywhere); use a root below directories only root can write`,
        );
      }
      return true;
    });
    if (hostPath === undefined || !allowed) {
      const via = hostPath === device ? '' : ` (it resolves to "${hostPath ?? realLocal}")`;
      throw new InvalidArgumentError(
        `device "${device}"${via} is outside TSVOL_BIND_ROOTS (${roots.join(':')}); ` +
          'use a directory below an allowed root or add a root with `docker plugin set tsvol TSVOL_BIND_ROOTS=...`',
      );
    }
    return hostPath;
  }

  /**
   * Refuses `device` if it overlaps a reserved directory: its directory (stats `pinned`, real local path
   * `realLocal`) is one, lies inside one or holds one.
   */
  function checkReserved(device: string, realLocal: string, pinned: fs.Stats): void {
    if (reserved.length === 0) return;
    let own: Set<string>;
    try {
      own = lineage(realLocal);
    } catch (err) {
      // The pinned directory was removed meanwhile (its /proc path reads "… (deleted)"): nothing to bind.
      if (errnoCode(err) === 'ENOENT') throw new NotFoundError(`device "${device}" does not exist; create the directory first`);
      throw err;
    }
    for (const dir of reserved) {
      let res: fs.Stats;
      try {
        res = fs.statSync(dir);
      } catch (err) {
        // ENOENT: not made yet (TSVOL_MOUNTS before the first Mount), so nothing of ours is there to overlap.
        if (errnoCode(err) === 'ENOENT') continue;
        throw err;
      }
      const inside = own.has(idOf(res));
      const holds = lineage(fs.realpathSync(dir)).has(idOf(pinned)) || holdsByFilesystem(realLocal, pinned, dir, res);
      if (inside || holds) {
        throw new InvalidArgumentError(
          `device "${device}" refused: it ${inside ? 'lies inside' : 'holds'} tsvol's own directory "${dir}" (volumes, layers, the control socket); bind a directory apart from it`,
        );
      }
    }
  }

  function realLocalDir(device: string): string {
    if (roots.length === 0) {
      throw new InvalidArgumentError(
        `bind-style volume on "${device}" refused: TSVOL_BIND_ROOTS is empty, so bind-style volumes are disabled`,
      );
    }
    let real: string;
    try {
      real = fs.realpathSync(local(device));
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new NotFoundError(`device "${device}" does not exist; create the directory first`);
      throw new InvalidArgumentError(`device "${device}" cannot be resolved: ${errnoCode(err) ?? String(err)}`);
    }
    if (!fs.statSync(real).isDirectory()) throw new InvalidArgumentError(`device "${device}" is not a directory`);
    return real;
  }

  function pin(device: string): PinnedDevice {
    const real = realLocalDir(device);
    check(device, real);
    const fd = fs.openSync(real, O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
    try {
      const procPath = `/proc/self/fd/${fd}`;
      // Re-check the inode the fd really pins: the path may have been swapped since realpath.
      const realNow = fs.readlinkSync(procPath);
      const hostPath = check(device, realNow);
      checkReserved(device, realNow, fs.fstatSync(fd));
      return { fd, procPath, hostPath, close: () => fs.closeSync(fd) };
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  return {
    local,
    resolve(device) {
      const real = realLocalDir(device);
      const hostPath = check(device, real);
      checkReserved(device, real, fs.statSync(real));
      return hostPath;
    },
    withPinned(device, use) {
      const pinned = pin(device);
      try {
        return use(pinned.procPath, pinned.hostPath);
      } finally {
        pinned.close();
      }
    },
    pin,
    async withTree(device, use) {
      const pinned = pin(device);
      try {
        const root = Beneath.fromFd(pinned.fd, pinned.hostPath);
        try {
          return await use(root);
        } finally {
          root.close();
        }
      } finally {
        pinned.close();
      }
    },
  };
}
