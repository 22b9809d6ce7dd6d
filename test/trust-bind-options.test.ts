/**
 * A bind-style volume's `o=` (the trust review, session 7): `rbind` carries the device's submounts as
 * Docker's local driver does, `ro`/`nosuid`/`nodev`/`noexec` are set by the kernel on every mount of the
 * volume's tree (a bind remount would reach only the top one), and anything else is refused by name with
 * nothing created. Old code: `o=rbind` was silently a plain bind (an empty view of the submounts) and
 * `o=bind,ro` was refused.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { kernelPath, readMounts } from '../src/sys/mountinfo.js';
import { cleanupDir, isMounted, tempDir, withServer, requireRoot, sharedWithPeer } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('mount', 'umount');

/** The errno code of writing `p`, or 'ok'. */
function tryWrite(p: string): string {
  try {
    fs.writeFileSync(p, 'x');
    return 'ok';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

/** Mounts at or below `p`, as mountinfo lists them. */
function mountsAt(p: string): { mountPoint: string; options: readonly string[] }[] {
  const real = kernelPath(p);
  return readMounts().filter((m) => m.mountPoint === real || m.mountPoint.startsWith(`${real}/`));
}

test.serial('bind-style o=: rbind carries submounts, ro/nosuid/nodev/noexec hold on every mount, other entries are refused by name', async (t) => {
  const host = tempDir('tsvol-bindopt-');
  const root = path.join(host, 'srv');
  const site = path.join(root, 'site');
  fs.mkdirSync(path.join(site, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(site, 'top.txt'), 'top');
  const tmpfs = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tsvol-sub', path.join(site, 'sub')], { encoding: 'utf8' });
  try {
    t.is(tmpfs.status, 0, tmpfs.stderr);
    fs.writeFileSync(path.join(site, 'sub', 'inner.txt'), 'inner');
    await withServer(t, { root: true, bindRoots: [root] }, async (s) => {
      const mountOf = async (name: string, o: Record<string, string>): Promise<string> => {
        await s.ok('/VolumeDriver.Create', { Name: name, Opts: { device: site, ...o } });
        return (await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c1' })).Mountpoint as string;
      };
      const done = async (name: string, mp: string): Promise<void> => {
        await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c1' });
        t.deepEqual(mountsAt(mp), [], `${name}: the last Unmount leaves no mount at or below the mountpoint`);
        await s.ok('/VolumeDriver.Remove', { Name: name });
      };

      // rbind: the submount is part of the volume, as with Docker's local driver.
      let mp = await mountOf('rb', { type: 'none', o: 'rbind' });
      t.is(fs.readFileSync(path.join(mp, 'sub', 'inner.txt'), 'utf8'), 'inner', 'o=rbind shows the submount');
      t.is(tryWrite(path.join(mp, 'sub', 'w1')), 'ok');
      await done('rb', mp);

      // bind: not recursive (documented): the submount's directory is empty.
      mp = await mountOf('pb', { type: 'none', o: 'bind' });
      t.deepEqual(fs.readdirSync(path.join(mp, 'sub')), []);
      await done('pb', mp);

      // rbind,ro: read-only on the top mount and on the submount, which a bind remount would leave writable.
      mp = await mountOf('rro', { type: 'none', o: 'rbind,ro' });
      t.is(tryWrite(path.join(mp, 'w2')), 'EROFS');
      t.is(tryWrite(path.join(mp, 'sub', 'w2')), 'EROFS', 'the submount is read-only too');
      t.is(fs.readFileSync(path.join(mp, 'sub', 'inner.txt'), 'utf8'), 'inner');
      t.is(tryWrite(path.join(site, 'host-still-writes')), 'ok', 'only the volume mount is read-only, not the host directory');
      t.is(tryWrite(path.join(site, 'sub', 'host-still-writes')), 'ok');
      await done('rro', mp);

      // type=bind with per-mount flags only; the kernel shows them on the mount.
      mp = await mountOf('flags', { type: 'bind', o: 'ro,nosuid,nodev,noexec' });
      const opts = mountsAt(mp).find((m) => m.mountPoint === kernelPath(mp))?.options ?? [];
      for (const f of ['ro', 'nosuid', 'nodev', 'noexec']) t.true(opts.includes(f), `${f} in ${opts.join(',')}`);
      t.is(tryWrite(path.join(mp, 'w3')), 'EROFS');
      await done('flags', mp);

      // Refused by name, nothing created.
      const refused: [Record<string, string>, RegExp][] = [
        [{ type: 'none', o: 'bind,uid=1000' }, /"uid=1000" is not a mount option a bind-style volume can honour/],
        [{ type: 'none', o: 'bind,size=10m' }, /"size=10m" is not a mount option/],
        [{ type: 'none', o: 'bind,noatime' }, /"noatime" is not a mount option/],
        [{ type: 'none', o: 'bind,' }, /an empty entry is not a mount option/],
        [{ type: 'none', o: 'bind\nro' }, /"bind\\nro" is not a mount option/],
        [{ type: 'none', o: 'bind\u0000' }, /is not a mount option/],
        [{ type: 'none', o: 'bind,rbind' }, /bind and rbind contradict each other/],
        [{ type: 'none', o: 'bind,ro,rw' }, /ro and rw contradict each other/],
        [{ type: 'none', o: 'ro' }, /with type=none, o= must include bind or rbind/],
        [{ type: 'none' }, /with type=none, o= must include bind or rbind/],
        [{ type: 'bind', o: 'BIND' }, /"BIND" is not a mount option/],
        [{ o: 'bind' }, /add type=none/],
        [{ type: 'tmpfs', o: 'size=1m' }, /invalid option type="tmpfs"/],
        [{ type: 'bind', o: 'bind', uid: '0' }, /invalid option uid: bind-style volumes keep/],
      ];
      for (const [o, err] of refused) {
        const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: { device: site, ...o } });
        t.is(r.status, 400, JSON.stringify(o));
        t.regex(String(r.json.Err), err, JSON.stringify(o));
        t.is((await s.call('/VolumeDriver.Get', { Name: 'bad' })).status, 404, `${JSON.stringify(o)}: nothing created`);
      }
      for (const device of [`${site}\u0000/etc`, `/${'a'.repeat(4096)}`]) {
        const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: { type: 'bind', device } });
        t.is(r.status, 400);
        t.regex(String(r.json.Err), /holds no NUL byte and is shorter than 4096 bytes/);
      }
      t.false(isMounted(path.join(s.mounts!, 'bad')));
    });
  } finally {
    cleanupDir(host);
  }
});

test.serial('a bind-style device is never tsvol\'s own directory, inside it or above it, whatever TSVOL_BIND_ROOTS allows', async (t) => {
  const dir = tempDir('tsvol-bindres-');
  fs.mkdirSync(path.join(dir, 'site'));
  fs.symlinkSync(path.join(dir, 'data'), path.join(dir, 'site', 'to-data'));
  // The root allows the server's own directory: an admin's TSVOL_BIND_ROOTS=/var/lib with TSVOL_DATA=/var/lib/tsvol.
  await withServer(t, { root: true, dir, bindRoots: [dir] }, async (s) => {
    const cases: [string, RegExp][] = [
      [s.data, /lies inside tsvol's own directory/],
      [path.join(s.data, 'volumes'), /lies inside tsvol's own directory/],
      [path.join(dir, 'site', 'to-data'), /lies inside tsvol's own directory/],
      [dir, /holds tsvol's own directory/],
      [s.mounts!, /lies inside tsvol's own directory/],
    ];
    for (const [device, err] of cases) {
      const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: { type: 'bind', device } });
      t.is(r.status, 400, device);
      t.regex(String(r.json.Err), err, device);
      t.is((await s.call('/VolumeDriver.Get', { Name: 'bad' })).status, 404);
    }
    // Swapped in after Create: refused at Mount, no hold.
    await s.ok('/VolumeDriver.Create', { Name: 'site', Opts: { type: 'bind', device: path.join(dir, 'site') } });
    fs.renameSync(path.join(dir, 'site'), path.join(dir, 'site.orig'));
    fs.symlinkSync(path.join(s.data, 'volumes'), path.join(dir, 'site'));
    const m = await s.call('/VolumeDriver.Mount', { Name: 'site', ID: 'c1' });
    t.is(m.status, 400);
    t.regex(String(m.json.Err), /lies inside tsvol's own directory/);
    t.false(isMounted(path.join(s.mounts!, 'site')));
    fs.unlinkSync(path.join(dir, 'site'));
    fs.renameSync(path.join(dir, 'site.orig'), path.join(dir, 'site'));
    await s.ok('/VolumeDriver.Mount', { Name: 'site', ID: 'c1' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'site', ID: 'c1' });
  });
});

test.serial('a data root seen through a bind (a managed plugin\'s) is still found inside a device that holds it', async (t) => {
  if (!requireRoot(t)) return;
  const host = tempDir('tsvol-bindhost-');
  const dir = tempDir('tsvol-bindsrv-');
  // The data root is host/state/tsvol, which the server sees only through a bind at dir/data (as a
  // plugin sees data.source at /var/lib/tsvol): its ancestors there are not host/state's.
  fs.mkdirSync(path.join(host, 'state', 'tsvol'), { recursive: true });
  fs.mkdirSync(path.join(host, 'site'));
  fs.mkdirSync(path.join(dir, 'data'));
  const bound = spawnSync('mount', ['--bind', path.join(host, 'state', 'tsvol'), path.join(dir, 'data')], { encoding: 'utf8' });
  try {
    t.is(bound.status, 0, bound.stderr);
    await withServer(t, { root: true, dir, mounts: false, bindRoots: [host] }, async (s) => {
      for (const device of [host, path.join(host, 'state')]) {
        const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: { type: 'bind', device } });
        t.is(r.status, 400, device);
        t.regex(String(r.json.Err), /holds tsvol's own directory/, device);
      }
      const inside = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: { type: 'bind', device: path.join(host, 'state', 'tsvol', 'volumes') } });
      t.regex(String(inside.json.Err), /lies inside tsvol's own directory/);
      await s.ok('/VolumeDriver.Create', { Name: 'site', Opts: { type: 'bind', device: path.join(host, 'site') } });
    });
  } finally {
    cleanupDir(dir);
    cleanupDir(host);
  }
});

test.serial('o=ro holds in the copies propagation makes of the mountpoint (a managed plugin\'s propagatedMount, which dockerd uses)', async (t) => {
  if (!requireRoot(t)) return;
  const host = tempDir('tsvol-bindprop-');
  const dir = tempDir('tsvol-bindprop-srv-');
  fs.mkdirSync(path.join(host, 'site'));
  fs.writeFileSync(path.join(host, 'site', 'f'), 'host');
  // TSVOL_MOUNTS shared with a peer, as the plugin's propagatedMount is with the host's view of it.
  const mnt = path.join(dir, 'mnt');
  const peer = path.join(dir, 'peer');
  sharedWithPeer(mnt, peer);
  try {
    await withServer(t, { root: true, dir, bindRoots: [host] }, async (s) => {
      await s.ok('/VolumeDriver.Create', { Name: 'ro', Opts: { type: 'none', o: 'bind,ro', device: path.join(host, 'site') } });
      const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'ro', ID: 'c1' })).Mountpoint as string;
      t.is(mp, path.join(mnt, 'ro'));
      t.is(fs.readFileSync(path.join(peer, 'ro', 'f'), 'utf8'), 'host', 'the peer shows the volume');
      t.is(tryWrite(path.join(mp, 'w')), 'EROFS');
      t.is(tryWrite(path.join(peer, 'ro', 'w')), 'EROFS', 'the propagated copy is read-only too');
      await s.ok('/VolumeDriver.Unmount', { Name: 'ro', ID: 'c1' });
      t.false(isMounted(path.join(peer, 'ro')), 'the unmount propagates too');
    });
  } finally {
    cleanupDir(dir);
    cleanupDir(host);
  }
});
