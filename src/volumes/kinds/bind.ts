/**
 * Bind-style volumes (`type=bind,device=…`, or the local driver's `type=none,o=bind`): a host directory
 * below TSVOL_BIND_ROOTS. tsvol never writes or deletes it; only the record is ours. Its path is
 * never trusted after the check: a symlink swapped in anywhere on it since Create could point outside the
 * allowlist. So every use pins the directory with an O_PATH fd, re-checks where the fd points, and works
 * through the fd: Mount bind-mounts from it (the mountpoint is always a tsvol bind mount, binds/<name>
 * without TSVOL_MOUNTS, #9 §10a), a clone copies below it, usage is walked below it (only when asked).
 */
import { Beneath } from '../../sys/beneath.js';
import { bindMount, bindMountWith } from '../../sys/mount.js';
import { parseBindMountOptions } from '../options.js';
import { measureTree } from '../usage.js';
import { ensureMountpointDir } from './common.js';
import type { VolumeKind } from './kind.js';

/** The bind kind. */
export const bind: VolumeKind<'bind'> = {
  statusKind: 'bind',
  clusterRefusal: 'bind-style volumes (type=bind, device=) name a host path, and each node has its own host paths',
  hasOwnMount: () => false,
  privateMountpoint: true,
  async plan(_name, parsed, ctx) {
    ctx.bindRoots.resolve(parsed.device); // refused now, not at the first Mount
    return { kind: 'bind', device: parsed.device };
  },
  linked: () => [],
  async build() {
    return { release: () => undefined, remove: async () => undefined }; // nothing on disk is ours
  },
  async establish() {
    // The host directory is there or not: bindTo pins and checks it.
  },
  async bindTo(rec, mp, ctx) {
    // o= as Create accepted it (the record keeps the options verbatim): rbind carries the device's
    // submounts, ro/nosuid/nodev/noexec are set on every mount of the tree by the kernel (bindMountWith).
    const how = parseBindMountOptions(rec.options.o);
    await ensureMountpointDir(mp);
    // Synchronous on purpose: the O_PATH fd must pin the checked inode until the mount has used it.
    ctx.bindRoots.withPinned(rec.spec.device, (procPath) =>
      how.attrs.length === 0 ? bindMount(procPath, mp, how.recursive) : bindMountWith(procPath, mp, how.recursive, how.attrs),
    );
  },
  async release() {
    return false;
  },
  contents(rec, ctx) {
    // Pinned by an fd and re-checked against TSVOL_BIND_ROOTS (a symlink swapped in since Create is resolved
    // and refused), held open for the whole read: the reader works below that fd only (#9 §3).
    const pinned = ctx.bindRoots.pin(rec.spec.device);
    try {
      const tree = Beneath.fromFd(pinned.fd, pinned.hostPath);
      return {
        tree,
        close() {
          tree.close();
          pinned.close();
        },
      };
    } catch (err) {
      pinned.close();
      throw err;
    }
  },
  // Walked below the device pinned and re-checked against TSVOL_BIND_ROOTS, never by its path, which a
  // symlink swapped in since Create could send elsewhere (#9); and only when a user asks.
  measure: (rec, ctx) => () => ctx.bindRoots.withTree(rec.spec.device, measureTree),
  usageInStatus: false, // a host directory: not ours to walk unasked
  diffOf: () => undefined,
  describe: (rec) => ({ device: rec.spec.device }),
  checkRemovable() {
    // Nothing of ours to delete.
  },
  async destroy() {
    // A bind-style volume's host directory is never touched: only the record goes.
  },
};
