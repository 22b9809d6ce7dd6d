/**
 * Mount helpers on top of sys/libc: bind mounts, unmounts, and the flags we use. The only place that
 * decides mount flags.
 */
import { mount, mountAsync, umount2, umount2Async, SyscallError } from './libc.js';

/** mount(2) flags (linux/mount.h). */
export const MS_BIND = 0x1000;
/** umount2(2) flags. */
export const MNT_DETACH = 0x2;
export const UMOUNT_NOFOLLOW = 0x8;

/** Bind-mounts `source` at `target` (both must exist). Not recursive: submounts of source are not carried. */
export function bindMount(source: string, target: string): void {
  mount(source, target, null, MS_BIND, null);
}

/**
 * Unmounts `target`, never following a symlink at the target. If the mount is busy (a process still has
 * its cwd there), detaches it lazily instead, so that the name is free and the kernel finishes the unmount
 * when the last user goes. Returns false when nothing was mounted there (EINVAL/ENOENT).
 */
export function unmount(target: string): boolean {
  try {
    umount2(target, UMOUNT_NOFOLLOW);
    return true;
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    if (err.code === 'EINVAL' || err.code === 'ENOENT') return false;
    if (err.code !== 'EBUSY') throw err;
  }
  umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW);
  return true;
}

/** Unmounts `target` unless something uses it (no lazy detach): 'busy' leaves it mounted. */
export function unmountUnlessBusy(target: string): 'unmounted' | 'busy' | 'not-mounted' {
  try {
    umount2(target, UMOUNT_NOFOLLOW);
    return 'unmounted';
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    if (err.code === 'EBUSY') return 'busy';
    if (err.code === 'EINVAL' || err.code === 'ENOENT') return 'not-mounted';
    throw err;
  }
}

/** Mounts an overlay filesystem at `target` with the option string `data`. */
export function overlayMount(target: string, data: string, flags = 0): void {
  mount('overlay', target, 'overlay', flags, data);
}

/** bindMount on the thread pool (the event loop keeps serving meanwhile). */
export async function bindMountAsync(source: string, target: string): Promise<void> {
  await mountAsync(source, target, null, MS_BIND, null);
}

/** unmount on the thread pool; same semantics (lazy detach when busy, false when nothing was mounted). */
export async function unmountAsync(target: string): Promise<boolean> {
  try {
    await umount2Async(target, UMOUNT_NOFOLLOW);
    return true;
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    if (err.code === 'EINVAL' || err.code === 'ENOENT') return false;
    if (err.code !== 'EBUSY') throw err;
  }
  await umount2Async(target, MNT_DETACH | UMOUNT_NOFOLLOW);
  return true;
}
