/**
 * Hard size limits for volumes (`-o size=`, #6), two ways, chosen once at start-up by probing the data root:
 *
 * - quota: the data root's filesystem enforces project quotas (XFS mounted with pquota/prjquota, ext4 with
 *   the project feature and prjquota). The volume's _data gets its own project ID, inherited by everything
 *   made inside it (FS_IOC_FSSETXATTR), and a hard block limit (quotactl_fd Q_SETQUOTA). No extra mount.
 * - loop: anywhere else. The volume gets its own sparse ext4 image, volumes/<name>/disk.img, made on Create
 *   and loop-mounted on volumes/<name>/_data while the volume is held (first Mount to last Unmount). The
 *   loop device is attached with autoclear, so unmounting detaches it: no loop device outlives its mount.
 *
 * Either way a write past the limit fails with EDQUOT or ENOSPC inside the container, and other volumes are
 * unaffected. The probe's verdict and its reason are what `tsvol info` prints.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { errnoCode, describeError, OutOfRangeError, UnavailableError } from '../errors.js';
import { crashPoint } from '../sys/crash-point.js';
import { fsyncDir } from '../sys/durable.js';
import { growMountedExt4, mayResizeOnline, readExt4Size, readImageSize } from '../sys/ext4.js';
import { ioctlBuf, isMountRoot, quotactlFd, tryFlock } from '../sys/libc.js';
import { mountLoopImage, refreshLoopCapacity } from '../sys/loop.js';
import { createStage } from '../sys/staging.js';

/** How sized volumes are made on this data root, and why. */
export interface SizeBacking {
  readonly backing: 'quota' | 'loop';
  readonly why: string;
}

// linux/fs.h: struct fsxattr is 28 bytes; fsx_xflags at 0, fsx_projid at 12.
const FS_IOC_FSGETXATTR = 0x801c581f;
const FS_IOC_FSSETXATTR = 0x401c5820;
const FS_XFLAG_PROJINHERIT = 0x200;
// linux/quota.h: QCMD(cmd, PRJQUOTA); struct if_dqblk is 72 bytes, limits in 1 KiB quota blocks.
const PRJQUOTA = 2;
const Q_GETINFO = 0x800005;
const Q_GETQUOTA = 0x800007;
const Q_SETQUOTA = 0x800008;
const QIF_BLIMITS = 1;
const qcmd = (cmd: number): number => ((cmd << 8) | PRJQUOTA) >>> 0;

const FS_NAMES: Record<number, string> = { 0x58465342: 'xfs', 0xef53: 'ext4', 0x9123683e: 'btrfs', 0x01021994: 'tmpfs' };

function withDirFd<T>(dir: string, fn: (fd: number) => T): T {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  try {
    return fn(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Decides between quota and loop for `root` by asking the kernel, not by parsing mount options: Q_GETINFO
 * for project quotas succeeds only where they are on (ESRCH: the filesystem has them off; ENOSYS or
 * EOPNOTSUPP: this kernel or filesystem has no quota support at all).
 */
export function probeSizeBacking(root: string): SizeBacking {
  fs.mkdirSync(root, { recursive: true, mode: 0o700 }); // may be the data root: root-only (#9 §5)
  const type = Number(fs.statfsSync(root).type);
  const fsName = FS_NAMES[type] ?? `filesystem type 0x${type.toString(16)}`;
  try {
    withDirFd(root, (fd) => quotactlFd(fd, qcmd(Q_GETINFO), 0, Buffer.alloc(24)));
    return { backing: 'quota', why: `${root} is on ${fsName} with project quotas enabled: each sized volume gets a project quota` };
  } catch (err) {
    const code = errnoCode(err);
    const reason =
      code === 'ESRCH'
        ? `${fsName} at ${root} has project quotas off (mount it with prjquota/pquota to use them)`
        : code === 'ENOSYS' || code === 'EOPNOTSUPP' || code === 'ENOTTY'
          ? `no project quota support for ${fsName} in this kernel (${code})`
          : `project quota probe on ${fsName} failed (${describeError(err)})`;
    return { backing: 'loop', why: `${reason}: each sized volume gets its own sparse ext4 image on a loop device` };
  }
}

/** A random project ID in [2^20, 2^31): far from the small IDs admins hand out in /etc/projid. */
export function newProjectId(): number {
  return 0x100000 + Math.floor(Math.random() * (0x7fffffff - 0x100000));
}

/** Puts `dir` in project `projectId` (inherited by what is made inside it) and caps it at `limit` bytes. */
export function applyProjectQuota(dir: string, projectId: number, limit: number): void {
  withDirFd(dir, (fd) => {
    const attr = Buffer.alloc(28);
    ioctlBuf(fd, FS_IOC_FSGETXATTR, attr, dir);
    attr.writeUInt32LE(attr.readUInt32LE(0) | FS_XFLAG_PROJINHERIT, 0);
    attr.writeUInt32LE(projectId, 12);
    ioctlBuf(fd, FS_IOC_FSSETXATTR, attr, dir);
    setProjectLimit(fd, projectId, limit);
  });
}

function setProjectLimit(fd: number, projectId: number, limit: number): void {
  const dq = Buffer.alloc(72);
  const blocks = BigInt(Math.ceil(limit / 1024));
  dq.writeBigUInt64LE(blocks, 0); // dqb_bhardlimit
  dq.writeBigUInt64LE(blocks, 8); // dqb_bsoftlimit
  dq.writeUInt32LE(QIF_BLIMITS, 64); // dqb_valid
  quotactlFd(fd, qcmd(Q_SETQUOTA), projectId, dq);
}

/**
 * Makes `dir`'s filesystem hold project `projectId` to `limit` bytes, unless it already does (Q_GETQUOTA,
 * then Q_SETQUOTA only on a difference): a grown volume's new limit, or its recorded one made good again
 * after a crash between the record's commit and the quota's change (#12).
 */
export function syncProjectLimit(dir: string, projectId: number, limit: number): void {
  withDirFd(dir, (fd) => {
    const dq = Buffer.alloc(72);
    quotactlFd(fd, qcmd(Q_GETQUOTA), projectId, dq);
    if (dq.readBigUInt64LE(0) !== BigInt(Math.ceil(limit / 1024))) setProjectLimit(fd, projectId, limit);
  });
}

/** Drops a removed volume's limit, so that a reused project ID starts clean. */
export function clearProjectQuota(root: string, projectId: number): void {
  withDirFd(root, (fd) => setProjectLimit(fd, projectId, 0));
}

/** Bytes and inodes charged to a project (Q_GETQUOTA: the filesystem's own accounting, O(1)). */
export function projectUsage(root: string, projectId: number): { bytes: number; files: number } {
  return withDirFd(root, (fd) => {
    const dq = Buffer.alloc(72);
    quotactlFd(fd, qcmd(Q_GETQUOTA), projectId, dq);
    return { bytes: Number(dq.readBigUInt64LE(16)), files: Number(dq.readBigUInt64LE(40)) };
  });
}

/** Runs a helper program; rejects with its stderr. */
function run(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', (e) =>
      reject(errnoCode(e) === 'ENOENT' ? new UnavailableError(`${cmd} not found: sized volumes on a loop image need it (scripts/deps.txt names its package)`) : e),
    );
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${err.trim()}`))));
  });
}

/**
 * Sets the length of the image file `fd` to `limit`: a length the data root's filesystem cannot hold
 * (EFBIG: above ext4's 16 TiB per file, say) is the caller's size, OutOfRange (CSI's OUT_OF_RANGE), not an
 * internal failure.
 */
function setImageLength(fd: number, limit: number): void {
  try {
    fs.ftruncateSync(fd, limit);
  } catch (err) {
    if (errnoCode(err) !== 'EFBIG') throw err;
    throw new OutOfRangeError(`a size of ${limit} bytes is more than a file on the data root's filesystem can hold; ask for less`, { cause: err });
  }
}

/**
 * Makes `image` (a volume's disk.img, Layout's VolumeFiles): a sparse file of `limit` bytes holding an empty ext4 whose root has the given owner
 * and mode. No reserved blocks (-m 0): the whole limit is the volume's. Costs ~10 ms and only the
 * metadata's blocks on disk.
 */
export async function makeImage(image: string, limit: number, owner: { uid?: number; gid?: number; mode?: number }): Promise<void> {
  const fd = fs.openSync(image, 'wx', 0o600);
  try {
    setImageLength(fd, limit);
  } finally {
    fs.closeSync(fd);
  }
  const ext = ['nodiscard', 'lazy_itable_init=1', 'lazy_journal_init=1'];
  if (owner.uid !== undefined || owner.gid !== undefined) ext.push(`root_owner=${owner.uid ?? 0}:${owner.gid ?? 0}`);
  await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', ext.join(','), image]);
  if (owner.mode !== undefined) {
    // mke2fs has no option for the root's mode: set the inode field directly (octal, with S_IFDIR).
    await run('debugfs', ['-w', '-R', `sif <2> mode 0${(0o40000 | owner.mode).toString(8)}`, image]);
  }
}

/**
 * Loop-mounts the ext4 `image` on `data`, with loop devices from `devDir` (autoclear: the loop device
 * goes with the mount; src/sys/loop.ts).
 */
export async function mountImage(image: string, data: string, devDir: string): Promise<void> {
  if (isMountRoot(data)) return; // still mounted (a restarted server keeps its held volumes' mounts)
  await mountLoopImage(image, data, 'ext4', devDir);
}

/** Used bytes and inodes of a mounted image (statfs: O(1)). */
export function mountedUsage(data: string): { bytes: number; files: number } {
  const st = fs.statfsSync(data);
  return { bytes: (st.blocks - st.bfree) * st.bsize, files: st.files - st.ffree };
}

/** Used bytes and inodes of an unmounted image, from its superblock (dumpe2fs -h). */
export async function imageUsage(image: string): Promise<{ bytes: number; files: number }> {
  const out = await run('dumpe2fs', ['-h', image]);
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1] ?? NaN);
  return {
    bytes: (field('Block count') - field('Free blocks')) * field('Block size'),
    files: field('Inode count') - field('Free inodes'),
  };
}

/**
 * Makes the image file `limit` bytes long (never shorter) and durable (fsync) before any record says the
 * volume is that large (#12): the sparse file's new length costs no blocks, and the filesystem inside does
 * not grow until growMountedImage.
 */
export function extendImage(image: string, limit: number): void {
  const fd = fs.openSync(image, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  try {
    if (fs.fstatSync(fd).size < limit) setImageLength(fd, limit);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Grows the ext4 filesystem of `image`, mounted at `data`, to fill `limit` bytes, online: the loop device
 * takes the (already extended) file's size, then the kernel grows the filesystem (sys/ext4.ts). Nothing
 * to do when it is that large already, so a repeated call is cheap.
 */
export async function growMountedImage(image: string, data: string, limit: number, devDir: string): Promise<void> {
  const size = refreshLoopCapacity(data, image, devDir, (fd) => readExt4Size(fd, image));
  const target = Math.floor(limit / size.blockSize);
  if (size.blocks < target) await growMountedExt4(data, target);
}

/**
 * True when the filesystem in the unmounted `image` is smaller than `limit` (a grow committed just before a
 * crash, to be finished once mounted). One pread of the superblock. A filesystem a few blocks short of its
 * limit (mke2fs and the kernel drop a last block group too small for its own metadata) also counts: growing
 * it again is a no-op for the kernel.
 */
export function imageBelowLimit(image: string, limit: number): boolean {
  const size = readImageSize(image);
  return size.blocks < Math.floor(limit / size.blockSize);
}

/** True if this process may grow a mounted image (CAP_SYS_RESOURCE): CSI's VolumeExpansion ONLINE. */
export function growsOnline(): boolean {
  return mayResizeOnline();
}

/** Marks a volume's grow as under way (`marker`: VolumeFiles.growing), durably, before its commit. */
export function markGrowing(marker: string): void {
  // O_NOFOLLOW: the marker is ours to make in the volume's directory, never a file a link points at.
  fs.closeSync(fs.openSync(marker, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW, 0o600));
  fsyncDir(path.dirname(marker));
}

/** Its grow is finished: the marker goes (a leftover only costs the next establish a superblock read). */
export function clearGrowing(marker: string): void {
  try {
    fs.unlinkSync(marker);
  } catch (err) {
    // ENOENT: cleared already (a repeated grow).
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
}

/** How long a Mount or grow waits for another holder of an image's lock (lockImage). */
const IMAGE_LOCK_WAIT_MS = 120_000;

/**
 * Opens `image` with an exclusive flock, waiting while another open file description holds it: a grow of
 * the image under way (growUnmounted holds it from before its copy until after the rename), or the
 * in-place resize2fs of an older tsvol that outlived its killed server. The lock is on the inode, and an
 * offline grow replaces the inode at `image` (a rename): a lock that is no longer the one at `image` is
 * dropped and taken again on the current file. Returns the fd.
 */
export async function lockImage(image: string): Promise<number> {
  for (const until = Date.now() + IMAGE_LOCK_WAIT_MS; ; ) {
    const fd = fs.openSync(image, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      if (tryFlock(fd)) {
        const held = fs.fstatSync(fd);
        const at = fs.statSync(image, { throwIfNoEntry: false });
        if (at !== undefined && at.ino === held.ino && at.dev === held.dev) return fd;
      }
      if (Date.now() > until) throw new UnavailableError(`${image} is still being resized by another process after ${IMAGE_LOCK_WAIT_MS / 1000} s; retry later`);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    fs.closeSync(fd);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Runs `cmd` with stdout to /dev/null and stderr appended to `log` (the grow's marker file, where whoever
 * finds a grow cut short can read what its tools said), no pipe to this process.
 */
function runLogged(cmd: string, args: readonly string[], log: string, ok: (code: number) => boolean): Promise<void> {
  const errFd = fs.openSync(log, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW);
  try {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', errFd] });
    return new Promise((resolve, reject) => {
      child.on('error', (e) => reject(errnoCode(e) === 'ENOENT' ? new UnavailableError(`${cmd} not found: growing a sized volume offline needs it (scripts/deps.txt names its package)`) : e));
      child.on('close', (code) => {
        if (code !== null && ok(code)) return resolve();
        const said = fs.readFileSync(log, 'utf8').trim().split('\n').slice(-3).join('; ');
        reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${said}`));
      });
    });
  } finally {
    fs.closeSync(errFd); // the child has its own copy
  }
}

/** e2fsck -p found what it may not fix alone: the image must not be mounted until someone has checked it. */
export class ImageCheckError extends UnavailableError {}

/** tmp/grow-<id>/disk.img: an offline grow's copy of a volume's image, in a stage of the live grower. */
const GROW_STAGE = 'grow';
/** Staging directories of checkImageLength's probe files (tmp/size-probe-*). */
const PROBE_STAGE = 'size-probe';

/**
 * Throws OutOfRange unless the data root's filesystem can hold an image file of `limit` bytes: a sparse
 * probe file of that length in a stage of `tmpDir` (no blocks, removed at once; a crash leaves a stage that
 * start-up sweeps). A grow checks this before it records the new limit, so a size no file there can have
 * (above ext4's 16 TiB) is refused with nothing changed, online or offline.
 */
export async function checkImageLength(tmpDir: string, limit: number): Promise<void> {
  const stage = await createStage(tmpDir, PROBE_STAGE);
  try {
    const fd = fs.openSync(path.join(stage.dir, 'probe'), 'wx', 0o600);
    try {
      setImageLength(fd, limit);
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    await stage.remove();
  }
}
const GROWN_IMAGE = 'disk.img';

/**
 * Grows the filesystem of the unmounted `image` to fill `limit` offline, where this process may not resize
 * online (no CAP_SYS_RESOURCE), without ever writing to `image`: resize2fs does not journal its work, so
 * it works on a copy, and the copy replaces the image by a rename once it is whole.
 *
 * 1. Copy `image` into a fresh stage in `tmpDir` (the data root's tmp/, same filesystem: src/sys/staging.ts,
 *    locked by this process while it lives, swept by start-up once it is dead) with `cp --reflink=auto
 *    --sparse=always`: a reflink where the data root's filesystem has them (XFS, btrfs: no data copied),
 *    else a copy of the image's allocated blocks only (holes stay holes).
 * 2. Extend the copy to `limit` bytes, `e2fsck -f -p` it (resize2fs wants a checked filesystem; exit 1
 *    means it fixed something and is fine; more means the image itself needs a manual check:
 *    ImageCheckError, naming it), then `resize2fs` it to the block count.
 * 3. fsync the copy, rename it over `image` (atomic) and fsync the volume directory.
 *
 * A kill -9 or a power cut before the rename leaves `image` as it was, byte for byte (the copy, and a
 * resize2fs still running on it, are in a dead owner's stage: start-up deletes it); after the rename,
 * the grown image. Either way the image is a consistent filesystem, and the caller's marker makes the next
 * grow or establish run this again, which returns at once if `image` has the size already. The tools'
 * messages are appended to `log`. The caller holds the image's lock (lockImage) throughout. Costs a copy of
 * the image's allocated blocks, in time and (until the rename) in space, unless the data root reflinks.
 */
export async function growImageOffline(image: string, limit: number, tmpDir: string, log: string): Promise<void> {
  if (!imageBelowLimit(image, limit)) return; // grown already (a crash came after the rename)
  const { blockSize } = readImageSize(image);
  const stage = await createStage(tmpDir, GROW_STAGE);
  try {
    const copy = path.join(stage.dir, GROWN_IMAGE);
    await run('cp', ['--reflink=auto', '--sparse=always', '--preserve=mode,ownership', '--', image, copy]);
    const copyFd = fs.openSync(copy, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
    try {
      setImageLength(copyFd, limit); // made durable with the rest of the copy below
    } finally {
      fs.closeSync(copyFd);
    }
    try {
      await runLogged('e2fsck', ['-f', '-p', copy], log, (code) => code <= 1);
    } catch (err) {
      throw new ImageCheckError(`${image} needs a manual check before it is mounted again: run e2fsck -fy on it; ${describeError(err)}`, { cause: err });
    }
    const resize = runLogged('resize2fs', [copy, String(Math.floor(limit / blockSize))], log, (code) => code === 0);
    crashPoint('grow:resizing');
    await resize;
    const fh = await fs.promises.open(copy, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
    try {
      await fh.sync(); // on the thread pool: the whole image's dirty pages
    } finally {
      await fh.close();
    }
    crashPoint('grow:before-rename');
    fs.renameSync(copy, image);
    fsyncDir(path.dirname(image));
    crashPoint('grow:after-rename');
  } finally {
    await stage.remove(); // the copy if it is still there; else an empty directory
  }
}
