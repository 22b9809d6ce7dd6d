/**
 * What filesystem a directory is on (statfs f_type), for cluster mode's start-up check (#14): a shared data
 * root must be a filesystem that several hosts mount, or every node would silently keep a store of its own.
 * The magic numbers are the kernel's (include/uapi/linux/magic.h, fs/*): a table of names, not a parse of
 * /proc/mounts, so a bind mount of the shared filesystem counts as what it is.
 */
import fs from 'node:fs';

/**
 * Filesystems several hosts mount at once: network and cluster filesystems. FUSE is a class: GlusterFS,
 * ceph-fuse, MooseFS, SeaweedFS, JuiceFS and the like are FUSE, and statfs cannot tell them from a local
 * FUSE filesystem (sshfs, bindfs), so the operator is trusted to have mounted a shared one there.
 */
export const SHARED_FS_TYPES: ReadonlyMap<number, string> = new Map([
  [0x65735546, 'fuse'],
  [0x6969, 'nfs'],
  [0x517b, 'smb'],
  [0xff534d42, 'cifs'],
  [0xfe534d42, 'smb2'],
  [0x00c36400, 'ceph'],
  [0x01161970, 'gfs2'],
  [0x7461636f, 'ocfs2'],
  [0x0bd00bd0, 'lustre'],
  [0x47504653, 'gpfs'],
  [0x19830326, 'beegfs'],
  [0x013111a8, 'ibrix'],
  [0x6b414653, 'afs'],
]);

/** Local filesystems, named in the refusal so that the message says what is mounted there instead. */
const LOCAL_FS_TYPES: ReadonlyMap<number, string> = new Map([
  [0xef53, 'ext2/3/4'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [0x01021994, 'tmpfs'],
  [0x794c7630, 'overlay'],
  [0x2fc12fc1, 'zfs'],
  [0xf2f52010, 'f2fs'],
  [0x73717368, 'squashfs'],
  [0x858458f6, 'ramfs'],
  [0x4d44, 'vfat'],
  [0x5346544e, 'ntfs'],
  [0x2011bab0, 'exfat'],
  [0x3153464a, 'jfs'],
  [0x52654973, 'reiserfs'],
  [0xcafe4a11, 'bpf'],
]);

/** The filesystem holding a directory. */
export interface FsType {
  /** statfs f_type. */
  readonly magic: number;
  /** Its name ('fuse', 'nfs', 'ext2/3/4', …), or its magic number in hex when unknown. */
  readonly name: string;
  /** True for a filesystem several hosts can mount (SHARED_FS_TYPES). */
  readonly shared: boolean;
}

/** The filesystem type of `dir` (statfs; a missing directory throws ENOENT). */
export function fsTypeOf(dir: string): FsType {
  // f_type is a signed long: a magic with the top bit set (cifs) comes back negative on some platforms.
  const magic = Number(fs.statfsSync(dir).type) >>> 0;
  const shared = SHARED_FS_TYPES.get(magic);
  return { magic, name: shared ?? LOCAL_FS_TYPES.get(magic) ?? `0x${magic.toString(16)}`, shared: shared !== undefined };
}
