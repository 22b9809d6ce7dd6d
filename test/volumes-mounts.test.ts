/**
 * Mount and Unmount as dockerd drives them: real bind mounts under TSVOL_MOUNTS, holds counted per mount
 * ID (docker cp re-uses an ID), Remove refused while held, bind-style volumes on the allowlist only, and
 * concurrency on one volume.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { cleanupDir, isMounted, startTestServer, tempDir, withServer, type TestServer } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('mount', 'umount');

function withRootServer(
  t: { log: (m: string) => void },
  opts: Parameters<typeof withServer>[1],
  fn: (s: TestServer) => Promise<void>,
): Promise<void> {
  return withServer(t, { ...opts, root: true }, fn);
}

test('first Mount bind-mounts the volume under TSVOL_MOUNTS; last Unmount removes it', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'app', Opts: null });
    const m = await s.ok('/VolumeDriver.Mount', { Name: 'app', ID: 'c1' });
    const mp = path.join(s.mounts!, 'app');
    t.deepEqual(m, { Mountpoint: mp, Err: '' });
    t.true(isMounted(mp));
    fs.writeFileSync(path.join(mp, 'hello.txt'), 'from the container');
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'app', '_data', 'hello.txt'), 'utf8'), 'from the container');
    await s.ok('/VolumeDriver.Mount', { Name: 'app', ID: 'c2' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'app', ID: 'c1' });
    t.true(isMounted(mp), 'still mounted for c2');
    const get = await s.ok('/VolumeDriver.Get', { Name: 'app' });
    t.like((get.Volume as { Status: object }).Status, { mounts: 1, holders: ['c2'] });
    await s.ok('/VolumeDriver.Unmount', { Name: 'app', ID: 'c2' });
    t.false(isMounted(mp));
    t.deepEqual(fs.readdirSync(mp), [], 'the bare mountpoint shows nothing of the volume');
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'app', '_data', 'hello.txt'), 'utf8'), 'from the container');
  });
});

test('docker cp re-uses a mount ID: two Mounts with one ID need two Unmounts', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'cp', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'cp', ID: 'run' });
    await s.ok('/VolumeDriver.Mount', { Name: 'cp', ID: 'run' }); // docker cp
    await s.ok('/VolumeDriver.Unmount', { Name: 'cp', ID: 'run' }); // docker cp done
    t.true(isMounted(path.join(s.mounts!, 'cp')), 'the running container still has it');
    const refused = await s.call('/VolumeDriver.Remove', { Name: 'cp' });
    t.is(refused.status, 409);
    await s.ok('/VolumeDriver.Unmount', { Name: 'cp', ID: 'run' });
    t.false(isMounted(path.join(s.mounts!, 'cp')));
  });
});

test('Unmount of an ID never mounted succeeds and changes nothing; counts never go below zero', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'z0', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'z0', ID: 'real' });
    t.deepEqual(await s.ok('/VolumeDriver.Unmount', { Name: 'z0', ID: 'stranger' }), { Err: '' });
    t.true(isMounted(path.join(s.mounts!, 'z0')));
    await s.ok('/VolumeDriver.Unmount', { Name: 'z0', ID: 'real' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'z0', ID: 'real' });
    const st = ((await s.ok('/VolumeDriver.Get', { Name: 'z0' })).Volume as { Status: { mounts: number } }).Status;
    t.is(st.mounts, 0);
    // A fresh Mount still works after the extra Unmounts.
    await s.ok('/VolumeDriver.Mount', { Name: 'z0', ID: 'again' });
    t.true(isMounted(path.join(s.mounts!, 'z0')));
  });
});

test('Remove is refused while mounted, naming the holders, and the data stays', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'busy', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'busy', ID: 'c9' });
    fs.writeFileSync(path.join(s.mounts!, 'busy', 'keep'), 'me');
    const r = await s.call('/VolumeDriver.Remove', { Name: 'busy' });
    t.is(r.status, 409);
    t.is(r.json.Err, 'volume "busy" is in use: 1 active mount(s) (IDs c9); stop the containers using it first');
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'busy', '_data', 'keep'), 'utf8'), 'me');
    await s.ok('/VolumeDriver.Unmount', { Name: 'busy', ID: 'c9' });
    await s.ok('/VolumeDriver.Remove', { Name: 'busy' });
    t.is((await s.call('/VolumeDriver.Get', { Name: 'busy' })).status, 404);
  });
});

test('Remove refuses while something is mounted on the volume directory, and keeps the data', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'covered', Opts: null });
    const data = path.join(s.data, 'volumes', 'covered', '_data');
    fs.writeFileSync(path.join(data, 'under'), 'kept');
    const other = fs.mkdtempSync(path.join(s.dir, 'other-'));
    t.is(spawnSync('mount', ['--bind', other, data]).status, 0);
    try {
      const r = await s.call('/VolumeDriver.Remove', { Name: 'covered' });
      t.is(r.status, 409);
      t.is(r.json.Err, `volume "covered" has something mounted on ${data}; unmount it first`);
      t.is((await s.call('/VolumeDriver.Get', { Name: 'covered' })).status, 200);
    } finally {
      spawnSync('umount', [data]);
    }
    t.is(fs.readFileSync(path.join(data, 'under'), 'utf8'), 'kept');
  });
});

test('Remove never deletes across a mountpoint deeper inside the volume', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'nested', Opts: null });
    const data = path.join(s.data, 'volumes', 'nested', '_data');
    fs.writeFileSync(path.join(data, 'own-file'), 'volume data');
    const precious = fs.mkdtempSync(path.join(s.dir, 'precious-'));
    fs.writeFileSync(path.join(precious, 'file'), 'do not delete');
    const inside = path.join(data, 'deep', 'mnt');
    fs.mkdirSync(inside, { recursive: true });
    t.is(spawnSync('mount', ['--bind', precious, inside]).status, 0);
    try {
      await s.ok('/VolumeDriver.Remove', { Name: 'nested' });
      let warned = false;
      for (let i = 0; i < 100 && !warned; i++) {
        await new Promise((r) => setTimeout(r, 20));
        warned = s.output().includes('removed volume had mounts inside');
      }
      t.true(warned, 'the skipped mount is logged');
      t.is(fs.readFileSync(path.join(precious, 'file'), 'utf8'), 'do not delete');
      t.false(fs.existsSync(path.join(s.data, 'volumes', 'nested')), 'the name is free');
      const trash = fs.readdirSync(path.join(s.data, 'tmp'));
      t.is(trash.length, 1);
      t.false(fs.existsSync(path.join(s.data, 'tmp', trash[0]!, '_data', 'own-file')), "the volume's own files are gone");
    } finally {
      spawnSync('umount', ['-l', inside]);
      const trash = fs.readdirSync(path.join(s.data, 'tmp'));
      for (const d of trash) spawnSync('umount', ['-R', '-l', path.join(s.data, 'tmp', d, '_data', 'deep', 'mnt')]);
    }
  });
});

test('without TSVOL_MOUNTS the mountpoint is the volume directory itself', async (t) => {
  await withRootServer(t, { mounts: false }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'direct', Opts: null });
    const m = await s.ok('/VolumeDriver.Mount', { Name: 'direct', ID: 'x' });
    t.is(m.Mountpoint, path.join(s.data, 'volumes', 'direct', '_data'));
    t.false(isMounted(m.Mountpoint as string));
    t.is((await s.ok('/VolumeDriver.Path', { Name: 'direct' })).Mountpoint, m.Mountpoint);
  });
});

test('Mount of an unknown volume fails and leaves no hold', async (t) => {
  await withRootServer(t, {}, async (s) => {
    const r = await s.call('/VolumeDriver.Mount', { Name: 'ghost', ID: 'a' });
    t.is(r.status, 404);
    t.is(r.json.Err, 'volume "ghost" not found');
    t.false(fs.existsSync(path.join(s.mounts!, 'ghost')));
  });
});

test('50 concurrent Mount/Unmount pairs on one volume leave the right count', async (t) => {
  await withRootServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'hot', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'hot', ID: 'anchor' });
    await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        await s.ok('/VolumeDriver.Mount', { Name: 'hot', ID: `id${i}` });
        await s.ok('/VolumeDriver.Unmount', { Name: 'hot', ID: `id${i}` });
      }),
    );
    let st = ((await s.ok('/VolumeDriver.Get', { Name: 'hot' })).Volume as { Status: { mounts: number; holders: string[] } }).Status;
    t.is(st.mounts, 1);
    t.deepEqual(st.holders, ['anchor']);
    await Promise.all(Array.from({ length: 50 }, (_, i) => s.ok('/VolumeDriver.Mount', { Name: 'hot', ID: `m${i}` })));
    st = ((await s.ok('/VolumeDriver.Get', { Name: 'hot' })).Volume as { Status: { mounts: number; holders: string[] } }).Status;
    t.is(st.mounts, 51);
    const mp = path.join(s.mounts!, 'hot');
    const stacked = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === mp);
    t.is(stacked.length, 1, 'one bind mount, however many holders');
    await Promise.all(Array.from({ length: 50 }, (_, i) => s.ok('/VolumeDriver.Unmount', { Name: 'hot', ID: `m${i}` })));
    await s.ok('/VolumeDriver.Unmount', { Name: 'hot', ID: 'anchor' });
    t.false(isMounted(mp));
  });
});

test.serial('bind-style volumes: only inside TSVOL_BIND_ROOTS, never through .. or symlinks', async (t) => {
  const host = tempDir('tsvol-host-');
  const root = path.join(host, 'srv');
  fs.mkdirSync(path.join(root, 'site'), { recursive: true });
  fs.writeFileSync(path.join(root, 'site', 'index.html'), '<h1>host</h1>');
  fs.mkdirSync(path.join(host, 'secret'));
  fs.writeFileSync(path.join(host, 'secret', 'key'), 'k');
  fs.symlinkSync(path.join(host, 'secret'), path.join(root, 'escape'));
  fs.writeFileSync(path.join(root, 'afile'), 'x');
  try {
    await withRootServer(t, { bindRoots: [root] }, async (s) => {
      const refused: [Record<string, string>, RegExp][] = [
        [{ type: 'bind', device: path.join(host, 'secret') }, /is outside TSVOL_BIND_ROOTS/],
        [{ type: 'bind', device: `${root}/../secret` }, /resolves to .*secret.* is outside TSVOL_BIND_ROOTS/],
        [{ type: 'bind', device: path.join(root, 'escape') }, /resolves to .*secret.* is outside TSVOL_BIND_ROOTS/],
        [{ type: 'bind', device: path.join(root, 'missing') }, /does not exist/],
        [{ type: 'bind', device: path.join(root, 'afile') }, /is not a directory/],
      ];
      for (const [opts, err] of refused) {
        const r = await s.call('/VolumeDriver.Create', { Name: 'hb', Opts: opts });
        t.not(r.status, 200, JSON.stringify(opts));
        t.regex(String(r.json.Err), err);
        t.is((await s.call('/VolumeDriver.Get', { Name: 'hb' })).status, 404);
      }
      // The local driver's spelling works unchanged.
      await s.ok('/VolumeDriver.Create', { Name: 'site', Opts: { type: 'none', o: 'bind', device: path.join(root, 'site') } });
      const m = await s.ok('/VolumeDriver.Mount', { Name: 'site', ID: 'web' });
      t.is(fs.readFileSync(path.join(m.Mountpoint as string, 'index.html'), 'utf8'), '<h1>host</h1>');
      fs.writeFileSync(path.join(m.Mountpoint as string, 'upload'), 'from container');
      t.is(fs.readFileSync(path.join(root, 'site', 'upload'), 'utf8'), 'from container');
      const get = await s.ok('/VolumeDriver.Get', { Name: 'site' });
      t.like((get.Volume as { Status: object }).Status, { kind: 'bind', device: path.join(root, 'site') });
      await s.ok('/VolumeDriver.Unmount', { Name: 'site', ID: 'web' });
      await s.ok('/VolumeDriver.Remove', { Name: 'site' });
      t.is(fs.readFileSync(path.join(root, 'site', 'index.html'), 'utf8'), '<h1>host</h1>', 'host files survive Remove');
      t.true(fs.existsSync(path.join(root, 'site', 'upload')));

      // A symlink swapped in after Create cannot redirect the volume.
      fs.mkdirSync(path.join(root, 'swap'));
      await s.ok('/VolumeDriver.Create', { Name: 'swap', Opts: { type: 'bind', device: path.join(root, 'swap') } });
      fs.rmdirSync(path.join(root, 'swap'));
      fs.symlinkSync(path.join(host, 'secret'), path.join(root, 'swap'));
      const r = await s.call('/VolumeDriver.Mount', { Name: 'swap', ID: 'evil' });
      t.not(r.status, 200);
      t.regex(String(r.json.Err), /mount volume "swap": device .* is outside TSVOL_BIND_ROOTS/);
      t.false(isMounted(path.join(s.mounts!, 'swap')));
      const st = ((await s.ok('/VolumeDriver.Get', { Name: 'swap' })).Volume as { Status: { mounts: number } }).Status;
      t.is(st.mounts, 0, 'a failed Mount leaves no hold');
    });
  } finally {
    cleanupDir(host);
  }
});

test('bind-style volumes are refused when TSVOL_BIND_ROOTS is empty', async (t) => {
  await withRootServer(t, {}, async (s) => {
    const r = await s.call('/VolumeDriver.Create', { Name: 'b1', Opts: { type: 'bind', device: '/tmp' } });
    t.is(r.status, 400);
    t.regex(String(r.json.Err), /TSVOL_BIND_ROOTS is empty, so bind-style volumes are disabled/);
  });
});

/** Status.mounts of volume `name`. */
async function mountsOf(s: TestServer, name: string): Promise<number> {
  return ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: { mounts: number } }).Status.mounts;
}

test.serial('without TSVOL_MOUNTS a bind-style volume is a mount of the pinned device: a symlink swapped in later redirects nothing', async (t) => {
  const host = tempDir('tsvol-host-');
  const root = path.join(host, 'srv');
  fs.mkdirSync(path.join(root, 'site'), { recursive: true });
  fs.writeFileSync(path.join(root, 'site', 'index.html'), 'original');
  fs.mkdirSync(path.join(root, 'deep', 'inner'), { recursive: true });
  fs.writeFileSync(path.join(root, 'deep', 'inner', 'index.html'), 'original inner');
  // What an attacker wants served instead: outside the allowlist.
  fs.mkdirSync(path.join(host, 'secret', 'inner'), { recursive: true });
  fs.writeFileSync(path.join(host, 'secret', 'index.html'), 'SECRET');
  fs.writeFileSync(path.join(host, 'secret', 'inner', 'index.html'), 'SECRET');
  try {
    await withRootServer(t, { mounts: false, bindRoots: [root] }, async (s) => {
      // The device itself swapped, and an ancestor of the device swapped.
      const cases = [
        { name: 'site', device: path.join(root, 'site'), swapped: path.join(root, 'site'), to: path.join(host, 'secret'), want: 'original' },
        { name: 'inner', device: path.join(root, 'deep', 'inner'), swapped: path.join(root, 'deep'), to: path.join(host, 'secret'), want: 'original inner' },
      ];
      for (const c of cases) {
        await s.ok('/VolumeDriver.Create', { Name: c.name, Opts: { type: 'bind', device: c.device } });
        const mp = path.join(s.data, 'binds', c.name);
        t.deepEqual(await s.ok('/VolumeDriver.Mount', { Name: c.name, ID: 'c1' }), { Mountpoint: mp, Err: '' });
        t.is((await s.ok('/VolumeDriver.Path', { Name: c.name })).Mountpoint, mp);
        t.true(isMounted(mp));
        fs.renameSync(c.swapped, `${c.swapped}.orig`);
        fs.symlinkSync(c.to, c.swapped);
        t.is(fs.readFileSync(path.join(mp, 'index.html'), 'utf8'), c.want, `${c.name}: the mountpoint still shows the checked directory`);
        // A second holder shares the mount made from the pinned directory.
        t.is((await s.ok('/VolumeDriver.Mount', { Name: c.name, ID: 'c2' })).Mountpoint, mp);
        t.is(fs.readFileSync(path.join(mp, 'index.html'), 'utf8'), c.want);
        await s.ok('/VolumeDriver.Unmount', { Name: c.name, ID: 'c1' });
        await s.ok('/VolumeDriver.Unmount', { Name: c.name, ID: 'c2' });
        t.false(isMounted(mp), `${c.name}: the last Unmount unmounts`);
        t.deepEqual(fs.readdirSync(mp), []);
        const r = await s.call('/VolumeDriver.Mount', { Name: c.name, ID: 'c3' });
        t.is(r.status, 400, `${c.name}: a new Mount after the swap is refused`);
        t.regex(String(r.json.Err), new RegExp(`mount volume "${c.name}": device .* is outside TSVOL_BIND_ROOTS`));
        t.false(isMounted(mp));
        t.is(await mountsOf(s, c.name), 0);
        fs.unlinkSync(c.swapped);
        fs.renameSync(`${c.swapped}.orig`, c.swapped);
      }
      // Remove takes the mountpoint away; the host directory is never touched.
      await s.ok('/VolumeDriver.Remove', { Name: 'site' });
      t.false(fs.existsSync(path.join(s.data, 'binds', 'site')));
      t.is(fs.readFileSync(path.join(root, 'site', 'index.html'), 'utf8'), 'original');
      t.is(fs.statSync(path.join(s.data, 'binds')).mode & 0o777, 0o700);
    });
  } finally {
    cleanupDir(host);
  }
});

test.serial('without TSVOL_MOUNTS, start-up re-mounts a held bind-style volume and clears stale mounts under binds/', async (t) => {
  const host = tempDir('tsvol-host-');
  const root = path.join(host, 'srv');
  fs.mkdirSync(path.join(root, 'site'), { recursive: true });
  fs.writeFileSync(path.join(root, 'site', 'index.html'), 'original');
  if (process.getuid?.() !== 0) {
    cleanupDir(host);
    if (process.env.CI === 'true') throw new Error('needs root (mounts)');
    return void t.log('SKIPPED LOUDLY: not root');
  }
  let s = await startTestServer({ mounts: false, bindRoots: [root] });
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'held', Opts: { type: 'bind', device: path.join(root, 'site') } });
    await s.ok('/VolumeDriver.Create', { Name: 'idle', Opts: { type: 'bind', device: path.join(root, 'site') } });
    const held = path.join(s.data, 'binds', 'held');
    const idle = path.join(s.data, 'binds', 'idle');
    const ghost = path.join(s.data, 'binds', 'ghost');
    await s.ok('/VolumeDriver.Mount', { Name: 'held', ID: 'c1' });
    await s.ok('/VolumeDriver.Mount', { Name: 'idle', ID: 'c1' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'idle', ID: 'c1' });
    await s.kill();
    // The held volume's mount lost (e.g. unmounted by hand), a stale mount with no holder, a leftover directory.
    t.is(spawnSync('umount', [held]).status, 0);
    t.is(spawnSync('mount', ['--bind', path.join(root, 'site'), idle]).status, 0);
    fs.mkdirSync(ghost);
    s = await startTestServer({ dir: s.dir, mounts: false, bindRoots: [root] });
    t.true(isMounted(held), 'the held volume is mounted again');
    t.is(fs.readFileSync(path.join(held, 'index.html'), 'utf8'), 'original');
    t.false(isMounted(idle), 'a mount with no holder is removed');
    t.true(fs.existsSync(idle), "a volume's mountpoint directory stays");
    t.false(fs.existsSync(ghost), 'a directory with no volume is removed');
    t.is(await mountsOf(s, 'held'), 1);
    await s.ok('/VolumeDriver.Unmount', { Name: 'held', ID: 'c1' });
    t.false(isMounted(held));
  } finally {
    await s.kill();
    cleanupDir(s.dir);
    cleanupDir(host);
  }
});
