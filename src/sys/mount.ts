/**
 * Mount helpers on top of sys/libc: bind mounts, unmounts, and the flags we use. The only place that
 * decides mount flags, and the one unmount (unmountTarget and its async twin): UMOUNT_NOFOLLOW always,
 * MNT_DETACH only where the caller says a busy mount may be detached (#10).
 */
import { bindMountDetached, mount, mountAsync, umount2, umount2Async, SyscallError, type MountTarget } from './libc.js';

/** mount(2) flags (linux/mount.h). */
export const MS_BIND = 0x1000;
/** umount2(2) flags. */
export const MNT_DETACH = 0x2;
export const UMOUNT_NOFOLLOW = 0x8;

/** mount(2)'s MS_REC: with MS_BIND, the submounts of the source are carried too (mount(8)'s rbind). */
export const MS_REC = 0x4000;

/** Bind-mounts `source` at `target` (both must exist); its submounts too only when `recursive` (rbind). */
export function bindMount(source: string, target: string, recursive = false): void {
  mount(source, target, null, MS_BIND | (recursive ? MS_REC : 0), null);
}

/** mount_setattr(2)'s atime policy field (MOUNT_ATTR__ATIME): cleared whenever a policy is set. */
const MOUNT_ATTR__ATIME = 0x70;

/**
 * Per-mount flags a bind can be given (mount(8)'s names), as mount_setattr(2)'s MOUNT_ATTR_* bits
 * (linux/mount.h): what a CSI publish's mount_flags may ask for, and (ro, nosuid, nodev, noexec) a
 * bind-style volume's `o=`. The atime policies (relatime, noatime, strictatime) are values of one field,
 * not bits. Anything else (a filesystem option such as `data=ordered`, `uid=`) a bind cannot honour.
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
 * Binds `source` at `target` (a path, or the directory an O_PATH fd pins), with its submounts when
 * `recursive` (rbind), with the per-mount `flags` (keys of BIND_MOUNT_FLAGS; at most one atime policy,
 * the caller checks) on every mount of the new tree. The mount is built detached, given the flags and
 * attached whole (libc bindMountDetached): a `MS_REMOUNT|MS_BIND|MS_RDONLY` after the bind (what mount(8)
 * and moby's local driver do) reaches the top mount only, so `rbind,ro` there leaves every submount
 * writable; it never reaches the copies propagation made at the bind (the host's view of a managed
 * plugin's mountpoint, which dockerd uses; the host side of a Bidirectional kubelet directory); and it
 * replaces the flags the source's mount had (nosuid), which are kept here. Needs `flags` non-empty.
 */
export function bindMountWith(source: string, target: MountTarget, recursive: boolean, flags: readonly string[]): void {
  let set = 0;
  let clr = 0;
  for (const f of flags) {
    const bits = BIND_MOUNT_FLAGS.get(f);
    if (bits === undefined) throw new Error(`bindMountWith: unknown mount flag "${f}"`);
    set |= bits.set;
    clr |= bits.clr;
  }
  bindMountDetached(source, target, recursive, set, clr);
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
