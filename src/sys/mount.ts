/**
 * Mount helpers on top of sys/libc: bind mounts, unmounts, and the flags we use. The only place that
 * decides mount flags, and the one unmount (unmountTarget and its async twin): UMOUNT_NOFOLLOW always,
 * MNT_DETACH only where the caller says a busy mount may be detached (#10).
 */
import { bindMountDetached, mount, mountAsync, umount2, umount2Async, SyscallError } from './libc.js';

/** mount(2) flags (linux/mount.h). */
export const MS_BIND = 0x1000;
/** umount2(2) flags. */
export const MNT_DETACH = 0x2;
export const UMOUNT_NOFOLLOW = 0x8;

/** Bind-mounts `source` at `target` (both must exist). Not recursive: submounts of source are not carried. */
export function bindMount(source: string, target: string): void {
  mount(source, target, null, MS_BIND, null);
}

/** mount(2)'s MS_REC: with MS_BIND, the submounts of the source are carried too (mount(8)'s rbind). */
export const MS_REC = 0x4000;

/**
 * Per-mount attributes a bind-style volume's `o=` may add (mount(8)'s names, linux/mount.h's
 * MOUNT_ATTR_* bits for mount_setattr(2)). Only restrictions: none of them can loosen a mount.
 */
export const BIND_VOLUME_ATTRS: ReadonlyMap<string, number> = new Map([
  ['ro', 0x1],
  ['nosuid', 0x2],
  ['nodev', 0x4],
  ['noexec', 0x8],
]);

/**
 * Bind-mounts `source` at `target`, with its submounts when `recursive` (rbind), with the per-mount
 * attributes `attrs` (keys of BIND_VOLUME_ATTRS) on every mount of the new tree. With attributes, the
 * mount is built detached and attached whole (libc bindMountDetached): a `MS_REMOUNT|MS_BIND|MS_RDONLY`
 * after the bind (what mount(8) and moby's local driver do) reaches the top mount only, so `rbind,ro`
 * there leaves every submount writable, and never reaches the copies propagation made at the bind (the
 * host's view of a managed plugin's mountpoint, which dockerd uses).
 */
export function bindMountWith(source: string, target: string, recursive: boolean, attrs: readonly string[]): void {
  let bits = 0;
  for (const a of attrs) {
    const bit = BIND_VOLUME_ATTRS.get(a);
    if (bit === undefined) throw new Error(`bindMountWith: unknown attribute "${a}"`);
    bits |= bit;
  }
  if (bits === 0) mount(source, target, null, MS_BIND | (recursive ? MS_REC : 0), null);
  else bindMountDetached(source, target, recursive, bits);
}

/**
 * What to do when the mount is busy (a process still has its cwd or a file there):
 * - 'detach': detach it lazily (MNT_DETACH): the name is free at once and the kernel finishes the unmount
 *   when the last user goes (a volume's last Unmount, start-up's stale mounts);
 * - 'report': leave it mounted and answer 'busy' (a commit that must not pull a tree from under a user).
 */
export type IfBusy = 'detach' | 'report';

/** Options of unmountTarget. */
export interface UnmountOptions {
  readonly ifBusy: IfBusy;
}

/**
 * What an unmount did: 'unmounted'; 'detached' (busy, detached lazily); 'busy' (left mounted, with
 * ifBusy 'report'); 'not-mounted' (nothing was mounted there, or the target is gone: EINVAL/ENOENT).
 */
export type UnmountResult = 'unmounted' | 'detached' | 'busy' | 'not-mounted';

/** The answer an umount2 failure means, or the error itself thrown (anything but EBUSY, EINVAL, ENOENT). */
function failureOf(err: unknown): 'busy' | 'not-mounted' {
  if (err instanceof SyscallError) {
    if (err.code === 'EBUSY') return 'busy';
    if (err.code === 'EINVAL' || err.code === 'ENOENT') return 'not-mounted';
  }
  throw err;
}

/**
 * Unmounts `target`, never following a symlink at the target (UMOUNT_NOFOLLOW). A busy mount is detached
 * lazily or reported, as `opts.ifBusy` says. The one unmount of tsvol: every caller states what busy means.
 */
export function unmountTarget(target: string, opts: { readonly ifBusy: 'detach' }): Exclude<UnmountResult, 'busy'>;
export function unmountTarget(target: string, opts: { readonly ifBusy: 'report' }): Exclude<UnmountResult, 'detached'>;
export function unmountTarget(target: string, opts: UnmountOptions): UnmountResult;
export function unmountTarget(target: string, opts: UnmountOptions): UnmountResult {
  try {
    umount2(target, UMOUNT_NOFOLLOW);
    return 'unmounted';
  } catch (err) {
    const why = failureOf(err);
    if (why === 'not-mounted' || opts.ifBusy === 'report') return why;
  }
  umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW);
  return 'detached';
}

/** unmountTarget on the thread pool (the event loop keeps serving meanwhile); the same answers. */
export async function unmountTargetAsync(target: string, opts: { readonly ifBusy: 'detach' }): Promise<Exclude<UnmountResult, 'busy'>>;
export async function unmountTargetAsync(target: string, opts: { readonly ifBusy: 'report' }): Promise<Exclude<UnmountResult, 'detached'>>;
export async function unmountTargetAsync(target: string, opts: UnmountOptions): Promise<UnmountResult>;
export async function unmountTargetAsync(target: string, opts: UnmountOptions): Promise<UnmountResult> {
  try {
    await umount2Async(target, UMOUNT_NOFOLLOW);
    return 'unmounted';
  } catch (err) {
    const why = failureOf(err);
    if (why === 'not-mounted' || opts.ifBusy === 'report') return why;
  }
  await umount2Async(target, MNT_DETACH | UMOUNT_NOFOLLOW);
  return 'detached';
}

/** Mounts an overlay filesystem at `target` with the option string `data`. */
export function overlayMount(target: string, data: string, flags = 0): void {
  mount('overlay', target, 'overlay', flags, data);
}

/** bindMount on the thread pool (the event loop keeps serving meanwhile). */
export async function bindMountAsync(source: string, target: string): Promise<void> {
  await mountAsync(source, target, null, MS_BIND, null);
}

/** mount_setattr(2)'s atime policy field (MOUNT_ATTR__ATIME): cleared whenever a policy is set. */
const MOUNT_ATTR__ATIME = 0x70;

/**
 * Per-mount flags a CSI publish's mount_flags may ask for (mount(8)'s names), as mount_setattr(2)'s
 * MOUNT_ATTR_* bits (linux/mount.h). The atime policies (relatime, noatime, strictatime) are values of
 * one field, not bits. Anything else (a filesystem option such as `data=ordered`, `uid=`) a bind cannot
 * honour.
 */
export const BIND_MOUNT_FLAGS: ReadonlyMap<string, { readonly set: number; readonly clr: number }> = new Map([
  ['ro', { set: 0x1, clr: 0 }],
  ['nosuid', { set: 0x2, clr: 0 }],
  ['nodev', { set: 0x4, clr: 0 }],
  ['noexec', { set: 0x8, clr: 0 }],
  ['nodiratime', { set: 0x80, clr: 0 }],
  ['relatime', { set: 0x0, clr: MOUNT_ATTR__ATIME }],
  ['noatime', { set: 0x10, clr: MOUNT_ATTR__ATIME }],
  ['strictatime', { set: 0x20, clr: MOUNT_ATTR__ATIME }],
]);

/**
 * Binds `source` onto the directory the O_PATH fd `targetFd` pins (`name`: its path, for errors), not
 * recursively. With `flags` (keys of BIND_MOUNT_FLAGS; at most one atime policy, the caller checks), the
 * bind is made detached, given the flags, and attached whole (libc bindMountDetached): a remount after the
 * bind would reach neither the copies propagation made at the bind (a Bidirectional kubelet directory's
 * host side) nor keep the flags the source's mount had (a bind remount replaces them). Without flags, a
 * plain bind on the thread pool.
 */
export async function bindOntoFd(source: string, targetFd: number, name: string, flags: readonly string[]): Promise<void> {
  if (flags.length === 0) {
    await bindMountAsync(source, `/proc/self/fd/${targetFd}`);
    return;
  }
  let set = 0;
  let clr = 0;
  for (const f of flags) {
    const bits = BIND_MOUNT_FLAGS.get(f);
    if (bits === undefined) throw new Error(`bindOntoFd: unknown mount flag "${f}"`);
    set |= bits.set;
    clr |= bits.clr;
  }
  bindMountDetached(source, { fd: targetFd, name }, false, set, clr);
}
