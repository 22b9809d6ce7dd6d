/**
 * Test helpers for the one file-metadata mechanism (#10, src/sys/file-meta.ts): plant entries whose owner,
 * set-id mode, xattrs (user.*, security.capability, trusted.overlay.*) and nanosecond times every writer of
 * a tree must carry or drop by its xattr policy, and read them back.
 */
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr, lsetxattr, lutimesNs } from '../../src/sys/libc.js';

/** Times with every nanosecond digit set: a copy through milliseconds or a double loses some. */
export const ATIME_NS = 1_600_000_000_111_111_111n;
export const MTIME_NS = 1_500_000_000_123_456_789n;

/**
 * A valid security.capability (vfs_cap_data revision 2, effective, CAP_NET_BIND_SERVICE permitted): the
 * kernel drops it on chown, so it survives only when set after the owner.
 */
export const CAPABILITY = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** The xattrs planted on the file `f`: a user one, a capability and two of overlayfs's own. */
export const FILE_XATTRS: ReadonlyMap<string, Buffer> = new Map([
  ['user.k', Buffer.from('v')],
  ['security.capability', CAPABILITY],
  ['trusted.overlay.redirect', Buffer.from('/elsewhere')],
  ['trusted.overlay.metacopy', Buffer.from('')],
]);
/** The xattrs planted on the directory `d`: a user one and overlay's opaque marker. */
export const DIR_XATTRS: ReadonlyMap<string, Buffer> = new Map([
  ['user.d', Buffer.from('1')],
  ['trusted.overlay.opaque', Buffer.from('y')],
]);

/**
 * Plants in `root` (an existing directory): `f` (1000:1001, mode 04755, FILE_XATTRS), `d/` (42:43, mode
 * 02750, DIR_XATTRS, holding `d/inner`), `l` (a symlink owned by 7:8); every one with ATIME_NS/MTIME_NS.
 */
export function plantMetaCases(root: string): void {
  const p = (rel: string): string => path.join(root, rel);
  fs.writeFileSync(p('f'), 'file body\n');
  fs.chownSync(p('f'), 1000, 1001);
  fs.chmodSync(p('f'), 0o4755);
  for (const [k, v] of FILE_XATTRS) lsetxattr(p('f'), k, v);
  fs.mkdirSync(p('d'));
  fs.writeFileSync(p('d/inner'), 'inner\n');
  fs.chownSync(p('d'), 42, 43);
  fs.chmodSync(p('d'), 0o2750);
  for (const [k, v] of DIR_XATTRS) lsetxattr(p('d'), k, v);
  fs.symlinkSync('f', p('l'));
  fs.lchownSync(p('l'), 7, 8);
  for (const rel of ['f', 'd/inner', 'd', 'l']) lutimesNs(p(rel), ATIME_NS, MTIME_NS);
}

/** What a test compares: owner, mode (with type), xattrs (hex), atime and mtime in ns. */
export interface Meta {
  readonly uid: number;
  readonly gid: number;
  readonly mode: string;
  readonly xattrs: Record<string, string>;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
}

/** The metadata of `p` (a final symlink's own). */
export function readMeta(p: string): Meta {
  const st = fs.lstatSync(p, { bigint: true });
  const xattrs: Record<string, string> = {};
  for (const name of llistxattr(p).sort()) xattrs[name] = lgetxattr(p, name)?.toString('hex') ?? '';
  return { uid: Number(st.uid), gid: Number(st.gid), mode: st.mode.toString(8), xattrs, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs };
}

/** The xattrs `names` of `all`, as readMeta shows them. */
export function hexXattrs(all: ReadonlyMap<string, Buffer>, names: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of [...names].sort()) out[name] = all.get(name)!.toString('hex');
  return out;
}
