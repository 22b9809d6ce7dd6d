/**
 * Test helpers for volume contents (#6): build a tree with every attribute a copy must keep, and snapshot
 * a tree into a comparable description (owners, modes, xattrs, hardlink groups, symlink targets, content
 * hashes, sizes, nanosecond mtimes, device numbers, allocated blocks of sparse files).
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr, lsetxattr, lutimesNs, mknod } from '../../src/sys/libc.js';
import { requireTools } from './require.js';

/** Fills `root` (an existing directory) with a tree that exercises every attribute. */
export function buildRichTree(root: string): void {
  requireTools('mkfifo');
  const p = (rel: string): string => path.join(root, rel);
  fs.mkdirSync(p('dir/sub'), { recursive: true });
  fs.writeFileSync(p('dir/sub/plain.txt'), 'hello\n');
  fs.writeFileSync(p('owned'), 'owned by 1234:5678\n');
  fs.chownSync(p('owned'), 1234, 5678);
  fs.writeFileSync(p('setuid'), '#!/bin/sh\n');
  fs.chownSync(p('setuid'), 1000, 1000);
  fs.chmodSync(p('setuid'), 0o4755);
  fs.writeFileSync(p('private'), 'secret');
  fs.chmodSync(p('private'), 0o600);
  fs.chownSync(p('dir'), 42, 43);
  fs.chmodSync(p('dir'), 0o2750);
  fs.writeFileSync(p('xattrs'), 'with xattrs');
  lsetxattr(p('xattrs'), 'user.text', Buffer.from('value'));
  lsetxattr(p('xattrs'), 'user.binary', Buffer.from([0, 1, 2, 255, 0]));
  lsetxattr(p('xattrs'), 'trusted.tsvol', Buffer.from('t'));
  lsetxattr(p('dir'), 'user.ondir', Buffer.from('d'));
  fs.writeFileSync(p('link-a'), 'shared inode');
  fs.linkSync(p('link-a'), p('dir/link-b'));
  fs.linkSync(p('link-a'), p('dir/sub/link-c'));
  fs.symlinkSync('dir/sub/plain.txt', p('symlink'));
  fs.symlinkSync('/nowhere/at/all', p('dangling'));
  fs.lchownSync(p('symlink'), 7, 8);
  // Sparse: 64 MiB with 4 KiB of data at 1 MiB and at the end.
  const fd = fs.openSync(p('sparse'), 'w');
  fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 1 << 20);
  fs.writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, (64 << 20) - 4096);
  fs.closeSync(fd);
  fs.writeFileSync(p('big'), Buffer.alloc(3 << 20, 7));
  fs.writeFileSync(p('empty'), '');
  execFileSync('mkfifo', [p('fifo')]);
  mknod(p('null-dev'), fs.constants.S_IFCHR | 0o666, (1 << 8) | 3);
  fs.mkdirSync(p('emptydir'), { mode: 0o711 });
  // Times last (children change their directory's mtime), with nanoseconds.
  for (const rel of ['owned', 'private', 'xattrs', 'link-a', 'sparse', 'symlink', 'dangling', 'dir/sub', 'dir', 'emptydir']) {
    lutimesNs(p(rel), 1_600_000_000_123_456_789n, 1_500_000_000_987_654_321n);
  }
}

/** A comparable description of every entry under `root` (the root itself included, as ".").*/
export function snapshotTree(root: string, opts: { times?: boolean; rootMeta?: boolean } = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const inodes = new Map<bigint, string>();
  function visit(rel: string): void {
    const abs = rel === '.' ? root : path.join(root, rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const xattrs: Record<string, string> = {};
    for (const name of llistxattr(abs).sort()) xattrs[name] = lgetxattr(abs, name)?.toString('hex') ?? '';
    const e: Record<string, unknown> = { mode: st.mode.toString(8), uid: Number(st.uid), gid: Number(st.gid), xattrs };
    if (opts.times !== false && !st.isSymbolicLink()) e.mtimeNs = st.mtimeNs.toString();
    if (st.isFile()) {
      e.size = Number(st.size);
      e.sha256 = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
      if (st.nlink > 1n) {
        e.linkGroup = inodes.get(st.ino) ?? rel;
        if (!inodes.has(st.ino)) inodes.set(st.ino, rel);
      }
    } else if (st.isSymbolicLink()) e.target = fs.readlinkSync(abs);
    else if (st.isCharacterDevice() || st.isBlockDevice()) e.rdev = Number(st.rdev);
    if (rel !== '.' || opts.rootMeta !== false) out[rel] = e;
    if (st.isDirectory()) for (const name of fs.readdirSync(abs).sort()) visit(rel === '.' ? name : `${rel}/${name}`);
  }
  visit('.');
  return out;
}

/** Bytes actually allocated to a file. */
export function allocated(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * Makes a filesystem of `type` in a sparse image under /var/tmp, loop-mounts it (with `mountOpts`) and
 * returns its mountpoint; `cleanup` unmounts (which detaches the loop device) and deletes everything.
 * Throws with the kernel's reason when the mount fails (e.g. no quota support).
 */
export function makeLoopFs(type: 'xfs' | 'ext4', sizeMb: number, mountOpts = ''): { dir: string; cleanup: () => void } {
  requireTools(`mkfs.${type}`, 'mount', 'umount', 'dmesg');
  const base = fs.mkdtempSync('/var/tmp/tsvol-fs-');
  const image = path.join(base, 'fs.img');
  const dir = path.join(base, 'mnt');
  fs.mkdirSync(dir);
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, sizeMb * 1024 * 1024);
  execFileSync(`mkfs.${type}`, ['-q', ...(type === 'ext4' ? ['-F'] : []), image]);
  const cleanup = (): void => {
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
      const mp = line.split(' ')[4];
      if (mp !== undefined && (mp === dir || mp.startsWith(`${dir}/`))) {
        try {
          execFileSync('umount', ['-l', mp], { stdio: 'ignore' });
        } catch {
          // Teardown: already gone.
        }
      }
    }
    fs.rmSync(base, { recursive: true, force: true });
  };
  try {
    execFileSync('mount', ['-o', ['loop', mountOpts].filter((o) => o !== '').join(','), image, dir], { stdio: 'pipe' });
  } catch (err) {
    const kernel = execFileSync('dmesg').toString().trim().split('\n').slice(-1)[0] ?? '';
    cleanup();
    throw new Error(`mount ${type} -o ${mountOpts}: ${(err as Error).message.trim()} (kernel: ${kernel})`);
  }
  return { dir, cleanup };
}

/** Every regular file below `root` (not following symlinks), with its content. */
export function regularFiles(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const visit = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = fs.lstatSync(path.join(root, r));
      if (st.isDirectory()) visit(r);
      else if (st.isFile()) out.set(r, fs.readFileSync(path.join(root, r), 'utf8'));
    }
  };
  visit('');
  return out;
}
