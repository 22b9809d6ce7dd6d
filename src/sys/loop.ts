/**
 * Loop devices without losetup or mount(8) (#6): LOOP_CTL_GET_FREE on loop-control, LOOP_CONFIGURE with
 * autoclear, then mount(2) of the device. In the managed plugin /dev is the container's own small tmpfs,
 * without the loop nodes the kernel makes on demand, so devices are opened in the host's devtmpfs
 * (TSVOL_HOST_ROOT/dev); the plugin's config.json allows the device access (allowAllDevices). Node opens
 * every fd with O_CLOEXEC, so no helper process inherits a device.
 *
 * Autoclear: the device detaches itself when its last user goes. Our fd is closed once the mount holds the
 * device, so unmounting is all it takes to free it, and a crash never leaks a configured device.
 */
import fs from 'node:fs';
import path from 'node:path';
import { errnoCode } from '../errors.js';
import { SyscallError, ioctlBuf, ioctlInt, mountAsync } from './libc.js';

const LOOP_CTL_GET_FREE = 0x4c82;
const LOOP_CONFIGURE = 0x4c0a;
const LOOP_CLR_FD = 0x4c01;
const LOOP_GET_STATUS64 = 0x4c05;
const LOOP_SET_CAPACITY = 0x4c07;
/** sizeof(struct loop_info64); lo_device (u64) at 0, lo_inode (u64) at 8: the backing file's. */
const LOOP_INFO64_SIZE = 232;
/** The loop driver's block major (linux/major.h LOOP_MAJOR). */
const LOOP_MAJOR = 7n;
const LO_FLAGS_AUTOCLEAR = 4;
/** struct loop_config: fd, block_size, struct loop_info64 (232 bytes), 64 reserved bytes. */
const LOOP_CONFIG_SIZE = 304;
/** Offset of loop_config.info.lo_flags. */
const LO_FLAGS_OFFSET = 8 + 52;

/** Attaches `image` to a free loop device under `devDir` and mounts it at `target` as `fstype`. */
export async function mountLoopImage(image: string, target: string, fstype: string, devDir: string): Promise<void> {
  const imageFd = fs.openSync(image, fs.constants.O_RDWR);
  try {
    for (let attempt = 0; ; attempt++) {
      const control = fs.openSync(path.join(devDir, 'loop-control'), fs.constants.O_RDWR);
      let n: number;
      try {
        n = ioctlInt(control, LOOP_CTL_GET_FREE, 0, 'loop-control');
      } finally {
        fs.closeSync(control);
      }
      const device = path.join(devDir, `loop${n}`);
      const loopFd = await openDevice(device);
      try {
        const config = Buffer.alloc(LOOP_CONFIG_SIZE);
        config.writeUInt32LE(imageFd, 0);
        config.writeUInt32LE(LO_FLAGS_AUTOCLEAR, LO_FLAGS_OFFSET);
        try {
          ioctlBuf(loopFd, LOOP_CONFIGURE, config, device);
        } catch (err) {
          // EBUSY: another process configured this device between GET_FREE and now: take the next one.
          if (err instanceof SyscallError && err.code === 'EBUSY' && attempt < 16) continue;
          throw err;
        }
        try {
          await mountAsync(device, target, fstype, 0, '');
        } catch (err) {
          ioctlInt(loopFd, LOOP_CLR_FD, 0, device);
          throw err;
        }
        return;
      } finally {
        fs.closeSync(loopFd);
      }
    }
  } finally {
    fs.closeSync(imageFd);
  }
}

/** Opens a loop device node; the kernel may add the node to devtmpfs a moment after LOOP_CTL_GET_FREE. */
async function openDevice(device: string): Promise<number> {
  for (let i = 0; ; i++) {
    try {
      return fs.openSync(device, fs.constants.O_RDWR);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT' || i >= 50) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** The major and minor of a dev_t as Node reports it (glibc's encoding; the kernel's for majors below 4096). */
function splitDev(dev: bigint): { major: bigint; minor: bigint } {
  return { major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn), minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn) };
}

/** The name of block device major:minor in the host's devtmpfs: sysfs knows it; else loop<minor> (no partitions). */
function loopName(major: bigint, minor: bigint): string {
  try {
    return path.basename(fs.readlinkSync(`/sys/dev/block/${major}:${minor}`));
  } catch (err) {
    // ENOENT: no sysfs here; loop devices are made without partitions (max_part 0), so minor n is loop<n>.
    if (errnoCode(err) !== 'ENOENT') throw err;
    return `loop${minor}`;
  }
}

/**
 * Tells the loop device of the mount at `mountRoot` to take its backing file's current size (LOOP_SET_CAPACITY,
 * what `losetup -c` does), after checking that the file is `image` (LOOP_GET_STATUS64: its device and inode),
 * then runs `fn` with the device open read-only (a mounted device: no write access is needed or asked for).
 */
export function refreshLoopCapacity<T>(mountRoot: string, image: string, devDir: string, fn: (deviceFd: number) => T): T {
  const { major, minor } = splitDev(fs.statSync(mountRoot, { bigint: true }).dev);
  if (major !== LOOP_MAJOR) throw new Error(`${mountRoot} is mounted from device ${major}:${minor}, not a loop device`);
  const device = path.join(devDir, loopName(major, minor));
  const fd = fs.openSync(device, fs.constants.O_RDONLY);
  try {
    const info = Buffer.alloc(LOOP_INFO64_SIZE);
    ioctlBuf(fd, LOOP_GET_STATUS64, info, device);
    const backing = fs.statSync(image, { bigint: true });
    if (info.readBigUInt64LE(0) !== backing.dev || info.readBigUInt64LE(8) !== backing.ino) {
      throw new Error(`${device}, mounted at ${mountRoot}, is not backed by ${image}`);
    }
    ioctlInt(fd, LOOP_SET_CAPACITY, 0, device);
    return fn(fd);
  } finally {
    fs.closeSync(fd);
  }
}
