/**
 * Clones (`-o from=`, #6): a full, independent copy keeping owners, modes, xattrs, hardlinks, symlinks,
 * devices, sparse files and nanosecond mtimes; reflinks on XFS; clones of sized and in-use volumes.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cleanupDir, requireRoot, startTestServer, tempDir, withServer } from './helpers/server.js';
import { allocated, buildRichTree, makeLoopFs, snapshotTree } from './helpers/tree.js';
import { requireTools } from './helpers/require.js';
import { ATIME_NS, DIR_XATTRS, FILE_XATTRS, MTIME_NS, hexXattrs, plantMetaCases, readMeta } from './helpers/meta.js';
import { copyTree } from '../src/volumes/clone.js';
import { lutimesNs } from '../src/sys/libc.js';

requireTools('mkfs.ext4', 'debugfs', 'dumpe2fs');

test('from=SRC copies every attribute, and the clone is independent of its source', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'src', Opts: { uid: '5', mode: '0700' } });
    const srcData = path.join(s.data, 'volumes', 'src', '_data');
    buildRichTree(srcData);
    await s.ok('/VolumeDriver.Create', { Name: 'dst', Opts: { from: 'src' } });
    const dstData = path.join(s.data, 'volumes', 'dst', '_data');
    t.deepEqual(snapshotTree(dstData), snapshotTree(srcData));
    t.true(allocated(path.join(dstData, 'sparse')) < 1 << 20, 'holes stay holes');
    const status = ((await s.ok('/VolumeDriver.Get', { Name: 'dst' })).Volume as { Status: Record<string, unknown> }).Status;
    t.is(status.kind, 'clone-of');
    t.is(status.from, 'src');

    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'dst', ID: 'c1' })).Mountpoint as string;
    fs.appendFileSync(path.join(mp, 'link-a'), 'changed');
    fs.rmSync(path.join(mp, 'dir'), { recursive: true });
    t.is(fs.readFileSync(path.join(srcData, 'dir/link-b'), 'utf8'), 'shared inode', 'hardlinks are not shared with the source');
    t.true(fs.existsSync(path.join(srcData, 'dir/sub/plain.txt')));
    await s.ok('/VolumeDriver.Unmount', { Name: 'dst', ID: 'c1' });
    await s.ok('/VolumeDriver.Remove', { Name: 'src' });
    t.is(fs.readFileSync(path.join(dstData, 'link-a'), 'utf8'), 'shared inodechanged', 'the clone outlives its source');
  });
});

test('from= refuses a missing source and leaves nothing; a sized source not in use is mounted just for the copy', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const r = await s.call('/VolumeDriver.Create', { Name: 'orphan', Opts: { from: 'nope' } });
    t.regex(String(r.json.Err), /volume "nope" not found/);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')), []);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')), []);

    await s.ok('/VolumeDriver.Create', { Name: 'sized', Opts: { size: '32m' } });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'sized', ID: 'c1' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'inside'), 'from the image');
    // In use: copied as it is now.
    await s.ok('/VolumeDriver.Create', { Name: 'while-used', Opts: { from: 'sized' } });
    await s.ok('/VolumeDriver.Unmount', { Name: 'sized', ID: 'c1' });
    await s.ok('/VolumeDriver.Create', { Name: 'while-idle', Opts: { from: 'sized' } });
    for (const name of ['while-used', 'while-idle']) {
      t.is(fs.readFileSync(path.join(s.data, 'volumes', name, '_data', 'inside'), 'utf8'), 'from the image', name);
    }
    t.false(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(path.join(s.data, 'volumes', 'sized', '_data')), 'unmounted after the copy');
  });
});

test('on XFS, a clone shares file data by reflink: near-instant and no space until written', async (t) => {
  if (!requireRoot(t)) return;
  const loopFs = makeLoopFs('xfs', 600);
  t.teardown(loopFs.cleanup);
  const dir = tempDir();
  fs.symlinkSync(loopFs.dir, path.join(dir, 'data'));
  const s = await startTestServer({ dir });
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'big', Opts: {} });
    fs.writeFileSync(path.join(loopFs.dir, 'volumes', 'big', '_data', 'blob'), Buffer.alloc(200 << 20, 3));
    const before = fs.statfsSync(loopFs.dir);
    await s.ok('/VolumeDriver.Create', { Name: 'big2', Opts: { from: 'big' } });
    const after = fs.statfsSync(loopFs.dir);
    const used = (before.bfree - after.bfree) * before.bsize;
    t.true(used < 20 << 20, `a 200 MB clone used ${used} bytes`);
    t.is(fs.statSync(path.join(loopFs.dir, 'volumes', 'big2', '_data', 'blob')).size, 200 << 20);
  } finally {
    await s.kill();
    cleanupDir(dir);
  }
});

/** Named crash points a clone passes (src/volumes/clone.ts, src/sys/staging.ts), in order. */
const CLONE_CRASH_POINTS = ['clone:mid-copy', 'stage:before-rename', 'stage:after-rename'] as const;

for (const point of CLONE_CRASH_POINTS) {
  test(`kill -9 during a clone (${point}) leaves no clone, and start-up removes the debris`, async (t) => {
    // The source is made by a server without the crash point: a Create passes stage:* too.
    const s0 = await startTestServer();
    await s0.ok('/VolumeDriver.Create', { Name: 'many', Opts: {} });
    const data = path.join(s0.data, 'volumes', 'many', '_data');
    for (let i = 0; i < 1500; i++) fs.writeFileSync(path.join(data, `f${i}`), Buffer.alloc(4096, i));
    t.is(await s0.stop(), 0);
    const s = await startTestServer({ dir: s0.dir, env: { TSVOL_CRASH_AT: point } });
    try {
      const exited = new Promise<NodeJS.Signals | null>((res) => s.proc.once('exit', (_code, signal) => res(signal)));
      const reply = await s.call('/VolumeDriver.Create', { Name: 'copy', Opts: { from: 'many' } }).then(
        (r) => `answered ${r.status} ${r.raw}`,
        (err: unknown) => `no answer: ${String(err)}`,
      );
      // The kill landed at the point: the server died by SIGKILL before answering.
      t.is(await exited, 'SIGKILL', `the server reached ${point}`);
      t.regex(reply, /^no answer/);
      const debris = fs.readdirSync(path.join(s.data, point === 'stage:after-rename' ? 'volumes' : 'tmp'));
      t.true(debris.length > (point === 'stage:after-rename' ? 1 : 0), `the crash left debris: ${debris.join(', ')}`);
      const s2 = await startTestServer({ dir: s.dir });
      try {
        t.regex(String((await s2.call('/VolumeDriver.Get', { Name: 'copy' })).json.Err), /volume "copy" not found/);
        // Start-up sweeps in the background: wait for it, a bounded time.
        const gone = (): boolean =>
          !fs.existsSync(path.join(s.data, 'volumes', 'copy')) && fs.readdirSync(path.join(s.data, 'tmp')).filter((e) => !e.startsWith('rm-')).length === 0;
        for (const until = Date.now() + 30_000; !gone() && Date.now() < until; ) await new Promise((r) => setTimeout(r, 100));
        t.false(fs.existsSync(path.join(s.data, 'volumes', 'copy')), 'no clone without its record');
        t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')).filter((e) => !e.startsWith('rm-')), [], 'half-built clones in tmp/ are deleted at start-up');
        // The source is untouched and a new clone works.
        await s2.ok('/VolumeDriver.Create', { Name: 'copy', Opts: { from: 'many' } });
        t.is(fs.readdirSync(path.join(s.data, 'volumes', 'copy', '_data')).length, 1500);
      } finally {
        await s2.kill();
      }
    } finally {
      await s.kill().catch(() => undefined);
      cleanupDir(s.dir);
    }
  });
}

test('a clone is verbatim: owners, set-id modes after chown, every xattr (trusted.overlay.* too) and nanosecond atimes and mtimes (#10)', (t) => {
  if (!requireRoot(t)) return; // other owners, security.capability, trusted.* xattrs
  const base = tempDir('tsvol-clone-meta-');
  t.teardown(() => cleanupDir(base));
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  plantMetaCases(src);
  lutimesRoot(src);
  const dst = path.join(base, 'dst');
  copyTree(src, dst);
  // XATTRS.verbatim: a volume may hold overlay uppers of its own (Docker in Docker): their markers are data.
  const fileXattrs = hexXattrs(FILE_XATTRS, [...FILE_XATTRS.keys()]);
  const dirXattrs = hexXattrs(DIR_XATTRS, [...DIR_XATTRS.keys()]);
  t.deepEqual(readMeta(path.join(dst, 'f')), { uid: 1000, gid: 1001, mode: '104755', xattrs: fileXattrs, atimeNs: ATIME_NS, mtimeNs: MTIME_NS });
  t.deepEqual(readMeta(path.join(dst, 'd')), { uid: 42, gid: 43, mode: '42750', xattrs: dirXattrs, atimeNs: ATIME_NS, mtimeNs: MTIME_NS });
  t.deepEqual(readMeta(path.join(dst, 'l')), { ...readMeta(path.join(src, 'l')), atimeNs: ATIME_NS, mtimeNs: MTIME_NS });
  t.like(readMeta(dst), { mtimeNs: MTIME_NS + 1n, atimeNs: ATIME_NS + 1n }, 'the root too');
});

/** Gives the clone source's root its own ns times (one above the entries', to tell them apart). */
function lutimesRoot(dir: string): void {
  lutimesNs(dir, ATIME_NS + 1n, MTIME_NS + 1n);
}
