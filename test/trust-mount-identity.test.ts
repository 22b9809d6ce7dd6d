/**
 * Mount identity is the kernel's, never a path string (the trust review, session 7): start-up repair with
 * TSVOL_MOUNTS reached through a symlink and a directory name with a space (mountinfo's `\040`), and the
 * decoding of mountinfo escapes down to bytes.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { decodeMountField, kernelPath, mountsUnder, parseMountinfo, readMounts } from '../src/sys/mountinfo.js';
import { cleanupDir, startTestServer, tempDir, requireRoot } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('mount', 'umount');

/** How many mounts are stacked at `p` (its real path, as mountinfo names it). */
function mountCount(p: string): number {
  const real = kernelPath(p);
  return readMounts().filter((m) => m.mountPoint === real).length;
}

test('mountinfo escapes decode to bytes: space, tab, newline, backslash, and a backslash before digits', (t) => {
  t.is(decodeMountField('/a\\040b'), '/a b');
  t.is(decodeMountField('/t\\011n\\012'), '/t\tn\n');
  t.is(decodeMountField('/x\\134040'), '/x\\040', 'an escaped backslash followed by digits is a backslash and digits');
  t.is(decodeMountField('/p\\04'), '/p\\04', 'a short escape is kept as is');
  // A UTF-8 name is bytes in mountinfo; read as latin1 it decodes back to the same string.
  const name = Buffer.from('/d\u00e9j\u00e0 vu', 'utf8').toString('latin1').replace(' ', '\\040');
  t.is(decodeMountField(name), '/d\u00e9j\u00e0 vu');
  const line = '36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue';
  t.like(parseMountinfo(line)[0], { id: 36, mountPoint: '/mnt x', fsType: 'ext3', source: '/dev/root', options: ['rw', 'noatime'] });
});

test.serial('mountsUnder finds mounts under a path given through a symlink, with a space and ..', (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-mi-');
  try {
    const real = path.join(dir, 'real dir');
    fs.mkdirSync(path.join(real, 'sub', 'in'), { recursive: true });
    fs.symlinkSync(real, path.join(dir, 'link'));
    t.is(spawnSync('mount', ['-t', 'tmpfs', 'none', path.join(real, 'sub', 'in')]).status, 0);
    try {
      const viaLink = path.join(dir, 'link', 'sub');
      t.deepEqual(mountsUnder(viaLink), [path.join(real, 'sub', 'in')]);
      t.deepEqual(mountsUnder(`${dir}/link/sub/in/../`), [path.join(real, 'sub', 'in')]);
      t.deepEqual(mountsUnder(path.join(dir, 'missing')), []);
    } finally {
      spawnSync('umount', [path.join(real, 'sub', 'in')]);
    }
  } finally {
    cleanupDir(dir);
  }
});

test.serial('start-up repair with TSVOL_MOUNTS through a symlink and a space: a held mount is kept (not stacked), a stale one removed', async (t) => {
  if (!requireRoot(t)) return;
  const host = tempDir('tsvol-mi-host-');
  const realMounts = path.join(host, 'real mounts');
  fs.mkdirSync(realMounts);
  fs.symlinkSync(realMounts, path.join(host, 'via link'));
  const env = { TSVOL_MOUNTS: path.join(host, 'via link', 'mnt') };
  let s = await startTestServer({ env });
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'held', Opts: null });
    await s.ok('/VolumeDriver.Create', { Name: 'idle', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'held', ID: 'c1' });
    await s.ok('/VolumeDriver.Mount', { Name: 'idle', ID: 'c1' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'idle', ID: 'c1' });
    const held = path.join(realMounts, 'mnt', 'held');
    const idle = path.join(realMounts, 'mnt', 'idle');
    await s.kill();
    t.is(mountCount(held), 1);
    // A stale mount with no holder (a crash mid-Unmount).
    t.is(spawnSync('mount', ['--bind', path.join(s.data, 'volumes', 'idle', '_data'), idle]).status, 0);
    s = await startTestServer({ dir: s.dir, env });
    t.is(mountCount(held), 1, 'the held volume stays mounted once (not mounted again on top)');
    t.is(mountCount(idle), 0, 'the stale mount is removed');
    await s.ok('/VolumeDriver.Unmount', { Name: 'held', ID: 'c1' });
    t.is(mountCount(held), 0);
  } finally {
    await s.kill();
    cleanupDir(s.dir);
    cleanupDir(host);
  }
});

test.serial('a bind root reached through a directory another user can change is refused (that user could point it at /etc)', async (t) => {
  if (!requireRoot(t)) return;
  const host = tempDir('tsvol-roots-');
  // host (root, 0700) / home-of-nobody (nobody's) / shared (root's) / site
  const home = path.join(host, 'home-of-nobody');
  const shared = path.join(home, 'shared');
  fs.mkdirSync(path.join(shared, 'site'), { recursive: true });
  fs.chownSync(home, 65534, 65534);
  // host (root) / srv (root, 0755) / data / site: a root only root can change.
  const safe = path.join(host, 'srv', 'data');
  fs.mkdirSync(path.join(safe, 'site'), { recursive: true, mode: 0o755 });
  fs.chmodSync(host, 0o755);
  const s = await startTestServer({ mounts: false, bindRoots: [shared, safe] });
  try {
    const r = await s.call('/VolumeDriver.Create', { Name: 'swappable', Opts: { type: 'bind', device: path.join(shared, 'site') } });
    t.regex(String(r.json.Err), /is reached through .*home-of-nobody \(owner uid 65534, mode 755\), which a user other than root can change/);
    t.is((await s.call('/VolumeDriver.Get', { Name: 'swappable' })).status, 404);
    await s.ok('/VolumeDriver.Create', { Name: 'fine', Opts: { type: 'bind', device: path.join(safe, 'site') } });
    // A group-writable directory on the way is another user's to change too.
    fs.chmodSync(path.join(host, 'srv'), 0o775);
    const m = await s.call('/VolumeDriver.Mount', { Name: 'fine', ID: 'c1' });
    t.regex(String(m.json.Err), /which a user other than root can change/);
    fs.chmodSync(path.join(host, 'srv'), 0o755);
    await s.ok('/VolumeDriver.Mount', { Name: 'fine', ID: 'c1' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'fine', ID: 'c1' });
  } finally {
    await s.kill();
    cleanupDir(s.dir);
    cleanupDir(host);
  }
});
