/**
 * Sized volumes on a data root without project quotas (#6): each gets its own ext4 image, loop-mounted
 * while held. The default data root (/var/tmp, ext4 without prjquota) takes this path.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { withServer, isMounted } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('mkfs.ext4', 'debugfs', 'dumpe2fs', 'dd', 'losetup', 'umount');

function dd(target: string, mb: number): { status: number | null; stderr: string } {
  const r = spawnSync('dd', ['if=/dev/zero', `of=${target}`, 'bs=1M', `count=${mb}`, 'conv=fsync'], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

function loopsOf(image: string): string {
  return spawnSync('losetup', ['-j', image], { encoding: 'utf8' }).stdout.trim();
}

test('size=32m: writes past the limit fail with "No space left", other volumes are unaffected, Status shows limit and usage', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'small', Opts: { size: '32m', uid: '1000', mode: '0750' } });
    await s.ok('/VolumeDriver.Create', { Name: 'plain', Opts: {} });
    const image = path.join(s.data, 'volumes', 'small', 'disk.img');
    t.true(fs.statSync(image).blocks * 512 < 8 << 20, 'the image is sparse');
    t.is(loopsOf(image), '', 'no loop device until the first Mount');

    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'small', ID: 'c1' })).Mountpoint as string;
    t.is(mp, path.join(s.mounts!, 'small'));
    const st = fs.statSync(mp);
    t.is(st.uid, 1000);
    t.is(st.mode & 0o7777, 0o750);
    t.not(loopsOf(image), '', 'mounted through a loop device');
    t.is(dd(path.join(mp, 'ten'), 10).status, 0);
    const over = dd(path.join(mp, 'forty'), 40);
    t.not(over.status, 0);
    t.regex(over.stderr, /No space left on device/);

    const plainMp = (await s.ok('/VolumeDriver.Mount', { Name: 'plain', ID: 'c2' })).Mountpoint as string;
    t.is(dd(path.join(plainMp, 'forty'), 40).status, 0, 'an unsized volume is not limited');

    // Usage is measured off the request path: the first Get may not have it yet. (ext4 keeps a few MB of
    // a small image for its journal and reserved clusters, so a full 32m image shows a little less.)
    let status: Record<string, unknown> = {};
    for (let i = 0; i < 50; i++) {
      status = ((await s.ok('/VolumeDriver.Get', { Name: 'small' })).Volume as { Status: Record<string, unknown> }).Status;
      if ((status.usage as { bytes: number } | undefined)?.bytes ?? 0 > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    t.is(status.kind, 'sized');
    t.is(status.limit, 32 << 20);
    t.is(status.sizeBacking, 'loop');
    const usage = status.usage as { bytes: number; files: number };
    t.true(usage.bytes > 20 << 20 && usage.bytes <= 32 << 20, `usage ${usage.bytes}`);
    t.true(usage.files >= 4);

    await s.ok('/VolumeDriver.Unmount', { Name: 'small', ID: 'c1' });
    t.false(isMounted(path.join(s.data, 'volumes', 'small', '_data')));
    t.is(loopsOf(image), '', 'the last Unmount detaches the loop device');
    const again = (await s.ok('/VolumeDriver.Mount', { Name: 'small', ID: 'c3' })).Mountpoint as string;
    t.is(fs.statSync(path.join(again, 'ten')).size, 10 << 20, 'data survives Unmount/Mount');
    await s.ok('/VolumeDriver.Unmount', { Name: 'small', ID: 'c3' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'plain', ID: 'c2' });
    await s.ok('/VolumeDriver.Remove', { Name: 'small' });
    t.false(fs.existsSync(path.join(s.data, 'volumes', 'small')));
  });
});

test('invalid sizes and combinations are refused and leave nothing behind', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    for (const [opts, re] of [
      [{ size: 'lots' }, /invalid option size="lots"/],
      [{ size: '1m' }, /at least 16m/],
      [{ size: '-5G' }, /invalid option size/],
      [{ size: '1G', type: 'bind', device: '/tmp' }, /invalid option size: bind-style/],
      [{ size: '1G', from: 'x' }, /a clone \(from=\) copies its source/],
    ] as const) {
      const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: opts });
      t.regex(String(r.json.Err), re, JSON.stringify(opts));
    }
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')), []);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')), []);
    const units = await s.call('/VolumeDriver.Create', { Name: 'units', Opts: { size: '1.5G' } });
    t.is(units.json.Err, '');
    const st = ((await s.ok('/VolumeDriver.Get', { Name: 'units' })).Volume as { Status: { limit: number } }).Status;
    t.is(st.limit, 1.5 * 1024 ** 3);
  });
});

test('kill -9 while a sized volume is held: the restarted server keeps it mounted; Unmount then detaches', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'held', Opts: { size: '20m' } });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'held', ID: 'c1' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'f'), 'data');
    await s.kill();
    const { startTestServer } = await import('./helpers/server.js');
    const s2 = await startTestServer({ dir: s.dir });
    try {
      t.is(fs.readFileSync(path.join(mp, 'f'), 'utf8'), 'data');
      await s2.ok('/VolumeDriver.Unmount', { Name: 'held', ID: 'c1' });
      t.false(isMounted(path.join(s.data, 'volumes', 'held', '_data')));
      t.is(loopsOf(path.join(s.data, 'volumes', 'held', 'disk.img')), '');
      await s2.ok('/VolumeDriver.Remove', { Name: 'held' });
    } finally {
      await s2.kill();
    }
  });
});
